//! Encrypted repositories (format version 2, issue 14): passwords and keys, no plaintext
//! at rest, tampering found and named, rollbacks noticed, and both frozen fixtures open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::helpers::*;

/// Every file of the repository with its bytes (to prove nothing was written).
fn tree(repo: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn with_password(password: &str, args: &[&str]) -> std::process::Output {
    dedisk()
        .env("DEDISK_PASSWORD", password)
        .args(args)
        .output()
        .unwrap()
}

/// One line on stderr, exit 1, no panic, naming `needle`.
fn one_line_failure(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
}

#[test]
fn a_wrong_password_or_a_missing_key_fails_in_one_line_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let img = random_image(dir, "d.raw", 1 << 20, 4 << 20);
    backup(&repo, "vm", &[p(&img)]);
    let before = tree(&repo);
    let target = dir.join("out.raw");
    for args in [
        vec!["--repo", p(&repo), "snapshots"],
        vec!["--repo", p(&repo), "backup", "-q", "--name", "vm", p(&img)],
        vec!["--repo", p(&repo), "restore", "latest", p(&target)],
        vec!["--repo", p(&repo), "verify", "--read-data"],
        vec!["--repo", p(&repo), "prune"],
        vec!["--repo", p(&repo), "key", "add"],
    ] {
        one_line_failure(&with_password("not the password", &args), "wrong password");
    }
    // A key file given that is not there; no password at all and no terminal.
    let out = dedisk()
        .args([
            "--repo",
            p(&repo),
            "--key-file",
            p(&dir.join("gone.key")),
            "snapshots",
        ])
        .output()
        .unwrap();
    one_line_failure(&out, "gone.key: not found");
    let out = dedisk()
        .env_remove("DEDISK_PASSWORD")
        .stdin(std::process::Stdio::null())
        .args(["--repo", p(&repo), "snapshots"])
        .output()
        .unwrap();
    one_line_failure(&out, "DEDISK_PASSWORD");
    // Every key file gone: named as such, before any password is asked for.
    let keys = repo.join("keys");
    let saved = dir.join("keys.saved");
    std::fs::rename(&keys, &saved).unwrap();
    one_line_failure(&run(&["--repo", p(&repo), "snapshots"]), "no key file");
    std::fs::rename(&saved, &keys).unwrap();
    assert_eq!(tree(&repo), before, "nothing in the repository changed");
    assert!(!target.exists());
    // A password from a file or a command works like the variable.
    let pw = dir.join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let out = dedisk()
        .env_remove("DEDISK_PASSWORD")
        .env("DEDISK_PASSWORD_FILE", &pw)
        .args(["--repo", p(&repo), "snapshots"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dedisk()
        .env_remove("DEDISK_PASSWORD")
        .env("DEDISK_PASSWORD_COMMAND", format!("cat {}", p(&pw)))
        .args(["--repo", p(&repo), "snapshots"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes of a disk that hold `marker` many times, each copy between random bytes so that
/// zstd keeps it as a literal (a plaintext repository then holds it verbatim).
fn marked_disk(dir: &Path, name: &str, marker: &[u8], copies: usize) -> PathBuf {
    let noise = std::fs::read(random_image(dir, "noise", 4 << 20, 4 << 20)).unwrap();
    let mut bytes = Vec::new();
    for i in 0..copies {
        bytes.extend_from_slice(&noise[(i * 997) % (3 << 20)..][..3000]);
        bytes.extend_from_slice(marker);
    }
    bytes.resize(bytes.len().next_multiple_of(1 << 20) + (2 << 20), 0);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    path
}

fn files_holding(repo: &Path, needle: &[u8]) -> Vec<PathBuf> {
    tree(repo)
        .into_iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle))
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn no_file_of_an_encrypted_repository_holds_guest_data() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let marker = b"DEDISK-MARKER-9f2c1e: the guest's private key";
    let disk = marked_disk(dir, "guest.raw", marker, 2000);
    let plain_dir = dir.join("plain");
    std::fs::create_dir(&plain_dir).unwrap();
    let plain = new_repo(&plain_dir, &["--encryption", "none"]);
    let sealed = new_repo(dir, &[]);
    for night in 0..3 {
        // The marker moves each night: new chunks, new nodes, new snapshots.
        let disk = if night == 0 {
            disk.clone()
        } else {
            marked_disk(dir, &format!("guest{night}.raw"), marker, 2000 + night * 7)
        };
        for repo in [&plain, &sealed] {
            backup(
                repo,
                "guest-vm-name",
                &[&format!("guest-disk-label={}", p(&disk))],
            );
        }
    }
    // The check can fail: the unencrypted repository holds the marker and the VM name.
    assert!(!files_holding(&plain, marker).is_empty());
    assert!(!files_holding(&plain, b"guest-vm-name").is_empty());
    assert!(!files_holding(&plain, b"guest-disk-label").is_empty());
    // Needles long enough not to turn up by chance in megabytes of ciphertext.
    for needle in [&marker[..], b"guest-vm-name", b"guest-disk-label"] {
        let found = files_holding(&sealed, needle);
        assert!(
            found.is_empty(),
            "{:?} found in {found:?}",
            String::from_utf8_lossy(needle)
        );
    }
    // Nor does this host's cache (its index) hold it.
    assert!(files_holding(&cache_dir(), marker).is_empty());
    let out = ok(&["--repo", p(&sealed), "stats"]);
    assert!(out.contains("AES-256-GCM"), "{out}");
    let out = ok(&["--repo", p(&plain), "stats"]);
    assert!(out.contains("UNENCRYPTED"), "{out}");
}

/// Restores `snapshot` and says whether it gave `want`'s bytes; a failed restore is
/// fine (the damage was named), a wrong disk with exit 0 never is.
fn restore_is_right_or_fails(repo: &Path, dir: &Path, want: &Path) -> bool {
    let out = dir.join("tampered.raw");
    let _ = std::fs::remove_file(&out);
    let r = run(&[
        "--repo",
        p(repo),
        "restore",
        "--force",
        "-q",
        "latest",
        p(&out),
    ]);
    if r.status.success() {
        assert_eq!(
            sha256(&out),
            sha256(want),
            "a restore gave wrong bytes with exit 0"
        );
        true
    } else {
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!err.contains("panicked"), "{err}");
        false
    }
}

#[test]
fn flipping_any_byte_of_any_file_is_found_and_never_restores_wrong_bytes() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &["--pack-size", "1"]);
    let img = random_image(dir, "d.raw", 3 << 20, 6 << 20);
    backup(&repo, "vm", &[p(&img)]);
    let files: Vec<PathBuf> = tree(&repo).into_keys().collect();
    assert!(files.iter().any(|f| f.starts_with(repo.join("keys"))));
    let mut checked = 0;
    for file in &files {
        let good = std::fs::read(file).unwrap();
        let n = good.len();
        // The first and last bytes (headers, footers, MACs), and spread through the middle.
        let mut at: Vec<usize> = vec![0, 9, n / 3, n / 2, n - 30, n - 1];
        at.retain(|&i| i < n);
        at.dedup();
        for i in at {
            let mut bad = good.clone();
            bad[i] ^= 0x04;
            std::fs::write(file, &bad).unwrap();
            let out = run(&["--repo", p(&repo), "verify", "--read-data"]);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                out.status.code(),
                Some(1),
                "byte {i} of {} flipped, verify said: {text}",
                file.display()
            );
            assert!(!text.contains("panicked"), "{text}");
            // Named: the file itself, or the pack or snapshot by its id.
            let name = file.file_stem().unwrap().to_string_lossy();
            assert!(
                text.contains(&name[..8.min(name.len())])
                    || text.contains(&*file.to_string_lossy()),
                "byte {i} of {}: the damage is not named: {text}",
                file.display()
            );
            restore_is_right_or_fails(&repo, dir, &img);
            checked += 1;
        }
        std::fs::write(file, &good).unwrap();
    }
    assert!(checked > 20, "{checked} flips");
    ok(&["--repo", p(&repo), "verify", "--read-data"]);
}

#[test]
fn keys_are_added_changed_exported_imported_and_the_last_is_kept() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let img = random_image(dir, "d.raw", 1 << 20, 2 << 20);
    backup(&repo, "vm", &[p(&img)]);
    let keys = |pw: &str| -> Vec<String> {
        let out = with_password(pw, &["--json", "--repo", p(&repo), "key", "list"]);
        let v: serde_json::Value =
            serde_json::from_slice(out.stdout.trim_ascii_end()).expect("key list json");
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect()
    };
    let first = keys(PASSWORD);
    assert_eq!(first.len(), 1);
    let quick = ["--kdf-memory", "8", "--kdf-passes", "1", "--kdf-lanes", "1"];
    let add = |new: &str, label: &str| {
        let mut args = vec!["--repo", p(&repo), "key", "add", "--label", label];
        args.extend_from_slice(&quick);
        let out = dedisk()
            .env("DEDISK_NEW_PASSWORD", new)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    add("second password", "host-b");
    assert_eq!(keys(PASSWORD).len(), 2);
    assert!(
        with_password("second password", &["--repo", p(&repo), "snapshots"])
            .status
            .success()
    );
    // The first key goes; the second opens alone; removing it too is refused.
    ok(&["--repo", p(&repo), "key", "remove", &first[0]]);
    one_line_failure(&run(&["--repo", p(&repo), "snapshots"]), "wrong password");
    let last = keys("second password");
    let out = with_password(
        "second password",
        &["--repo", p(&repo), "key", "remove", &last[0]],
    );
    one_line_failure(&out, "last key");
    // passwd replaces the key that opened it.
    let mut args = vec!["--repo", p(&repo), "key", "passwd"];
    args.extend_from_slice(&quick);
    let out = dedisk()
        .env("DEDISK_PASSWORD", "second password")
        .env("DEDISK_NEW_PASSWORD", "third password")
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !with_password("second password", &["--repo", p(&repo), "snapshots"])
            .status
            .success()
    );
    assert!(
        with_password("third password", &["--repo", p(&repo), "snapshots"])
            .status
            .success()
    );
    // Export: a file and the paper form; then every key is lost and the paper form,
    // typed back in, makes a new one.
    let file = dir.join("master.key");
    let out = with_password(
        "third password",
        &["--repo", p(&repo), "key", "export", "--paper", p(&file)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paper = String::from_utf8_lossy(&out.stdout).into_owned();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::remove_dir_all(repo.join("keys")).unwrap();
    std::fs::create_dir(repo.join("keys")).unwrap();
    one_line_failure(&run(&["--repo", p(&repo), "snapshots"]), "no key file");
    let mut import = dedisk()
        .env("DEDISK_NEW_PASSWORD", "recovered")
        .args(["--repo", p(&repo), "key", "import", "-"])
        .args(quick)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    // Typed back in with its case and spacing changed.
    import
        .stdin
        .take()
        .unwrap()
        .write_all(paper.to_uppercase().replace(' ', "  ").as_bytes())
        .unwrap();
    let out = import.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = dir.join("got.raw");
    let out = with_password(
        "recovered",
        &["--repo", p(&repo), "restore", "latest", p(&got)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&got), sha256(&img));
    // The exported file imports too; a mistyped paper line is named.
    let out = dedisk()
        .env("DEDISK_NEW_PASSWORD", "from the file")
        .args(["--repo", p(&repo), "key", "import", p(&file)])
        .args(quick)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digit = paper.find("1: ").unwrap() + 3;
    let mut typo = paper.into_bytes();
    typo[digit] = if typo[digit] == b'0' { b'1' } else { b'0' };
    let mut import = dedisk()
        .env("DEDISK_NEW_PASSWORD", "x")
        .args(["--repo", p(&repo), "key", "import", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    import.stdin.take().unwrap().write_all(&typo).unwrap();
    let out = import.wait_with_output().unwrap();
    one_line_failure(&out, "line 1");
}

#[test]
fn a_key_kept_outside_the_repository_is_needed_to_open_it() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let key = dir.join("offsite.key");
    let repo = new_repo(dir, &["--key-file", p(&key)]);
    assert_eq!(
        std::fs::read_dir(repo.join("keys")).map_or(0, |d| d.count()),
        0
    );
    let img = random_image(dir, "d.raw", 1 << 20, 2 << 20);
    // Without the key file: named, no password tried.
    one_line_failure(
        &run(&["--repo", p(&repo), "backup", "-q", "--name", "vm", p(&img)]),
        "no key file",
    );
    ok(&[
        "--repo",
        p(&repo),
        "--key-file",
        p(&key),
        "backup",
        "-q",
        "--name",
        "vm",
        p(&img),
    ]);
    let got = dir.join("got.raw");
    let out = dedisk()
        .env("DEDISK_KEY_FILE", &key)
        .args(["--repo", p(&repo), "restore", "latest", p(&got)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&got), sha256(&img));
    // init never overwrites a key file.
    let other = dir.join("other");
    std::fs::create_dir(&other).unwrap();
    fails(
        &["init", "--key-file", p(&key), p(&other.join("repo"))],
        1,
        "already exists",
    );
}

#[test]
fn a_job_reads_its_password_once_from_its_password_file() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let repo = new_repo(d, &[]);
    let img = random_image(d, "web.raw", 1 << 20, 2 << 20);
    let job = d.join("job.toml");
    // A job file whose password comes from `password_line`, run with no DEDISK_PASSWORD.
    let run_job = |password_line: &str| {
        std::fs::write(
            &job,
            format!(
                "repository = \"repo\"\n{password_line}\n[[vm]]\nname = \"web01\"\ndisks = {{ vda = \"{}\" }}\n",
                img.display()
            ),
        )
        .unwrap();
        dedisk()
            .env_remove("DEDISK_PASSWORD")
            .args(["run", p(&job)])
            .output()
            .unwrap()
    };
    std::fs::write(d.join("pass"), format!("{PASSWORD}\n")).unwrap();
    let out = run_job("password_file = \"pass\"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot_files(&repo).len(), 1);
    // A wrong one: the job fails as a whole, naming the password.
    std::fs::write(d.join("pass"), "wrong\n").unwrap();
    let out = run_job("password_file = \"pass\"");
    assert_eq!(out.status.code(), Some(1));
    let report = std::fs::read_to_string(d.join("job.report.json")).unwrap();
    assert!(report.contains("wrong password"), "{report}");
    // password_command: run without a shell, its first line is the password.
    std::fs::write(d.join("right"), format!("{PASSWORD}\n")).unwrap();
    let out = run_job(&format!(
        "password_command = \"cat '{}'\"",
        d.join("right").display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot_files(&repo).len(), 2);
}

#[test]
fn a_deleted_or_rolled_back_snapshot_is_reported_by_verify() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let img = random_image(dir, "d.raw", 1 << 20, 2 << 20);
    let first = backup_id(&repo, "vm", &[p(&img)]);
    let second = backup_id(&repo, "vm", &[p(&img)]);
    let third = backup_id(&repo, "vm", &[p(&img)]);
    ok(&["--repo", p(&repo), "verify"]);
    // Each snapshot names its predecessor.
    let snaps = snapshot_files(&repo);
    let previous: Vec<String> = snaps
        .iter()
        .map(|s| {
            s["previous"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(8)
                .collect()
        })
        .collect();
    assert_eq!(previous, ["".to_string(), first.clone(), second.clone()]);
    // This host's own forget leaves a gap that is no attack.
    ok(&["--repo", p(&repo), "forget", "--keep-last", "2"]);
    ok(&["--repo", p(&repo), "verify"]);
    // Someone deletes the newest snapshot file: a rollback, reported every time.
    let newest = std::fs::read_dir(repo.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&third))
        .unwrap();
    std::fs::remove_file(newest).unwrap();
    for _ in 0..2 {
        let out = run(&["--repo", p(&repo), "verify"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("rolled back") && text.contains(&third),
            "{text}"
        );
    }
    // A gap in the middle (another host's forget, or a deletion) is a warning.
    // A newer backup is the new normal; then a gap in the middle (another host's
    // forget, or a deletion) is a warning: exit 3.
    backup_id(&repo, "vm", &[p(&img)]);
    ok(&["--repo", p(&repo), "verify"]);
    let mid = std::fs::read_dir(repo.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&second)
        })
        .unwrap();
    std::fs::remove_file(mid).unwrap();
    let out = run(&["--repo", p(&repo), "verify"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("predecessor {second} is gone")),
        "{err}"
    );
}

#[test]
fn frozen_v2_repository_still_opens_and_restores_and_v1_is_still_written() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    sh(&format!(
        "cp -r '{}/../tests/fixtures/repo-v2' '{}'",
        env!("CARGO_MANIFEST_DIR"),
        repo.display()
    ));
    let pw = "frozen fixture password";
    for (snap, hash) in [
        (
            "ca346156",
            "5698aa2f612d3f7354b56695a22459f7693a6ec7b0c7ca3331fa8215884446c6",
        ),
        (
            "0fafee56",
            "e1f16e7d089af6c911b32422aef76a57bad231da640a6e343e7061762229ff4d",
        ),
    ] {
        let out = t.path().join(format!("{snap}.raw"));
        let r = with_password(pw, &["restore", "--repo", p(&repo), snap, p(&out)]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(sha256(&out), hash, "snapshot {snap}");
    }
    assert!(
        with_password(pw, &["--repo", p(&repo), "verify", "--read-data"])
            .status
            .success()
    );
    // The version 1 fixture takes a new backup and stays version 1, unencrypted.
    let v1 = t.path().join("v1");
    sh(&format!(
        "cp -r '{}/../tests/fixtures/repo-v1' '{}'",
        env!("CARGO_MANIFEST_DIR"),
        v1.display()
    ));
    let img = random_image(t.path(), "d.raw", 1 << 20, 2 << 20);
    let out = run(&["--repo", p(&v1), "backup", "-q", "--name", "new", p(&img)]);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--repo", p(&v1), "stats"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("UNENCRYPTED"));
    let got = t.path().join("got.raw");
    restore(&v1, "new@latest", &got);
    assert_eq!(sha256(&got), sha256(&img));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v1.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["format_version"], 1);
}
