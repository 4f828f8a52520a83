//! A whole disk in order, for restore: the manifest walked front to back, each chunk
//! located in its pack and that range prefetched, so the workers that then read the
//! chunks (out of order, in parallel) find them in the page cache.

use repo_format::{
    BlobId, BlobLocation, BlobReader, Extent, ManifestRoot, ManifestWalker, PackId, Repository,
};

use crate::error::Result;

/// The most pack bytes prefetched with one call, and the largest gap between two blobs
/// (of other disks, or nodes) read along rather than prefetched apart.
const PREFETCH_SPAN: u64 = 4 << 20;
const PREFETCH_GAP: u64 = 256 << 10;

/// Walks `manifest` in disk order and calls `each(offset, extent, location)` for every
/// extent, `location` being where a chunk is stored (when the index knows it) with that
/// range already prefetched. Stops when `each` returns `Ok(false)` or an error.
/// Returns the offset where the walk ended: the manifest's length when it was walked to
/// the end and is consistent.
pub fn feed_extents(
    repo: &Repository,
    manifest: ManifestRoot,
    mut each: impl FnMut(u64, Extent, Option<BlobLocation>) -> Result<bool>,
) -> Result<u64> {
    let mut nodes = BlobReader::new(repo)?;
    let mut ahead = BlobReader::new(repo)?;
    let mut walker = ManifestWalker::new(manifest, |id: &BlobId| nodes.read_node(id));
    let mut end = 0;
    // Blobs that follow each other in a pack are prefetched with one call, a few
    // chunks behind the walk (the workers are further behind still). Only advice: a
    // pack that cannot be opened is reported, precisely, by the worker that reads it.
    let mut span: Option<(PackId, u64, u64)> = None;
    while let Some((offset, extent)) = walker.next_extent()? {
        end = offset + extent.len();
        let loc = match extent {
            Extent::Chunk { id, .. } => ahead.locate(&id).ok(),
            Extent::Hole { .. } => None,
        };
        if let Some(loc) = &loc {
            let (start, stop) = (loc.entry.offset, loc.entry.offset + ahead.stored_span(loc));
            match &mut span {
                Some((pack, from, to))
                    if *pack == loc.pack
                        && start >= *to
                        && start - *to <= PREFETCH_GAP
                        && stop - *from <= PREFETCH_SPAN =>
                {
                    *to = stop
                }
                _ => {
                    if let Some((pack, from, to)) = span.take() {
                        let _ = ahead.prefetch_range(&pack, from, to - from);
                    }
                    span = Some((loc.pack, start, stop));
                }
            }
        }
        if !each(offset, extent, loc)? {
            break;
        }
    }
    if let Some((pack, from, to)) = span {
        let _ = ahead.prefetch_range(&pack, from, to - from);
    }
    Ok(end)
}

/// Why [`fetch_chunk`] failed, with the pack the chunk was in when known.
pub type FetchError = Box<(Option<repo_format::PackId>, repo_format::Error)>;

/// Reads and checks chunk `id`, at `known` when [`feed_extents`] located it. A chunk
/// that does not decode where the index says is looked up again in the packs' own
/// tables before it is called damaged (see [`BlobReader::read_located`]).
pub fn fetch_chunk(
    reader: &mut BlobReader<&Repository>,
    id: &BlobId,
    known: Option<BlobLocation>,
) -> std::result::Result<Vec<u8>, FetchError> {
    let loc = match known {
        Some(loc) => loc,
        None => reader.locate(id).map_err(|e| Box::new((None, e)))?,
    };
    reader
        .read_located(&loc)
        .map_err(|e| Box::new((Some(loc.pack), e)))
}

/// The whole content of a small manifest (a snapshot's metadata file) in memory, every
/// chunk checked. Refuses manifests longer than `max` bytes.
pub fn read_whole(repo: &Repository, manifest: ManifestRoot, max: u64) -> Result<Vec<u8>> {
    if manifest.len_bytes > max {
        return Err(crate::error::Error::Usage(format!(
            "a metadata file of {} bytes is larger than {max}",
            manifest.len_bytes
        )));
    }
    let mut out = Vec::with_capacity(manifest.len_bytes as usize);
    let mut reader = BlobReader::new(repo)?;
    feed_extents(repo, manifest, |_, extent, loc| {
        match extent {
            Extent::Hole { len } => out.resize(out.len() + len as usize, 0),
            Extent::Chunk { id, .. } => {
                let data = fetch_chunk(&mut reader, &id, loc).map_err(|e| e.1)?;
                out.extend_from_slice(&data);
            }
        }
        Ok(true)
    })?;
    Ok(out)
}
