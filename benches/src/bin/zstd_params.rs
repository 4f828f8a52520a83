//! `zstd_params IMAGE`: whether a zstd parameter set between the levels gives level 3's
//! size at level 1's speed on the chunks a backup of IMAGE (a raw disk) would store
//! (cut with the default chunker, holes dropped, duplicates once). Each set compresses
//! every chunk on one core, three times in turn; the fastest of the three is printed.
//! The answer (no) is in FORMAT.md, "Choosing the compression".

use std::time::Instant;

use zstd::zstd_safe::{CParameter, Strategy};

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: zstd_params RAW_IMAGE");
        std::process::exit(2);
    });
    let chunks = dedisk_benches::unique_chunks(&path);
    let raw: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    println!("{} unique chunks, {:.3} GB", chunks.len(), raw as f64 / 1e9);

    // (name, base level, parameters set on top of it)
    let mut sets: Vec<(String, i32, Vec<CParameter>)> =
        (1..=3).map(|l| (format!("level {l}"), l, vec![])).collect();
    for (h, c) in [
        (16, 15),
        (15, 15),
        (15, 14),
        (14, 15),
        (13, 14),
        (14, 14),
        (13, 13),
        (12, 13),
    ] {
        sets.push((
            format!("dfast hashLog {h} chainLog {c} minMatch 5"),
            3,
            vec![
                CParameter::Strategy(Strategy::ZSTD_dfast),
                CParameter::HashLog(h),
                CParameter::ChainLog(c),
                CParameter::MinMatch(5),
            ],
        ));
    }
    for h in [13, 14, 15] {
        sets.push((
            format!("fast hashLog {h} minMatch 5"),
            1,
            vec![
                CParameter::Strategy(Strategy::ZSTD_fast),
                CParameter::HashLog(h),
                CParameter::MinMatch(5),
            ],
        ));
    }
    let mut best = vec![f64::MAX; sets.len()];
    let mut stored = vec![0u64; sets.len()];
    for _round in 0..3 {
        for (k, (_, level, params)) in sets.iter().enumerate() {
            let mut c = zstd::bulk::Compressor::new(*level).expect("a compressor");
            for p in params {
                c.set_parameter(*p).expect("a valid parameter");
            }
            let started = Instant::now();
            stored[k] = chunks
                .iter()
                .map(|d| c.compress(d).expect("compress").len().min(d.len()) as u64)
                .sum();
            best[k] = best[k].min(started.elapsed().as_secs_f64());
        }
    }
    println!(
        "{:<42} {:>10} {:>10}",
        "parameters", "stored GB", "MB/s/core"
    );
    for (k, (name, _, _)) in sets.iter().enumerate() {
        println!(
            "{name:<42} {:>10.4} {:>10.0}",
            stored[k] as f64 / 1e9,
            raw as f64 / 1e6 / best[k]
        );
    }
}
