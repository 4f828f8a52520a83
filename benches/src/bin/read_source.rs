//! `read_source PATH [--no-direct]`: reads every allocated byte of a disk image through
//! dedisk's source readers (as `dedisk backup` does, minus chunking), with four reads in
//! flight on cloned readers, and prints `bytes seconds`. Used by read-images.sh to compare
//! each image format against the raw file it was made from.

use std::time::Instant;

use engine::source::{DiskSource, SourceOptions};

const READ_BYTES: usize = 4 << 20;
const READERS: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: read_source PATH [--no-direct]");
        std::process::exit(2);
    };
    let opts = SourceOptions {
        direct: !args.iter().any(|a| a == "--no-direct"),
        ..Default::default()
    };
    let mut opened = engine::source::open(path, None, &opts).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1);
    });
    let mut src = opened.disks.swap_remove(0).source;
    let size = src.size_bytes().unwrap_or(u64::MAX);
    // The extents first (metadata only), then READERS threads take every READERS-th
    // 4 MiB piece, as the backup reader keeps several reads in flight.
    let started = Instant::now();
    let mut pieces = Vec::new();
    let mut pos = 0;
    while let Some((s, e)) = src.next_data(pos).expect("next_data") {
        let mut at = s;
        while at < e.min(size) {
            let n = (e.min(size) - at).min(READ_BYTES as u64);
            pieces.push((at, n as usize));
            at += n;
        }
        pos = e;
        if pos >= size {
            break;
        }
    }
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..READERS)
            .map(|r| {
                let mut reader: Box<dyn DiskSource> = src.clone_reader().expect("seekable source");
                let pieces = &pieces;
                s.spawn(move || {
                    let mut buf = engine::io::AlignedBuf::new(READ_BYTES);
                    let mut done = 0u64;
                    for (at, n) in pieces.iter().skip(r).step_by(READERS) {
                        done += reader.read_at(*at, &mut buf[..*n]).expect("read") as u64;
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("reader")).sum()
    });
    println!("{total} {:.3}", started.elapsed().as_secs_f64());
}
