//! `index_scale REPO MILLIONS [SNAPSHOTS]`: fills the plain local repository REPO (made
//! by `dedisk init --encryption none`) with MILLIONS million data chunks and SNAPSHOTS
//! (default 10) snapshots that reference them all, each its own share, for
//! `benches/index-scale.sh` to run verify, prune, `repair index`, backup and restore on
//! at that scale (issue 19).
//!
//! The chunks are simulated: 64 KiB chunks stored as 27,000 bytes, 490 to a pack (32
//! MiB packs), each pack a sparse file with a real header, TOC and footer and no payload
//! bytes (so it costs its TOC's disk, 56 bytes a chunk, and the structure checks, prune
//! and the index rebuild read exactly what they would). Pack names are not the hash of
//! their content: only `verify --read-data` would notice. The index rows go in the way
//! a rebuild puts them ([`Index::add_packs`], 64 packs a transaction); the snapshots'
//! manifests are real trees of node blobs in real packs.
//!
//! Prints the index's bytes per row, the time per million rows to fill it, and the time
//! of a million lookups of present ids and a million of absent ones (a backup asks one
//! per chunk), with this process's peak RSS.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use repo_format::blob::{BlobKind, Compression};
use repo_format::manifest::{Extent, ManifestBuilder};
use repo_format::snapshot::{DiskStats, Snapshot, SnapshotDisk, SNAPSHOT_VERSION};
use repo_format::{BlobId, Index, PackId, Repository, TocEntry};

/// Rows per simulated pack: 32 MiB of chunks averaging 64 KiB (compressed ~2.4x).
const ROWS_PER_PACK: u64 = 490;
const STORED: u32 = 27_000;
const RAW: u32 = 65_536;
/// Packs indexed per transaction, as a rebuild does.
const BATCH: u64 = 64;

/// The id of simulated chunk `n` (salt 0), simulated pack `n` (salt 1), or an id never
/// stored (salt 2).
fn id(n: u64, salt: u8) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[salt]);
    h.update(&n.to_le_bytes());
    *h.finalize().as_bytes()
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .unwrap_or(0)
        / 1024
}

/// Writes simulated pack `pack` holding `entries`: header, a hole where the blobs would
/// be, TOC and footer (FORMAT.md, "Pack files", version 1). Returns its length.
fn write_pack(repo: &Repository, pack: &PackId, entries: &[TocEntry]) -> u64 {
    use repo_format::pack::{BLOB_HEADER_LEN, PACK_END_MAGIC, PACK_HEADER_LEN, PACK_MAGIC};
    let toc_offset = PACK_HEADER_LEN + entries.len() as u64 * (BLOB_HEADER_LEN + STORED as u64);
    let mut toc = Vec::with_capacity(entries.len() * 56);
    for e in entries {
        toc.extend_from_slice(&e.encode());
    }
    let mut footer = [0u8; 56];
    footer[..8].copy_from_slice(&toc_offset.to_le_bytes());
    footer[8..12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    footer[16..48].copy_from_slice(blake3::hash(&toc).as_bytes());
    footer[48..].copy_from_slice(PACK_END_MAGIC);
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(PACK_MAGIC);
    header[8] = repo_format::pack::PACK_VERSION;
    let path = repo.pack_file(pack);
    std::fs::create_dir_all(path.parent().expect("a pack's folder")).expect("pack folder");
    let file = std::fs::File::create(&path).expect("create a pack");
    file.write_all_at(&header, 0).expect("write a pack");
    file.write_all_at(&toc, toc_offset).expect("write a pack");
    file.write_all_at(&footer, toc_offset + toc.len() as u64)
        .expect("write a pack");
    toc_offset + toc.len() as u64 + 56
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(millions)) = (
        args.first(),
        args.get(1).and_then(|m| m.parse::<f64>().ok()),
    ) else {
        eprintln!("usage: index_scale REPO MILLIONS [SNAPSHOTS] (REPO made by `dedisk init --encryption none`)");
        std::process::exit(2);
    };
    let snapshots: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let rows = (millions * 1e6) as u64;
    let repo = Repository::open(std::path::PathBuf::from(dir)).expect("open the repository");
    let mut index = repo.index().expect("open the index");

    // Packs and their index rows.
    let started = Instant::now();
    let mut n = 0u64;
    let mut pack_no = 0u64;
    let mut batch: Vec<(PackId, u64, Vec<TocEntry>)> = Vec::new();
    let flush = |index: &mut Index, batch: &mut Vec<(PackId, u64, Vec<TocEntry>)>| {
        let rows: Vec<(PackId, u64, &[TocEntry])> = batch
            .iter()
            .map(|(p, l, e)| (*p, *l, e.as_slice()))
            .collect();
        index.add_packs(&rows).expect("index packs");
        batch.clear();
    };
    while n < rows {
        let count = ROWS_PER_PACK.min(rows - n);
        let entries: Vec<TocEntry> = (0..count)
            .map(|i| TocEntry {
                id: BlobId(id(n + i, 0)),
                kind: BlobKind::Data,
                compression: Compression::Zstd,
                stored_len: STORED,
                raw_len: RAW,
                offset: 16 + i * (48 + STORED as u64),
            })
            .collect();
        let pack = PackId(id(pack_no, 1));
        let len = write_pack(&repo, &pack, &entries);
        batch.push((pack, len, entries));
        if batch.len() as u64 == BATCH {
            flush(&mut index, &mut batch);
        }
        n += count;
        pack_no += 1;
        if pack_no.is_multiple_of(20_000) {
            eprintln!("{n} rows, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    flush(&mut index, &mut batch);
    index.checkpoint().expect("checkpoint");
    let fill_s = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(repo.index_path())
        .expect("the index file")
        .len();

    // Snapshots: real manifests over the simulated chunks, each snapshot its share.
    let started = Instant::now();
    let lock = repo.lock_shared("index-scale").expect("lock");
    let mut store = engine::store::BlobStore::new(&repo, &lock).expect("a blob store");
    for s in 0..snapshots {
        let (from, to) = (rows * s / snapshots, rows * (s + 1) / snapshots);
        let mut builder = ManifestBuilder::new();
        let mut sink = |node: &repo_format::manifest::Node| store.put_node(node);
        for c in from..to {
            builder
                .push(
                    Extent::Chunk {
                        id: BlobId(id(c, 0)),
                        len: RAW,
                    },
                    &mut sink,
                )
                .expect("a manifest node");
        }
        let manifest = builder.finish(&mut sink).expect("a manifest");
        store.finish_pack().expect("store nodes");
        let snap = Snapshot {
            snapshot_version: SNAPSHOT_VERSION,
            time: jiff::Timestamp::now(),
            name: format!("vm{s}"),
            hostname: "index-scale".into(),
            tags: vec![],
            disks: vec![SnapshotDisk {
                label: "vda".into(),
                source: "simulated".into(),
                size_bytes: manifest.len_bytes,
                manifest,
                stats: DiskStats::default(),
                lost: vec![],
                changes: None,
            }],
            meta: vec![],
            program_version: "index-scale".into(),
            previous: None,
        };
        repo.write_snapshot(&snap).expect("write a snapshot");
    }
    drop(store);
    drop(lock);
    let snap_s = started.elapsed().as_secs_f64();

    // Lookups, as a backup makes them.
    let lookups = 1_000_000u64;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let started = Instant::now();
    for _ in 0..lookups {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        assert!(index.has_usable(&BlobId(id(x % rows, 0))).expect("lookup"));
    }
    let hit_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..lookups {
        assert!(!index.has_usable(&BlobId(id(i, 2))).expect("lookup"));
    }
    let miss_s = started.elapsed().as_secs_f64();

    let per_m = rows as f64 / 1e6;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "rows {rows}, packs {pack_no}, snapshots {snapshots}");
    let _ = writeln!(
        out,
        "index {:.2} GB, {:.1} bytes per row; filled in {:.1} s per million rows",
        bytes as f64 / 1e9,
        bytes as f64 / rows as f64,
        fill_s / per_m
    );
    let _ = writeln!(
        out,
        "snapshots written in {:.1} s per million chunks",
        snap_s / per_m
    );
    let _ = writeln!(
        out,
        "lookups: {hit_s:.2} s per million present, {miss_s:.2} s per million absent"
    );
    let _ = writeln!(out, "peak RSS of this fill {} MiB", peak_rss_mib());
}
