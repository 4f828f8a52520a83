//! `random_read REPO SNAPSHOT[:LABEL] [COUNT]`: first-byte latency of random 4 KiB reads
//! through dedisk's disk reader (the read path of `mount` and `serve-nbd`), each on a
//! fresh reader after dropping the page cache (needs root), so every read is cold:
//! manifest nodes, index lookups and the chunk all come from disk. Prints each latency
//! in milliseconds, then the median and the worst.

use std::time::Instant;

use engine::read::DiskReader;

fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "3").is_err() {
        eprintln!("cannot drop caches (not root?): reads may be warm");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: random_read REPO SNAPSHOT[:LABEL] [COUNT]");
        std::process::exit(2);
    }
    // An encrypted repository is unlocked with DEDISK_PASSWORD(_FILE/_COMMAND).
    let access = engine::secret::KeyAccess {
        password: engine::secret::PasswordFrom::from_env(),
        ..Default::default()
    };
    let repo = std::sync::Arc::new(
        engine::secret::open_repository(
            &repo_format::Location::parse(&args[0]).expect("repository location"),
            &access,
        )
        .expect("open repository"),
    );
    let (spec, label) = engine::job::select::split_label(&args[1]);
    let (_, snap) = engine::job::select::resolve_snapshot(&repo, spec).expect("snapshot");
    let disk = snap
        .disks
        .iter()
        .find(|d| label.is_none_or(|l| l == d.label))
        .expect("disk");
    let count: usize = args.get(2).map_or(20, |c| c.parse().expect("COUNT"));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut ms = Vec::new();
    for _ in 0..count {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let offset = (seed % (disk.size_bytes / 4096)) * 4096;
        drop_caches();
        let t = Instant::now();
        let mut reader = DiskReader::new(repo.clone(), disk.manifest).expect("reader");
        let mut buf = [0u8; 4096];
        reader.read_at(offset, &mut buf).expect("read");
        let e = t.elapsed().as_secs_f64() * 1000.0;
        println!("offset {offset:>14}  {e:7.2} ms");
        ms.push(e);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "median {:.2} ms, worst {:.2} ms over {count} cold reads",
        ms[count / 2],
        ms[count - 1]
    );
}
