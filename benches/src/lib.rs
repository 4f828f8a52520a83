//! Benchmarks live in benches/; see README.md. What several of them share is here.

use std::collections::HashSet;
use std::io::Read;

use engine::chunk::{Cut, Cutter};

/// The chunks a backup of the raw disk image at `path` would store, in memory: cut with
/// the default chunker, holes dropped, each distinct chunk once. Exits with a message
/// when the image cannot be read (these are command-line tools).
pub fn unique_chunks(path: &str) -> Vec<Vec<u8>> {
    unique_chunks_with(path, repo_format::ChunkerParams::default())
}

/// [`unique_chunks`] cut with `params`.
pub fn unique_chunks_with(path: &str, params: repo_format::ChunkerParams) -> Vec<Vec<u8>> {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1);
    });
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut seen = HashSet::new();
    let mut cutter = Cutter::new(params);
    let mut buf = vec![0u8; 4 << 20];
    let mut keep = |c: Cut| {
        if let Cut::Chunk { data, .. } = c {
            if seen.insert(blake3::hash(&data)) {
                chunks.push(data.to_vec());
            }
        }
    };
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        });
        if n == 0 {
            break;
        }
        cutter.feed(&buf[..n], &mut keep);
    }
    cutter.finish(&mut keep);
    chunks
}
