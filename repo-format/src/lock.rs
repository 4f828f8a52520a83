//! Repository locks (FORMAT.md, "Locks"): one small JSON file per holder in `locks/`.
//!
//! Commands that read or add data (backup, restore, mount, serve-nbd, verify, forget)
//! hold a shared lock; commands that delete packs (prune, repair index) hold an exclusive
//! one. A holder first writes its own lock file, then looks at the others: a conflicting
//! lock makes it remove its own and give up. Two holders racing both see each other and
//! both back off, never both proceed. A lock whose process is gone (same host, pid not
//! alive) is stale and removed by whoever finds it; locks from other hosts are only
//! reported, and `dedisk unlock` removes them on request.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a lock allows others to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// Others may read and add data too; nobody may delete.
    Shared,
    /// Nobody else may use the repository.
    Exclusive,
}

/// The content of a lock file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub kind: LockKind,
    pub hostname: String,
    pub pid: u32,
    pub time: jiff::Timestamp,
    /// The command holding it, for people (`backup`, `prune`...).
    pub command: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            LockKind::Shared => "shared",
            LockKind::Exclusive => "exclusive",
        };
        write!(
            f,
            "{kind} lock of `dedisk {}` (pid {} on {}, since {})",
            self.command,
            self.pid,
            self.hostname,
            self.time.strftime("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// A lock this process holds; removed when dropped.
#[derive(Debug)]
pub struct RepoLock {
    path: PathBuf,
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// This host's name, as recorded in lock files.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Every lock file: (path, content or the reason it cannot be read).
pub fn list(locks_dir: &Path) -> Result<Vec<(PathBuf, std::result::Result<LockInfo, String>)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(locks_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(Error::Io {
                path: locks_dir.into(),
                source,
            })
        }
    };
    for e in entries {
        let path = e
            .map_err(|source| Error::Io {
                path: locks_dir.into(),
                source,
            })?
            .path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let info = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<LockInfo>(&b).map_err(|e| e.to_string()));
        out.push((path, info));
    }
    Ok(out)
}

/// Whether `info` belongs to a process on this host that no longer runs.
pub fn is_stale(info: &LockInfo) -> bool {
    info.hostname == hostname() && info.pid != std::process::id() && !pid_alive(info.pid)
}

/// Removes stale locks; returns what was removed.
pub fn clear_stale(locks_dir: &Path) -> Result<Vec<LockInfo>> {
    let mut removed = Vec::new();
    for (path, info) in list(locks_dir)? {
        if let Ok(info) = info {
            if is_stale(&info) && std::fs::remove_file(&path).is_ok() {
                removed.push(info);
            }
        }
    }
    Ok(removed)
}

/// Takes a lock of `kind` for `command`, or fails with [`Error::Locked`] naming the
/// holder in the way. Stale locks are cleared first.
pub fn acquire(
    locks_dir: &Path,
    tmp_dir: &Path,
    kind: LockKind,
    command: &str,
) -> Result<RepoLock> {
    crate::durable::create_private_dir(locks_dir)?;
    for gone in clear_stale(locks_dir)? {
        log::info!("removed the stale {gone}");
    }
    let info = LockInfo {
        kind,
        hostname: hostname(),
        pid: std::process::id(),
        time: jiff::Timestamp::now(),
        command: command.into(),
    };
    let name = format!("{}.json", hex::encode(crate::ids::random_bytes()?));
    let path = locks_dir.join(name);
    let bytes = serde_json::to_vec_pretty(&info).expect("lock info serializes");
    crate::durable::write_atomic(&path, tmp_dir, &bytes)?;
    let lock = RepoLock { path };
    for (other, theirs) in list(locks_dir)? {
        if other == lock.path {
            continue;
        }
        let conflict = match &theirs {
            Ok(t) => kind == LockKind::Exclusive || t.kind == LockKind::Exclusive,
            // An unreadable lock file may be an exclusive lock being written: back off.
            Err(e) => {
                let age = std::fs::metadata(&other)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                if age.is_some_and(|a| a.as_secs() > 60) {
                    log::warn!(
                        "{}: unreadable lock file ignored ({e}); `dedisk unlock` removes it",
                        other.display()
                    );
                    false
                } else {
                    true
                }
            }
        };
        if conflict {
            let holder = match theirs {
                Ok(t) => t.to_string(),
                Err(_) => format!("a lock being written ({})", other.display()),
            };
            return Err(Error::Locked { holder }); // dropping `lock` removes ours
        }
    }
    Ok(lock)
}
