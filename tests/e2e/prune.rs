//! Prune and locks: space comes back, kept snapshots stay byte-identical, and a prune
//! killed with SIGKILL at any moment (a backup waiting beside it) loses nothing.

use std::path::{Path, PathBuf};

use crate::helpers::*;

/// Overwrites `len` bytes of `disk` at `at` MiB with fresh random data.
fn scribble(disk: &Path, at_mib: u64, len_mib: u64) {
    sh(&format!(
        "head -c {}M /dev/urandom | dd of='{}' bs=1M seek={at_mib} conv=notrunc status=none",
        len_mib,
        disk.display()
    ));
}

fn pack_bytes(repo: &Path) -> u64 {
    pack_files(repo)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Backs up `disk` as VM `vm`; returns (snapshot short id, sha256 of the disk then).
fn backup_hashed(repo: &Path, vm: &str, disk: &Path) -> (String, String) {
    let id = backup_id(repo, vm, &[&format!("vda={}", disk.display())]);
    (id, sha256(disk))
}

/// Prunes everything unreferenced, then checks a dry run finds nothing more to do.
fn prune_to_the_end(repo: &Path) {
    ok(&["--repo", p(repo), "prune", "-q", "--max-unused", "0"]);
    let dry = ok_json(&[
        "--repo",
        p(repo),
        "prune",
        "--json",
        "--dry-run",
        "--max-unused",
        "0",
    ]);
    assert_eq!(dry["report"]["packs_deleted"], 0, "{dry}");
}

fn restores_identically(dir: &Path, repo: &Path, kept: &[(String, String)]) {
    for (id, hash) in kept {
        let out = dir.join(format!("check-{id}.raw"));
        let _ = std::fs::remove_file(&out);
        restore(repo, &format!("{id}:vda"), &out);
        assert_eq!(&sha256(&out), hash, "snapshot {id}");
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn forget_with_prune_reclaims_space_and_kept_snapshots_restore() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &["--pack-size", "1"]);
    let disk = random_image(d, "disk.raw", 24 << 20, 32 << 20);
    let mut snaps = vec![backup_hashed(&repo, "vm", &disk)];
    for round in 0..3 {
        scribble(&disk, round * 6, 6);
        snaps.push(backup_hashed(&repo, "vm", &disk));
    }
    let before = pack_bytes(&repo);
    let files_before = pack_files(&repo);

    // A dry run changes nothing but says what it would reclaim.
    let dry = ok_json(&["--repo", p(&repo), "prune", "--json", "--dry-run"]);
    assert_eq!(
        dry["report"]["packs_deleted"], 0,
        "nothing is unreferenced yet: {dry}"
    );
    ok(&["--repo", p(&repo), "forget", "--keep-last", "2"]);
    let dry = ok_json(&["--repo", p(&repo), "prune", "--json", "--dry-run"]);
    assert!(
        dry["report"]["packs_deleted"].as_u64().unwrap() > 0,
        "{dry}"
    );
    assert_eq!(pack_files(&repo), files_before);

    let out = ok(&["--repo", p(&repo), "forget", "--keep-last", "1", "--prune"]);
    assert!(out.contains("reclaiming"), "{out}");
    let after = pack_bytes(&repo);
    // Three of four generations of 6 MiB of new data, plus the untouched parts the
    // first snapshot alone held, are gone.
    assert!(after < before - (12 << 20), "{before} -> {after} bytes");
    ok(&["--repo", p(&repo), "verify", "--read-data"]);
    restores_identically(d, &repo, &snaps[3..]);
    // Packs under the 10% threshold kept some dead chunks; --max-unused 0 takes them too,
    // and then there is nothing left to do.
    prune_to_the_end(&repo);
    restores_identically(d, &repo, &snaps[3..]);
}

#[test]
fn prune_killed_at_random_moments_with_a_backup_beside_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &["--pack-size", "1"]);
    let disk = random_image(d, "disk.raw", 40 << 20, 48 << 20);
    let mut kept = vec![backup_hashed(&repo, "vm", &disk)];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut killed = 0;
    for round in 0..10u64 {
        // Each night: change the disk, back it up, keep the last two, prune.
        scribble(&disk, (round * 13) % 28, 12);
        kept.push(backup_hashed(&repo, "vm", &disk));
        ok(&["--repo", p(&repo), "forget", "-q", "--keep-last", "2"]);
        kept.drain(..kept.len() - 2);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay_ms = seed % 30; // a prune here takes about 20-80 ms
        let mut prune = dedisk()
            .args(["--repo", p(&repo), "prune", "-q", "--max-unused", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Every other night, the next backup starts beside the prune and waits for it.
        let beside = (round % 2 == 0).then(|| {
            scribble(&disk, 41, 1);
            let hash = sha256(&disk);
            let child = dedisk()
                .args([
                    "--repo",
                    p(&repo),
                    "backup",
                    "--json",
                    "-q",
                    "--name",
                    "vm",
                    &format!("vda={}", disk.display()),
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (child, hash)
        });
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if prune.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = prune.kill(); // SIGKILL, whether it finished or not
        let _ = prune.wait();
        if let Some((child, hash)) = beside {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "backup beside prune: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            kept.push((v["snapshot"].as_str().unwrap()[..8].to_string(), hash));
        }
        ok(&["--repo", p(&repo), "verify", "--read-data"]);
        restores_identically(d, &repo, &kept);
    }
    eprintln!("{killed} of 10 prunes were killed while running");
    assert!(
        killed >= 2,
        "only {killed} of 10 prunes were killed while running"
    );
    // The next prune finishes the job.
    prune_to_the_end(&repo);
    ok(&["--repo", p(&repo), "verify", "--read-data"]);
    restores_identically(d, &repo, &kept);
}

fn write_lock(repo: &Path, name: &str, kind: &str, host: &str, pid: u32) -> PathBuf {
    let path = repo.join("locks").join(format!("{name}.json"));
    std::fs::write(
        &path,
        format!(r#"{{"kind":"{kind}","hostname":"{host}","pid":{pid},"time":"2026-11-22T03:00:00Z","command":"prune"}}"#),
    )
    .unwrap();
    path
}

#[test]
fn locks_exclude_stale_ones_clear_foreign_ones_are_reported_and_unlock_removes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let disk = random_image(d, "disk.raw", 1 << 20, 4 << 20);
    let host = sh("hostname").trim().to_string();

    // A prune of a process that no longer runs on this host: cleared, the backup runs.
    let stale = write_lock(&repo, "stale", "exclusive", &host, 4_000_000);
    backup(&repo, "vm", &[p(&disk)]);
    assert!(!stale.exists());

    // Another host's prune: reported, not touched; the backup gives up after --lock-wait.
    let foreign = write_lock(&repo, "foreign", "exclusive", "backup-host-2", 1234);
    let err = fails(
        &[
            "--repo",
            p(&repo),
            "--lock-wait",
            "1",
            "backup",
            "-q",
            "--name",
            "vm",
            p(&disk),
        ],
        1,
        "exclusive lock of `dedisk prune` (pid 1234 on backup-host-2",
    );
    assert!(err.contains("dedisk unlock"), "{err}");
    assert!(foreign.exists());
    // A shared lock held elsewhere lets other backups and a prune in (FORMAT.md 15).
    std::fs::remove_file(&foreign).unwrap();
    write_lock(&repo, "reader", "shared", "backup-host-2", 1234);
    backup(&repo, "vm", &[p(&disk)]);
    ok(&["--repo", p(&repo), "--lock-wait", "0", "prune"]);
    // Another host's lock is only removed with --force, and named in a warning.
    let out = ok(&["--repo", p(&repo), "unlock"]);
    assert!(out.contains("0 lock(s) removed, 1 kept"), "{out}");
    let out = run(&["--repo", p(&repo), "unlock", "--force"]);
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(text.contains("1 lock(s) removed"), "{text}");
    assert!(
        err.contains("backup-host-2") && err.contains("may now lose data"),
        "{err}"
    );
    ok(&["--repo", p(&repo), "--lock-wait", "0", "prune", "-q"]);
    assert_eq!(
        std::fs::read_dir(repo.join("locks")).unwrap().count(),
        0,
        "every lock released"
    );
}
