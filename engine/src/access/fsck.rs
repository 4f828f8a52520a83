//! `verify --fsck`: the guest's own filesystems checked inside a backup, read-only.
//!
//! The snapshot is mounted (FUSE, read-only, in a private folder) and each partition file
//! the mount shows (`LABEL.pN`; the whole `LABEL.raw` when the disk has no partition
//! table) is probed with `blkid -p` and handed to the read-only mode of its filesystem's
//! own checker. Nothing is written anywhere: the checkers are told not to repair, and the
//! mount could not take a write anyway.
//!
//! Checkers are real programs reading guest-made data, so each runs from an argument
//! vector (never a shell) with `LC_ALL=C`, under a time limit, and what they print is
//! escaped before it is shown (guest file names can hold terminal escapes).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use repo_format::{Repository, SnapshotId};

use crate::error::{Error, Result};

/// The verdict on one partition.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The checker found nothing wrong.
    Clean,
    /// The checker found errors (it was told not to fix them).
    Errors,
    /// No read-only checker is known for this content (or there is none: swap, LVM, an
    /// empty partition).
    NotChecked,
    /// The checker could not run or gave no verdict (not installed, timed out, crashed).
    Failed,
}

/// One partition's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PartitionCheck {
    pub disk: String,
    /// The file in the mount: `vda.p1`, or `vda.raw` for a disk without a table.
    pub partition: String,
    /// What `blkid` found (`ext4`, `xfs`, ...), or empty.
    pub filesystem: String,
    /// The command run, when one was.
    pub checker: Option<String>,
    pub verdict: Verdict,
    pub exit_code: Option<i32>,
    /// Why, in a line (for NotChecked and Failed), or the checker's summary.
    pub detail: String,
    /// The checker's last lines of output (escaped).
    pub output: Vec<String>,
    pub seconds: f64,
}

/// How long one checker may run.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(3600);
const OUTPUT_LINES: usize = 20;

/// Checks every partition of every disk of snapshot `id`.
pub fn check_snapshot(
    repo: Arc<Repository>,
    lock: repo_format::lock::SharedLock,
    id: SnapshotId,
    timeout: Duration,
    cancel: &crate::cancel::Cancel,
) -> Result<Vec<PartitionCheck>> {
    let snap = repo.load_snapshot(&id)?;
    let dir = tempfile::Builder::new()
        .prefix("dedisk-fsck-")
        .tempdir()
        .map_err(|e| Error::target(std::env::temp_dir(), e))?;
    let mountpoint = dir.path().to_path_buf();
    let fs = super::mount::SnapshotFs::new(
        repo,
        lock,
        super::mount::MountFilter {
            name: None,
            snapshot: Some(id),
        },
    );
    let session = super::mount::mount(fs, &mountpoint).map_err(|e| {
        Error::Usage(format!(
            "mounting the snapshot at {} for the checkers failed (is /dev/fuse there?): {e}",
            mountpoint.display()
        ))
    })?;
    let result = (|| {
        let folder = snapshot_folder(&mountpoint, &id)?;
        let mut out = Vec::new();
        for disk in &snap.disks {
            for (name, path) in partition_files(&folder, &disk.label)? {
                cancel.check()?;
                out.push(check_one(&disk.label, &name, &path, timeout, cancel)?);
            }
        }
        Ok(out)
    })();
    drop(session); // unmounts
    result
}

/// The mount's folder of the one snapshot it shows.
fn snapshot_folder(mountpoint: &Path, id: &SnapshotId) -> Result<PathBuf> {
    let suffix = format!("_{}", id.short());
    let io = |e| Error::target(mountpoint, e);
    for vm in std::fs::read_dir(mountpoint).map_err(io)?.flatten() {
        let Ok(entries) = std::fs::read_dir(vm.path()) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(&suffix) {
                return Ok(e.path());
            }
        }
    }
    Err(Error::Usage(format!(
        "snapshot {} does not show in its mount",
        id.short()
    )))
}

/// `(name, path)` of the disk's partition files in order, or its whole file when it has
/// no partition table.
fn partition_files(folder: &Path, label: &str) -> Result<Vec<(String, PathBuf)>> {
    let prefix = format!("{label}.p");
    let mut parts: Vec<(u32, String)> = std::fs::read_dir(folder)
        .map_err(|e| Error::target(folder, e))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let n = name.strip_prefix(&prefix)?.parse::<u32>().ok()?;
            Some((n, name))
        })
        .collect();
    parts.sort();
    if parts.is_empty() {
        let whole = format!("{label}.raw");
        return Ok(vec![(whole.clone(), folder.join(whole))]);
    }
    Ok(parts
        .into_iter()
        .map(|(_, name)| (name.clone(), folder.join(name)))
        .collect())
}

/// The read-only checker for a filesystem type, as an argument vector before the file.
fn checker_for(fs: &str) -> Option<&'static [&'static str]> {
    Some(match fs {
        "ext2" | "ext3" | "ext4" => &["e2fsck", "-f", "-n"],
        "xfs" => &["xfs_repair", "-n", "-f"],
        "btrfs" => &["btrfs", "check", "--readonly"],
        "vfat" | "msdos" => &["fsck.vfat", "-n"],
        _ => return None,
    })
}

/// What each checker's exit status means: Some(true) clean, Some(false) errors found,
/// None no verdict (the checker itself failed).
fn verdict_of(fs: &str, code: i32) -> Option<bool> {
    match fs {
        // e2fsck: 0 clean, 4 errors left uncorrected (as -n leaves all), 8+ its own failure.
        "ext2" | "ext3" | "ext4" => match code {
            0 => Some(true),
            1..=7 => Some(false),
            _ => None,
        },
        // xfs_repair -n: 0 clean, 1 corruption found; 2 a dirty log it will not judge.
        "xfs" => match code {
            0 => Some(true),
            1 => Some(false),
            _ => None,
        },
        _ => match code {
            0 => Some(true),
            1 => Some(false),
            _ => None,
        },
    }
}

/// The filesystem type `blkid` finds in `path` (empty when it finds none).
fn probe(path: &Path) -> std::result::Result<String, String> {
    let out = Command::new(program("blkid"))
        .args(["-p", "-s", "TYPE", "-o", "value"])
        .arg(path)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("blkid could not run: {e}"))?;
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Some(2) => Ok(String::new()), // nothing recognised
        _ => Err(format!(
            "blkid failed: {}",
            repo_format::names::escape(String::from_utf8_lossy(&out.stderr).trim())
        )),
    }
}

fn check_one(
    disk: &str,
    name: &str,
    path: &Path,
    timeout: Duration,
    cancel: &crate::cancel::Cancel,
) -> Result<PartitionCheck> {
    let started = Instant::now();
    let mut r = PartitionCheck {
        disk: disk.into(),
        partition: name.into(),
        filesystem: String::new(),
        checker: None,
        verdict: Verdict::NotChecked,
        exit_code: None,
        detail: String::new(),
        output: Vec::new(),
        seconds: 0.0,
    };
    let fs = match probe(path) {
        Ok(fs) => fs,
        Err(why) => {
            r.verdict = Verdict::Failed;
            r.detail = why;
            return Ok(r);
        }
    };
    r.filesystem = repo_format::names::escape(&fs);
    let Some(argv) = checker_for(&fs) else {
        r.detail = if fs.is_empty() {
            "no filesystem recognised".into()
        } else {
            format!("no read-only checker for {}", r.filesystem)
        };
        return Ok(r);
    };
    r.checker = Some(format!("{} {}", argv.join(" "), name));
    let child = Command::new(program(argv[0]))
        .args(&argv[1..])
        .arg(path)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            r.verdict = Verdict::Failed;
            r.detail = format!("{} could not run: {e}", argv[0]);
            return Ok(r);
        }
    };
    // Read its output on threads so a chatty checker never blocks on a full pipe.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(_) => break None,
        }
        if started.elapsed() > timeout || cancel.check().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = out.join().unwrap_or_default();
    text.extend(err.join().unwrap_or_default());
    let lines: Vec<String> = String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(repo_format::names::escape)
        .collect();
    r.output = lines[lines.len().saturating_sub(OUTPUT_LINES)..].to_vec();
    r.seconds = started.elapsed().as_secs_f64();
    cancel.check()?;
    let Some(status) = status else {
        r.verdict = Verdict::Failed;
        r.detail = format!("{} did not finish within {}s", argv[0], timeout.as_secs());
        return Ok(r);
    };
    r.exit_code = status.code();
    match status.code().and_then(|c| verdict_of(&fs, c)) {
        Some(true) => {
            r.verdict = Verdict::Clean;
            r.detail = "clean".into();
        }
        Some(false) => {
            r.verdict = Verdict::Errors;
            r.detail = format!(
                "{} found errors (exit {})",
                argv[0],
                status.code().unwrap_or(-1)
            );
        }
        None => {
            r.verdict = Verdict::Failed;
            r.detail = format!(
                "{} gave no verdict ({status}): {}",
                argv[0],
                r.output.last().cloned().unwrap_or_default()
            );
        }
    }
    Ok(r)
}

/// Reads a pipe to its end on a thread.
fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// A system tool by name: from PATH, else from /usr/sbin or /sbin (where Debian puts
/// blkid and the checkers, outside an ordinary user's PATH).
fn program(name: &str) -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    if !in_path {
        for dir in ["/usr/sbin", "/sbin"] {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(name)
}
