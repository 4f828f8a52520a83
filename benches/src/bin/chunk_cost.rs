//! `chunk_cost IMAGE`: what smaller chunks cost the CPU of a full backup. Cuts the raw
//! disk IMAGE with the default chunker and with cuts at file starts turned off, then, on
//! one core and in turn three times, hashes (BLAKE3) and compresses (zstd, the default
//! level, one reused context as the backup's workers do) every distinct chunk of each;
//! prints the fastest round of each. Alternating the two keeps a noisy machine from
//! favouring one.

use std::time::Instant;

use repo_format::{ChunkerParams, CompressionParams};

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: chunk_cost RAW_IMAGE");
        std::process::exit(2);
    });
    let level = CompressionParams::default().level;
    let sets = [
        ("file starts (default)", ChunkerParams::default()),
        (
            "no file starts",
            ChunkerParams {
                file_start_tail_bytes: 0,
                ..ChunkerParams::default()
            },
        ),
    ];
    let chunks: Vec<Vec<Vec<u8>>> = sets
        .iter()
        .map(|(_, p)| dedisk_benches::unique_chunks_with(&path, *p))
        .collect();
    let mut best = vec![(f64::MAX, f64::MAX, 0u64); sets.len()];
    let mut cctx = zstd::bulk::Compressor::new(level).expect("a zstd context");
    for _ in 0..3 {
        for (i, set) in chunks.iter().enumerate() {
            let t = Instant::now();
            for c in set {
                std::hint::black_box(blake3::hash(c));
            }
            let hash = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut stored = 0u64;
            for c in set {
                stored += cctx
                    .compress(c)
                    .expect("zstd compresses")
                    .len()
                    .min(c.len()) as u64;
            }
            let zstd = t.elapsed().as_secs_f64();
            best[i] = (best[i].0.min(hash), best[i].1.min(zstd), stored);
        }
    }
    println!("chunker                 chunks    raw GB   BLAKE3 s   zstd {level} s   stored GB");
    for ((name, _), (set, (hash, zstd, stored))) in sets.iter().zip(chunks.iter().zip(&best)) {
        let raw: u64 = set.iter().map(|c| c.len() as u64).sum();
        println!(
            "{name:<22} {:>7} {:>9.3} {hash:>10.2} {zstd:>11.2} {:>11.3}",
            set.len(),
            raw as f64 / 1e9,
            *stored as f64 / 1e9
        );
    }
}
