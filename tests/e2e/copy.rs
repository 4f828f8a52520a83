//! `dedisk copy`: snapshots from one repository into another under the target's own key
//! (a local repository into a second one, and into a bucket on the Garage cluster),
//! sending only what the target lacks; copying again sends nothing; every copy restores
//! identical and verifies clean; a wrong target password is one line.

use std::path::Path;

use crate::helpers::*;

const OTHER: &str = "the target's password";

/// `dedisk ARGS` as the holder of [`OTHER`] (for the repository and a copy's target);
/// its stdout, or a failed assertion with its stderr.
fn as_other(args: &[&str]) -> String {
    let out = dedisk()
        .env("DEDISK_PASSWORD", OTHER)
        .env("DEDISK_TO_PASSWORD", OTHER)
        .env("DEDISK_NEW_PASSWORD", OTHER)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dedisk {args:?}: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The last JSON line of [`as_other`] with `--json`.
fn other_json(args: &[&str]) -> serde_json::Value {
    let text = as_other(&[&["--json"], args].concat());
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// `dedisk init` at `at` under [`OTHER`] (cheap argon2id).
fn init_other(at: &Path) {
    as_other(&[
        "init",
        "--kdf-memory",
        "8",
        "--kdf-passes",
        "1",
        "--kdf-lanes",
        "1",
        p(at),
    ]);
}

/// The target repository DIR/target, encrypted under [`OTHER`].
fn new_target(dir: &Path) -> std::path::PathBuf {
    let target = dir.join("target");
    init_other(&target);
    target
}

/// `dedisk --repo FROM copy --to TO ARGS` with the target's password; the report.
fn copy(from: &Path, to: &Path, args: &[&str]) -> serde_json::Value {
    let out = dedisk()
        .env("DEDISK_TO_PASSWORD", OTHER)
        .args(["--json", "--repo", p(from), "copy", "--to", p(to)])
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "copy: {err}");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str::<serde_json::Value>(text.lines().last().unwrap()).unwrap()["report"]
        .clone()
}

/// The (VM, sha256 of the restored disk) of every snapshot in `repo` (under [`OTHER`]),
/// in the order `snapshots` lists them.
fn restored_shas(repo: &Path, dir: &Path) -> Vec<(String, String)> {
    let v = other_json(&["--repo", p(repo), "snapshots"]);
    let mut shas = Vec::new();
    for snap in v["snapshots"].as_array().unwrap() {
        let id = &snap["id"].as_str().unwrap()[..8];
        let file = dir.join("restored.raw");
        let _ = std::fs::remove_file(&file);
        as_other(&["--repo", p(repo), "restore", "-q", id, p(&file)]);
        shas.push((snap["name"].as_str().unwrap().to_string(), sha256(&file)));
    }
    shas
}

/// In the target (its password): the snapshots restore to `expect` (VM, sha256), in
/// order, and `verify --read-data` is clean.
fn restores_identical(to: &Path, dir: &Path, expect: &[(String, String)]) {
    assert_eq!(restored_shas(to, dir), expect);
    as_other(&["--repo", p(to), "verify", "--read-data"]);
}

/// Three nights of one VM into `from`; `to` gets them by copy, night by night.
fn copy_nights(from: &Path, to: &Path, dir: &Path) {
    let disk = random_image(dir, "vm.raw", 12 << 20, 16 << 20);
    let mut expect = Vec::new();
    for night in 0..3u64 {
        if night > 0 {
            sh(&format!(
                "dd if=/dev/urandom of='{}' bs=64k count=4 seek={} conv=notrunc status=none",
                disk.display(),
                night * 40
            ));
        }
        backup(from, "web01", &[&format!("vda={}", disk.display())]);
        expect.push(("web01".to_string(), sha256(&disk)));
        if night == 1 {
            let r = copy(from, to, &[]);
            let snaps = r["snapshots"].as_array().unwrap();
            assert_eq!(snaps.len(), 2, "{r}");
            assert!(r["bytes_sent"].as_u64().unwrap() > 12 << 20, "{r}");
        }
    }
    // The third night: only it is copied, and only what changed is sent.
    let r = copy(from, to, &["--name", "web01"]);
    let fresh: Vec<_> = r["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["already"] == false)
        .collect();
    assert_eq!(fresh.len(), 1, "{r}");
    assert!(r["bytes_sent"].as_u64().unwrap() < 4 << 20, "{r}");
    // Copying again is a no-op.
    let r = copy(from, to, &[]);
    assert_eq!(r["chunks_sent"], 0, "{r}");
    assert!(
        r["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["already"] == true),
        "{r}"
    );
    restores_identical(to, dir, &expect);
}

#[test]
fn copy_sends_only_what_the_target_lacks_under_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let from = new_repo(dir.path(), &[]);
    let to = new_target(dir.path());
    copy_nights(&from, &to, dir.path());
    // The target's key is its own: the source's password does not open it.
    fails(&["--repo", p(&to), "snapshots"], 1, "password");
    // A wrong target password is one line naming the target.
    let out = dedisk()
        .env("DEDISK_TO_PASSWORD", "wrong")
        .args(["--repo", p(&from), "copy", "--to", p(&to)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("target repository") && !err.contains("panicked"),
        "{err}"
    );
    // A copy onto itself is refused.
    let out = dedisk()
        .env("DEDISK_TO_PASSWORD", PASSWORD)
        .args(["--repo", p(&from), "copy", "--to", p(&from)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("same repository"));
}

#[test]
fn copy_into_a_bucket_and_back() {
    let Some((bucket, _cluster)) = crate::s3::bucket() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let from = new_repo(dir.path(), &["--encryption", "none"]);
    let to = std::path::PathBuf::from(format!("s3://{bucket}/e2e-copy-{}", std::process::id()));
    init_other(&to);
    copy_nights(&from, &to, dir.path());
    // And back, from the bucket into a new local repository: the same disks come out.
    let back = dir.path().join("back");
    init_other(&back);
    other_json(&["--repo", p(&to), "copy", "--to", p(&back)]);
    let expect = restored_shas(&to, dir.path());
    restores_identical(&back, dir.path(), &expect);
}

/// A job file's `copy = {...}`: after the night's backups, the job's VMs' snapshots go
/// into the second repository (its password from its own file); the next night sends
/// only that night's snapshot.
#[test]
fn a_job_copies_its_vms_after_the_backups() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let to = new_target(d);
    std::fs::write(d.join("target.pass"), OTHER).unwrap();
    let disk = random_image(d, "web.raw", 4 << 20, 8 << 20);
    let other = random_image(d, "other.raw", 1 << 20, 2 << 20);
    // A VM the job does not name stays out of the copy.
    backup(&repo, "not-in-job", &[&format!("vda={}", other.display())]);
    let job = d.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "repository = \"repo\"\ncopy = {{ to = \"target\", password_file = \"target.pass\" }}\n\n[[vm]]\nname = \"web01\"\ndisks = {{ vda = \"{}\" }}\n",
            disk.display()
        ),
    )
    .unwrap();
    let mut expect = Vec::new();
    for night in 0..2 {
        if night > 0 {
            sh(&format!(
                "dd if=/dev/urandom of='{}' bs=64k count=2 conv=notrunc status=none",
                disk.display()
            ));
        }
        let out = dedisk().args(["run", p(&job)]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        expect.push(("web01".to_string(), sha256(&disk)));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("job.report.json")).unwrap()).unwrap();
        let copied = &report["copied"];
        let snaps = copied["snapshots"].as_array().unwrap();
        assert_eq!(snaps.len(), night + 1, "{report}");
        assert_eq!(
            snaps.iter().filter(|s| s["already"] == false).count(),
            1,
            "{report}"
        );
        assert!(snaps.iter().all(|s| s["name"] == "web01"), "{report}");
    }
    restores_identical(&to, d, &expect);
    // A wrong target password is the job's error (named), not a crash; backups still ran.
    std::fs::write(d.join("target.pass"), "wrong").unwrap();
    let out = dedisk().args(["run", p(&job)]).output().unwrap();
    assert!(!out.status.success());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("job.report.json")).unwrap()).unwrap();
    assert_eq!(report["vms"][0]["status"], "ok", "{report}");
    assert!(
        report["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("copy to "),
        "{report}"
    );
}
