//! Verifying a repository, so an admin can prove the backups restore before needing them.
//!
//! Structure (always): every pack on disk has a readable table of contents and is indexed;
//! every manifest node of every selected snapshot loads and verifies; every chunk a
//! manifest references is in the index. With `read_data`: every blob of every selected
//! pack is read, decompressed and checked against its BLAKE3 id, and every pack file
//! against its own name. Packs are checked in parallel, each read sequentially.
//!
//! The manifests are walked once, a subtree that several nights share once, and the
//! chunk ids they reference are sorted (on disk when many) and merged with the index in
//! id order: verify costs one pass over the unique chunks, not an index lookup per
//! chunk reference (issue 19; FORMAT.md, section 9.1).
//!
//! Damage is reported where it hurts: as byte ranges of snapshot disks, found by a
//! second walk that only runs when chunks are missing or damaged.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Mutex;

use repo_format::pack::{read_payload, read_toc};
use repo_format::{
    BlobId, BlobReader, Extent, ManifestRoot, ManifestWalker, PackId, Repository, SnapshotId, Step,
};
use serde::Serialize;

use super::id_set::{IdSet, IdSetBuilder};
use crate::error::{Error, Result};

/// Which packs `--read-data` reads: all, a percentage, or slice K of N. Deterministic (by
/// pack id), so a weekly job running slices 1/7 .. 7/7 covers every pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subset {
    All,
    Percent(u32),
    Slice { k: u32, n: u32 },
}

impl Subset {
    /// Parses `N%` or `K/N`.
    pub fn parse(text: &str) -> Result<Subset> {
        let bad = || {
            Error::Usage(format!(
                "invalid subset {text:?}: give a percentage like 10% or a slice like 2/7"
            ))
        };
        if let Some(p) = text.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| bad())?;
            return if (1..=100).contains(&p) {
                Ok(Subset::Percent(p))
            } else {
                Err(bad())
            };
        }
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let (k, n): (u32, u32) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || k == 0 || k > n {
            return Err(bad());
        }
        Ok(Subset::Slice { k, n })
    }

    pub fn includes(&self, pack: &PackId) -> bool {
        let x = u32::from_le_bytes(pack.0[..4].try_into().expect("4 bytes"));
        match *self {
            Subset::All => true,
            Subset::Percent(p) => x % 100 < p,
            Subset::Slice { k, n } => x % n == k - 1,
        }
    }
}

/// What to verify.
pub struct VerifyOptions {
    pub read_data: bool,
    pub subset: Subset,
    /// Only this VM's snapshots.
    pub name: Option<String>,
    /// Only this snapshot.
    pub snapshot: Option<SnapshotId>,
    pub workers: usize,
}

/// One thing found wrong.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// Short snapshot id, when the problem affects a snapshot.
    pub snapshot: Option<String>,
    /// Disk label or metadata file name.
    pub disk: Option<String>,
    /// Affected bytes `[start, end)` of that disk.
    pub range: Option<(u64, u64)>,
    pub what: String,
}

impl std::fmt::Display for Problem {
    /// `snapshot S disk D bytes A..B: what`, with the parts that apply.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut place = Vec::new();
        if let Some(s) = &self.snapshot {
            place.push(format!("snapshot {s}"));
        }
        if let Some(d) = &self.disk {
            place.push(format!("disk {d}"));
        }
        if let Some((a, b)) = self.range {
            place.push(format!("bytes {a}..{b}"));
        }
        if place.is_empty() {
            write!(f, "{}", self.what)
        } else {
            write!(f, "{}: {}", place.join(" "), self.what)
        }
    }
}

/// The outcome of a verify run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub snapshots: u64,
    pub disks: u64,
    pub chunk_refs: u64,
    pub packs: u64,
    pub packs_read: u64,
    pub blobs_read: u64,
    pub bytes_read: u64,
    /// Every problem found.
    pub problem_count: u64,
    /// The first [`PROBLEMS_LISTED`] of them (a repository damaged everywhere, or forged
    /// to be, must not fill memory with its list: issue 11 saw 367 MB after 30 s).
    pub problems: Vec<Problem>,
    /// Things to look at that are not damage: a snapshot whose predecessor is gone,
    /// which another host's `forget` explains as well as a deletion does.
    pub warnings: Vec<String>,
}

/// Problems a report lists in full; the rest are only counted.
pub const PROBLEMS_LISTED: usize = 1000;

impl VerifyReport {
    fn add(&mut self, p: Problem) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_LISTED {
            self.problems.push(p);
        }
    }
}

/// Checks the repository as `opts` asks. Problems are collected, not returned as errors;
/// an `Err` means verification itself could not run.
pub fn verify(
    repo: &Repository,
    _lock: &repo_format::lock::SharedLock,
    opts: &VerifyOptions,
    progress: &dyn crate::progress::Progress,
) -> Result<VerifyReport> {
    let started = jiff::Timestamp::now();
    let mut report = VerifyReport::default();
    let on_disk = repo.list_packs()?;
    let index = repo.index()?;
    let indexed = index.pack_ids()?;
    report.packs = on_disk.len() as u64;
    for id in on_disk.keys().filter(|id| !indexed.contains(id)) {
        // Reconciliation indexes every readable pack, so this one's TOC is damaged.
        report.add(Problem {
            snapshot: None,
            disk: None,
            range: None,
            what: format!(
                "pack {} cannot be read (damaged table of contents)",
                id.short()
            ),
        });
    }

    progress.phase("index");
    check_index_against_tocs(repo, &index, &on_disk, &indexed, &mut report, progress)?;

    let bad_blobs = if opts.read_data {
        let mut packs: Vec<_> = on_disk
            .into_iter()
            .filter(|(id, _)| indexed.contains(id) && opts.subset.includes(id))
            .collect();
        packs.sort();
        progress.phase("read-data");
        read_packs(repo, &packs, opts.workers, &mut report, progress)?
    } else {
        IdSetBuilder::new(&scratch_dir(repo)).finish()?
    };

    // Every readable snapshot (the history checks look at all of them), read once.
    let mut present = std::collections::HashMap::new();
    for r in repo.list_snapshots()? {
        match r {
            Ok((id, s)) => {
                present.insert(id, s);
            }
            Err(e) => report.add(Problem {
                snapshot: None,
                disk: None,
                range: None,
                what: e.to_string(),
            }),
        }
    }
    check_history(repo, &present, opts, &mut report);
    let mut snapshots: Vec<_> = present
        .iter()
        .filter(|(id, s)| {
            opts.name.as_ref().is_none_or(|n| *n == s.name)
                && opts.snapshot.is_none_or(|want| want == **id)
        })
        .collect();
    // By VM, oldest first: a VM's nights follow one another, so the subtrees they share
    // are still remembered when the next night comes.
    snapshots.sort_by(|(a_id, a), (b_id, b)| (&a.name, a.time, a_id).cmp(&(&b.name, b.time, b_id)));
    let mut nodes = BlobReader::new(repo)?;
    let scratch = scratch_dir(repo);

    // 1. Walk every manifest once, each shared subtree once, gathering the chunk ids
    //    (sorted and made distinct on disk when many). A damaged tree is reported here.
    progress.phase("snapshots");
    let mut walked = CleanNodes::default();
    let mut referenced = IdSetBuilder::new(&scratch);
    let mut disks = Vec::new();
    for (id, snap) in snapshots {
        report.snapshots += 1;
        let listed = snap
            .disks
            .iter()
            .map(|d| (&d.label, &d.manifest, Some(d.size_bytes)))
            .chain(
                snap.meta
                    .iter()
                    .map(|m| (&m.name, &m.manifest, Some(m.size_bytes))),
            );
        for (label, manifest, size) in listed {
            report.disks += 1;
            progress.start(&format!("{}/{label}", snap.name), size);
            let place = (id.short(), label.clone());
            report.chunk_refs += walk_manifest(
                &mut nodes,
                manifest,
                &mut walked,
                &mut report,
                &place,
                true,
                &mut |id| referenced.insert(*id).map(|()| None),
            )?;
            disks.push((place, *manifest, format!("{}/{label}", snap.name), size));
            progress.advance(size.unwrap_or(0));
            progress.finish();
        }
    }
    drop(walked);

    // 2. Those ids against the index, both in id order: one pass over each, however
    //    large the repository (not one index lookup per chunk reference).
    let referenced = referenced.finish()?;
    let missing = missing_from_index(&index, &referenced, &scratch)?;
    drop(referenced);

    // 3. Only when chunks are missing or damaged: walk again to name the disk ranges
    //    they hurt (each clean subtree once).
    if !missing.is_empty() || !bad_blobs.is_empty() {
        progress.phase("damage");
        let mut clean = CleanNodes::default();
        for (place, manifest, name, size) in &disks {
            progress.start(name, *size);
            walk_manifest(
                &mut nodes,
                manifest,
                &mut clean,
                &mut report,
                place,
                false,
                &mut |id| {
                    Ok(if bad_blobs.contains(id)? {
                        Some("damaged chunk data")
                    } else if missing.contains(id)? {
                        Some("chunk missing from the repository")
                    } else {
                        None
                    })
                },
            )?;
            progress.advance(size.unwrap_or(0));
            progress.finish();
        }
    }
    // A verify of the whole repository is what the dashboard and the metrics show.
    if opts.name.is_none() && opts.snapshot.is_none() {
        super::last_runs::record_verify(repo, &report, started);
    }
    Ok(report)
}

/// Rollback and deletion (FORMAT.md, section 10.6): the newest snapshot of each VM
/// this host saw must still be there unless this host forgot it (a problem: someone who
/// can write the repository deleted or rolled it back); a snapshot whose predecessor is
/// gone is a warning (another host's `forget` makes the same gap). Afterwards what is
/// there now is recorded as seen.
fn check_history(
    repo: &Repository,
    present: &std::collections::HashMap<repo_format::SnapshotId, repo_format::Snapshot>,
    opts: &VerifyOptions,
    report: &mut VerifyReport,
) {
    use repo_format::history::History;
    let history = History::load(repo);
    let problems_before = report.problem_count;
    let wanted = |vm: &str| opts.name.as_ref().is_none_or(|n| n == vm);
    for (vm, seen) in history.newest.iter().filter(|(vm, _)| wanted(vm)) {
        if present.contains_key(&seen.id) || history.forgotten.contains(&seen.id) {
            continue;
        }
        let newest_now = present
            .iter()
            .filter(|(_, s)| &s.name == vm)
            .map(|(_, s)| s.time)
            .max();
        report.add(Problem {
            snapshot: Some(seen.id.short()),
            disk: None,
            range: None,
            what: format!(
                "VM {}: this host saw snapshot {} of {} and did not forget it, but it is gone ({}): deleted or rolled back by someone who can write the repository",
                repo_format::names::escape(vm),
                seen.id.short(),
                seen.time,
                match newest_now {
                    Some(t) if t < seen.time => format!("the newest left is older, of {t}"),
                    Some(t) => format!("the newest left is of {t}"),
                    None => "no snapshot of it is left".into(),
                }
            ),
        });
    }
    for (id, snap) in present.iter().filter(|(_, s)| wanted(&s.name)) {
        if let Some(prev) = snap.previous {
            if !present.contains_key(&prev) && !history.forgotten.contains(&prev) {
                report.warnings.push(format!(
                    "snapshot {} of VM {}: its predecessor {} is gone (forgotten on another host, or deleted)",
                    id.short(),
                    repo_format::names::escape(&snap.name),
                    prev.short()
                ));
            }
        }
    }
    report.warnings.sort();
    // A rollback found is not accepted as the new normal: it is reported every time.
    if report.problem_count == problems_before {
        History::update(repo, |h| {
            for (id, s) in present {
                h.saw(&s.name, *id, s.time);
            }
            // Only forgotten snapshots that still explain a gap, or a VM's newest seen,
            // are worth keeping: the record stays small over years of nights.
            let newest: HashSet<_> = h.newest.values().map(|s| s.id).collect();
            h.forgotten
                .retain(|f| newest.contains(f) || present.values().any(|s| s.previous == Some(*f)));
        });
    }
}

/// The index is a cache of the packs' TOCs (issue 12: rows with a wrong offset, length
/// or pack passed verify and broke every restore): every row must be an entry of the
/// TOC of the pack it names, and every pack it names must be on disk.
fn check_index_against_tocs(
    repo: &Repository,
    index: &repo_format::Index,
    on_disk: &std::collections::HashMap<repo_format::PackId, u64>,
    indexed: &HashSet<repo_format::PackId>,
    report: &mut VerifyReport,
    progress: &dyn crate::progress::Progress,
) -> Result<()> {
    let problem = |what: String| Problem {
        snapshot: None,
        disk: None,
        range: None,
        what: format!(
            "{what}; the index is a cache of the packs: `dedisk repair index` rebuilds it"
        ),
    };
    for pack in indexed.iter().filter(|p| !on_disk.contains_key(p)) {
        report.add(problem(format!(
            "the index lists pack {}, which is not on disk",
            pack.short()
        )));
    }
    let mut packs: Vec<(repo_format::PackId, u64)> = on_disk
        .iter()
        .filter(|(id, _)| indexed.contains(id))
        .map(|(id, len)| (*id, *len))
        .collect();
    packs.sort();
    progress.start("", Some(packs.iter().map(|(_, len)| *len).sum()));
    // Each pack's rows summed up in one sequential pass over the blob table; a pack
    // whose TOC sums up the same is consistent, and only one that does not has its rows
    // looked up and compared one by one (a lookup per row was a random read of the
    // index for every chunk: most of verify's time at 30 million chunks).
    let numbers = index.pack_numbers()?;
    let keys = std::hash::RandomState::new();
    let mut sums: std::collections::HashMap<i64, RowSum> = std::collections::HashMap::new();
    index.scan_rows(|pack, id, cols| -> Result<()> {
        sums.entry(pack).or_default().add(&keys, id, cols);
        Ok(())
    })?;
    for batch in packs.chunks(TOC_READERS * 4) {
        let tocs = repo.read_pack_tocs(batch, TOC_READERS);
        for ((pack, len), toc) in batch.iter().zip(tocs) {
            progress.advance(*len);
            // An unreadable pack is reported by the pack checks; here only rows are judged.
            let Ok(Some(Ok(toc))) = toc else { continue };
            let mut sum = RowSum::default();
            for e in &toc {
                let cols = [
                    e.offset as i64,
                    e.stored_len as i64,
                    e.raw_len as i64,
                    e.kind as u8 as i64,
                    e.compression as u8 as i64,
                ];
                sum.add(&keys, &e.id.0, cols);
            }
            let indexed = numbers.get(pack).and_then(|n| sums.get(n));
            if indexed == Some(&sum) {
                continue;
            }
            let toc: HashSet<repo_format::TocEntry> = toc.into_iter().collect();
            for row in index.rows_of_pack(pack)? {
                if !toc.contains(&row) {
                    report.add(problem(format!(
                        "index row for blob {} says pack {} at byte {} ({} stored bytes), which that pack's table of contents does not list",
                        row.id.short(),
                        pack.short(),
                        row.offset,
                        row.stored_len
                    )));
                }
            }
        }
    }
    progress.finish();
    Ok(())
}

/// A pack's index rows (or TOC entries) summed up: how many, and the wrapping sum of a
/// hash of each under keys random to this process (so no content can be made to sum up
/// like another). Equal multisets of rows give equal sums.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct RowSum {
    count: u64,
    sum: u64,
}

impl RowSum {
    fn add(&mut self, keys: &std::hash::RandomState, id: &[u8], cols: [i64; 5]) {
        use std::hash::BuildHasher;
        self.count += 1;
        self.sum = self.sum.wrapping_add(keys.hash_one((id, cols)));
    }
}

/// Pack tables of contents read at once: each is a read or two at the end of a pack
/// (two ranged GETs on an object store), so the pass waits on the disk or the
/// network, not the CPU.
const TOC_READERS: usize = 16;

/// The referenced ids the index does not hold: a merge of two sorted lists.
fn missing_from_index(
    index: &repo_format::Index,
    referenced: &IdSet,
    scratch: &std::path::Path,
) -> Result<IdSet> {
    let mut missing = IdSetBuilder::new(scratch);
    let mut ids = referenced.iter();
    let mut next = ids.next().transpose()?;
    index.scan_rows(|_, id, _| -> Result<()> {
        // A malformed id is no blob's: it matches nothing.
        let Some(id) = BlobId::from_slice(id) else {
            return Ok(());
        };
        while let Some(wanted) = next.filter(|w| *w <= id) {
            if wanted < id {
                missing.insert(wanted)?;
            }
            next = ids.next().transpose()?;
        }
        Ok(())
    })?;
    while let Some(wanted) = next {
        missing.insert(wanted)?;
        next = ids.next().transpose()?;
    }
    missing.finish()
}

/// Manifest nodes [`CleanNodes`] remembers (about 80 bytes each, 10 MiB in all): a VM's
/// nights are walked one after the other, and one 8 TiB disk has about 130,000 nodes.
const CLEAN_NODES_MAX: usize = 1 << 17;

/// Manifest subtrees a walk has been through whole without finding a damaged chunk, so
/// that the nights of a VM, which share all but a few nodes, go through each shared
/// subtree once: the first walk (which gathers ids and judges none) passes over any
/// subtree it already gathered, the second (which names damage) over clean ones.
/// Bounded by [`CLEAN_NODES_MAX`], emptied when full: forgetting costs a walk again.
#[derive(Default)]
struct CleanNodes(std::collections::HashMap<BlobId, CleanNode>);

#[derive(Clone, Copy)]
struct CleanNode {
    len: u64,
    extents: u64,
    level: u8,
    /// Chunk references under the node, for the report's count.
    chunk_refs: u64,
}

impl CleanNodes {
    /// The node when it is known clean and is what `claim` says of it (a parent that
    /// claims another length, extent count or level is damaged: the walk loads the
    /// node and reports it).
    fn get(&self, claim: &repo_format::ChildRef, level: Option<u8>) -> Option<CleanNode> {
        self.0.get(&claim.id).copied().filter(|c| {
            c.len == claim.len && c.extents == claim.extents && level.is_none_or(|l| l == c.level)
        })
    }

    fn insert(&mut self, id: BlobId, node: CleanNode) {
        if self.0.len() >= CLEAN_NODES_MAX {
            self.0.clear();
        }
        self.0.insert(id, node);
    }
}

/// Walks one disk's manifest, asking `judge` about every chunk reference outside the
/// subtrees `clean` knows (`Some(reason)`: the chunk is damaged or missing). Adjacent
/// damaged chunks with one reason are reported as one range of `place` (snapshot,
/// disk); a damaged tree is reported when `report_trees` (the first walk). A subtree
/// with no damaged chunk joins `clean`. Returns the chunk references under the tree.
fn walk_manifest(
    nodes: &mut BlobReader<&Repository>,
    manifest: &ManifestRoot,
    clean: &mut CleanNodes,
    report: &mut VerifyReport,
    (snapshot, disk): &(String, String),
    report_trees: bool,
    judge: &mut dyn FnMut(&BlobId) -> Result<Option<&'static str>>,
) -> Result<u64> {
    let mut walker = ManifestWalker::new(*manifest, |id: &BlobId| nodes.read_node(id));
    let mut chunk_refs = 0u64;
    // (start, end, reason) of the damaged run being built, merged while adjacent.
    let mut run: Option<(u64, u64, &'static str)> = None;
    let flush = |run: &mut Option<(u64, u64, &'static str)>, report: &mut VerifyReport| {
        if let Some((a, b, what)) = run.take() {
            report.add(Problem {
                snapshot: Some(snapshot.clone()),
                disk: Some(disk.clone()),
                range: Some((a, b)),
                what: what.to_string(),
            });
        }
    };
    // The nodes being walked: (node, level, damaged chunks and chunk references
    // counted when the walk went in).
    let mut open: Vec<(repo_format::ChildRef, u8, u64, u64)> = Vec::new();
    let mut damaged = 0u64;
    loop {
        let step = walker.next_step(&mut |claim, level| clean.get(claim, level).is_some());
        let next = match step {
            Ok(n) => n,
            Err(e) if e.is_corruption() => {
                // A lost manifest node hides everything after it.
                let at = run.as_ref().map_or(0, |r| r.0);
                flush(&mut run, report);
                if report_trees {
                    report.add(Problem {
                        snapshot: Some(snapshot.clone()),
                        disk: Some(disk.clone()),
                        range: None,
                        what: format!("manifest unreadable (from byte {at} or earlier): {e}"),
                    });
                }
                return Ok(chunk_refs);
            }
            Err(e) => return Err(e.into()),
        };
        let (offset, id, len) = match next {
            None => break,
            Some(Step::Enter { node, level }) => {
                open.push((node, level, damaged, chunk_refs));
                continue;
            }
            Some(Step::Leave(_)) => {
                let (node, level, damaged_before, refs_before) =
                    open.pop().expect("the walker pairs Enter and Leave");
                if damaged == damaged_before {
                    let known = CleanNode {
                        len: node.len,
                        extents: node.extents,
                        level,
                        chunk_refs: chunk_refs - refs_before,
                    };
                    clean.insert(node.id, known);
                }
                continue;
            }
            Some(Step::Skipped { child, level, .. }) => {
                let known = clean.get(&child, level).expect("skipped because known");
                chunk_refs += known.chunk_refs;
                flush(&mut run, report);
                continue;
            }
            Some(Step::Extent(offset, Extent::Chunk { id, len })) => (offset, id, len),
            Some(Step::Extent(_, Extent::Hole { .. })) => continue,
        };
        chunk_refs += 1;
        let reason = judge(&id)?;
        if reason.is_some() {
            damaged += 1;
        }
        let end = offset + len as u64;
        match (reason, run.as_mut()) {
            (Some(r), Some(cur)) if cur.1 == offset && cur.2 == r => cur.1 = end,
            (Some(r), _) => {
                flush(&mut run, report);
                run = Some((offset, end, r));
            }
            (None, _) => flush(&mut run, report),
        }
    }
    flush(&mut run, report);
    Ok(chunk_refs)
}

/// Where a verify spills: the repository's scratch folder, or the system's temporary
/// folder for a repository this process may not write.
fn scratch_dir(repo: &Repository) -> std::path::PathBuf {
    if repo.is_writable() {
        repo.tmp_dir()
    } else {
        std::env::temp_dir()
    }
}

/// Reads the given packs and checks them on `workers` threads; returns the ids of
/// blobs that failed (in memory up to a million, on disk beyond: a repository damaged
/// throughout is still verified in bounded memory).
///
/// Reader threads fetch packs ahead into a pool of `workers + 1` buffers while the
/// workers check the ones already fetched: a worker that read its own pack waited for
/// the disk for a third of its time (measured on the shared workload: 10-40 % of the
/// two cores idle in I/O wait).
fn read_packs(
    repo: &Repository,
    packs: &[(PackId, u64)],
    workers: usize,
    report: &mut VerifyReport,
    progress: &dyn crate::progress::Progress,
) -> Result<IdSet> {
    let workers = workers.max(1);
    let next = Mutex::new(packs.iter());
    progress.start("", Some(packs.iter().map(|(_, len)| len).sum()));
    // The buffers bound the packs in memory: each fetch, local or not, holds one (an
    // anonymous mapping: memory only where a pack was read into it).
    let buffers = workers + 1;
    let (pool_tx, pool_rx) = crossbeam_channel::bounded(buffers);
    for _ in 0..buffers {
        pool_tx
            .send(crate::io::AlignedBuf::new(
                PACK_IN_MEMORY_MAX as usize + (4 << 20),
            ))
            .expect("room for every buffer");
    }
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(buffers);
    // (bad blobs, problems listed, problems found, packs read, blobs, bytes, the
    // first error keeping a bad blob's id)
    let found = Mutex::new((
        IdSetBuilder::new(&scratch_dir(repo)),
        Vec::new(),
        0u64,
        0u64,
        0u64,
        0u64,
        None,
    ));
    std::thread::scope(|s| {
        for _ in 0..buffers {
            let (pool_rx, ready_tx, next) = (pool_rx.clone(), ready_tx.clone(), &next);
            s.spawn(move || {
                // A buffer first, then the next pack: packs are fetched in order.
                while let Ok(mut buf) = pool_rx.recv() {
                    let Some((pack, len)) = next.lock().expect("no panics hold it").next() else {
                        return;
                    };
                    let fetched = fetch_pack(repo, pack, &mut buf);
                    if ready_tx.send((pack, *len, buf, fetched)).is_err() {
                        return;
                    }
                }
            });
        }
        drop((pool_rx, ready_tx));
        for _ in 0..workers {
            let (ready_rx, pool_tx, found) = (ready_rx.clone(), pool_tx.clone(), &found);
            s.spawn(move || {
                for (pack, len, buf, fetched) in ready_rx {
                    let (bad, problems, blobs, bytes) = check_pack(repo, pack, &buf, fetched);
                    // Never blocks: the pool has room for every buffer.
                    let _ = pool_tx.send(buf);
                    progress.advance(len);
                    let mut f = found.lock().expect("no panics hold it");
                    for id in bad {
                        if let Err(e) = f.0.insert(id) {
                            f.6.get_or_insert(e); // a full scratch disk
                        }
                    }
                    // Counted in full, listed up to the cap.
                    f.2 += problems.len() as u64;
                    let room = PROBLEMS_LISTED.saturating_sub(f.1.len());
                    f.1.extend(problems.into_iter().take(room));
                    f.3 += 1;
                    f.4 += blobs;
                    f.5 += bytes;
                }
            });
        }
        // Only the threads hold the channels now: readers stop if every worker has
        // gone (a panic), instead of waiting for a buffer forever.
        drop((ready_rx, pool_tx));
    });
    progress.finish();
    let (bad, problems, found_count, packs_read, blobs, bytes, failed) =
        found.into_inner().expect("threads joined");
    if let Some(e) = failed {
        return Err(e);
    }
    let listed = problems.len() as u64;
    problems.into_iter().for_each(|p| report.add(p));
    report.problem_count += found_count - listed;
    report.packs_read = packs_read;
    report.blobs_read = blobs;
    report.bytes_read = bytes;
    bad.finish()
}

/// A local pack up to this size is read into a pooled buffer and its blobs checked
/// from there (one sequential read, no second pass through the page cache); a larger
/// one (no writer makes them, but a repository is not trusted) is streamed for its hash
/// and its blobs read back from the file.
const PACK_IN_MEMORY_MAX: u64 = 64 << 20;

/// Reads a whole local pack with O_DIRECT into `buf` (a verify reads each pack once:
/// through the page cache every byte was copied once more, 12% of verify's CPU, and
/// the host's cached data pushed out). `None` when the filesystem refuses O_DIRECT or
/// the pack does not fit: the caller reads it the buffered way.
fn read_direct(path: &std::path::Path, buf: &mut crate::io::AlignedBuf) -> Option<usize> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    const STEP: usize = 4 << 20;
    let mut filled = 0;
    loop {
        if filled + STEP > buf.len() {
            return None; // larger than PACK_IN_MEMORY_MAX
        }
        match file.read(&mut buf[filled..filled + STEP]) {
            Ok(0) => return Some(filled),
            // A short read is the end of the file (or a filesystem that splits reads:
            // the next read then starts unaligned and fails, and the caller retries).
            Ok(n) => {
                filled += n;
                if n % crate::io::DIRECT_ALIGN != 0 {
                    return match file.read(&mut buf[filled..filled + crate::io::DIRECT_ALIGN]) {
                        Ok(0) => Some(filled),
                        _ => None,
                    };
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// A pack's bytes as a reader thread fetched them for [`check_pack`].
enum Fetched {
    /// A local pack read whole with O_DIRECT: the buffer's first bytes.
    Direct(usize),
    /// A local pack to stream from its file (larger than the buffer, or a filesystem
    /// that refuses O_DIRECT).
    File(std::path::PathBuf),
    /// A pack on an object store, with one GET.
    Object(Vec<u8>),
    /// The GET failed: what to report.
    Failed(String),
}

/// Fetches one pack for its check: a local pack in one sequential O_DIRECT pass into
/// `buf` when it fits, a pack on an object store with one GET into memory.
fn fetch_pack(repo: &Repository, pack: &PackId, buf: &mut crate::io::AlignedBuf) -> Fetched {
    let name = pack.to_hex();
    let kind = repo_format::backend::ObjectKind::Pack;
    match repo.backend().local_path(kind, &name) {
        Some(path) => match read_direct(&path, buf) {
            Some(n) => Fetched::Direct(n),
            None => Fetched::File(path),
        },
        None => match repo.backend().get(kind, &name) {
            Ok(bytes) => Fetched::Object(bytes),
            Err(e) => Fetched::Failed(format!("pack {}: {e}", pack.short())),
        },
    }
}

/// Checks one pack as fetched: its name against its content, then every blob. A pack
/// streamed from its file is hashed on the way and its blobs read back from the file.
fn check_pack(
    repo: &Repository,
    pack: &PackId,
    buf: &crate::io::AlignedBuf,
    fetched: Fetched,
) -> (Vec<BlobId>, Vec<Problem>, u64, u64) {
    let problem = |what: String| Problem {
        snapshot: None,
        disk: None,
        range: None,
        what,
    };
    let mut problems = Vec::new();
    let mut bad = Vec::new();
    let mut hasher = blake3::Hasher::new();
    let mut len;
    let file: Box<dyn repo_format::backend::ReadAt + '_> = match fetched {
        Fetched::Direct(n) => {
            len = n as u64;
            let mem = &buf[..n];
            hasher.update(mem);
            Box::new(mem)
        }
        Fetched::File(path) => {
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    return (
                        bad,
                        vec![problem(format!("pack {}: {e}", pack.short()))],
                        0,
                        0,
                    )
                }
            };
            len = 0;
            let mut block = vec![0u8; 1 << 20];
            loop {
                match file.read(&mut block) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&block[..n]);
                        len += n as u64;
                    }
                    Err(e) => {
                        problems.push(problem(format!("pack {}: read failed: {e}", pack.short())));
                        break;
                    }
                }
            }
            Box::new(file)
        }
        Fetched::Object(bytes) => {
            hasher.update(&bytes);
            len = bytes.len() as u64;
            Box::new(bytes)
        }
        Fetched::Failed(what) => return (bad, vec![problem(what)], 0, 0),
    };
    if hasher.finalize().as_bytes() != &pack.0 {
        problems.push(problem(format!(
            "pack {}: content does not match its name (damaged)",
            pack.short()
        )));
    }
    let entries = match read_toc(&*file, len, &pack.to_hex(), repo.codec()) {
        Ok(e) => e,
        Err(e) => {
            problems.push(problem(e.to_string()));
            return (bad, problems, 0, len);
        }
    };
    let mut decoder = match repo.blob_decoder() {
        Ok(d) => d,
        Err(e) => return (bad, vec![problem(e.to_string())], 0, len),
    };
    for e in &entries {
        let origin = repo_format::blob::BlobOrigin {
            pack: *pack,
            offset: e.offset,
        };
        let ok = read_payload(&*file, *pack, e, repo.codec())
            .and_then(|p| decoder.decode(e.id, e.kind, e.compression, e.raw_len, p, origin));
        if let Err(err) = ok {
            problems.push(problem(err.to_string()));
            bad.push(e.id);
        }
    }
    (bad, problems, entries.len() as u64, len)
}

#[cfg(test)]
mod tests {
    #[test]
    fn problem_lists_are_capped_but_counted() {
        let mut r = super::VerifyReport::default();
        for i in 0..(super::PROBLEMS_LISTED as u64 + 500) {
            r.add(super::Problem {
                snapshot: None,
                disk: None,
                range: Some((i, i + 1)),
                what: "damaged".into(),
            });
        }
        assert_eq!(r.problems.len(), super::PROBLEMS_LISTED);
        assert_eq!(r.problem_count, super::PROBLEMS_LISTED as u64 + 500);
    }

    use super::*;

    #[test]
    fn direct_pack_reads_give_every_byte_or_decline() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = crate::io::AlignedBuf::new(12 << 20);
        for len in [0usize, 5000, 4096, (4 << 20) + 17, 8 << 20] {
            let path = dir.path().join(format!("p{len}"));
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            // tmpfs refuses O_DIRECT: then the caller reads the buffered way.
            if let Some(n) = read_direct(&path, &mut buf) {
                assert_eq!(n, len);
                assert!(buf[..n] == data[..], "{len}");
            }
        }
        // Larger than the buffer: declined, not cut short.
        let big = dir.path().join("big");
        std::fs::write(&big, vec![1u8; 13 << 20]).unwrap();
        assert_eq!(read_direct(&big, &mut buf), None);
    }

    #[test]
    fn subsets_parse_and_slices_partition_the_packs() {
        assert_eq!(Subset::parse("10%").unwrap(), Subset::Percent(10));
        assert_eq!(Subset::parse("2/7").unwrap(), Subset::Slice { k: 2, n: 7 });
        for bad in ["0%", "101%", "0/3", "4/3", "x", "1/0", ""] {
            assert!(Subset::parse(bad).is_err(), "{bad}");
        }
        let ids: Vec<PackId> = (0..200u32)
            .map(|i| PackId(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect();
        for id in &ids {
            let hits = (1..=3)
                .filter(|k| Subset::Slice { k: *k, n: 3 }.includes(id))
                .count();
            assert_eq!(hits, 1, "every pack is in exactly one slice");
        }
        let some = ids
            .iter()
            .filter(|id| Subset::Percent(50).includes(id))
            .count();
        assert!((60..140).contains(&some), "{some}");
    }
}
