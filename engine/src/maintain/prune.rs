//! Prune: reclaim the space of chunks no snapshot references, beside running backups
//! (FORMAT.md, sections 9 and 15).
//!
//! One run: (1) completes condemnation records an earlier prune left pending; (2) marks
//! every blob reachable from every snapshot; (3) condemns what is unreferenced: packs
//! with no live blob that is not also stored elsewhere, and packs whose dead share
//! exceeds the threshold once their live blobs were copied (still compressed, after a
//! BLAKE3 check) into new, durable, indexed packs; the condemned packs are written in a
//! record, and after it the locks then present; (4) sweeps every record whose locks are
//! all gone: each of its packs is deleted unless a snapshot listed now needs a blob
//! that is stored nowhere else (then it stays), or it was written again after the
//! record.
//!
//! Backups, restores and mounts run on meanwhile: a writer that started before a
//! record holds a lock the record names, so nothing it may rely on is swept before it
//! ends; one that started after it sees the record and stores such blobs again.
//!
//! Crash safety: nothing is deleted before every live blob it holds has a durable copy
//! elsewhere, and every step can be repeated: a kill at any point leaves an extra
//! copy, a pending record, or a record half swept, each finished by the next prune.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use repo_format::backend::ObjectKind;
use repo_format::condemn::{self, Condemnation, ListedCondemnation};
use repo_format::lock::PruneLock;
use repo_format::{BlobId, BlobReader, EncodedBlob, Node, PackId, Repository, SnapshotId};

use super::id_set::{IdSet, IdSetBuilder};
use crate::error::{Error, Result};

/// How aggressively to reclaim, and how the store lists.
#[derive(Clone, Copy, Debug)]
pub struct PruneOptions {
    /// Repack a pack when more than this share of its bytes is unreferenced (0..=100).
    pub max_unused_pct: f64,
    pub dry_run: bool,
    /// How long an object written may stay missing from listings of the store (zero
    /// for a local directory and for stores that list what was written, as AWS S3,
    /// Garage, MinIO and Ceph do). Prune waits this long where section 15 says.
    pub listing_lag: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused_pct: 10.0,
            dry_run: false,
            listing_lag: Duration::ZERO,
        }
    }
}

/// What a prune did (or, dry, would do).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub snapshots: usize,
    pub live_blobs: u64,
    pub packs_before: u64,
    pub bytes_before: u64,
    /// Packs this run condemned (deleted now, or by a later prune once the commands
    /// running meanwhile have ended).
    pub packs_condemned: u64,
    /// Packs deleted by this run's sweep (of this run's record and earlier ones).
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    pub bytes_deleted: u64,
    pub bytes_written: u64,
    /// Condemned packs the sweep kept: a snapshot written meanwhile needs them.
    pub packs_kept: u64,
    /// Records still waiting for commands that were running when they were written.
    pub records_waiting: u64,
    /// Referenced blobs the index does not have (damage for verify/repair to explain).
    pub missing_blobs: u64,
    pub dry_run: bool,
}

impl PruneReport {
    pub fn bytes_reclaimed(&self) -> i64 {
        self.bytes_deleted as i64 - self.bytes_written as i64
    }
}

/// The blobs reachable from the snapshots walked so far; walks only snapshots it has
/// not seen, so the sweep's second look costs what was added meanwhile.
///
/// Memory is bounded whatever the repository's size (issue 19): the referenced ids go
/// to on-disk sorted sets ([`IdSet`], one per walk), and only the ids of manifest
/// nodes already walked stay in memory (a node lists about 1,000 extents: some 50 KiB
/// per TiB of unique data), so that a subtree shared by many snapshots is walked once.
struct Marker {
    live: Vec<IdSet>,
    nodes: HashSet<BlobId>,
    walked: HashSet<SnapshotId>,
    scratch: std::path::PathBuf,
    /// Distinct live ids over every walk.
    count: u64,
}

impl Marker {
    fn new(repo: &Repository) -> Self {
        Marker {
            live: Vec::new(),
            nodes: HashSet::new(),
            walked: HashSet::new(),
            scratch: repo.tmp_dir(),
            count: 0,
        }
    }

    fn contains(&self, id: &BlobId) -> Result<bool> {
        for set in &self.live {
            if set.contains(id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Walks every listed snapshot not walked yet. Refuses when a snapshot file is
    /// unreadable: its chunks would look unreferenced.
    fn mark(&mut self, repo: &Repository, cancel: &crate::cancel::Cancel) -> Result<()> {
        let snapshots = repo.list_snapshots()?;
        // Snapshots first, then packs: a writer's packs are stored before its snapshot,
        // so every node of a snapshot listed above is in a pack indexed here, even one
        // another host wrote after this prune took its lock.
        repo.reconcile(&mut repo.index()?)?;
        let mut reader = BlobReader::new(repo)?;
        let mut found = IdSetBuilder::with_run_ids(&self.scratch, MARK_RUN_IDS);
        for r in snapshots {
            let (id, snap) = r.map_err(|e| {
                Error::Usage(format!(
                    "{e}; refusing to prune until it is repaired or removed"
                ))
            })?;
            if !self.walked.insert(id) {
                continue;
            }
            let roots = snap
                .disks
                .iter()
                .map(|d| d.manifest)
                .chain(snap.meta.iter().map(|m| m.manifest));
            for root in roots {
                let mut stack = vec![root.root];
                while let Some(id) = stack.pop() {
                    cancel.check()?;
                    if !self.nodes.insert(id) {
                        continue; // a shared subtree, already walked
                    }
                    found.insert(id)?;
                    match reader.read_node(&id)? {
                        Node::Interior { children, .. } => {
                            stack.extend(children.iter().map(|c| c.id))
                        }
                        Node::Leaf(extents) => {
                            for e in extents {
                                if let repo_format::Extent::Chunk { id, .. } = e {
                                    found.insert(id)?;
                                }
                            }
                        }
                    }
                }
            }
        }
        let found = found.finish()?;
        // Count what earlier walks did not find (a later walk is the few snapshots
        // written meanwhile).
        if self.live.is_empty() {
            self.count = found.len();
        } else {
            for id in found.iter() {
                if !self.contains(&id?)? {
                    self.count += 1;
                }
            }
        }
        self.live.push(found);
        Ok(())
    }
}

/// Ids a mark holds in memory before it writes a run: unit tests write runs from the
/// first few ids, so that their prunes go through the on-disk merge.
#[cfg(not(test))]
const MARK_RUN_IDS: usize = super::id_set::RUN_IDS;
#[cfg(test)]
const MARK_RUN_IDS: usize = 16;

/// What the mark found per pack.
#[derive(Default)]
struct Tally {
    /// Live blobs whose one home this pack is.
    homed: u64,
    /// Their stored bytes with headers.
    homed_bytes: u64,
    /// Bytes of every other blob, with headers.
    dead_bytes: u64,
}

/// Whether condemned `pack` holds a live blob that no other pack holds, of those
/// still listed on the store and condemned by no record. A pack never indexed
/// (damaged, unreadable) is needed: what it holds is unknown.
fn needed(
    index: &repo_format::Index,
    marker: &Marker,
    pack: &PackId,
    condemned: &HashSet<PackId>,
    on_store: &HashMap<PackId, (u64, Option<SystemTime>)>,
) -> Result<bool> {
    let rows = index.rows_of_pack(pack)?;
    if rows.is_empty() {
        return Ok(true);
    }
    for row in rows {
        if !marker.contains(&row.id)? {
            continue;
        }
        let elsewhere = index
            .packs_holding(&row.id)?
            .iter()
            .any(|p| !condemned.contains(p) && on_store.contains_key(p));
        if !elsewhere {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The state of [`tally_packs`]'s merge.
struct Merge<'a> {
    tally: HashMap<PackId, Tally>,
    missing: u64,
    already: &'a HashSet<PackId>,
    overhead: u64,
    /// The locations of the blob being read: (pack, stored bytes).
    group: Vec<(PackId, u64)>,
}

impl Merge<'_> {
    /// Tallies blob `id`, whose locations are in `group`; the live ids before it are in
    /// no pack.
    fn close(
        &mut self,
        id: BlobId,
        live_ids: &mut std::iter::Peekable<super::id_set::IdIter<'_>>,
    ) -> Result<()> {
        let mut is_live = false;
        while let Some(next) = live_ids.next_if(|n| n.as_ref().map_or(true, |n| *n <= id)) {
            if next? == id {
                is_live = true;
            } else {
                self.missing += 1;
            }
        }
        let home = if is_live {
            self.group
                .iter()
                .map(|(p, _)| *p)
                .filter(|p| !self.already.contains(p))
                .min()
        } else {
            None
        };
        for (pack, len) in self.group.drain(..) {
            let t = self.tally.entry(pack).or_default();
            if Some(pack) == home {
                t.homed += 1;
                t.homed_bytes += len + self.overhead;
            } else {
                t.dead_bytes += len + self.overhead;
            }
        }
        Ok(())
    }
}

/// One pass over the index in blob id order, merged with the (sorted) live set: each
/// live blob keeps one home, of the packs holding it that no record condemns the one
/// with the smallest id; every other copy, and every blob not live, is dead weight.
/// Returns the tally of each pack and how many live blobs the index lacks.
fn tally_packs(
    index: &repo_format::Index,
    live: &IdSet,
    already: &HashSet<PackId>,
    overhead: u64,
    cancel: &crate::cancel::Cancel,
) -> Result<(HashMap<PackId, Tally>, u64)> {
    let mut m = Merge {
        tally: HashMap::new(),
        missing: 0,
        already,
        overhead,
        group: Vec::new(),
    };
    let mut live_ids = live.iter().peekable();
    let mut current: Option<BlobId> = None;
    let mut rows = 0u64;
    index.scan_locations(|id, pack, len| -> Result<()> {
        rows += 1;
        if rows.is_multiple_of(65_536) {
            cancel.check()?;
        }
        if current != Some(id) {
            if let Some(prev) = current {
                m.close(prev, &mut live_ids)?;
            }
            current = Some(id);
        }
        m.group.push((pack, len));
        Ok(())
    })?;
    if let Some(prev) = current {
        m.close(prev, &mut live_ids)?;
    }
    for rest in live_ids {
        rest?;
        m.missing += 1;
    }
    Ok((m.tally, m.missing))
}

/// Every pack listed, with its length and when it was last written.
fn listed_packs(repo: &Repository) -> Result<HashMap<PackId, (u64, Option<SystemTime>)>> {
    let mut out = HashMap::new();
    for meta in repo.backend().list(ObjectKind::Pack)? {
        if let Ok(id) = meta.name.parse::<PackId>() {
            out.insert(id, (meta.len, meta.modified));
        }
    }
    Ok(out)
}

/// The names of the lock objects present now, other than ours.
fn other_locks(repo: &Repository, ours: Option<&str>) -> Result<Vec<String>> {
    Ok(repo_format::lock::list(repo.backend())?
        .into_iter()
        .filter(|l| Some(l.name.as_str()) != ours)
        .map(|l| l.name)
        .collect())
}

/// Completes a pending record: the locks present now (at least twice the listing lag
/// after it was written) are the ones its sweep waits for; `since` is when the store
/// says the pending record was written.
fn complete(
    repo: &Repository,
    lock: &PruneLock,
    name: &str,
    mut rec: Condemnation,
    since: Option<SystemTime>,
) -> Result<Condemnation> {
    rec.waits_for = Some(other_locks(repo, lock.name())?);
    rec.pending_since =
        since.map(|t| jiff::Timestamp::try_from(t).unwrap_or_else(|_| jiff::Timestamp::now()));
    lock.still_held()?;
    condemn::write(repo.backend(), name, &rec)?;
    Ok(rec)
}

/// Runs a prune under `lock`. Before each pack is deleted the lock is checked to be
/// still this process's: if someone removed it, another prune may be running.
pub fn prune(
    repo: &Repository,
    lock: &PruneLock,
    opts: &PruneOptions,
    cancel: &crate::cancel::Cancel,
    progress: &dyn crate::progress::Progress,
) -> Result<PruneReport> {
    let started = jiff::Timestamp::now();
    let lag = opts.listing_lag;
    // 1. Records a killed prune left pending.
    let mut records = condemn::list(repo.backend())?;
    if !opts.dry_run
        && records
            .iter()
            .any(|r| matches!(&r.record, Ok(c) if c.waits_for.is_none()))
    {
        sleep(2 * lag, cancel)?;
        for r in records.iter_mut() {
            if let Ok(c) = &r.record {
                if c.waits_for.is_none() {
                    r.record = Ok(complete(repo, lock, &r.name, c.clone(), r.modified)?);
                }
            }
        }
    }
    // 2. Mark.
    progress.phase("mark");
    progress.start("", None);
    let mut marker = Marker::new(repo);
    marker.mark(repo, cancel)?;
    progress.finish();
    // The mark reconciled the index with `condemned/`, so it marks these packs too.
    let mut index = repo.index()?;
    let already = condemn::condemned_packs(&records);
    let lengths = index.pack_lengths()?;
    let overhead = repo_format::pack::blob_overhead(repo.codec());
    let (tally, missing) = tally_packs(&index, &marker.live[0], &already, overhead, cancel)?;
    let mut report = PruneReport {
        snapshots: marker.walked.len(),
        live_blobs: marker.count,
        packs_before: lengths.len() as u64,
        bytes_before: lengths.values().sum(),
        missing_blobs: missing,
        dry_run: opts.dry_run,
        ..Default::default()
    };

    // 3. Condemn: packs that are no live blob's home, and repack those whose unused
    //    share (the blobs not homed here, with their headers; the pack's own header and
    //    TOC are overhead every pack has, not waste) exceeds the threshold.
    let mut condemned: Vec<PackId> = Vec::new();
    let mut repack: Vec<PackId> = Vec::new();
    let none = Tally::default();
    for (pack, len) in lengths.iter().filter(|(p, _)| !already.contains(p)) {
        let t = tally.get(pack).unwrap_or(&none);
        if t.homed == 0 {
            condemned.push(*pack);
        } else if 100.0 * t.dead_bytes as f64 / (*len).max(1) as f64 > opts.max_unused_pct {
            repack.push(*pack);
        }
    }
    repack.sort();
    report.packs_repacked = repack.len() as u64;
    if opts.dry_run {
        report.packs_condemned = (condemned.len() + repack.len()) as u64;
        report.packs_deleted = report.packs_condemned;
        report.bytes_deleted = condemned.iter().chain(&repack).map(|p| lengths[p]).sum();
        report.bytes_written = repack.iter().map(|p| tally[p].homed_bytes).sum();
        report.records_waiting = records.len() as u64;
        return Ok(report);
    }
    drop(tally);
    // Live blobs are copied out before their pack is condemned: new packs are durable
    // and indexed first.
    let mut store = crate::store::BlobStore::for_repack(repo, lock)?;
    let mut reader = BlobReader::new(repo)?;
    // Packs this run leaves no blob in: a blob homed in a repacked pack is copied only
    // when no copy survives outside them. Copying one that has a surviving copy made
    // the new pack dead weight for the next prune (hosts that back up at once store
    // the same blob twice), so prunes never settled.
    let doomed: HashSet<PackId> = already
        .iter()
        .chain(&condemned)
        .chain(&repack)
        .copied()
        .collect();
    progress.phase("repack");
    progress.start("", Some(repack.iter().map(|p| lengths[p]).sum()));
    for pack in &repack {
        cancel.check()?;
        progress.advance(lengths[pack]);
        let file = repo.pack_reader(pack)?;
        // The live blobs homed here (as the tally found), in the pack's order.
        let mut rows = index.rows_of_pack(pack)?;
        rows.sort_by_key(|e| e.offset);
        let mut blobs = Vec::new();
        let mut ok = true;
        for entry in rows {
            if !marker.contains(&entry.id)? {
                continue;
            }
            // One lookup answers both: is this pack the blob's home (of the packs no
            // record condemns, the smallest id), and does a copy survive elsewhere.
            let holders = index.packs_holding(&entry.id)?;
            let home = holders.iter().filter(|p| !already.contains(p)).min();
            if home != Some(pack) || holders.iter().any(|p| !doomed.contains(p)) {
                continue;
            }
            let loc = repo_format::BlobLocation { pack: *pack, entry };
            // Never copy damage into a new pack: the blob's header must name it and
            // the blob decode to its id. A damaged pack is left as it is (for verify
            // and repair to explain), not allowed to stop every prune.
            let payload =
                match repo_format::pack::read_payload(&file, *pack, &loc.entry, repo.codec()) {
                    Ok(p) => p,
                    Err(e) if e.is_corruption() => {
                        log::warn!("not repacking pack {}: {e}", pack.short());
                        ok = false;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
            if let Err(e) = reader.read_at(&loc) {
                log::warn!("not repacking pack {}: {e}", pack.short());
                ok = false;
                break;
            }
            blobs.push(EncodedBlob {
                id: entry.id,
                kind: loc.entry.kind,
                compression: loc.entry.compression,
                raw_len: loc.entry.raw_len,
                payload,
            });
        }
        if !ok {
            report.packs_repacked -= 1;
            continue;
        }
        for b in blobs {
            store.put(&b)?;
        }
        condemned.push(*pack);
    }
    store.finish_pack()?;
    progress.finish();
    let written: HashSet<PackId> = store.written().iter().map(|(id, _)| *id).collect();
    report.packs_written = store.written().len() as u64;
    report.bytes_written = store.written().iter().map(|(_, n)| n).sum();
    drop(store);
    // A repack can write a pack identical to one a killed prune left (same blobs, same
    // order, same name): that one is live again.
    condemned.retain(|p| !written.contains(p));
    report.packs_condemned = condemned.len() as u64;
    // Condemning waits out the listing lag and deletes what no command still needs.
    progress.phase("delete");
    progress.start("", None);
    if !condemned.is_empty() {
        let name = condemn::new_name()?;
        let pending = Condemnation::new(&condemned);
        lock.still_held()?;
        condemn::write(repo.backend(), &name, &pending)?;
        // Twice the lag: a writer whose lock this listing misses wrote it after the
        // record was visible to it (FORMAT.md, 15.5).
        sleep(2 * lag, cancel)?;
        let since = condemn::list(repo.backend())?
            .into_iter()
            .find(|r| r.name == name)
            .and_then(|r| r.modified);
        let rec = complete(repo, lock, &name, pending, since)?;
        records.push(ListedCondemnation {
            name,
            modified: since,
            record: Ok(rec),
        });
    }

    // 4. Sweep the records whose waiters are all gone.
    let live_locks: HashSet<String> = repo_format::lock::list(repo.backend())?
        .into_iter()
        .filter(|l| l.stale_reason().is_none())
        .map(|l| l.name)
        .collect();
    let all_condemned = condemn::condemned_packs(&records);
    let (sweepable, waiting): (Vec<_>, Vec<_>) = records
        .iter()
        .filter_map(|r| r.record.as_ref().ok().map(|c| (r, c)))
        .partition(|(_, c)| {
            c.waits_for
                .iter()
                .flatten()
                .all(|n| !live_locks.contains(n))
        });
    report.records_waiting = waiting.len() as u64;
    if sweepable.is_empty() {
        // Backups that start from now on must see the new record's packs as condemned
        // (stored again, never relied on); without this a record that waits left the
        // index's flags as they were, so they deduplicated against it and the packs
        // were kept at the sweep (found by the prune-beside-backups test under load).
        index.set_condemned(&all_condemned)?;
        progress.finish();
        super::last_runs::record_prune(repo, &report, started);
        return Ok(report);
    }
    // Snapshots the waiters wrote before they ended are listed by now.
    progress.finish();
    progress.phase("sweep");
    progress.start("", None);
    sleep(lag, cancel)?;
    marker.mark(repo, cancel)?;
    report.snapshots = marker.walked.len();
    report.live_blobs = marker.count;
    let on_store = listed_packs(repo)?;
    let mut deleted = HashSet::new();
    let mut swept = HashSet::new();
    for (listed, rec) in sweepable {
        let since = rec.pending_since.map(SystemTime::from).or(listed.modified);
        for pack in rec.pack_ids() {
            cancel.check()?;
            let Some((len, modified)) = on_store.get(&pack) else {
                continue; // deleted already (a sweep killed midway)
            };
            if deleted.contains(&pack) {
                continue;
            }
            let rewritten = matches!((modified, since), (Some(m), Some(s)) if *m >= s);
            if rewritten || needed(&index, &marker, &pack, &all_condemned, &on_store)? {
                report.packs_kept += 1;
                continue;
            }
            remove_pack(repo, lock, &mut index, &pack)?;
            deleted.insert(pack);
            report.packs_deleted += 1;
            report.bytes_deleted += len;
        }
        lock.still_held()?;
        repo.backend().delete(ObjectKind::Condemned, &listed.name)?;
        swept.insert(listed.name.clone());
    }
    // Only this prune writes or removes records while it holds its lock: what is left
    // is what it listed less what it swept.
    records.retain(|r| !swept.contains(&r.name));
    index.set_condemned(&condemn::condemned_packs(&records))?;
    progress.finish();
    super::last_runs::record_prune(repo, &report, started);
    Ok(report)
}

/// Sleeps `d` (the listing lag), waking for cancellation.
fn sleep(d: Duration, cancel: &crate::cancel::Cancel) -> Result<()> {
    let until = std::time::Instant::now() + d;
    while std::time::Instant::now() < until {
        cancel.check()?;
        std::thread::sleep((until - std::time::Instant::now()).min(Duration::from_millis(200)));
    }
    Ok(())
}

/// Forgets a pack in the index, then deletes its object (durably, in a directory).
fn remove_pack(
    repo: &Repository,
    lock: &PruneLock,
    index: &mut repo_format::Index,
    pack: &PackId,
) -> Result<()> {
    lock.still_held()?;
    index.remove_pack(pack)?;
    repo.backend().delete(ObjectKind::Pack, &pack.to_hex())?;
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
        let repo = Repository::init(dir.path().join("repo"), config).unwrap();
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let opts = BackupOptions {
            name: "vm".into(),
            tags: vec![],
            workers: 1,
            cancel: Default::default(),
            allow_empty: false,
            time: None,
        };
        let source = Box::new(StreamSource::new(std::io::Cursor::new(data), "test".into()));
        let shared = repo.lock_shared("backup").unwrap();
        let done = backup(
            &repo,
            &shared,
            vec![DiskInput {
                label: "vda".into(),
                source,
                incremental: None,
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

        let lock = repo.lock_prune("prune").unwrap();
        for lock in repo_format::lock::list(repo.backend()).unwrap() {
            std::fs::remove_file(lock.path).unwrap();
        }
        let opts = PruneOptions::default();
        let err = prune(
            &repo,
            &lock,
            &opts,
            &Default::default(),
            &crate::progress::NoProgress,
        )
        .unwrap_err();
        assert!(err.to_string().contains("was removed or changed"), "{err}");
        assert_eq!(repo.list_packs().unwrap().len(), packs, "no pack deleted");
        // With its lock in place, the same prune reclaims them.
        drop(lock);
        let lock = repo.lock_prune("prune").unwrap();
        prune(
            &repo,
            &lock,
            &opts,
            &Default::default(),
            &crate::progress::NoProgress,
        )
        .unwrap();
        assert_eq!(repo.list_packs().unwrap().len(), 0);
    }

    fn test_repo(dir: &std::path::Path) -> Repository {
        let config =
            repo_format::RepoConfig::new(Default::default(), Default::default(), 1 << 20).unwrap();
        Repository::init(dir.join("repo"), config).unwrap()
    }

    /// Incompressible bytes without repeats (xorshift64*).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            out.extend_from_slice(&x.wrapping_mul(0x2545F4914F6CDD1D).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn backup_of(
        repo: &Repository,
        lock: &repo_format::lock::SharedLock,
        source: Box<dyn crate::source::DiskSource>,
    ) -> crate::backup::BackupOutcome {
        backup_with(repo, lock, source, &crate::progress::NoProgress)
    }

    /// [`backup_of`] reporting to `progress`.
    fn backup_with(
        repo: &Repository,
        lock: &repo_format::lock::SharedLock,
        source: Box<dyn crate::source::DiskSource>,
        progress: &dyn crate::progress::Progress,
    ) -> crate::backup::BackupOutcome {
        let opts = BackupOptions {
            name: "vm".into(),
            tags: vec![],
            workers: 2,
            cancel: Default::default(),
            allow_empty: false,
            time: None,
        };
        backup(
            repo,
            lock,
            vec![DiskInput {
                label: "vda".into(),
                source,
                incremental: None,
            }],
            vec![],
            &opts,
            progress,
        )
        .unwrap()
    }

    /// Says once (on a channel) when a backup's writer has taken `bytes` of the disk:
    /// every chunk before that was looked up in the index and stored or deduplicated.
    struct Reached {
        bytes: u64,
        done: std::sync::atomic::AtomicU64,
        tell: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    }

    impl crate::progress::Progress for Reached {
        fn advance(&self, bytes: u64) {
            use std::sync::atomic::Ordering;
            let now = self.done.fetch_add(bytes, Ordering::SeqCst) + bytes;
            if now >= self.bytes {
                if let Some(tx) = self.tell.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
        }
    }

    /// One prune with the default options, under its own lock.
    fn prune_now(repo: &Repository) -> PruneReport {
        let lock = repo.lock_prune("prune").unwrap();
        prune(
            repo,
            &lock,
            &PruneOptions::default(),
            &Default::default(),
            &crate::progress::NoProgress,
        )
        .unwrap()
    }

    fn read_back(repo: &Repository, snap: &repo_format::Snapshot) -> Vec<u8> {
        let mut reader = BlobReader::new(repo).unwrap();
        let mut out = Vec::new();
        crate::read::feed_extents(repo, snap.disks[0].manifest, |_, extent, loc| {
            match extent {
                repo_format::Extent::Hole { len } => out.resize(out.len() + len as usize, 0),
                repo_format::Extent::Chunk { id, .. } => {
                    out.extend(crate::read::fetch_chunk(&mut reader, &id, loc).map_err(|e| e.1)?)
                }
            }
            Ok(true)
        })
        .unwrap();
        out
    }

    /// A disk whose reads at `first` and beyond wait for a signal: a backup held in the
    /// middle of its disk. `first` is a multiple of the backup's 4 MiB read size, so the
    /// part before it reaches the cutter and the workers while the rest waits.
    struct Held {
        data: Vec<u8>,
        first: u64,
        go: Option<std::sync::mpsc::Receiver<()>>,
        reached: Option<std::sync::mpsc::Sender<()>>,
    }

    impl crate::source::DiskSource for Held {
        fn describe(&self) -> String {
            "held".into()
        }
        fn size_bytes(&self) -> Option<u64> {
            Some(self.data.len() as u64)
        }
        fn next_data(
            &mut self,
            offset: u64,
        ) -> Result<Option<(u64, u64)>, crate::source::SourceError> {
            let len = self.data.len() as u64;
            Ok((offset < len).then_some((offset, len)))
        }
        fn read_at(
            &mut self,
            offset: u64,
            buf: &mut [u8],
        ) -> Result<usize, crate::source::SourceError> {
            if offset >= self.first {
                if let Some(go) = self.go.take() {
                    if let Some(r) = self.reached.take() {
                        let _ = r.send(());
                    }
                    let _ = go.recv();
                }
            }
            let at = (offset as usize).min(self.data.len());
            let n = buf.len().min(self.data.len() - at);
            buf[..n].copy_from_slice(&self.data[at..at + n]);
            Ok(n)
        }
    }

    /// FORMAT.md 15: a backup running when a prune condemns the packs it deduplicated
    /// against keeps them: the record waits for its lock, and the sweep after it ends
    /// sees its snapshot and keeps what it needs. A backup starting after the record
    /// stores those blobs again instead.
    #[test]
    fn a_prune_beside_backups_never_deletes_what_they_rely_on() {
        let dir = tempfile::tempdir().unwrap();
        let repo = test_repo(dir.path());
        let data = noise(6 << 20, 1);
        // The data is stored, then its snapshot forgotten: every pack is unreferenced.
        let shared = repo.lock_shared("backup").unwrap();
        let first = backup_of(
            &repo,
            &shared,
            Box::new(StreamSource::new(
                std::io::Cursor::new(data.clone()),
                "a".into(),
            )),
        );
        drop(shared);
        repo.remove_snapshot(&first.id).unwrap();
        let old_packs = repo.list_packs().unwrap();

        // Backup B starts, deduplicates the first half against those packs, and waits.
        let (go_tx, go_rx) = std::sync::mpsc::channel();
        let (at_tx, at_rx) = std::sync::mpsc::channel();
        let held = Held {
            data: data.clone(),
            first: 4 << 20,
            go: Some(go_rx),
            reached: Some(at_tx),
        };
        // B's writer has taken the first 3 MiB: those chunks were looked up (and
        // deduplicated) before the prune, however loaded the machine (a fixed sleep
        // here failed under load, and the stream it held never let them through).
        let (hashed_tx, hashed_rx) = std::sync::mpsc::channel();
        let reached = Reached {
            bytes: 3 << 20,
            done: Default::default(),
            tell: std::sync::Mutex::new(Some(hashed_tx)),
        };
        let outcome = std::thread::scope(|s| {
            let b = s.spawn(|| {
                let lock = repo.lock_shared("backup").unwrap();
                backup_with(&repo, &lock, Box::new(held), &reached)
            });
            at_rx.recv().unwrap();
            hashed_rx.recv().unwrap();
            let r = prune_now(&repo);
            assert_eq!(r.packs_condemned, old_packs.len() as u64, "{r:?}");
            assert_eq!((r.packs_deleted, r.records_waiting), (0, 1), "{r:?}");
            go_tx.send(()).unwrap();
            b.join().unwrap()
        });
        // B's lock is gone: the sweep runs, sees B's snapshot and keeps what it needs.
        let r = prune_now(&repo);
        assert!(r.packs_kept > 0, "{r:?}");
        assert_eq!(r.records_waiting, 0, "{r:?}");
        assert_eq!(read_back(&repo, &outcome.snapshot), data);

        // A backup that starts while a record waits stores the condemned blobs again.
        repo.remove_snapshot(&outcome.id).unwrap();
        let other = repo.lock_shared("mount").unwrap();
        let r = prune_now(&repo);
        assert_eq!((r.packs_deleted, r.records_waiting), (0, 1), "{r:?}");
        let shared = repo.lock_shared("backup").unwrap();
        let third = backup_of(
            &repo,
            &shared,
            Box::new(StreamSource::new(
                std::io::Cursor::new(data.clone()),
                "c".into(),
            )),
        );
        drop(shared);
        assert!(
            third.snapshot.disks[0].stats.new_bytes >= data.len() as u64 / 2,
            "stored again: {:?} {r:?}",
            third.snapshot.disks[0].stats
        );
        drop(other);
        let r = prune_now(&repo);
        assert!(r.packs_deleted > 0 && r.records_waiting == 0, "{r:?}");
        assert_eq!(read_back(&repo, &third.snapshot), data);
        // The space came back: what is left (after one more prune, which may repack a
        // pack the third backup wrote again under an old pack's name: the same blobs in
        // the same order are the same pack) is about one copy of the data.
        let again = prune_now(&repo);
        assert_eq!(again.records_waiting, 0, "{again:?}");
        let left_bytes = again.bytes_before - again.bytes_deleted + again.bytes_written;
        assert!(
            left_bytes <= data.len() as u64 * 13 / 10,
            "{left_bytes} bytes left for {} of data: {again:?}",
            data.len()
        );
        assert_eq!(read_back(&repo, &third.snapshot), data);
        assert!(repo
            .backend()
            .list(ObjectKind::Condemned)
            .unwrap()
            .is_empty());
    }

    /// Two snapshots whose chunks share packs, the second holding the first's first
    /// half and new data (noise seeded `seed` and `seed + 1`); the first is then
    /// forgotten, so the packs of the shared half are half dead. Returns the second
    /// backup and its disk's bytes.
    fn half_kept(repo: &Repository, seed: u64) -> (crate::backup::BackupOutcome, Vec<u8>) {
        let shared = repo.lock_shared("backup").unwrap();
        let a = noise(4 << 20, seed);
        let mut b = a[..2 << 20].to_vec();
        b.extend(noise(2 << 20, seed + 1));
        let first = backup_of(
            repo,
            &shared,
            Box::new(StreamSource::new(std::io::Cursor::new(a), "a".into())),
        );
        let second = backup_of(
            repo,
            &shared,
            Box::new(StreamSource::new(
                std::io::Cursor::new(b.clone()),
                "b".into(),
            )),
        );
        drop(shared);
        repo.remove_snapshot(&first.id).unwrap();
        (second, b)
    }

    /// A pack half live is repacked: its live blobs move to a new pack, the old one is
    /// deleted, and what stays referenced reads back byte for byte (the mark's ids in
    /// many on-disk runs, [`MARK_RUN_IDS`]).
    #[test]
    fn a_half_dead_pack_is_repacked_and_what_is_live_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = test_repo(dir.path());
        let (second, b) = half_kept(&repo, 7);
        let report = prune_now(&repo);
        assert!(report.packs_repacked >= 1, "{report:?}");
        assert!(report.packs_deleted >= 1, "{report:?}");
        assert_eq!(report.missing_blobs, 0);
        assert_eq!(read_back(&repo, &second.snapshot), b);
        // A second prune finds nothing more to do.
        let again = prune_now(&repo);
        assert_eq!(
            (again.packs_repacked, again.packs_deleted),
            (0, 0),
            "{again:?}"
        );
    }

    /// A pack to repack whose live blob is damaged is left as it is (for verify and
    /// repair to explain): the prune goes on and deletes nothing it would need.
    #[test]
    fn a_damaged_pack_is_not_repacked_and_does_not_stop_the_prune() {
        let dir = tempfile::tempdir().unwrap();
        let repo = test_repo(dir.path());
        half_kept(&repo, 9);
        // Damage the header of every chunk in every pack: each repack must give up.
        let index = repo.index().unwrap();
        for pack in repo.list_packs().unwrap().keys() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(repo.pack_file(pack))
                .unwrap();
            let rows = index.rows_of_pack(pack).unwrap().into_iter();
            for row in rows.filter(|r| r.kind == repo_format::BlobKind::Data) {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&[0xA5], row.offset).unwrap();
            }
        }
        let before = repo.list_packs().unwrap();
        let report = prune_now(&repo);
        assert_eq!(report.packs_repacked, 0, "{report:?}");
        let after = repo.list_packs().unwrap();
        // Packs with no live blob went; every pack that held a live one stayed.
        assert!(after.len() < before.len(), "{report:?}");
        assert_eq!(report.packs_deleted as usize, before.len() - after.len());
    }
}
