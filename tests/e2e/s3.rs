//! Repositories on S3, against a real 3-node Garage cluster on 127.0.0.1 that `.ci/run`
//! starts (`tests/garage/cluster.sh`) and whose AWS_* variables it exports: backup,
//! restore, verify, forget, prune, mount and NBD on the bucket; a host that has never
//! seen the repository; eight hosts backing up into one bucket at once; a node killed
//! in the middle of a backup; a store that throttles and drops connections; and the
//! errors of a wrong key, bucket or endpoint.
//!
//! Without the cluster a developer machine skips these loudly; under CI they fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::helpers::*;

/// Tests share the cluster; the one that kills a node holds this exclusively, so that
/// no other test meets its endpoint gone.
static CLUSTER: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub(crate) type Shared = std::sync::RwLockReadGuard<'static, ()>;

/// The test bucket, when the cluster is up, with a shared hold on the cluster.
pub(crate) fn bucket() -> Option<(String, Shared)> {
    match std::env::var("DEDISK_TEST_S3_BUCKET") {
        Ok(b) if !b.is_empty() => Some((b, CLUSTER.read().unwrap_or_else(|e| e.into_inner()))),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "the Garage cluster is required under CI (.ci/run starts it and exports DEDISK_TEST_S3_BUCKET)"
            );
            eprintln!("SKIPPED: no S3 store (start tests/garage/cluster.sh and source its env)");
            None
        }
    }
}

/// A fresh repository location in the test bucket: a prefix no other test uses.
fn s3_location(bucket: &str, what: &str) -> PathBuf {
    let unique = hex::encode(
        &blake3::hash(format!("{what}{:?}", std::time::SystemTime::now()).as_bytes()).as_bytes()
            [..6],
    );
    PathBuf::from(format!("s3://{bucket}/e2e-{what}-{unique}"))
}

/// `dedisk init` an encrypted repository there (cheap argon2id).
pub(crate) fn new_s3_repo(bucket: &str, what: &str) -> PathBuf {
    let repo = s3_location(bucket, what);
    ok(&[
        "init",
        "--kdf-memory",
        "8",
        "--kdf-passes",
        "1",
        "--kdf-lanes",
        "1",
        p(&repo),
    ]);
    repo
}

/// A dedisk that is another host: its own cache and host name.
pub(crate) fn on_host(host: &str, cache: &Path) -> Command {
    let mut c = dedisk();
    c.env("DEDISK_CACHE_DIR", cache)
        .env("DEDISK_HOSTNAME", host);
    c
}

fn ok_output(mut c: Command, what: &str) -> String {
    let out = c.output().expect("dedisk runs");
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stats(repo: &Path) -> serde_json::Value {
    ok_json(&["--repo", p(repo), "stats"])
}

fn garage_dir() -> PathBuf {
    PathBuf::from(std::env::var("DEDISK_TEST_GARAGE_DIR").expect("the cluster's folder"))
}

fn cluster(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/garage/cluster.sh");
    let status = Command::new(script)
        .args(args)
        .status()
        .expect("cluster.sh runs");
    assert!(status.success(), "cluster.sh {args:?}");
}

#[test]
fn the_s3_backend_passes_the_conformance_suite() {
    let Some((bucket, _cluster)) = bucket() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let loc = s3_location(&bucket, "conformance");
    let prefix = p(&loc)
        .split_once(&format!("{bucket}/"))
        .unwrap()
        .1
        .to_string();
    let s3 = repo_format::backend::S3::connect(
        repo_format::backend::S3Settings::from_env(&bucket, &prefix).unwrap(),
    )
    .unwrap();
    repo_format::backend::conformance(&s3, dir.path());
}

/// A flipped byte in a pack on S3: restore reads runs of chunks with one ranged GET
/// each, and still names the damaged chunk (snapshot, disk, pack) and leaves no
/// plausible disk behind.
#[test]
fn a_flipped_pack_byte_on_s3_is_named_by_the_restore() {
    use repo_format::backend::ObjectKind;
    let Some((bucket, _cluster)) = bucket() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_s3_repo(&bucket, "damage");
    let img = random_image(d, "d.raw", 8 << 20, 8 << 20);
    let done = ok_json(&[
        "backup",
        "--repo",
        p(&repo),
        "--name",
        "vm",
        &format!("sda={}", p(&img)),
    ]);
    let snap = done["snapshot"].as_str().unwrap()[..8].to_string();
    let store = repo_format::Location::parse(p(&repo))
        .unwrap()
        .connect()
        .unwrap();
    let packs = store.list(ObjectKind::Pack).unwrap();
    let big = packs.iter().max_by_key(|m| m.len).unwrap();
    let mut bytes = store.get(ObjectKind::Pack, &big.name).unwrap();
    // The middle of the largest pack: inside a chunk, however the writer spread them.
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    store
        .put_bytes(ObjectKind::Pack, &big.name, &bytes)
        .unwrap();
    let target = d.join("out.raw");
    let err = fails(
        &["restore", "--repo", p(&repo), "latest", p(&target)],
        1,
        "damaged",
    );
    for needle in [snap.as_str(), "disk sda", "chunk ", &big.name[..8]] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
    assert!(!target.exists(), "no disk under the requested name");
}

#[test]
fn a_disk_backs_up_restores_verifies_forgets_and_prunes_on_s3() {
    let Some((bucket, _cluster)) = bucket() else {
        return;
    };
    if !have_image_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_s3_repo(&bucket, "lifecycle");
    let (disk, part) = make_disk(d, "vm", "gpt", 5);
    let night1 = d.join("night1.raw");
    std::fs::copy(&disk, &night1).unwrap();
    let first = backup_id(&repo, "web01", &[&format!("vda={}", disk.display())]);
    change_fs(d, &part, 2);
    write_partition(&disk, &part);
    let second = backup_id(&repo, "web01", &[&format!("vda={}", disk.display())]);

    // An unchanged disk: nothing is uploaded but the snapshot (and no new pack).
    let packs = stats(&repo)["packs"].as_u64().unwrap();
    let v = ok_json(&[
        "--repo",
        p(&repo),
        "backup",
        "-q",
        "--name",
        "web01",
        &format!("vda={}", disk.display()),
    ]);
    assert_eq!(v["disks"][0]["stats"]["new_bytes"], 0, "{v}");
    assert_eq!(stats(&repo)["packs"].as_u64().unwrap(), packs);

    for (id, want) in [(&first, &night1), (&second, &disk)] {
        let out = d.join(format!("{id}.raw"));
        restore(&repo, id, &out);
        assert_eq!(sha256(&out), sha256(want), "snapshot {id}");
    }

    // A host that has never seen the repository: its index comes from the packs' TOCs.
    let fresh = d.join("fresh-cache");
    let mut c = on_host("newhost", &fresh);
    c.args([
        "--repo",
        p(&repo),
        "restore",
        "-q",
        &first,
        p(&d.join("fresh.raw")),
    ]);
    ok_output(c, "restore on a new host");
    assert_eq!(sha256(&d.join("fresh.raw")), sha256(&night1));
    assert!(
        fresh.read_dir().unwrap().next().is_some(),
        "the new host's cache was filled"
    );

    let v = ok_json(&["--repo", p(&repo), "verify", "--read-data"]);
    assert_eq!(v["report"]["problem_count"], 0, "{v}");

    ok(&["--repo", p(&repo), "forget", "--keep-last", "1"]);
    ok(&["--repo", p(&repo), "prune", "--max-unused", "0"]);
    let v = ok_json(&["--repo", p(&repo), "snapshots"]);
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 1, "{v}");
    let out = d.join("after-prune.raw");
    restore(&repo, "latest", &out);
    assert_eq!(sha256(&out), sha256(&disk));
    let v = ok_json(&["--repo", p(&repo), "verify", "--read-data"]);
    assert_eq!(v["report"]["problem_count"], 0, "{v}");
    // Nothing is left locked.
    let v = ok_json(&["--repo", p(&repo), "unlock"]);
    assert_eq!(v["kept"].as_array().unwrap().len(), 0, "{v}");
}

#[test]
fn the_kernel_and_qemu_img_read_a_snapshot_on_s3() {
    let Some((bucket, _cluster)) = bucket() else {
        return;
    };
    if !(have_image_tools() && have("qemu-img") && have("fusermount3")) {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "/dev/fuse is required under CI"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_s3_repo(&bucket, "access");
    let (disk, _) = make_disk(d, "vm", "gpt", 8);
    backup(&repo, "web01", &[&format!("vda={}", disk.display())]);

    let mp = d.join("mnt");
    let mut m = crate::mount::Mounted::start(&repo, &mp);
    assert_eq!(sha256(&mp.join("web01/latest/vda.raw")), sha256(&disk));
    m.stop();

    let (mut child, v) = spawn_json(&[
        "--repo",
        p(&repo),
        "--json",
        "serve-nbd",
        "--listen",
        "127.0.0.1:0",
        "--all",
    ]);
    let url = v["url"]
        .as_str()
        .unwrap()
        .replace("EXPORT", "web01@latest:vda");
    let out = d.join("nbd.raw");
    sh(&format!(
        "qemu-img convert -f raw '{url}' '{}'",
        out.display()
    ));
    let size = std::fs::metadata(&disk).unwrap().len();
    sh(&format!(
        "cmp -n {size} '{}' '{}'",
        out.display(),
        disk.display()
    ));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn eight_hosts_back_up_into_one_bucket_at_once_and_every_snapshot_restores() {
    let Some((bucket, _cluster)) = bucket() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_s3_repo(&bucket, "fleet");
    // Every guest is the same 24 MiB template plus 2 MiB of its own.
    let template = random_image(d, "template.raw", 24 << 20, 24 << 20);
    let mut disks = Vec::new();
    for h in 0..8 {
        let disk = d.join(format!("guest{h}.raw"));
        sh(&format!(
            "cp '{}' '{1}' && head -c {2} /dev/urandom >> '{1}'",
            template.display(),
            disk.display(),
            2 << 20
        ));
        disks.push(disk);
    }
    let run_round = |round: u32| -> Vec<String> {
        let children: Vec<_> = (0..8)
            .map(|h| {
                let mut c = on_host(&format!("host{h}"), &d.join(format!("cache{h}")));
                c.args([
                    "--json",
                    "--repo",
                    p(&repo),
                    "backup",
                    "-q",
                    "--name",
                    &format!("guest{h}"),
                ])
                .arg(format!("vda={}", disks[h].display()))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
                c.spawn().expect("dedisk starts")
            })
            .collect();
        children
            .into_iter()
            .enumerate()
            .map(|(h, c)| {
                let out = c.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "round {round}, host{h}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8_lossy(&out.stdout);
                let v: serde_json::Value =
                    serde_json::from_str(text.lines().last().unwrap()).unwrap();
                v["snapshot"].as_str().unwrap()[..8].to_string()
            })
            .collect()
    };
    let first = run_round(1);
    let stored_first = stats(&repo)["stored_bytes"].as_u64().unwrap();
    // The second night, every host sees what all stored: nothing new is uploaded.
    let second = run_round(2);
    let stored_second = stats(&repo)["stored_bytes"].as_u64().unwrap();
    assert!(
        stored_second < stored_first + (1 << 20),
        "the second round stored {} bytes more",
        stored_second - stored_first
    );
    for (h, id) in first.iter().chain(&second).enumerate() {
        let out = d.join(format!("restored-{id}.raw"));
        restore(&repo, id, &out);
        assert_eq!(
            sha256(&out),
            sha256(&disks[h % 8]),
            "guest{} snapshot {id}",
            h % 8
        );
        std::fs::remove_file(&out).unwrap();
    }
    let v = ok_json(&["--repo", p(&repo), "snapshots"]);
    let hosts: std::collections::BTreeSet<_> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["hostname"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(hosts.len(), 8, "{hosts:?}");
    let v = ok_json(&["--repo", p(&repo), "verify", "--read-data"]);
    assert_eq!(v["report"]["problem_count"], 0, "{v}");
    // Duplicates from the first night's races are only waste: prune reclaims them and
    // every snapshot still restores.
    ok(&["--repo", p(&repo), "prune", "--max-unused", "0"]);
    let out = d.join("after.raw");
    restore(&repo, &first[3], &out);
    assert_eq!(sha256(&out), sha256(&disks[3]));
}

#[test]
fn a_garage_node_killed_in_the_middle_of_a_backup_loses_nothing() {
    let Some((bucket, shared)) = bucket() else {
        return;
    };
    drop(shared);
    let _alone = CLUSTER.write().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_s3_repo(&bucket, "nodekill");
    let disk = random_image(d, "big.raw", 160 << 20, 160 << 20);
    let child = dedisk()
        .args([
            "--repo",
            p(&repo),
            "backup",
            "-q",
            "--name",
            "big",
            p(&disk),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    // Node 1 is the one dedisk talks to: its requests now fail until it is back.
    cluster(&["kill", p(&garage_dir()), "1"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    cluster(&["revive", p(&garage_dir()), "1"]);
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        // A clean failure is allowed; the next backup must then complete.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        backup(&repo, "big", &[p(&disk)]);
    }
    let restored = d.join("restored.raw");
    restore(&repo, "latest", &restored);
    assert_eq!(sha256(&restored), sha256(&disk));
    let v = ok_json(&["--repo", p(&repo), "verify", "--read-data"]);
    assert_eq!(v["report"]["problem_count"], 0, "{v}");
}

/// A proxy in front of the cluster's node 1 that answers 503 SlowDown on the first
/// `throttle` connections, then cuts every `cut_every`-th connection after forwarding
/// 2 KiB of its requests: a throttled store that drops connections mid-upload.
fn faulty_proxy(throttle: usize, cut_every: usize) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = std::env::var("AWS_ENDPOINT_URL")
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let faults = Arc::new(AtomicUsize::new(0));
    let cuts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let (f, c) = (faults.clone(), cuts.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let (upstream, faults, cuts) = (upstream.clone(), f.clone(), c.clone());
            std::thread::spawn(move || {
                if n < throttle {
                    // Read the request head, answer SlowDown, close.
                    let mut buf = [0u8; 4096];
                    let _ = client.read(&mut buf);
                    let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                    let _ = write!(
                        client,
                        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    faults.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let Ok(mut server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let cut = cut_every > 0 && (n - throttle).is_multiple_of(cut_every);
                let mut to_server = client.try_clone().unwrap();
                let mut from_server = server.try_clone().unwrap();
                let up = std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    let mut sent = 0usize;
                    while let Ok(k) = to_server.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        if cut && sent + k > 2048 {
                            // Mid-request: drop both sides.
                            let _ = from_server.shutdown(std::net::Shutdown::Both);
                            let _ = to_server.shutdown(std::net::Shutdown::Both);
                            return true;
                        }
                        sent += k;
                        if from_server.write_all(&buf[..k]).is_err() {
                            break;
                        }
                    }
                    let _ = from_server.shutdown(std::net::Shutdown::Write);
                    false
                });
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Both);
                if up.join().unwrap_or(false) {
                    cuts.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (format!("http://{addr}"), faults, cuts)
}

#[test]
fn a_store_that_throttles_and_drops_connections_slows_a_backup_down_without_failing_it() {
    let Some((bucket, _cluster)) = bucket() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_s3_repo(&bucket, "faulty");
    let disk = random_image(d, "disk.raw", 48 << 20, 64 << 20);
    let (endpoint, throttled, cut) = faulty_proxy(6, 3);
    let mut c = dedisk();
    c.env("AWS_ENDPOINT_URL", &endpoint).args([
        "--repo",
        p(&repo),
        "backup",
        "-q",
        "--name",
        "vm",
        p(&disk),
    ]);
    ok_output(c, "backup through a faulty store");
    assert_eq!(
        throttled.load(Ordering::SeqCst),
        6,
        "six requests were throttled"
    );
    assert!(
        cut.load(Ordering::SeqCst) >= 1,
        "connections were cut mid-request"
    );
    let mut c = dedisk();
    c.env("AWS_ENDPOINT_URL", &endpoint).args([
        "--repo",
        p(&repo),
        "restore",
        "-q",
        "latest",
        p(&d.join("out.raw")),
    ]);
    ok_output(c, "restore through a faulty store");
    assert_eq!(sha256(&d.join("out.raw")), sha256(&disk));
}

#[test]
fn a_wrong_key_bucket_endpoint_or_location_is_one_clear_line() {
    let Some((bucket, _cluster)) = bucket() else {
        return;
    };
    let repo = new_s3_repo(&bucket, "errors");
    let check = |env: &[(&str, &str)], repo: &str, needle: &str| {
        let mut c = dedisk();
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.args(["--repo", repo, "snapshots"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!err.contains("panicked"));
    };
    check(
        &[("AWS_SECRET_ACCESS_KEY", "wrong")],
        p(&repo),
        "access denied",
    );
    check(
        &[],
        &format!("s3://no-such-bucket-{}", std::process::id()),
        "does not exist",
    );
    check(
        &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")],
        p(&repo),
        "cannot reach",
    );
    check(
        &[],
        &format!("s3://{bucket}/nothing-here"),
        "not a dedisk repository",
    );
    check(&[], "s3://Bad_Bucket/x", "bucket name");
    check(
        &[("AWS_ACCESS_KEY_ID", ""), ("HOME", "/nonexistent")],
        p(&repo),
        "AWS_ACCESS_KEY_ID",
    );
}
