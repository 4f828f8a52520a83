//! Copy: snapshots from one repository into another (a local repository for fast
//! restores, a bucket for the offsite copy), sending only the chunks the target lacks
//! and sealing them under the target's keys.
//!
//! Chunk ids are keyed per repository in version 2, so a copied chunk has another id in
//! the target, and every manifest node is rebuilt: the copy walks each source manifest
//! in disk order, reads and checks each chunk (BLAKE3 under the source's key), computes
//! its target id, stores it unless the target has it, and builds the target manifest
//! from the same extents (same cut points, same holes). The snapshot object is written
//! last, after its packs are durable, as a backup writes it (FORMAT.md, section 8).
//!
//! A snapshot is already in the target when one there has the same VM name, host name,
//! time and disk sizes: copying again is a no-op, so a nightly copy of "everything"
//! sends only the new nights.

use std::collections::HashMap;

use repo_format::lock::SharedLock;
use repo_format::{
    BlobId, BlobKind, BlobReader, Extent, ManifestBuilder, ManifestRoot, ManifestWalker,
    Repository, Snapshot, SnapshotDisk, SnapshotId, SnapshotMeta,
};

use crate::error::{Error, Result};
use crate::store::BlobStore;

/// What to copy.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// Only these VMs' snapshots; every VM's when empty.
    pub names: Vec<String>,
    /// Only these snapshots (full ids, resolved by the caller); all when empty.
    pub snapshots: Vec<SnapshotId>,
    pub dry_run: bool,
}

/// One snapshot copied (or found already there).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Copied {
    pub source: SnapshotId,
    /// Its id in the target; None in a dry run.
    pub target: Option<SnapshotId>,
    pub name: String,
    pub time: jiff::Timestamp,
    /// It was already in the target: nothing was sent.
    pub already: bool,
}

/// What a copy did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CopyReport {
    pub snapshots: Vec<Copied>,
    /// Chunks read from the source (each distinct chunk once per run).
    pub chunks_read: u64,
    /// Chunks the target lacked and was sent, and their stored bytes.
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    pub dry_run: bool,
}

/// The snapshot's identity across repositories.
fn same_snapshot(a: &Snapshot, b: &Snapshot) -> bool {
    a.name == b.name
        && a.hostname == b.hostname
        && a.time == b.time
        && a.disks.len() == b.disks.len()
        && a.disks
            .iter()
            .zip(&b.disks)
            .all(|(x, y)| x.label == y.label && x.size_bytes == y.size_bytes)
}

/// Copies the selected snapshots of `from` into `to`, oldest first.
pub fn copy(
    from: &Repository,
    _from_lock: &SharedLock,
    to: &Repository,
    to_lock: &SharedLock,
    opts: &CopyOptions,
    cancel: &crate::cancel::Cancel,
    progress: &dyn crate::progress::Progress,
) -> Result<CopyReport> {
    if from.config().repo_id == to.config().repo_id {
        return Err(Error::Usage(
            "the source and the target are the same repository".into(),
        ));
    }
    let mut report = CopyReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let mut selected = Vec::new();
    for r in from.list_snapshots()? {
        let (id, snap) = r?;
        if !opts.names.is_empty() && !opts.names.contains(&snap.name) {
            continue;
        }
        if !opts.snapshots.is_empty() && !opts.snapshots.contains(&id) {
            continue;
        }
        selected.push((id, snap));
    }
    if let Some(missing) = opts
        .snapshots
        .iter()
        .find(|id| !selected.iter().any(|(s, _)| s == *id))
    {
        return Err(Error::Usage(format!(
            "snapshot {} is not in {}{}",
            missing.short(),
            from.describe(),
            if opts.names.is_empty() {
                String::new()
            } else {
                format!(" under the name(s) {}", opts.names.join(", "))
            }
        )));
    }
    // The target's snapshots, listed once; each one copied is added.
    let mut existing: Vec<(SnapshotId, Snapshot)> =
        to.list_snapshots()?.into_iter().flatten().collect();
    let mut copier = Copier {
        from,
        to,
        reader: BlobReader::new(from)?,
        encoder: to.blob_encoder()?,
        store: BlobStore::new(to, to_lock)?,
        seen: HashMap::new(),
        dry_run: opts.dry_run,
        report: &mut report,
    };
    let mut done = Vec::new();
    for (id, snap) in selected {
        cancel.check()?;
        if existing.iter().any(|(_, e)| same_snapshot(e, &snap)) {
            done.push(Copied {
                source: id,
                target: None,
                name: snap.name.clone(),
                time: snap.time,
                already: true,
            });
            continue;
        }
        let copied = copier.snapshot(&snap, cancel, progress)?;
        let target = if opts.dry_run {
            None
        } else {
            copier.store.finish_pack()?;
            let previous = existing
                .iter()
                .filter(|(_, s)| s.name == copied.name && s.time < copied.time)
                .max_by_key(|(id, s)| (s.time, *id))
                .map(|(id, _)| *id);
            let copied = Snapshot { previous, ..copied };
            // As a backup does: commit only while our lock is ours and fresh (15.4).
            to_lock.still_fresh()?;
            let id = to.write_snapshot(&copied)?;
            existing.push((id, copied));
            Some(id)
        };
        done.push(Copied {
            source: id,
            target,
            name: snap.name.clone(),
            time: snap.time,
            already: false,
        });
    }
    drop(copier);
    report.snapshots = done;
    Ok(report)
}

/// Chunks whose target id a copy remembers (about 80 bytes each: 40 MiB). A chunk not
/// remembered is read and hashed again; the target's index still keeps it from being
/// sent twice.
const SEEN_MAX: usize = 1 << 19;

/// The state of one copy run.
struct Copier<'a> {
    from: &'a Repository,
    to: &'a Repository,
    /// Reads chunks (the manifest walker has a reader of its own for nodes).
    reader: BlobReader<&'a Repository>,
    encoder: repo_format::BlobEncoder,
    store: BlobStore<'a>,
    /// Source chunk id -> target chunk id, for chunks met before in this run (at most
    /// [`SEEN_MAX`]: a cache, emptied when full, so that copying a repository of any
    /// size holds a bounded map).
    seen: HashMap<BlobId, BlobId>,
    dry_run: bool,
    report: &'a mut CopyReport,
}

impl Copier<'_> {
    fn snapshot(
        &mut self,
        snap: &Snapshot,
        cancel: &crate::cancel::Cancel,
        progress: &dyn crate::progress::Progress,
    ) -> Result<Snapshot> {
        let mut disks = Vec::new();
        for d in &snap.disks {
            progress.start(&format!("{}/{}", snap.name, d.label), Some(d.size_bytes));
            let manifest = self.manifest(d.manifest, cancel, progress)?;
            progress.finish();
            disks.push(SnapshotDisk {
                manifest,
                ..d.clone()
            });
        }
        let mut meta = Vec::new();
        for m in &snap.meta {
            let manifest = self.manifest(m.manifest, cancel, &crate::progress::NoProgress)?;
            meta.push(SnapshotMeta {
                manifest,
                ..m.clone()
            });
        }
        Ok(Snapshot {
            disks,
            meta,
            ..snap.clone()
        })
    }

    /// The target manifest of the source manifest `root`: same extents, target ids.
    fn manifest(
        &mut self,
        root: ManifestRoot,
        cancel: &crate::cancel::Cancel,
        progress: &dyn crate::progress::Progress,
    ) -> Result<ManifestRoot> {
        let mut nodes = BlobReader::new(self.from)?;
        let mut walker = ManifestWalker::new(root, |id: &BlobId| nodes.read_node(id));
        let mut builder = ManifestBuilder::new();
        let (to, dry) = (self.to, self.dry_run);
        while let Some((_, extent)) = walker.next_extent()? {
            cancel.check()?;
            progress.advance(extent.len());
            let extent = match extent {
                Extent::Hole { .. } => extent,
                Extent::Chunk { id, len } => Extent::Chunk {
                    id: self.chunk(&id)?,
                    len,
                },
            };
            let store = &mut self.store;
            builder.push(extent, &mut |n| node_sink(to, store, dry, n))?;
        }
        let store = &mut self.store;
        builder.finish(&mut |n| node_sink(to, store, dry, n))
    }

    /// The target id of source chunk `id`, sending the chunk if the target lacks it.
    fn chunk(&mut self, id: &BlobId) -> Result<BlobId> {
        if let Some(t) = self.seen.get(id) {
            return Ok(*t);
        }
        // Checked against its id under the source's key as it is read.
        let loc = self.reader.locate(id)?;
        let data = self.reader.read_located(&loc)?;
        self.report.chunks_read += 1;
        let target = self.encoder.id_of(&data);
        if !self.store.has(&target)? {
            let blob = self.encoder.encode_with_id(target, BlobKind::Data, &data)?;
            if self.dry_run {
                self.report.chunks_sent += 1;
                self.report.bytes_sent += blob.payload.len() as u64;
            } else if let Some(stored) = self.store.put(&blob)? {
                self.report.chunks_sent += 1;
                self.report.bytes_sent += stored;
            }
        }
        if self.seen.len() >= SEEN_MAX {
            self.seen.clear();
        }
        self.seen.insert(*id, target);
        Ok(target)
    }
}

/// Stores a rebuilt manifest node in the target (only its id, in a dry run).
fn node_sink(
    to: &Repository,
    store: &mut BlobStore<'_>,
    dry: bool,
    node: &repo_format::Node,
) -> Result<BlobId> {
    if dry {
        return Ok(to.blob_id(&node.encode()));
    }
    store.put_node(node)
}
