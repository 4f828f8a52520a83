//! Building real disk images and running the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// True when `tool` is on PATH. Without it, skip loudly, or fail under CI.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is required under CI (install it in .ci/run)"
        );
        eprintln!("SKIPPED: {tool} not found");
    }
    found
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a shell command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    // The dedisk a pipeline runs gets what [`dedisk`] gives it.
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("DEDISK_PASSWORD", PASSWORD)
        .env("DEDISK_CACHE_DIR", cache_dir())
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An empty directory every dedisk under test starts in, so that nothing a test runs
/// can write into the source tree (a stand-in's relative `filename=` once did).
fn scratch_cwd() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"))
        .path()
}

/// The password every test repository is made with (encrypted unless a test says
/// `--encryption none`).
pub const PASSWORD: &str = "test password";

/// The dedisk binary under test: run in a scratch directory, with [`PASSWORD`] and a
/// cache of its own (encrypted repositories keep their index there).
pub fn dedisk() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dedisk"));
    c.env_remove("DEDISK_REPO")
        .env_remove("DEDISK_PASSWORD_FILE")
        .env_remove("DEDISK_PASSWORD_COMMAND")
        .env_remove("DEDISK_KEY_FILE")
        .env("DEDISK_PASSWORD", PASSWORD)
        .env("DEDISK_CACHE_DIR", scratch_cwd().join("cache"))
        .env("RUST_LOG", "warn")
        .current_dir(scratch_cwd());
    c
}

/// The cache directory [`dedisk`] runs with.
pub fn cache_dir() -> PathBuf {
    scratch_cwd().join("cache")
}

/// `dedisk --repo REPO backup -q --name NAME DISK...`, insisting on success; returns
/// what it printed.
pub fn backup(repo: &Path, name: &str, disks: &[&str]) -> String {
    let mut args = vec!["--repo", p(repo), "backup", "-q", "--name", name];
    args.extend_from_slice(disks);
    ok(&args)
}

/// [`backup`] with `--json`: the new snapshot's short id.
pub fn backup_id(repo: &Path, name: &str, disks: &[&str]) -> String {
    let mut args = vec!["--repo", p(repo), "backup", "-q", "--name", name];
    args.extend_from_slice(disks);
    let v = ok_json(&args);
    v["snapshot"].as_str().expect("a snapshot id")[..8].to_string()
}

/// `dedisk --repo REPO restore -q SNAPSHOT TARGET`, insisting on success.
pub fn restore(repo: &Path, snapshot: &str, target: &Path) -> String {
    ok(&["--repo", p(repo), "restore", "-q", snapshot, p(target)])
}

/// Runs dedisk with `args` and `bin` first on PATH (stand-ins or wrappers of the tools it
/// calls); returns the output whatever the exit code.
pub fn run_with_bin_first(bin: &Path, args: &[&str]) -> Output {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    dedisk()
        .env("PATH", path)
        .args(args)
        .output()
        .expect("dedisk runs")
}

/// Runs dedisk with `args`; returns the output whatever the exit code.
pub fn run(args: &[&str]) -> Output {
    dedisk().args(args).output().expect("dedisk runs")
}

/// Runs dedisk and insists on exit code 0.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "dedisk {args:?} failed ({:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs dedisk with --json and parses its (last) JSON line.
pub fn ok_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(&all);
    serde_json::from_str(text.lines().last().expect("some output")).expect("valid JSON")
}

/// Asserts a failure: the exit code, one clear message naming `needle`, no panic.
pub fn fails(args: &[&str], code: i32, needle: &str) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "dedisk {args:?}: {err}");
    assert!(!err.contains("panicked"), "dedisk {args:?} panicked: {err}");
    assert!(
        err.contains(needle),
        "dedisk {args:?}: expected {needle:?} in: {err}"
    );
    err
}

pub fn sha256(path: &Path) -> String {
    sh(&format!("sha256sum '{}'", path.display()))
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_string()
}

/// Allocated bytes of a file (to check that restores stay sparse).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A directory tree like a small root filesystem: text, binaries, compressible and
/// incompressible data, nested folders.
pub fn make_tree(dir: &Path, seed: u32) {
    sh(&format!(
        "set -e; d='{d}'; mkdir -p $d/etc $d/usr/bin $d/var/log $d/home/u/docs $d/srv
         cp -r /etc/apt $d/etc/ 2>/dev/null || true
         for f in /bin/ls /bin/cp /bin/sh /usr/bin/env; do cp -L $f $d/usr/bin/; done
         for i in $(seq 1 300); do echo \"$i {seed} log line for the backup test $RANDOM\"; done > $d/var/log/syslog
         head -c 3000000 /dev/urandom > $d/srv/random.bin
         for i in $(seq 1 40); do seq $i {seed}000 > $d/home/u/docs/n$i.txt; done",
        d = dir.display()
    ));
}

/// A partitioned disk: `label` (gpt or dos) table, partition 1 at 1 MiB holding an ext4
/// filesystem made with `mkfs.ext4 -d`, unpartitioned zeros after it, and a size that is
/// a multiple of neither 512 nor the chunk size. Returns (disk, partition image).
pub fn make_disk(dir: &Path, name: &str, label: &str, seed: u32) -> (PathBuf, PathBuf) {
    let tree = dir.join(format!("{name}-tree"));
    make_tree(&tree, seed);
    let disk = dir.join(format!("{name}.raw"));
    let part = dir.join(format!("{name}-p1.img"));
    sh(&format!(
        "set -e; truncate -s 40M '{p}'; mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 -d '{t}' '{p}'
         truncate -s $((64*1024*1024 + 12345)) '{d}'
         printf 'label: {label}\\nstart=2048, size=81920, type=L\\n' | sfdisk -q '{d}'",
        p = part.display(),
        t = tree.display(),
        d = disk.display()
    ));
    write_partition(&disk, &part);
    (disk, part)
}

/// Copies the partition image back into the disk at 1 MiB, in place.
pub fn write_partition(disk: &Path, part: &Path) {
    sh(&format!(
        "dd if='{}' of='{}' bs=1M seek=1 conv=notrunc,sparse status=none",
        part.display(),
        disk.display()
    ));
}

/// Changes the filesystem in place the way a running VM would: a new file, a rewritten
/// file, a deleted file, a grown log. Uses debugfs, which writes into the image directly.
pub fn change_fs(dir: &Path, part: &Path, round: u32) {
    let new = dir.join(format!("new{round}.bin"));
    sh(&format!(
        "set -e; head -c 700000 /dev/urandom > '{n}'
         seq 1 {round}0000 > '{dir}/log{round}.txt'
         debugfs -w -R 'write {n} /srv/new{round}.bin' '{p}' >/dev/null 2>&1
         debugfs -w -R 'rm /home/u/docs/n{round}.txt' '{p}' >/dev/null 2>&1
         debugfs -w -R 'write {dir}/log{round}.txt /var/log/app{round}.log' '{p}' >/dev/null 2>&1
         e2fsck -fn '{p}' >/dev/null",
        n = new.display(),
        p = part.display(),
        dir = dir.display()
    ));
}

/// Whether the image tools the tests build disks with are present.
pub fn have_image_tools() -> bool {
    have("mkfs.ext4") && have("sfdisk") && have("debugfs") && have("sha256sum")
}

/// The index file of `repo`: in the repository (version 1), or in the cache of the
/// dedisk under test (an encrypted repository's index never lives beside its data).
pub fn index_file(repo: &Path) -> PathBuf {
    if !is_encrypted(repo) {
        return repo.join("index.sqlite");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("config.json")).unwrap()).unwrap();
    cache_dir()
        .join(config["repo_id"].as_str().unwrap())
        .join("index.sqlite")
}

/// Whether the repository at `repo` is encrypted (format version 2).
pub fn is_encrypted(repo: &Path) -> bool {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("config.json")).unwrap()).unwrap();
    config["format_version"] == 2
}

/// The snapshot records of a repository (for checks below the CLI): its files, or for
/// an encrypted repository what `snapshots --json --full` decrypts of them.
pub fn snapshot_files(repo: &Path) -> Vec<serde_json::Value> {
    if is_encrypted(repo) {
        let out = run(&["--json", "--repo", p(repo), "snapshots", "--full"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let list = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["type"] == "snapshots")
            .unwrap_or_else(|| panic!("no snapshot list: {text}"));
        return list["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["record"].clone())
            .collect();
    }
    let mut out = vec![];
    for e in std::fs::read_dir(repo.join("snapshots")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            out.push(serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap());
        }
    }
    out
}

pub fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for sub in std::fs::read_dir(repo.join("packs")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 test paths")
}

/// `dedisk init` a repository at DIR/repo (with extra init flags) and return its path.
/// Encrypted (with the cheapest argon2id the format allows, so that the hundreds of
/// commands the tests run stay quick) unless the flags say `--encryption none`.
pub fn new_repo(dir: &Path, init_flags: &[&str]) -> PathBuf {
    let repo = dir.join("repo");
    let mut args = vec!["init"];
    if !init_flags.contains(&"none") {
        args.extend_from_slice(&["--kdf-memory", "8", "--kdf-passes", "1", "--kdf-lanes", "1"]);
    }
    args.extend_from_slice(init_flags);
    args.push(p(&repo));
    ok(&args);
    repo
}

/// A raw image at DIR/NAME: `data_bytes` random bytes, then zeros up to `size_bytes`.
pub fn random_image(dir: &Path, name: &str, data_bytes: u64, size_bytes: u64) -> PathBuf {
    let img = dir.join(name);
    sh(&format!(
        "head -c {data_bytes} /dev/urandom > '{0}'; truncate -s {size_bytes} '{0}'",
        img.display()
    ));
    img
}

/// Starts dedisk with `args` (a server: mount, serve-nbd, with --json) and returns it with
/// the first JSON line it prints, which it prints once it is ready.
pub fn spawn_json(args: &[&str]) -> (std::process::Child, serde_json::Value) {
    use std::io::BufRead;
    let mut child = dedisk()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("dedisk starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("a first line");
    let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (child, v)
}
