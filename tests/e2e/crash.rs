//! A backup stopped at any moment (SIGKILL, Ctrl-C) leaves no snapshot and a working
//! repository, and the next backup reuses what the stopped one made durable.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Starts a one-worker backup of `img` into `repo` (1 MiB packs) and returns once it has
/// made `packs` pack directories durable, i.e. well into the backup.
fn backup_until_packs(repo: &std::path::Path, img: &std::path::Path, packs: usize) -> Child {
    let mut child = dedisk()
        .args([
            "backup",
            "--repo",
            p(repo),
            "--name",
            "vm",
            "-q",
            "--workers",
            "1",
            p(img),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(repo.join("packs")).unwrap().count() < packs {
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup finished before it could be stopped"
        );
        assert!(Instant::now() < deadline, "no packs appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// The next backup succeeds, reuses chunks the stopped one stored, and restores exactly.
fn next_backup_reuses_and_restores(
    dir: &std::path::Path,
    repo: &std::path::Path,
    img: &std::path::Path,
) {
    assert_eq!(
        snapshot_files(repo).len(),
        0,
        "a stopped backup is not a snapshot"
    );
    let done = ok_json(&["backup", "--repo", p(repo), "--name", "vm", p(img)]);
    let stats = &done["disks"][0]["stats"];
    assert!(
        stats["new_bytes"].as_u64().unwrap() < stats["data_bytes"].as_u64().unwrap(),
        "chunks the stopped run made durable are reused: {stats}"
    );
    let out = dir.join("out.raw");
    restore(repo, "latest", &out);
    assert_eq!(sha256(&out), sha256(img));
}

#[test]
fn kill_9_mid_backup_then_backup_and_restore_succeed() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &["--pack-size", "1"]);
    let img = random_image(dir, "big.raw", 400_000_000, 400_000_000);
    let mut child = backup_until_packs(&repo, &img, 3);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let list = ok_json(&["snapshots", "--repo", p(&repo)]);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 0);
    next_backup_reuses_and_restores(dir, &repo, &img);
}

#[test]
fn ctrl_c_stops_a_backup_cleanly_and_the_next_one_reuses_its_packs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &["--pack-size", "1"]);
    let img = random_image(dir, "big.raw", 300_000_000, 300_000_000);
    let child = backup_until_packs(&repo, &img, 2);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("no snapshot was written"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(repo.join("tmp")).unwrap().count(),
        0,
        "temporary pack removed"
    );
    next_backup_reuses_and_restores(dir, &repo, &img);
}
