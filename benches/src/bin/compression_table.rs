//! `compression_table IMAGE`: how each zstd level, and each way of skipping zstd for
//! incompressible chunks, does on the chunks a backup of IMAGE (a raw disk) would store:
//! the image is cut with the default chunker, holes dropped, duplicate chunks counted
//! once, then every chunk compressed at each level on one core. Prints a table of
//! stored bytes (a chunk zstd does not shrink is stored raw, as the repository does)
//! and single-core compression speed. The result is in FORMAT.md, "Choosing the
//! compression".

use std::time::Instant;

/// Levels measured (negative: zstd's --fast=N).
const LEVELS: [i32; 6] = [-5, -1, 1, 2, 3, 4];

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: compression_table RAW_IMAGE");
        std::process::exit(2);
    });
    let chunks = dedisk_benches::unique_chunks(&path);
    let raw: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    println!(
        "{} unique chunks, {:.3} GB of data",
        chunks.len(),
        raw as f64 / 1e9
    );
    println!(
        "{:<34} {:>12} {:>7} {:>10} {:>12}",
        "method", "stored GB", "ratio", "MB/s/core", "raw chunks"
    );
    let row = |name: &str, stored: u64, secs: f64, raw_chunks: usize| {
        println!(
            "{name:<34} {:>12.3} {:>7.3} {:>10.0} {:>12}",
            stored as f64 / 1e9,
            raw as f64 / stored as f64,
            raw as f64 / 1e6 / secs,
            raw_chunks
        );
    };
    // Each level on every chunk.
    let mut per_level: Vec<Vec<usize>> = Vec::new();
    for level in LEVELS {
        let mut c = zstd::bulk::Compressor::new(level).unwrap();
        let started = Instant::now();
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|d| c.compress(d).unwrap().len().min(d.len()))
            .collect();
        let secs = started.elapsed().as_secs_f64();
        let raw_chunks = chunks
            .iter()
            .zip(&sizes)
            .filter(|(d, s)| **s == d.len())
            .count();
        row(
            &format!("zstd {level}"),
            sizes.iter().map(|s| *s as u64).sum(),
            secs,
            raw_chunks,
        );
        per_level.push(sizes);
    }
    // Skipping zstd where a cheap test says the chunk is incompressible, then level L.
    for (name, test) in [
        (
            "entropy of 3 x 1 KiB > 7.5 bit/B",
            (|d: &[u8]| entropy_samples(d, 1024) > 7.5) as fn(&[u8]) -> bool,
        ),
        ("entropy of 3 x 1 KiB > 7.7 bit/B", |d: &[u8]| {
            entropy_samples(d, 1024) > 7.7
        }),
        ("entropy of 3 x 4 KiB > 7.9 bit/B", |d: &[u8]| {
            entropy_samples(d, 4096) > 7.9
        }),
    ] {
        for (li, level) in LEVELS
            .iter()
            .enumerate()
            .filter(|(_, l)| [1, 3].contains(*l))
        {
            let mut c = zstd::bulk::Compressor::new(*level).unwrap();
            let started = Instant::now();
            let mut stored = 0u64;
            let mut skipped = 0usize;
            for d in &chunks {
                if test(d) {
                    stored += d.len() as u64;
                    skipped += 1;
                } else {
                    stored += c.compress(d).unwrap().len().min(d.len()) as u64;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            // What the test gave away: chunks it skipped that zstd would have shrunk.
            let lost: u64 = chunks
                .iter()
                .zip(&per_level[li])
                .filter(|(d, _)| test(d))
                .map(|(d, s)| (d.len() - s) as u64)
                .sum();
            row(&format!("{name}, else zstd {level}"), stored, secs, skipped);
            println!(
                "{:<34} (skipped chunks zstd would have shrunk by {:.1} MB)",
                "",
                lost as f64 / 1e6
            );
        }
    }
}

/// The lowest Shannon entropy (bits per byte) of three samples of `n` bytes (the start,
/// the middle and the end of the chunk): one compressible part is enough to compress.
/// Random bytes measure just under 8: 1 KiB of them about 7.82, 4 KiB about 7.95.
fn entropy_samples(d: &[u8], n: usize) -> f64 {
    if d.len() < 3 * n {
        return entropy(d);
    }
    let mid = d.len() / 2 - n / 2;
    [&d[..n], &d[mid..mid + n], &d[d.len() - n..]]
        .iter()
        .map(|s| entropy(s))
        .fold(f64::INFINITY, f64::min)
}

fn entropy(s: &[u8]) -> f64 {
    let mut hist = [0u32; 256];
    for b in s {
        hist[*b as usize] += 1;
    }
    let n = s.len() as f64;
    hist.iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum()
}
