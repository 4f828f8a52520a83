//! `index_scale DIR MILLIONS`: a repository index (the SQLite file of FORMAT.md section 9)
//! with MILLIONS million data-blob rows in simulated 32 MiB packs of 64 KiB chunks
//! (~490 rows a pack), built through the same `Index::add_pack` a backup uses; then a
//! million lookups of present ids and a million of absent ones (what a backup asks per
//! chunk). Prints the file's bytes per row, the time per million rows for the inserts and
//! the lookups, and the process's peak RSS, so that the index of a 100 TB-unique fleet
//! repository can be estimated (FORMAT.md section 9). A benchmark to run by hand:
//! 100 million rows take about 10 GB of disk.

use std::time::Instant;

use repo_format::blob::{BlobKind, Compression};
use repo_format::{BlobId, Index, PackId, TocEntry};

/// Rows per simulated pack: 32 MiB of chunks averaging 64 KiB (compressed ~2.4x).
const ROWS_PER_PACK: u64 = 490;

fn id(n: u64, salt: u8) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[salt]);
    h.update(&n.to_le_bytes());
    *h.finalize().as_bytes()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(millions)) = (
        args.first(),
        args.get(1).and_then(|m| m.parse::<f64>().ok()),
    ) else {
        eprintln!("usage: index_scale DIR MILLIONS (e.g. index_scale /var/tmp/idx 10)");
        std::process::exit(2);
    };
    let rows = (millions * 1e6) as u64;
    let path = std::path::Path::new(dir).join("index.sqlite");
    let _ = std::fs::remove_file(&path);
    std::fs::create_dir_all(dir).expect("create DIR");
    let mut index = Index::open(&path).expect("open the index");

    let started = Instant::now();
    let mut n = 0u64;
    let mut pack_no = 0u64;
    while n < rows {
        let count = ROWS_PER_PACK.min(rows - n);
        let entries: Vec<TocEntry> = (0..count)
            .map(|i| TocEntry {
                id: BlobId(id(n + i, 0)),
                kind: BlobKind::Data,
                compression: Compression::Zstd,
                stored_len: 27_000,
                raw_len: 65_536,
                offset: i * 27_000,
            })
            .collect();
        index
            .add_pack(&PackId(id(pack_no, 1)), count * 27_000, &entries)
            .expect("add a pack");
        n += count;
        pack_no += 1;
        if pack_no.is_multiple_of(20_000) {
            eprintln!("{n} rows, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    let insert_s = started.elapsed().as_secs_f64();
    drop(index);
    let index = Index::open(&path).expect("reopen");
    let bytes: u64 = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
        .map(|m| m.len())
        .sum();

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
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    println!("rows {rows}, packs {pack_no}");
    println!(
        "index file {:.2} GB, {:.1} bytes per row",
        bytes as f64 / 1e9,
        bytes as f64 / rows as f64
    );
    println!(
        "insert {:.1} s per million rows; lookups {:.2} s per million present, {:.2} s per million absent",
        insert_s / (rows as f64 / 1e6),
        hit_s,
        miss_s
    );
    println!("peak RSS {} MiB", rss_kib / 1024);
}
