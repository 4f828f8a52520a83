//! Per-stage throughput: chunkers, zero detection, BLAKE3, zstd.
//!
//! Input: 64 MiB generated from a fixed seed, laid out like a VM disk's allocated data:
//! 4 KiB blocks in runs of 1-40 blocks, 20 % all-zero runs, 20 % repetitive text
//! (compresses ~10x), 60 % pseudo-random bytes (incompressible). Same bytes every run.
//!
//! Run: `cargo bench -p dedisk-benches` (add `-- --save-baseline NAME` / `--baseline NAME`
//! to compare against a saved run).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::chunk::{is_zero, Cut, Cutter};
use repo_format::{ChunkerAlgorithm, ChunkerParams};

fn disk_like(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut at = 0;
    while at < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let end = (at + 4096 * (1 + (x % 40) as usize)).min(len);
        match x % 5 {
            0 => {}
            1 => out[at..end]
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = b"log line 42: ok\n"[i % 16]),
            _ => {
                let mut y = x;
                for b in &mut out[at..end] {
                    y = y
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    *b = (y >> 56) as u8;
                }
            }
        }
        at = end;
    }
    out
}

fn stages(c: &mut Criterion) {
    let data = disk_like(64 << 20);
    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for alg in [
        ChunkerAlgorithm::AlignedCdc,
        ChunkerAlgorithm::Fastcdc,
        ChunkerAlgorithm::Fixed,
    ] {
        let params = ChunkerParams::default_for(alg);
        g.bench_function(format!("cut/{alg}"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                let mut c = Cutter::new(params);
                let mut out = |cut: Cut| {
                    if let Cut::Chunk { data, .. } = cut {
                        n += data.len();
                    }
                };
                for piece in data.chunks(4 << 20) {
                    c.feed(piece, &mut out);
                }
                c.finish(&mut out);
                n
            })
        });
    }
    g.bench_function("is_zero", |b| {
        b.iter(|| data.chunks(4096).filter(|b| is_zero(b)).count())
    });
    g.bench_function("blake3/64k-chunks", |b| {
        b.iter(|| {
            data.chunks(64 << 10)
                .map(|c| blake3::hash(c).as_bytes()[0] as u64)
                .sum::<u64>()
        })
    });
    for level in [1, 3] {
        g.bench_function(format!("zstd-{level}/compress-64k"), |b| {
            let mut z = zstd::bulk::Compressor::new(level).unwrap();
            b.iter(|| {
                data.chunks(64 << 10)
                    .map(|c| z.compress(c).unwrap().len())
                    .sum::<usize>()
            })
        });
    }
    let compressed: Vec<(Vec<u8>, usize)> = data
        .chunks(64 << 10)
        .map(|c| (zstd::bulk::compress(c, 3).unwrap(), c.len()))
        .collect();
    g.bench_function("zstd/decompress-64k", |b| {
        b.iter(|| {
            compressed
                .iter()
                .map(|(c, n)| zstd::bulk::decompress(c, *n).unwrap().len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
