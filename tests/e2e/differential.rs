//! `restore --differential`: over an older night, over junk, with `--since` and
//! `--check`, onto a loop device, and refused while something uses the target.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::helpers::*;

/// Bytes that differ between two files of one size, as `cmp -l` counts them.
fn differing_bytes(a: &Path, b: &Path) -> u64 {
    let out = Command::new("cmp")
        .args(["-l", p(a), p(b)])
        .stderr(Stdio::null())
        .output()
        .expect("cmp runs");
    out.stdout.iter().filter(|&&c| c == b'\n').count() as u64
}

/// Overwrites `len` bytes at `offset` of `file` with random bytes (or zeros).
fn scribble(file: &Path, offset: u64, len: u64, zeros: bool) {
    let src = if zeros { "/dev/zero" } else { "/dev/urandom" };
    sh(&format!(
        "dd if={src} of='{}' bs=4096 seek={} count={} conv=notrunc status=none",
        file.display(),
        offset / 4096,
        len / 4096
    ));
}

struct Nights {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    repo: PathBuf,
    old: PathBuf,
    new: PathBuf,
    old_id: String,
    new_id: String,
}

/// A 64 MiB disk with 40 MiB of data backed up twice: the second night rewrote five
/// 512 KiB ranges, zeroed a 2 MiB range and wrote 1 MiB where the first had a hole.
fn two_nights() -> Nights {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let repo = new_repo(&d, &[]);
    let old = random_image(&d, "old.raw", 40 << 20, 64 << 20);
    let new = d.join("new.raw");
    std::fs::copy(&old, &new).unwrap();
    for i in 0..5u64 {
        scribble(&new, (3 + i * 7) << 20, 512 << 10, false);
    }
    scribble(&new, 20 << 20, 2 << 20, true);
    scribble(&new, 50 << 20, 1 << 20, false);
    let old_id = backup_id(&repo, "vm", &[&format!("vda={}", p(&old))]);
    let new_id = backup_id(&repo, "vm", &[&format!("vda={}", p(&new))]);
    Nights {
        _dir: dir,
        dir: d,
        repo,
        old,
        new,
        old_id,
        new_id,
    }
}

fn diff_restore(n: &Nights, target: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "--repo",
        p(&n.repo),
        "restore",
        &n.new_id,
        p(target),
        "--differential",
    ];
    args.extend_from_slice(extra);
    let v = ok_json(&args);
    v["disks"][0]["report"].clone()
}

#[test]
fn over_the_older_night_writes_about_what_differs_and_since_reads_nothing() {
    let n = two_nights();
    let target = n.dir.join("target.raw");
    restore(&n.repo, &n.old_id, &target);
    let differ = differing_bytes(&target, &n.new);
    assert!(differ > 4 << 20, "the nights differ by {differ} bytes");

    let r = diff_restore(&n, &target, &[]);
    assert_eq!(sha256(&target), sha256(&n.new));
    let written = r["written_bytes"].as_u64().unwrap();
    let zeroed = r["zeroed_bytes"].as_u64().unwrap();
    // Chunks are cut at content-defined points, so a write spills to the chunk edges:
    // a small factor, never the disk.
    assert!(
        written + zeroed <= 3 * differ && written >= differ / 2,
        "wrote {written} + zeroed {zeroed} for {differ} differing bytes"
    );
    assert!(zeroed >= 2 << 20, "the zeroed range was made a hole: {r}");
    assert!(r["read_bytes"].as_u64().unwrap() > 0);
    assert_eq!(r["mode"], "compare");

    // Again: nothing differs now, nothing is written.
    let r = diff_restore(&n, &target, &[]);
    assert_eq!(r["written_bytes"], 0, "{r}");
    assert_eq!(r["zeroed_bytes"], 0, "{r}");

    // --since: the older night's restore brought forward without reading it.
    let target2 = n.dir.join("target2.raw");
    restore(&n.repo, &n.old_id, &target2);
    let r = diff_restore(&n, &target2, &["--since", &n.old_id]);
    assert_eq!(sha256(&target2), sha256(&n.new));
    assert_eq!(r["mode"], "since");
    assert_eq!(r["read_bytes"], 0, "{r}");
    assert!(
        r["written_bytes"].as_u64().unwrap() <= 3 * differ,
        "{r} for {differ}"
    );
    // --since the snapshot itself writes nothing; --check reads it all back.
    let r = diff_restore(&n, &target2, &["--since", &n.new_id, "--check"]);
    assert_eq!(r["written_bytes"], 0, "{r}");
    assert_eq!(r["checked_bytes"], 64 << 20);
    assert!(r["read_bytes"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn over_junk_gives_the_snapshot_and_a_false_since_is_caught_by_check() {
    let n = two_nights();
    let junk = random_image(&n.dir, "junk.raw", 64 << 20, 64 << 20);
    let r = diff_restore(&n, &junk, &["--check"]);
    assert_eq!(sha256(&junk), sha256(&n.new));
    assert_eq!(r["checked_bytes"], 64 << 20);
    assert_eq!(r["unchanged_bytes"], 0, "junk matches no chunk: {r}");

    // The admin says the target holds the older night, but it holds junk: --since
    // writes only the changes, and --check finds the rest differs.
    let junk = random_image(&n.dir, "junk2.raw", 64 << 20, 64 << 20);
    let err = fails(
        &[
            "--repo",
            p(&n.repo),
            "restore",
            &n.new_id,
            p(&junk),
            "--differential",
            "--since",
            &n.old_id,
            "--check",
        ],
        1,
        "differs from the snapshot after the restore",
    );
    assert!(err.lines().count() <= 2, "{err}");
    // Compare mode repairs it.
    diff_restore(&n, &junk, &[]);
    assert_eq!(sha256(&junk), sha256(&n.new));
    let _ = &n.old;
}

#[test]
fn wrong_targets_are_refused_in_one_line_and_left_alone() {
    let n = two_nights();
    let args = |t: &Path| {
        vec![
            "--repo".to_string(),
            p(&n.repo).to_string(),
            "restore".into(),
            n.new_id.clone(),
            p(t).to_string(),
            "--differential".into(),
        ]
    };
    let run_args = |t: &Path, code: i32, needle: &str| {
        let a = args(t);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        fails(&a, code, needle)
    };
    // Missing, wrong size, a folder.
    run_args(&n.dir.join("nope.raw"), 1, "nope.raw");
    let small = random_image(&n.dir, "small.raw", 1 << 20, 32 << 20);
    run_args(
        &small,
        1,
        "holds 33554432 bytes but the disk needs 67108864",
    );
    let big = random_image(&n.dir, "big.raw", 1 << 20, 65 << 20);
    run_args(&big, 1, "same size");
    run_args(&n.dir, 1, "not a regular file or block device");
    // A symlink another user made is not written through without --force.
    if is_root() {
        let real = n.dir.join("real.raw");
        restore(&n.repo, &n.old_id, &real);
        let link = n.dir.join("link.raw");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        sh(&format!("chown -h nobody '{}'", link.display()));
        let before = sha256(&real);
        run_args(&link, 1, "is a symlink");
        assert_eq!(sha256(&real), before);
        let mut a = args(&link);
        a.push("--force".into());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ok(&a);
        assert_eq!(sha256(&real), sha256(&n.new));
    }

    // In use by a real QEMU process (qemu-nbd locks and holds its image).
    if !have("qemu-nbd") {
        assert!(
            std::env::var_os("CI").is_none(),
            "qemu-nbd is required under CI"
        );
        eprintln!("SKIPPED: the in-use part needs qemu-nbd");
        return;
    }
    let target = n.dir.join("busy.raw");
    restore(&n.repo, &n.old_id, &target);
    let before = sha256(&target);
    let sock = n.dir.join("nbd.sock");
    let mut qemu = Command::new("qemu-nbd")
        .args(["-f", "raw", "-k", p(&sock), "-x", "vda", p(&target)])
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let err = run_args(&target, 1, "is in use");
    assert!(err.contains("qemu-nbd") || err.contains("lock"), "{err}");
    qemu.kill().unwrap();
    qemu.wait().unwrap();
    assert_eq!(sha256(&target), before);

    if !is_root() || !have("losetup") {
        assert!(
            std::env::var_os("CI").is_none(),
            "losetup is required under CI"
        );
        return;
    }
    // Attached to a loop device: refused too.
    let dev = sh(&format!("losetup --find --show '{}'", target.display()));
    let dev = dev.trim().to_string();
    let err = run_args(&target, 1, "is in use");
    assert!(err.contains(&dev), "{err}");
    sh(&format!("losetup -d {dev}"));
    diff_restore(&n, &target, &[]);
    assert_eq!(sha256(&target), sha256(&n.new));
}

#[test]
fn onto_a_block_device_only_the_differences_are_written() {
    if !is_root() || !have("losetup") {
        assert!(
            std::env::var_os("CI").is_none(),
            "losetup is required under CI"
        );
        eprintln!("SKIPPED: needs root and losetup");
        return;
    }
    let n = two_nights();
    // A device a little larger than the disk: the rest is not touched.
    let backing = random_image(&n.dir, "dev.raw", 0, 80 << 20);
    scribble(&backing, 70 << 20, 1 << 20, false);
    let tail_before = sh(&format!(
        "tail -c $((10 << 20)) '{}' | sha256sum",
        backing.display()
    ));
    let dev = sh(&format!("losetup --find --show '{}'", backing.display()));
    let dev = PathBuf::from(dev.trim());
    restore(&n.repo, &n.old_id, &dev);
    let v = diff_restore(&n, &dev, &["--check"]);
    sh(&format!("losetup -d {}", dev.display()));
    let head = sh(&format!(
        "head -c $((64 << 20)) '{}' | sha256sum",
        backing.display()
    ));
    assert_eq!(head.split_whitespace().next().unwrap(), sha256(&n.new));
    let tail_after = sh(&format!(
        "tail -c $((10 << 20)) '{}' | sha256sum",
        backing.display()
    ));
    assert_eq!(tail_before, tail_after, "bytes past the disk untouched");
    assert!(v["zeroed_bytes"].as_u64().unwrap() >= 2 << 20, "{v}");
    assert!(v["written_bytes"].as_u64().unwrap() < 16 << 20, "{v}");
}

#[test]
fn from_an_object_store_both_modes_give_the_snapshot() {
    let Some((bucket, _cluster)) = crate::s3::bucket() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = crate::s3::new_s3_repo(&bucket, "differential");
    let old = random_image(d, "old.raw", 12 << 20, 16 << 20);
    let new = d.join("new.raw");
    std::fs::copy(&old, &new).unwrap();
    scribble(&new, 2 << 20, 1 << 20, false);
    scribble(&new, 8 << 20, 1 << 20, true);
    let old_id = backup_id(&repo, "vm", &[&format!("vda={}", p(&old))]);
    let new_id = backup_id(&repo, "vm", &[&format!("vda={}", p(&new))]);
    for since in [None, Some(old_id.as_str())] {
        let target = d.join("t.raw");
        std::fs::copy(&old, &target).unwrap();
        let mut args = vec![
            "--repo",
            p(&repo),
            "restore",
            &new_id,
            p(&target),
            "--differential",
            "--check",
        ];
        if let Some(s) = since {
            args.extend(["--since", s]);
        }
        let v = ok_json(&args);
        assert_eq!(sha256(&target), sha256(&new), "{v}");
        let written = v["disks"][0]["report"]["written_bytes"].as_u64().unwrap();
        assert!(written < 4 << 20, "{v}");
    }
}
