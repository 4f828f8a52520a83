//! Bad input gets one clear line and a non-zero exit, never a panic.

use crate::helpers::*;

#[test]
fn bad_input_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let img = dir.join("d.raw");
    std::fs::write(&img, vec![9u8; 100_000]).unwrap();

    fails(
        &[
            "backup",
            "--repo",
            p(&repo),
            "--name",
            "vm",
            "/no/such/disk.raw",
        ],
        1,
        "/no/such/disk.raw",
    );
    fails(
        &["snapshots", "--repo", p(dir)],
        1,
        "not a dedisk repository",
    );
    fails(&["snapshots"], 1, "--repo");
    fails(
        &["restore", "--repo", p(&repo), "deadbeef", p(&dir.join("x"))],
        1,
        "no snapshot matches",
    );
    fails(
        &[
            "restore",
            "--repo",
            p(&repo),
            "yesterday",
            p(&dir.join("x")),
        ],
        1,
        "does not name a snapshot",
    );
    fails(&["init", p(&repo)], 1, "not empty");
    fails(
        &["backup", "--repo", p(&repo), "--bogus-flag"],
        2,
        "--bogus-flag",
    );
    fails(
        &[
            "backup",
            "--repo",
            p(&repo),
            "--name",
            "vm",
            &format!("a={}", p(&img)),
            &format!("a={}", p(&img)),
        ],
        1,
        "twice",
    );

    backup(&repo, "vm", &[p(&img)]);
    fails(
        &[
            "restore",
            "--repo",
            p(&repo),
            "latest:nodisk",
            p(&dir.join("x")),
        ],
        1,
        "no disk \"nodisk\"",
    );
    // An existing file is never overwritten without --force.
    let existing = dir.join("existing.raw");
    std::fs::write(&existing, b"keep me").unwrap();
    fails(
        &["restore", "--repo", p(&repo), "latest", p(&existing)],
        1,
        "--force",
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    ok(&[
        "restore",
        "--repo",
        p(&repo),
        "latest",
        p(&existing),
        "--force",
    ]);
    assert_eq!(
        std::fs::read(&existing).unwrap(),
        std::fs::read(&img).unwrap()
    );
}

#[test]
fn a_block_device_smaller_than_the_disk_is_refused() {
    if !is_root() || !have("losetup") {
        eprintln!("SKIPPED: needs root and losetup");
        assert!(
            std::env::var_os("CI").is_none() || !is_root(),
            "losetup is required under CI"
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let img = random_image(dir, "d.raw", 3_000_000, 8 << 20);
    backup(&repo, "vm", &[p(&img)]);

    let small = dir.join("small.img");
    let big = dir.join("big.img");
    sh(&format!(
        "truncate -s 4M '{}'; truncate -s 16M '{}'",
        small.display(),
        big.display()
    ));
    let small_dev = sh(&format!("losetup --find --show '{}'", small.display()))
        .trim()
        .to_string();
    let big_dev = sh(&format!("losetup --find --show '{}'", big.display()))
        .trim()
        .to_string();
    // Fill the big device with junk: holes of the disk must come back as zeros.
    sh(&format!("head -c 16777216 /dev/urandom > '{}'", big_dev));
    let too_small = run(&["restore", "--repo", p(&repo), "latest", &small_dev]);
    let onto_big = run(&["restore", "--repo", p(&repo), "latest", &big_dev]);
    let restored = sh(&format!("head -c 8388608 '{}' | sha256sum", big_dev));
    sh(&format!("losetup -d {small_dev}; losetup -d {big_dev}"));

    let err = String::from_utf8_lossy(&too_small.stderr);
    assert_eq!(too_small.status.code(), Some(1), "{err}");
    assert!(
        err.contains("holds 4194304 bytes but the disk needs 8388608"),
        "{err}"
    );
    assert!(
        onto_big.status.success(),
        "{}",
        String::from_utf8_lossy(&onto_big.stderr)
    );
    assert!(
        restored.starts_with(&sha256(&img)),
        "device content differs from the disk"
    );
}

/// A repository filesystem that fills up mid-backup: a clear error, no snapshot, no
/// leftover temporary pack, and every earlier snapshot still restores.
#[test]
fn a_full_disk_fails_the_backup_cleanly() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to mount a small tmpfs");
        assert!(std::env::var_os("CI").is_none() || !is_root());
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let mnt = dir.join("small");
    std::fs::create_dir(&mnt).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=6m tmpfs '{}'",
        mnt.display()
    ));
    let repo = mnt.join("repo");
    ok(&["init", "--pack-size", "1", p(&repo)]);
    let small = random_image(dir, "small.raw", 1_000_000, 2 << 20);
    let big = random_image(dir, "big.raw", 12_000_000, 12_000_000);
    backup(&repo, "vm", &[p(&small)]);
    let out = run(&["backup", "--repo", p(&repo), "--name", "vm", p(&big)]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let tmp_left = std::fs::read_dir(repo.join("tmp")).unwrap().count();
    let snaps = ok_json(&["snapshots", "--repo", p(&repo)]);
    let restored = dir.join("small-back.raw");
    let restore = run(&["restore", "--repo", p(&repo), "latest", p(&restored)]);
    sh(&format!("umount '{}'", mnt.display()));

    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left on device") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(tmp_left, 0, "the failed backup's temporary pack is removed");
    assert_eq!(
        snaps["snapshots"].as_array().unwrap().len(),
        1,
        "no snapshot from the failed backup"
    );
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert_eq!(sha256(&restored), sha256(&small));
}

#[test]
fn json_progress_lines_come_before_the_summary_and_quiet_silences_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let img = random_image(d, "disk.raw", 6 << 20, 16 << 20);
    let out = ok(&[
        "--json",
        "--repo",
        p(&repo),
        "backup",
        "--name",
        "vm",
        &format!("vda={}", p(&img)),
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let (last, progress) = lines.split_last().unwrap();
    assert_eq!(last["type"], "summary", "{out}");
    assert!(!progress.is_empty(), "{out}");
    for p in progress {
        assert_eq!(p["type"], "progress");
        assert_eq!(p["command"], "backup");
        assert_eq!(p["disk"], "vda");
        assert_eq!(p["bytes_total"], 16 << 20);
    }
    let end = progress.last().unwrap();
    assert_eq!(end["done"], true);
    assert_eq!(end["bytes_done"], 16 << 20);
    assert_eq!(end["eta_seconds"], 0);

    let target = d.join("back.raw");
    let out = ok(&[
        "--json",
        "--repo",
        p(&repo),
        "restore",
        "latest",
        p(&target),
    ]);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "progress");
    assert_eq!(first["command"], "restore");
    // -q: no progress, only the summary.
    let out = ok(&[
        "--json",
        "-q",
        "--repo",
        p(&repo),
        "restore",
        "latest",
        p(&d.join("again.raw")),
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
}
