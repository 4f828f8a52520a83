//! FORMAT.md section 15 put to the test: four hosts back up and forget in a loop into
//! one repository while prunes are started beside them and killed with SIGKILL at
//! random moments (and sometimes left to finish). Afterwards every snapshot left
//! restores identical to its disk at that night, `verify --read-data` is clean, and a
//! last prune, alone, leaves no record and reclaims what was forgotten. Run against a
//! directory and against a bucket on the Garage cluster.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::s3::{bucket, new_s3_repo, on_host};

const HOSTS: usize = 4;

/// xorshift64*: the test prints its seed, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    let seed = std::env::var("DEDISK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("prune_beside: DEDISK_TEST_SEED={seed}");
    seed | 1
}

fn json_of(out: &std::process::Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("output")).expect("JSON")
}

/// Overwrites `len` bytes of `disk` at a random offset with fresh random bytes.
fn scribble(disk: &Path, rng: &mut Rng, len: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let size = std::fs::metadata(disk).unwrap().len();
    let at = rng.below(size - len as u64) & !4095;
    let mut f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let bytes: Vec<u8> = (0..len / 8)
        .flat_map(|_| rng.next().to_le_bytes())
        .collect();
    f.write_all(&bytes).unwrap();
}

/// The soak: `rounds` nights per host, prunes killed beside them.
fn soak(repo: &Path, d: &Path, rounds: usize) {
    let mut rng = Rng(seed());
    let template = random_image(d, "template.raw", 8 << 20, 8 << 20);
    let disks: Vec<PathBuf> = (0..HOSTS)
        .map(|h| {
            let disk = d.join(format!("guest{h}.raw"));
            std::fs::copy(&template, &disk).unwrap();
            scribble(&disk, &mut rng, 1 << 20);
            disk
        })
        .collect();
    // Snapshot id -> the sha256 of its disk that night.
    let expected: Mutex<HashMap<String, String>> = Mutex::new(HashMap::new());
    // Bytes every backup stored anew: what the repository would hold with no prune.
    let written = std::sync::atomic::AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let kills = std::sync::atomic::AtomicUsize::new(0);
    let (mut started, mut killed, mut finished) = (0, 0, 0);
    let seeds: Vec<u64> = (0..HOSTS).map(|_| rng.next() | 1).collect();
    std::thread::scope(|s| {
        let hosts: Vec<_> = (0..HOSTS)
            .map(|h| {
                let (disks, expected, written, kills, seed) =
                    (&disks, &expected, &written, &kills, seeds[h]);
                s.spawn(move || {
                    let mut rng = Rng(seed);
                    let cache = d.join(format!("cache{h}"));
                    // At least `rounds` nights, and on until some prunes were
                    // killed beside them (a bounded number more).
                    let mut night = 0;
                    while night < rounds || (kills.load(Ordering::SeqCst) < 3 && night < 4 * rounds)
                    {
                        night += 1;
                        scribble(&disks[h], &mut rng, 256 << 10);
                        let sha = sha256(&disks[h]);
                        let out = on_host(&format!("host{h}"), &cache)
                            .args(["--json", "--repo", p(repo), "backup", "-q", "--name"])
                            .arg(format!("guest{h}"))
                            .arg(format!("vda={}", disks[h].display()))
                            .output()
                            .unwrap();
                        let v = json_of(&out, &format!("host{h} night {night} backup"));
                        let id = v["snapshot"].as_str().unwrap()[..8].to_string();
                        let new = v["disks"][0]["stats"]["new_stored_bytes"].as_u64().unwrap();
                        written.fetch_add(new, Ordering::SeqCst);
                        expected.lock().unwrap().insert(id, sha);
                        let out = on_host(&format!("host{h}"), &cache)
                            .args(["--json", "--repo", p(repo), "forget", "--keep-last", "2"])
                            .args(["--name", &format!("guest{h}")])
                            .output()
                            .unwrap();
                        json_of(&out, &format!("host{h} night {night} forget"));
                    }
                })
            })
            .collect();
        let pruner = s.spawn(|| {
            let cache = d.join("cache-pruner");
            // How long a whole prune took last: kills land anywhere within one.
            let mut whole = Duration::from_millis(300);
            while !done.load(Ordering::SeqCst) {
                let mut child = on_host("pruner", &cache)
                    .args(["--json", "--repo", p(repo), "prune", "--max-unused", "5"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                started += 1;
                let kill_after = whole.mul_f64(rng.below(1000) as f64 / 1000.0);
                let leave = rng.below(4) == 0;
                let t = Instant::now();
                loop {
                    if let Some(status) = child.try_wait().unwrap() {
                        let mut err = String::new();
                        use std::io::Read;
                        child
                            .stderr
                            .take()
                            .unwrap()
                            .read_to_string(&mut err)
                            .unwrap();
                        // A prune may find another's lock of a killed one not yet
                        // stale to it, or give up waiting: never anything else.
                        assert!(
                            status.success() || err.contains("in use"),
                            "prune failed: {err}"
                        );
                        finished += 1;
                        whole = t.elapsed();
                        break;
                    }
                    if !leave && t.elapsed() >= kill_after {
                        child.kill().unwrap(); // SIGKILL
                        child.wait().unwrap();
                        killed += 1;
                        kills.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        for h in hosts {
            h.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        pruner.join().unwrap();
    });
    eprintln!("prune_beside: {started} prunes, {killed} killed, {finished} finished");
    assert!(killed >= 2, "some prunes were killed ({killed})");

    // Alone now: a prune sweeps every record and leaves none.
    let final_prune = |what: &str| {
        let out = on_host("pruner", &d.join("cache-pruner"))
            .args(["--json", "--repo", p(repo), "prune", "--max-unused", "5"])
            .output()
            .unwrap();
        json_of(&out, what)
    };
    final_prune("final prune");
    let v = final_prune("second final prune");
    assert_eq!(v["report"]["records_waiting"], 0, "{v}");
    assert_eq!(
        v["report"]["packs_condemned"], 0,
        "nothing left to condemn: {v}"
    );
    // Every snapshot left restores identical to its disk that night.
    let listed = ok_json(&["--repo", p(repo), "snapshots"]);
    let snaps = listed["snapshots"].as_array().unwrap();
    assert_eq!(
        snaps.len(),
        2 * HOSTS,
        "each host keeps its last 2: {listed}"
    );
    let expected = expected.into_inner().unwrap();
    for snap in snaps {
        let id = &snap["id"].as_str().unwrap()[..8];
        let out = d.join("restored.raw");
        let _ = std::fs::remove_file(&out);
        let r = on_host("restorer", &d.join("cache-restorer"))
            .args(["--repo", p(repo), "restore", "-q", id, p(&out)])
            .output()
            .unwrap();
        assert!(
            r.status.success(),
            "restore {id}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(&sha256(&out), &expected[id], "snapshot {id}");
    }
    // Clean; its only warnings are the gaps the hosts' own forgets left (exit 3).
    let out = run(&["--json", "--repo", p(repo), "verify", "--read-data"]);
    let text = String::from_utf8_lossy(&out.stdout);
    // Progress lines come first; the report is the line of type "verify".
    let v: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "verify")
        .expect("a report");
    assert!(matches!(out.status.code(), Some(0 | 3)), "verify: {text}");
    assert_eq!(v["report"]["problem_count"], 0, "{v}");
    let warnings = v["report"]["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .all(|w| w.as_str().unwrap().contains("predecessor")),
        "{v}"
    );
    // What was forgotten is gone: the repository holds less than the backups stored.
    let stored = ok_json(&["--repo", p(repo), "stats"])["stored_bytes"]
        .as_u64()
        .unwrap();
    let written = written.load(Ordering::SeqCst);
    assert!(
        stored < written,
        "{stored} bytes stored of {written} written"
    );
    eprintln!("prune_beside: {stored} bytes stored of {written} written");
}

#[test]
fn prunes_killed_beside_four_hosts_in_a_directory_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), &[]);
    soak(&repo, dir.path(), 8);
}

#[test]
fn prunes_killed_beside_four_hosts_on_s3_lose_nothing() {
    let Some((bucket, _cluster)) = bucket() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = new_s3_repo(&bucket, "prune-beside");
    soak(&repo, dir.path(), 6);
}

/// A prune's lock never holds a backup up, and a second prune waits for the first.
#[test]
fn backups_run_beside_a_prune_lock_and_prunes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), &[]);
    let disk = random_image(dir.path(), "d.raw", 2 << 20, 4 << 20);
    backup(&repo, "vm", &[&format!("vda={}", disk.display())]);
    // Plant another host's prune lock (never taken for stale while it is fresh).
    let lock = serde_json::json!({
        "kind": "prune", "hostname": "backup-host-2", "pid": 1234,
        "time": "2026-01-01T00:00:00Z", "command": "prune"
    });
    let path = if repo.join("locks").is_dir() {
        repo.join("locks")
            .join("0123456789abcdef0123456789abcdef.json")
    } else {
        unreachable!("a directory repository has locks/")
    };
    std::fs::write(&path, serde_json::to_vec(&lock).unwrap()).unwrap();
    backup(&repo, "vm", &[&format!("vda={}", disk.display())]);
    fails(
        &["--lock-wait", "1", "--repo", p(&repo), "prune"],
        1,
        "prune lock of `dedisk prune`",
    );
    std::fs::remove_file(&path).unwrap();
    ok(&["--repo", p(&repo), "prune"]);
}
