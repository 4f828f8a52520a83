//! Reading blobs: [`BlobReader`] finds a blob through the index, reads it from its pack
//! and checks it against its id. The index is a cache of the packs' TOCs (FORMAT.md,
//! section 9): a reader that meets a damaged index recovers it and retries, and one that
//! meets a row that does not match its pack looks the blob up in the TOC before calling
//! it damaged (issue 12).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::time::Duration;

use crate::blob::{BlobDecoder, BlobKind, BlobOrigin};
use crate::error::{Error, Result};
use crate::ids::{BlobId, PackId};
use crate::index::{BlobLocation, Index};
use crate::manifest::Node;
use crate::pack::blob_overhead;
use crate::pack::read_payload;
use crate::repo::{PackHandle, Repository};

/// Reads blobs through the index, keeping pack files open. One per thread.
pub struct BlobReader<R: Borrow<Repository>> {
    repo: R,
    index: Index,
    open_packs: OpenPacks,
    decoder: BlobDecoder,
    codec: crate::blob::BlobCodec,
}

/// Packs a reader keeps open at once.
const OPEN_PACKS_MAX: usize = 64;

/// The packs a reader keeps open (its own field, so that a pack can be borrowed beside
/// the reader's codec): files locally, object handles on an object store.
#[derive(Default)]
struct OpenPacks(HashMap<PackId, PackHandle>);

impl OpenPacks {
    fn get(&mut self, repo: &Repository, pack: PackId) -> Result<&PackHandle> {
        if !self.0.contains_key(&pack) {
            if self.0.len() >= OPEN_PACKS_MAX {
                self.0.clear();
            }
            let handle = repo.pack_reader(&pack)?;
            self.0.insert(pack, handle);
        }
        Ok(&self.0[&pack])
    }
}

impl<R: Borrow<Repository>> BlobReader<R> {
    /// A reader over `repo`: a borrow (`&Repository`) for one command's work, or an
    /// `Arc<Repository>` for readers that outlive the caller's frame (server threads).
    pub fn new(repo: R) -> Result<Self> {
        let index = repo.borrow().index()?;
        let decoder = repo.borrow().blob_decoder()?;
        let codec = repo.borrow().codec().clone();
        Ok(BlobReader {
            repo,
            index,
            open_packs: OpenPacks::default(),
            decoder,
            codec,
        })
    }

    /// Where blob `id` is stored. A damaged index is recovered once and the lookup
    /// retried (issue 12): it is a cache of the packs' TOCs, never the only copy.
    pub fn locate(&mut self, id: &BlobId) -> Result<BlobLocation> {
        match self.index.lookup(id) {
            Ok(found) => found.ok_or(Error::MissingBlob(*id)),
            Err(e) => {
                // Damaged, or moved aside by another reader's recovery since this
                // connection opened it (any error then): recover (or wait for the
                // recovery under way), reconnect, retry once.
                let live = crate::index::file_id(&self.repo.borrow().index_path());
                let moved = self.index.file_id().is_some() && live != self.index.file_id();
                if !(e.is_broken_index() || moved) {
                    return Err(e);
                }
                self.repo.borrow().recover_index(&self.index, &e)?;
                // A connection opened in the instant the file is swapped may still see
                // the old one: reconnect a few times before giving up.
                let mut last = e;
                for _ in 0..3 {
                    self.index = match self.repo.borrow().index() {
                        Ok(i) => i,
                        Err(e) => {
                            last = e;
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    };
                    match self.index.lookup(id) {
                        Ok(found) => return found.ok_or(Error::MissingBlob(*id)),
                        Err(e) => last = e,
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(last)
            }
        }
    }

    /// Tells the kernel a blob will be read soon (POSIX_FADV_WILLNEED), so it is fetched
    /// in the background while other blobs are decoded. Restore calls this a few
    /// megabytes ahead of its workers: cold pack reads are small and latency-bound.
    pub fn prefetch(&mut self, loc: &BlobLocation) -> Result<()> {
        let len = blob_overhead(&self.codec) + loc.entry.stored_len as u64;
        self.prefetch_range(&loc.pack, loc.entry.offset, len)
    }

    /// The size of a blob in its pack: its header and stored bytes.
    pub fn stored_span(&self, loc: &BlobLocation) -> u64 {
        blob_overhead(&self.codec) + loc.entry.stored_len as u64
    }

    /// [`BlobReader::prefetch`] for `len` bytes of `pack` at `offset`: several blobs
    /// with one call.
    pub fn prefetch_range(&mut self, pack: &PackId, offset: u64, len: u64) -> Result<()> {
        use std::os::unix::io::AsRawFd;
        let loc_offset = offset;
        let PackHandle::File(file) = self.open_packs.get(self.repo.borrow(), *pack)? else {
            return Ok(()); // an object store: readers run requests in parallel instead
        };
        // SAFETY: posix_fadvise only reads its integer arguments; it is advice, so its
        // result is ignored.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                loc_offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            );
        }
        Ok(())
    }

    /// Whether the pack's own TOC lists the blob exactly where `loc` (an index row)
    /// says. False also when the pack is gone.
    pub fn toc_agrees(&mut self, loc: &BlobLocation) -> Result<bool> {
        Ok(match self.repo.borrow().read_pack_toc(&loc.pack, None)? {
            None => false,
            Some(toc) => toc.map(|toc| toc.contains(&loc.entry)).unwrap_or(true), // a damaged TOC: the pack is damaged, not the index
        })
    }

    /// Reads blob `loc.entry.id` where the index said; when it does not decode there
    /// and the pack's TOC disagrees with the index row, the index (a cache of the TOCs)
    /// is rebuilt and the blob read where the TOCs say (issue 12: wrong rows passed
    /// verify and broke every restore). Real damage is still an error.
    pub fn read_located(&mut self, loc: &BlobLocation) -> Result<Vec<u8>> {
        match self.read_at(loc) {
            Ok(data) => Ok(data),
            Err(e) if e.is_corruption() && !self.toc_agrees(loc)? => {
                let why = Error::Index {
                    path: self.repo.borrow().index_path(),
                    source: rusqlite::Error::InvalidParameterName(format!(
                        "the row for blob {} disagrees with pack {}'s table of contents ({e})",
                        loc.entry.id.short(),
                        loc.pack.short()
                    )),
                };
                self.repo.borrow().recover_index(&self.index, &why)?;
                self.index = self.repo.borrow().index()?;
                let again = self.locate(&loc.entry.id)?;
                if again == *loc {
                    return Err(e); // the TOCs say the same: nothing better to read
                }
                self.read_at(&again)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads, decompresses and verifies a blob at a known location.
    pub fn read_at(&mut self, loc: &BlobLocation) -> Result<Vec<u8>> {
        let file = self.open_packs.get(self.repo.borrow(), loc.pack)?;
        let payload = read_payload(file, loc.pack, &loc.entry, &self.codec)?;
        self.decode_payload(loc, payload)
    }

    /// [`BlobReader::read_at`] from bytes of the pack already fetched (one ranged GET
    /// for several blobs that lie together: [`crate::PackRange`]).
    pub fn read_from(&mut self, fetched: &crate::PackRange, loc: &BlobLocation) -> Result<Vec<u8>> {
        let payload = read_payload(fetched, loc.pack, &loc.entry, &self.codec)?;
        self.decode_payload(loc, payload)
    }

    fn decode_payload(&mut self, loc: &BlobLocation, payload: Vec<u8>) -> Result<Vec<u8>> {
        let origin = BlobOrigin {
            pack: loc.pack,
            offset: loc.entry.offset,
        };
        self.decoder.decode(
            loc.entry.id,
            loc.entry.kind,
            loc.entry.compression,
            loc.entry.raw_len,
            payload,
            origin,
        )
    }

    /// Reads, decompresses and verifies blob `id`.
    pub fn read(&mut self, id: &BlobId) -> Result<Vec<u8>> {
        let loc = self.locate(id)?;
        self.read_located(&loc)
    }

    /// Reads and decodes a manifest node.
    pub fn read_node(&mut self, id: &BlobId) -> Result<Node> {
        let loc = self.locate(id)?;
        if loc.entry.kind != BlobKind::ManifestNode {
            return Err(Error::CorruptManifest {
                node: *id,
                reason: "blob is not a manifest node".into(),
            });
        }
        let bytes = self.read_located(&loc)?;
        Node::decode(*id, &bytes)
    }
}
