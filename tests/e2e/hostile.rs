//! Issue 11: a forged repository, a planted symlink or a local user never makes dedisk
//! write, read or break what it should not. Each case was reproduced on the code before
//! the fix; each test fails there.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::helpers::*;

/// A repository with one snapshot of VM `vm` holding disks `vda`, `vdb` and a metadata
/// file `domain.xml`; returns (repo, vda image).
/// Unencrypted, so that tests can forge its snapshot files the way a hostile writer of
/// a plaintext repository (or one holding the key) could.
fn two_disk_repo(dir: &Path) -> (PathBuf, PathBuf) {
    let repo = new_repo(dir, &["--encryption", "none"]);
    let vda = random_image(dir, "vda.img", 300_000, 1 << 20);
    let vdb = random_image(dir, "vdb.img", 100_000, 1 << 20);
    let xml = dir.join("domain.xml");
    std::fs::write(&xml, b"<domain/>").unwrap();
    backup(
        &repo,
        "vm",
        &[
            &format!("vda={}", p(&vda)),
            &format!("vdb={}", p(&vdb)),
            "--meta",
            p(&xml),
        ],
    );
    (repo, vda)
}

/// Rewrites the only snapshot file with `edit` applied, under its new content name.
fn forge(repo: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let dir = repo.join("snapshots");
    let old = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
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
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
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
        let err = fails(
            &["restore", "--repo", p(&repo), "latest", p(&target)],
            1,
            "snapshot",
        );
        assert!(err.lines().count() <= 3, "one clear error: {err}");
        // Listing says the snapshot is invalid instead of showing the name.
        let out = run(&["snapshots", "--repo", p(&repo)]);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("contains '/'") || text.contains("'.' or '..'"),
            "{text}"
        );
        assert!(entries(&case.join("restore")).iter().all(|e| e == "deep"));
    }
    assert_eq!(
        entries(&outside),
        Vec::<String>::new(),
        "nothing written outside"
    );
}

#[test]
fn forged_sizes_and_counts_are_refused_on_read() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (repo, _) = two_disk_repo(dir);
    // A disk declared 8 KiB whose manifest covers 1 MiB: never a file larger than declared.
    forge(&repo, |v| v["disks"][0]["size_bytes"] = 8192.into());
    let target = dir.join("out.raw");
    fails(
        &["restore", "--repo", p(&repo), "latest:vda", p(&target)],
        1,
        "does not match its manifest",
    );
    assert!(!target.exists());
    forge(&repo, |v| {
        v["disks"][0]["size_bytes"] = (1u64 << 20).into();
        v["disks"][0]["manifest"]["extents"] = (1u64 << 40).into();
    });
    fails(
        &["restore", "--repo", p(&repo), "latest:vda", p(&target)],
        1,
        "extents",
    );
    assert_eq!(
        entries(dir)
            .iter()
            .filter(|e| e.contains("dedisk-restore"))
            .count(),
        0
    );
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
    fails(
        &["restore", "--repo", p(&repo), "latest", p(&folder)],
        1,
        "already exists",
    );
    ok(&[
        "restore",
        "--repo",
        p(&repo),
        "latest",
        p(&folder),
        "--force",
    ]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let vdb = std::fs::symlink_metadata(folder.join("vdb.raw")).unwrap();
    assert!(
        vdb.is_file(),
        "the planted link was replaced by the restored disk"
    );
    assert_eq!(sha256(&folder.join("vda.raw")), sha256(&vda));

    // A single target that is a link in that world-writable folder: only with --force.
    let link = folder.join("one.raw");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    fails(
        &["restore", "--repo", p(&repo), "latest:vda", p(&link)],
        1,
        "symlink",
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // Named explicitly with --force, the link is followed to the file it names.
    ok(&[
        "restore",
        "--repo",
        p(&repo),
        "latest:vda",
        p(&link),
        "--force",
    ]);
    assert_eq!(sha256(&victim), sha256(&vda));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
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
    restore(&repo, "latest", &out);
    for f in ["vda.raw", "vdb.raw", "domain.xml"] {
        assert_eq!(
            std::fs::metadata(out.join(f)).unwrap().mode() & 0o777,
            0o600,
            "{f}"
        );
    }
    let shared = dir.join("shared.raw");
    ok(&[
        "restore",
        "--repo",
        p(&repo),
        "latest:vda",
        p(&shared),
        "--mode",
        "0644",
    ]);
    assert_eq!(std::fs::metadata(&shared).unwrap().mode() & 0o777, 0o644);
    fails(
        &[
            "restore",
            "--repo",
            p(&repo),
            "latest:vda",
            "x",
            "--mode",
            "999",
        ],
        2,
        "octal",
    );
}

#[test]
fn failed_restores_leave_no_temporary_file_and_trailing_slashes_mean_folders() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (repo, vda) = two_disk_repo(dir);
    // A trailing slash: the disk goes into that folder as LABEL.raw.
    let folder = dir.join("into");
    ok(&[
        "restore",
        "--repo",
        p(&repo),
        "latest:vda",
        &format!("{}/", p(&folder)),
    ]);
    assert_eq!(sha256(&folder.join("vda.raw")), sha256(&vda));
    // A disk too large for the filesystem's file size limit: set_len fails.
    forge(&repo, |v| {
        v["disks"][0]["size_bytes"] = (1u64 << 62).into();
        v["disks"][0]["manifest"]["len_bytes"] = (1u64 << 62).into();
    });
    let before = entries(dir);
    let out = run(&[
        "restore",
        "--repo",
        p(&repo),
        "latest:vda",
        p(&dir.join("big.raw")),
    ]);
    assert!(!out.status.success());
    assert_eq!(entries(dir), before, "nothing left behind");
}

#[test]
fn thread_counts_out_of_range_are_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path(), &[]);
    for n in ["0", "100000", "18446744073709551615"] {
        fails(
            &[
                "backup",
                "--repo",
                p(&repo),
                "--name",
                "vm",
                "--workers",
                n,
                "/dev/null",
            ],
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

fn plant_lock(repo: &Path, name: &str, body: &str) -> PathBuf {
    let path = repo.join("locks").join(format!("{name}.json"));
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn unlock_never_removes_a_live_holders_lock_and_planted_locks_do_not_block() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (repo, _) = two_disk_repo(dir);
    let host = sh("hostname").trim().to_string();
    // A real dedisk holding a shared lock: unlock, even --force, leaves it alone, so an
    // exclusive command (repair) still cannot start beside it; a prune runs beside it
    // and deletes nothing it could read (FORMAT.md 15).
    let (mut server, _) = spawn_json(&[
        "--json",
        "serve-nbd",
        "--repo",
        p(&repo),
        "--all",
        "--unix",
        p(&dir.join("nbd.sock")),
    ]);
    for force in [false, true] {
        let mut args = vec!["--repo", p(&repo), "unlock"];
        if force {
            args.push("--force");
        }
        let out = ok(&args);
        assert!(out.contains("0 lock(s) removed, 1 kept"), "{out}");
        assert!(out.contains("running on this host"), "{out}");
    }
    fails(
        &["--repo", p(&repo), "--lock-wait", "0", "repair", "index"],
        1,
        "serve-nbd",
    );
    ok(&["--repo", p(&repo), "--lock-wait", "0", "prune", "-q"]);
    server.kill().unwrap();
    server.wait().unwrap();

    // Planted on this host with a live pid that is not a dedisk (pid 1), or with a
    // start time that is not the process's: stale, cleared by the next command.
    let init = plant_lock(
        &repo,
        "init",
        &format!(
            r#"{{"kind":"exclusive","hostname":"{host}","pid":1,"time":"2026-11-22T03:00:00Z","command":"prune"}}"#
        ),
    );
    let me = std::process::id();
    let reused = plant_lock(
        &repo,
        "reused",
        &format!(
            r#"{{"kind":"exclusive","hostname":"{host}","pid":{me},"time":"2026-11-22T03:00:00Z","command":"prune","pid_start":1}}"#
        ),
    );
    ok(&["--repo", p(&repo), "--lock-wait", "0", "prune", "-q"]);
    assert!(!init.exists() && !reused.exists());

    // An unreadable lock file is reported at once, not waited on for --lock-wait.
    let junk = plant_lock(&repo, "junk", "not json");
    let started = std::time::Instant::now();
    fails(
        &["--repo", p(&repo), "--lock-wait", "600", "prune"],
        1,
        "cannot be read",
    );
    assert!(started.elapsed().as_secs() < 30);
    ok(&["--repo", p(&repo), "unlock", "--force"]);
    assert!(!junk.exists());
    // Another host's lock not refreshed for an hour is stale too.
    let old = plant_lock(
        &repo,
        "old",
        r#"{"kind":"exclusive","hostname":"elsewhere","pid":7,"time":"2026-11-22T03:00:00Z","command":"prune"}"#,
    );
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .append(true)
        .open(&old)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    ok(&["--repo", p(&repo), "--lock-wait", "0", "prune", "-q"]);
    assert!(!old.exists());
}

#[test]
fn nbd_exports_are_explicit_and_sockets_private_and_never_replace_files() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (repo, _) = two_disk_repo(dir);
    fails(
        &["serve-nbd", "--repo", p(&repo), "--unix", p(&dir.join("s"))],
        1,
        "--all",
    );
    // Something that is not a socket at the path is left alone.
    let file = dir.join("precious");
    std::fs::write(&file, b"data").unwrap();
    fails(
        &["serve-nbd", "--repo", p(&repo), "--all", "--unix", p(&file)],
        1,
        "not a socket",
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    let sock = dir.join("nbd.sock");
    let (mut server, _) = spawn_json(&[
        "--json",
        "serve-nbd",
        "--repo",
        p(&repo),
        "--all",
        "--unix",
        p(&sock),
    ]);
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
    // A second server does not steal a live socket.
    fails(
        &["serve-nbd", "--repo", p(&repo), "--all", "--unix", p(&sock)],
        1,
        "another server",
    );
    server.kill().unwrap();
    server.wait().unwrap();
    // A stale socket (its server was killed) is replaced.
    let (mut again, _) = spawn_json(&[
        "--json",
        "serve-nbd",
        "--repo",
        p(&repo),
        "--all",
        "--unix",
        p(&sock),
        "--socket-mode",
        "0660",
    ]);
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o660);
    again.kill().unwrap();
    again.wait().unwrap();
}

#[test]
fn nbd_server_survives_descriptor_exhaustion_and_drops_idle_clients() {
    if !have("qemu-img") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (repo, vda) = two_disk_repo(dir);
    let sock = dir.join("nbd.sock");
    // Few descriptors, more idle clients than that: the server keeps running.
    let mut server = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 48; exec '{}' --json serve-nbd --repo '{}' --unix '{}' --idle-timeout 2 --max-clients 20 vm@latest:vda",
            env!("CARGO_BIN_EXE_dedisk"), p(&repo), p(&sock)
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "{line}");
    }
    let idle: Vec<_> = (0..80)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&sock).ok())
        .collect();
    assert!(idle.len() >= 20, "{} connections", idle.len());
    // Idle clients are disconnected after --idle-timeout; the server still serves.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let closed = idle
        .into_iter()
        .filter(|c| {
            use std::io::Read;
            c.set_read_timeout(Some(std::time::Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 256];
            let mut c = c;
            // The handshake greeting, then EOF once the server drops us.
            loop {
                match c.read(&mut buf) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        })
        .count();
    assert!(closed >= 20, "only {closed} idle clients were dropped");
    assert!(
        server.try_wait().unwrap().is_none(),
        "the server is still running"
    );
    let out = dir.join("out.raw");
    sh(&format!(
        "qemu-img convert -f raw 'nbd+unix:///vm@latest:vda?socket={}' '{}'",
        p(&sock),
        p(&out)
    ));
    assert_eq!(sha256(&out), sha256(&vda));
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn an_empty_stream_is_refused_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path(), &[]);
    let empty = |extra: &[&str]| {
        let mut args = vec!["backup", "--repo", p(&repo), "--name", "vm"];
        args.extend_from_slice(extra);
        args.push("xvda=-");
        dedisk()
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = empty(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gave no data at all"));
    assert!(snapshot_files(&repo).is_empty());
    assert!(empty(&["--allow-empty"]).status.success());
    assert_eq!(snapshot_files(&repo).len(), 1);
}

#[test]
fn a_vmdk_descriptor_cannot_name_a_host_file_outside_its_folder() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let secret = dir.join("secret");
    std::fs::write(&secret, vec![b'S'; 4096]).unwrap();
    let guest = dir.join("guest");
    std::fs::create_dir(&guest).unwrap();
    let vmdk = guest.join("disk.vmdk");
    std::fs::write(&vmdk, format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 8 FLAT \"{}\" 0\n\nddb.virtualHWVersion = \"4\"\n",
        p(&secret)
    )).unwrap();
    fails(
        &["backup", "--repo", p(&repo), "--name", "vm", p(&vmdk)],
        1,
        "outside",
    );
    assert!(snapshot_files(&repo).is_empty());
    // Named explicitly, the image is the admin's own: followed.
    backup(&repo, "vm", &["--format", "vmdk", p(&vmdk)]);
}

/// Runs dedisk as the unprivileged user `nobody`.
fn as_nobody(args: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_dedisk"),
        ])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn a_read_only_user_or_filesystem_can_list_restore_and_verify() {
    if !is_root() || !have("setpriv") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (repo, vda) = two_disk_repo(dir);
    let index_before = std::fs::read(repo.join("index.sqlite")).unwrap();
    // A group of readers: the admin opened the repository for reading, not writing.
    sh(&format!("chmod -R a+rX '{}'", p(&repo)));
    let out_dir = dir.join("nobody");
    std::fs::create_dir(&out_dir).unwrap();
    sh(&format!("chown 65534:65534 '{}'", p(&out_dir)));
    let check = |run: &dyn Fn(&[&str]) -> std::process::Output, tag: &str, repo: &Path| {
        let out = run(&["snapshots", "--repo", p(repo)]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{tag} snapshots: {err}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 snapshot(s)"),
            "{tag}"
        );
        assert!(
            !err.contains("rebuilding") && !err.contains("readonly database"),
            "{tag}: {err}"
        );
        let target = out_dir.join(format!("{tag}.raw"));
        let out = run(&["restore", "--repo", p(repo), "latest:vda", p(&target)]);
        assert!(
            out.status.success(),
            "{tag} restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sha256(&target), sha256(&vda), "{tag}");
        let out = run(&["verify", "--repo", p(repo), "--read-data"]);
        assert!(
            out.status.success(),
            "{tag} verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    check(&as_nobody, "user", &repo);
    // The index file is missing and cannot be made: one is built in memory.
    std::fs::rename(repo.join("index.sqlite"), dir.join("index.saved")).unwrap();
    check(&as_nobody, "user-noindex", &repo);
    std::fs::rename(dir.join("index.saved"), repo.join("index.sqlite")).unwrap();
    // A read-only mount of the repository, read by root.
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    sh(&format!(
        "mount --bind '{0}' '{1}' && mount -o remount,bind,ro '{1}'",
        p(&repo),
        p(&ro)
    ));
    let root_run = |args: &[&str]| run(args);
    let outcome = std::panic::catch_unwind(|| check(&root_run, "rofs", &ro));
    sh(&format!("umount '{}'", p(&ro)));
    outcome.unwrap();
    assert_eq!(
        std::fs::read(repo.join("index.sqlite")).unwrap(),
        index_before,
        "nothing was written"
    );
}

#[test]
fn a_vm_name_from_an_old_or_forged_snapshot_is_one_escaped_directory_in_the_mount() {
    if !have("fusermount3") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let (repo, vda) = two_disk_repo(dir);
    // Older versions only refused empty VM names; backup now refuses this one.
    forge(&repo, |v| v["name"] = "tenant/../x\u{1b}[2J".into());
    fails(
        &[
            "backup",
            "--repo",
            p(&repo),
            "--name",
            "tenant/../x",
            p(&vda),
        ],
        1,
        "contains '/'",
    );
    let at = dir.join("mnt");
    let mut m = crate::mount::Mounted::start(&repo, &at);
    let names = entries(&at);
    assert_eq!(
        names,
        vec!["tenant%2F..%2Fx%1B[2J".to_string()],
        "{names:?}"
    );
    let vm = at.join(&names[0]);
    assert_eq!(sha256(&vm.join("latest").join("vda.raw")), sha256(&vda));
    m.stop();
    // Listings show it escaped too (no terminal control sequence reaches the screen).
    let out = ok(&["snapshots", "--repo", p(&repo)]);
    assert!(
        out.contains("tenant%2F..%2Fx%1B[2J") && !out.contains('\u{1b}'),
        "{out}"
    );
}

#[test]
fn a_job_refuses_vm_names_that_are_not_one_file_name() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let img = random_image(dir, "d.img", 4096, 1 << 20);
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "repository = \"{}\"\n[[vm]]\nname = \"tenant/../x\"\ndisks = {{ vda = \"{}\" }}\n",
            p(&repo),
            p(&img)
        ),
    )
    .unwrap();
    let out = run(&["run", p(&job)]);
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("contains '/'"), "{text}");
    assert!(snapshot_files(&repo).is_empty());
}

#[test]
fn many_nbd_clients_share_one_memory_bound() {
    if !have("qemu-img") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let disk = random_image(dir, "big.img", 80 << 20, 96 << 20);
    backup(&repo, "vm", &[&format!("vda={}", p(&disk))]);
    let sock = dir.join("nbd.sock");
    let (mut server, _) = spawn_json(&[
        "--json",
        "serve-nbd",
        "--repo",
        p(&repo),
        "--unix",
        p(&sock),
        "vm@latest:vda",
    ]);
    let clients: Vec<_> = (0..12)
        .map(|i| {
            std::process::Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw"])
                .arg(format!("nbd+unix:///vm@latest:vda?socket={}", p(&sock)))
                .arg(dir.join(format!("c{i}.raw")))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(sha256(&dir.join("c11.raw")), sha256(&disk));
    eprintln!("serve-nbd peak RSS with 12 clients: {} MiB", peak_kib >> 10);
    // One 96 MiB chunk cache and a 256 MiB read budget for all of them; each client
    // with its own cache held the whole 80 MiB of data (over 1 GiB in all).
    assert!(peak_kib < 400 << 10, "peak RSS {} MiB", peak_kib >> 10);
}
