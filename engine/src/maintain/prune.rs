//! Prune: reclaim the space of chunks no snapshot references (FORMAT.md, "Prune").
//!
//! Runs under an exclusive lock, so no backup adds references while it works. It marks
//! every blob reachable from every snapshot (manifest nodes and chunks), then per pack
//! (as the index places blobs): a pack with no live blob is deleted; a pack whose dead
//! share exceeds the threshold has its live blobs copied, still compressed and after a
//! BLAKE3 check, into new packs, and is deleted once those are durable and indexed.
//!
//! Crash safety: nothing is deleted before every live blob it holds has a durable,
//! indexed copy elsewhere. A kill at any point leaves either the old pack, the new one,
//! or both; opening the repository reconciles the index with the packs on disk, and the
//! next prune deletes whatever copy is no longer indexed.

use std::collections::{HashMap, HashSet};

use repo_format::{BlobId, BlobReader, EncodedBlob, Node, PackId, Repository};

use crate::error::{Error, Result};

/// How aggressively to reclaim.
#[derive(Clone, Copy, Debug)]
pub struct PruneOptions {
    /// Repack a pack when more than this share of its bytes is unreferenced (0..=100).
    pub max_unused_pct: f64,
    pub dry_run: bool,
}

/// What a prune did (or, dry, would do).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub snapshots: usize,
    pub live_blobs: u64,
    pub packs_before: u64,
    pub bytes_before: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    pub bytes_deleted: u64,
    pub bytes_written: u64,
    /// Referenced blobs the index does not have (damage for verify/repair to explain).
    pub missing_blobs: u64,
    pub dry_run: bool,
}

impl PruneReport {
    pub fn bytes_reclaimed(&self) -> i64 {
        self.bytes_deleted as i64 - self.bytes_written as i64
    }
}

/// Every blob reachable from every snapshot. Refuses when a snapshot file is unreadable:
/// its chunks would look unreferenced.
fn mark(repo: &Repository, cancel: &crate::cancel::Cancel) -> Result<(HashSet<BlobId>, usize)> {
    let mut reader = BlobReader::new(repo)?;
    let mut live = HashSet::new();
    let mut count = 0;
    for r in repo.list_snapshots()? {
        let (_, snap) = r.map_err(|e| {
            Error::Usage(format!(
                "{e}; refusing to prune until it is repaired or removed"
            ))
        })?;
        count += 1;
        let roots = snap
            .disks
            .iter()
            .map(|d| d.manifest)
            .chain(snap.meta.iter().map(|m| m.manifest));
        for root in roots {
            let mut stack = vec![root.root];
            while let Some(id) = stack.pop() {
                cancel.check()?;
                if !live.insert(id) {
                    continue; // a shared subtree, already walked
                }
                match reader.read_node(&id)? {
                    Node::Interior { children, .. } => stack.extend(children.iter().map(|c| c.id)),
                    Node::Leaf(extents) => {
                        for e in extents {
                            if let repo_format::Extent::Chunk { id, .. } = e {
                                live.insert(id);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((live, count))
}

/// Runs a prune under `lock`, the exclusive lock the caller took. Before each pack is
/// deleted the lock is checked to be still this process's: if someone removed it, a
/// backup may since have started and deduplicated against the pack (issue 11).
pub fn prune(
    repo: &Repository,
    lock: &repo_format::lock::ExclusiveLock,
    opts: &PruneOptions,
    cancel: &crate::cancel::Cancel,
) -> Result<PruneReport> {
    let (live, snapshots) = mark(repo, cancel)?;
    let mut index = repo.index()?;
    let by_pack = index.blobs_by_pack()?;
    let lengths = index.pack_lengths()?;
    let mut report = PruneReport {
        snapshots,
        live_blobs: live.len() as u64,
        packs_before: lengths.len() as u64,
        bytes_before: lengths.values().sum(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let indexed: HashSet<BlobId> = by_pack.values().flatten().map(|(id, _)| *id).collect();
    report.missing_blobs = live.iter().filter(|id| !indexed.contains(id)).count() as u64;

    let mut delete: Vec<PackId> = Vec::new();
    let mut repack: Vec<(PackId, Vec<BlobId>)> = Vec::new();
    for (pack, len) in &lengths {
        let blobs = by_pack.get(pack).map(Vec::as_slice).unwrap_or(&[]);
        let alive: Vec<BlobId> = blobs
            .iter()
            .filter(|(id, _)| live.contains(id))
            .map(|(id, _)| *id)
            .collect();
        // Unused: the dead blobs with their headers (the pack's own header and TOC are
        // overhead every pack has, not waste).
        let dead_bytes: u64 = blobs
            .iter()
            .filter(|(id, _)| !live.contains(id))
            .map(|(_, n)| n + repo_format::pack::blob_overhead(repo.codec()))
            .sum();
        if alive.is_empty() {
            delete.push(*pack);
        } else {
            let unused = 100.0 * dead_bytes as f64 / (*len).max(1) as f64;
            if unused > opts.max_unused_pct {
                repack.push((*pack, alive));
            }
        }
    }
    report.packs_deleted = delete.len() as u64 + repack.len() as u64;
    report.packs_repacked = repack.len() as u64;
    report.bytes_deleted = delete
        .iter()
        .chain(repack.iter().map(|(p, _)| p))
        .map(|p| lengths[p])
        .sum();
    if opts.dry_run {
        report.bytes_written = repack
            .iter()
            .flat_map(|(p, ids)| {
                let sizes: HashMap<&BlobId, u64> =
                    by_pack[p].iter().map(|(id, n)| (id, *n)).collect();
                ids.iter()
                    .map(move |id| sizes[id] + repo_format::pack::blob_overhead(repo.codec()))
                    .collect::<Vec<_>>()
            })
            .sum();
        return Ok(report);
    }

    // 1. Delete packs with no live blob: their rows first (readers stop using them),
    //    then the files. Done before repacking: a repack can write a pack identical to
    //    one a killed prune left behind unindexed (same blobs, same order, same name),
    //    which must not then be deleted as dead.
    for pack in &delete {
        cancel.check()?;
        remove_pack(repo, lock, &mut index, pack)?;
    }
    // 2. Copy live blobs out of the packs to repack; new packs are durable and indexed
    //    (pointing those blobs at them) before the old ones are deleted.
    let mut store = crate::store::BlobStore::for_repack(repo, lock)?;
    let mut reader = BlobReader::new(repo)?;
    let mut repacked = Vec::new();
    for (pack, ids) in &repack {
        cancel.check()?;
        let file = repo.pack_reader(pack)?;
        let mut ok = true;
        let mut blobs = Vec::new();
        for id in ids {
            let loc = reader.locate(id)?;
            let payload = repo_format::pack::read_payload(&file, *pack, &loc.entry, repo.codec())?;
            // Never copy damage into a new pack: check the blob decodes to its id.
            if let Err(e) = reader.read_at(&loc) {
                log::warn!("not repacking pack {}: {e}", pack.short());
                ok = false;
                break;
            }
            blobs.push(EncodedBlob {
                id: *id,
                kind: loc.entry.kind,
                compression: loc.entry.compression,
                raw_len: loc.entry.raw_len,
                payload,
            });
        }
        if !ok {
            report.packs_deleted -= 1;
            report.packs_repacked -= 1;
            continue;
        }
        for b in blobs {
            store.put(&b)?;
        }
        repacked.push(*pack);
    }
    store.finish_pack()?;
    let written: HashSet<PackId> = store.written().iter().map(|(id, _)| *id).collect();
    report.packs_written = store.written().len() as u64;
    report.bytes_written = store.written().iter().map(|(_, n)| n).sum();
    drop(store);
    // 3. Delete the repacked packs, now that their live blobs are elsewhere.
    for pack in repacked.iter().filter(|p| !written.contains(p)) {
        cancel.check()?;
        remove_pack(repo, lock, &mut index, pack)?;
    }
    report.bytes_deleted = delete
        .iter()
        .chain(repacked.iter())
        .map(|p| lengths[p])
        .sum();
    Ok(report)
}

/// Forgets a pack in the index, then deletes its file and makes that durable.
fn remove_pack(
    repo: &Repository,
    lock: &repo_format::lock::ExclusiveLock,
    index: &mut repo_format::Index,
    pack: &PackId,
) -> Result<()> {
    lock.still_held()?;
    index.remove_pack(pack)?;
    repo.backend()
        .delete(repo_format::backend::ObjectKind::Pack, &pack.to_hex())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{backup, BackupOptions, DiskInput};
    use crate::source::StreamSource;

    /// Issue 11: a prune whose lock someone removed (a forced unlock from another host,
    /// or by hand) must not delete a pack a backup started meanwhile may rely on.
    #[test]
    fn a_prune_that_lost_its_lock_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            repo_format::RepoConfig::new(Default::default(), Default::default(), 1 << 20).unwrap();
        let repo = Repository::init(&dir.path().join("repo"), config).unwrap();
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let opts = BackupOptions {
            name: "vm".into(),
            tags: vec![],
            workers: 1,
            cancel: Default::default(),
            allow_empty: false,
        };
        let source = Box::new(StreamSource::new(std::io::Cursor::new(data), "test".into()));
        let shared = repo.lock_shared("backup").unwrap();
        let done = backup(
            &repo,
            &shared,
            vec![DiskInput {
                label: "vda".into(),
                source,
            }],
            vec![],
            &opts,
            &crate::progress::NoProgress,
        )
        .unwrap();
        drop(shared);
        repo.remove_snapshot(&done.id).unwrap();
        let packs = repo.list_packs().unwrap().len();
        assert!(packs >= 1, "{packs} packs");

        let lock = repo.lock_exclusive("prune").unwrap();
        for lock in repo_format::lock::list(repo.backend()).unwrap() {
            std::fs::remove_file(lock.path).unwrap();
        }
        let opts = PruneOptions {
            max_unused_pct: 10.0,
            dry_run: false,
        };
        let err = prune(&repo, &lock, &opts, &Default::default()).unwrap_err();
        assert!(err.to_string().contains("was removed or changed"), "{err}");
        assert_eq!(repo.list_packs().unwrap().len(), packs, "no pack deleted");
        // With its lock in place, the same prune reclaims them.
        drop(lock);
        let lock = repo.lock_exclusive("prune").unwrap();
        prune(&repo, &lock, &opts, &Default::default()).unwrap();
        assert_eq!(repo.list_packs().unwrap().len(), 0);
    }
}
