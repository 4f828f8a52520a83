//! Issue 11: a forged repository, a planted symlink or a local user never makes dedisk
//! write, read or break what it should not. Each case was reproduced on the code before
//! the fix; each test fails there.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::helpers::*;

/// A repository with one snapshot of VM `vm` holding disks `vda`, `vdb` and a metadata
/// file `domain.xml`; returns (repo, vda image).
fn two_disk_repo(dir: &Path) -> (PathBuf, PathBuf) {
    let repo = new_repo(dir, &[]);
    let vda = random_image(dir, "vda.img", 300_000, 1 << 20);
    let vdb = random_image(dir, "vdb.img", 100_000, 1 << 20);
    let xml = dir.join("domain.xml");
    std::fs::write(&xml, b"<domain/>").unwrap();
    ok(&[
        "backup", "--repo", p(&repo), "--name", "vm",
        &format!("vda={}", p(&vda)),
        &format!("vdb={}", p(&vdb)),
        "--meta", p(&xml),
    ]);
    (repo, vda)
}

/// Rewrites the only snapshot file with `edit` applied, under its new content name.
fn forge(repo: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let dir = repo.join("snapshots");
    let old = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&old).unwrap()).unwrap();
    edit(&mut v);
    let mut bytes = serde_json::to_vec_pretty(&v).unwrap();
    bytes.push(b'\n');
    let id = blake3::hash(&bytes).to_hex();
    std::fs::remove_file(&old).unwrap();
    std::fs::write(dir.join(format!("{id}.json")), bytes).unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn forged_names_in_a_snapshot_never_leave_the_restore_folder() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let outside = dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let planted = outside.join("job");
    for (what, forged) in [
        ("label", "../../outside/x".to_string()),
        ("meta", p(&planted).to_string()),
        ("label", "a/b".to_string()),
        ("label", "..".to_string()),
    ] {
        let case = dir.join(format!("case-{}", entries(dir).len()));
        std::fs::create_dir(&case).unwrap();
        let (repo, _) = two_disk_repo(&case);
        let forged = forged.clone();
        forge(&repo, move |v| match what {
            "label" => v["disks"][0]["label"] = forged.clone().into(),
            _ => v["meta"][0]["name"] = forged.clone().into(),
        });
        let target = case.join("restore").join("deep");
        let err = fails(&["restore", "--repo", p(&repo), "latest", p(&target)], 1, "snapshot");
        assert!(err.lines().count() <= 3, "one clear error: {err}");
        // Listing says the snapshot is invalid instead of showing the name.
        let out = run(&["snapshots", "--repo", p(&repo)]);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("contains '/'") || text.contains("'.' or '..'"), "{text}");
        assert!(entries(&case.join("restore")).iter().all(|e| e == "deep"));
    }
    assert_eq!(entries(&outside), Vec::<String>::new(), "nothing written outside");
}

#[test]
fn forged_sizes_and_counts_are_refused_on_read() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (repo, _) = two_disk_repo(dir);
    // A disk declared 8 KiB whose manifest covers 1 MiB: never a file larger than declared.
    forge(&repo, |v| v["disks"][0]["size_bytes"] = 8192.into());
    let target = dir.join("out.raw");
    fails(&["restore", "--repo", p(&repo), "latest:vda", p(&target)], 1, "does not match its manifest");
    assert!(!target.exists());
    forge(&repo, |v| {
        v["disks"][0]["size_bytes"] = (1u64 << 20).into();
        v["disks"][0]["manifest"]["extents"] = (1u64 << 40).into();
    });
    fails(&["restore", "--repo", p(&repo), "latest:vda", p(&target)], 1, "extents");
    assert_eq!(entries(dir).iter().filter(|e| e.contains("dedisk-restore")).count(), 0);
}

#[test]
fn planted_symlinks_are_never_followed() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (repo, vda) = two_disk_repo(dir);
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    // A folder another user can write to, with a link planted where vdb.raw will go
    // and links at every temporary name the old code used.
    let folder = dir.join("shared");
    std::fs::create_dir(&folder).unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink(&victim, folder.join("vdb.raw")).unwrap();
    for n in [".vda.raw.dedisk-restore", ".domain.xml.dedisk-restore"] {
        std::os::unix::fs::symlink(&victim, folder.join(n)).unwrap();
    }
    fails(&["restore", "--repo", p(&repo), "latest", p(&folder)], 1, "already exists");
    ok(&["restore", "--repo", p(&repo), "latest", p(&folder), "--force"]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let vdb = std::fs::symlink_metadata(folder.join("vdb.raw")).unwrap();
    assert!(vdb.is_file(), "the planted link was replaced by the restored disk");
    assert_eq!(sha256(&folder.join("vda.raw")), sha256(&vda));

    // A single target that is a link in that world-writable folder: only with --force.
    let link = folder.join("one.raw");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    fails(&["restore", "--repo", p(&repo), "latest:vda", p(&link)], 1, "symlink");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // Named explicitly with --force, the link is followed to the file it names.
    ok(&["restore", "--repo", p(&repo), "latest:vda", p(&link), "--force"]);
    assert_eq!(sha256(&victim), sha256(&vda));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}

#[test]
fn repositories_and_restores_are_private() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (repo, _) = two_disk_repo(dir);
    let mut seen = 0;
    for e in walk(&repo) {
        let m = std::fs::symlink_metadata(&e).unwrap();
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m.mode() & 0o777, want, "{}", e.display());
        seen += 1;
    }
    assert!(seen > 8);
    let out = dir.join("restored");
    ok(&["restore", "--repo", p(&repo), "latest", p(&out)]);
    for f in ["vda.raw", "vdb.raw", "domain.xml"] {
        assert_eq!(std::fs::metadata(out.join(f)).unwrap().mode() & 0o777, 0o600, "{f}");
    }
    let shared = dir.join("shared.raw");
    ok(&["restore", "--repo", p(&repo), "latest:vda", p(&shared), "--mode", "0644"]);
    assert_eq!(std::fs::metadata(&shared).unwrap().mode() & 0o777, 0o644);
    fails(&["restore", "--repo", p(&repo), "latest:vda", "x", "--mode", "999"], 2, "octal");
}

#[test]
fn failed_restores_leave_no_temporary_file_and_trailing_slashes_mean_folders() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (repo, vda) = two_disk_repo(dir);
    // A trailing slash: the disk goes into that folder as LABEL.raw.
    let folder = dir.join("into");
    ok(&["restore", "--repo", p(&repo), "latest:vda", &format!("{}/", p(&folder))]);
    assert_eq!(sha256(&folder.join("vda.raw")), sha256(&vda));
    // A disk too large for the filesystem's file size limit: set_len fails.
    forge(&repo, |v| {
        v["disks"][0]["size_bytes"] = (1u64 << 62).into();
        v["disks"][0]["manifest"]["len_bytes"] = (1u64 << 62).into();
    });
    let before = entries(dir);
    let out = run(&["restore", "--repo", p(&repo), "latest:vda", p(&dir.join("big.raw"))]);
    assert!(!out.status.success());
    assert_eq!(entries(dir), before, "nothing left behind");
}

#[test]
fn thread_counts_out_of_range_are_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path(), &[]);
    for n in ["0", "100000", "18446744073709551615"] {
        fails(
            &["backup", "--repo", p(&repo), "--name", "vm", "--workers", n, "/dev/null"],
            2,
            "1 to 256",
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
