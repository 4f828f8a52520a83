//! `repair snapshots`: rewrite snapshots that reference lost data so everything still
//! readable stays restorable, and the lost ranges are recorded, never hidden.
//!
//! Each disk (and metadata file) of each snapshot is walked. A chunk the index lacks, or
//! (with `read_data`) one whose bytes do not decode to its id, and a manifest node that
//! cannot be read (its whole range), become holes in a new manifest, and the ranges are
//! listed in the disk's `lost` field of a version-2 snapshot (FORMAT.md, section 6).
//! The repaired snapshot keeps the original's time and name, gains the tag `repaired`,
//! and replaces the original: the new file is durable before the old one is removed.

use repo_format::snapshot::SNAPSHOT_VERSION_REPAIRED;
use repo_format::{
    BlobId, BlobReader, Extent, LostRange, ManifestBuilder, ManifestRoot, Node, Repository,
    SnapshotId,
};

use crate::error::Result;
use crate::store::BlobStore;

/// One snapshot that was (or, dry, would be) rewritten.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Repaired {
    pub old: SnapshotId,
    pub new: Option<SnapshotId>,
    pub name: String,
    /// (disk or metadata label, lost range).
    pub lost: Vec<(String, LostRange)>,
}

/// What `repair snapshots` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairReport {
    pub checked: usize,
    pub repaired: Vec<Repaired>,
    /// Snapshot files that cannot be read at all (left in place, named here).
    pub unreadable: Vec<String>,
}

struct Walk<'a, 'r> {
    reader: BlobReader<&'r Repository>,
    store: &'a mut BlobStore<'r>,
    builder: ManifestBuilder,
    lost: Vec<LostRange>,
    offset: u64,
    read_data: bool,
}

impl Walk<'_, '_> {
    fn lose(&mut self, len: u64, reason: String) -> Result<()> {
        match self.lost.last_mut() {
            Some(l) if l.offset + l.len == self.offset && l.reason == reason => l.len += len,
            _ => self.lost.push(LostRange {
                offset: self.offset,
                len,
                reason,
            }),
        }
        self.push(Extent::Hole { len })
    }

    fn push(&mut self, e: Extent) -> Result<()> {
        self.offset += e.len();
        let store = &mut *self.store;
        self.builder.push(e, &mut |n: &Node| store.put_node(n))
    }

    fn chunk_ok(&mut self, id: &BlobId) -> std::result::Result<(), String> {
        if self.read_data {
            self.reader.read(id).map(drop).map_err(|e| e.to_string())
        } else {
            self.reader.locate(id).map(drop).map_err(|e| e.to_string())
        }
    }

    fn node(&mut self, id: &BlobId, len: u64, depth: u8) -> Result<()> {
        let node = match self.reader.read_node(id) {
            Ok(n) if n.len_bytes() == len && depth <= repo_format::manifest::MAX_LEVEL => n,
            Ok(_) => {
                return self.lose(
                    len,
                    format!("manifest node {} does not match its parent", id.short()),
                )
            }
            Err(e) => return self.lose(len, format!("manifest node {}: {e}", id.short())),
        };
        match node {
            Node::Interior { children, .. } => {
                for c in children {
                    self.node(&c.id, c.len, depth + 1)?;
                }
            }
            Node::Leaf(extents) => {
                for e in extents {
                    match e {
                        Extent::Chunk { id, len } => match self.chunk_ok(&id) {
                            Ok(()) => self.push(e)?,
                            Err(reason) => self
                                .lose(u64::from(len), format!("chunk {}: {reason}", id.short()))?,
                        },
                        Extent::Hole { .. } => self.push(e)?,
                    }
                }
            }
        }
        Ok(())
    }
}

/// Rebuilds one manifest without its damage: `None` when nothing was lost.
fn rebuild<'r>(
    repo: &'r Repository,
    store: &mut BlobStore<'r>,
    root: &ManifestRoot,
    read_data: bool,
) -> Result<Option<(ManifestRoot, Vec<LostRange>)>> {
    let mut w = Walk {
        reader: BlobReader::new(repo)?,
        store,
        builder: ManifestBuilder::new(),
        lost: Vec::new(),
        offset: 0,
        read_data,
    };
    w.node(&root.root, root.len_bytes, 0)?;
    if w.lost.is_empty() {
        return Ok(None);
    }
    let lost = std::mem::take(&mut w.lost);
    let store = &mut *w.store;
    let new_root = w.builder.finish(&mut |n: &Node| store.put_node(n))?;
    Ok(Some((new_root, lost)))
}

/// Checks every snapshot and rewrites the damaged ones (unless `dry_run`). The caller
/// holds the exclusive lock: the new manifest nodes must not be pruned half-written.
pub fn repair_snapshots(
    repo: &Repository,
    lock: &repo_format::lock::ExclusiveLock,
    read_data: bool,
    dry_run: bool,
    cancel: &crate::cancel::Cancel,
) -> Result<RepairReport> {
    let mut report = RepairReport::default();
    let mut store = BlobStore::new(repo, lock)?;
    for r in repo.list_snapshots()? {
        cancel.check()?;
        let (id, mut snap) = match r {
            Ok(x) => x,
            Err(e) => {
                report.unreadable.push(e.to_string());
                continue;
            }
        };
        report.checked += 1;
        let mut lost_all = Vec::new();
        for d in &mut snap.disks {
            if let Some((root, lost)) = rebuild(repo, &mut store, &d.manifest, read_data)? {
                lost_all.extend(lost.iter().map(|l| (d.label.clone(), l.clone())));
                d.manifest = root;
                d.lost.extend(lost);
            }
        }
        for m in &mut snap.meta {
            if let Some((root, lost)) = rebuild(repo, &mut store, &m.manifest, read_data)? {
                lost_all.extend(lost.iter().map(|l| (m.name.clone(), l.clone())));
                m.manifest = root;
                m.lost.extend(lost);
            }
        }
        if lost_all.is_empty() {
            continue;
        }
        let new = if dry_run {
            None
        } else {
            snap.snapshot_version = SNAPSHOT_VERSION_REPAIRED;
            if !snap.tags.iter().any(|t| t == "repaired") {
                snap.tags.push("repaired".into());
            }
            // New nodes are durable and indexed before the snapshot that needs them.
            store.finish_pack()?;
            let new = repo.write_snapshot(&snap)?;
            if new != id {
                repo_format::history::History::update(repo, |h| {
                    h.forgotten.insert(id);
                    h.saw(&snap.name, new, snap.time);
                });
                repo.remove_snapshot(&id)?;
            }
            Some(new)
        };
        report.repaired.push(Repaired {
            old: id,
            new,
            name: snap.name.clone(),
            lost: lost_all,
        });
    }
    store.finish_pack()?;
    Ok(report)
}
