//! Repository locks (FORMAT.md, "Locks"): one small JSON file per holder in `locks/`.
//!
//! When a lock is stale (issue 11: `unlock` used to remove live processes' locks, and a
//! backup beside the prune it unlocked then lost data):
//! - same host: the pid is not alive, or it is alive but is another process (its start
//!   time differs from the one recorded, or, for locks that record none, its command
//!   name is not dedisk's);
//! - any host: the holder has not refreshed the file's modification time for
//!   [`STALE_LOCK_AGE`] (holders refresh it every [`REFRESH_EVERY`]).
//!
//! Nothing else is ever removed automatically; `dedisk unlock --force` removes the
//! rest, naming each.
//!
//! Commands that read or add data (backup, restore, mount, serve-nbd, verify, forget,
//! copy) hold a shared lock; prune holds a `prune` lock, which only another prune or an
//! exclusive holder conflicts with (it deletes only what FORMAT.md section 15 allows);
//! repair holds an exclusive one. A holder first writes its own lock file, then looks at the others: a conflicting
//! lock makes it remove its own and give up. Two holders racing both see each other and
//! both back off, never both proceed. A lock whose process is gone (same host, pid not
//! alive) is stale and removed by whoever finds it; locks from other hosts are only
//! reported, and `dedisk unlock` removes them on request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, ObjectKind};
use crate::error::{Error, Result};

/// What a lock allows others to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// Others may read and add data too; nobody may delete.
    Shared,
    /// Nobody else may use the repository.
    Exclusive,
    /// A prune (FORMAT.md, section 15): others may read and add data beside it; no
    /// other prune and no exclusive holder may run meanwhile.
    Prune,
}

impl LockKind {
    /// Whether a holder of `self` and one of `other` may run at the same time.
    pub fn conflicts_with(self, other: LockKind) -> bool {
        use LockKind::*;
        matches!(
            (self, other),
            (Exclusive, _) | (_, Exclusive) | (Prune, Prune)
        )
    }
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
    /// The holder's start time in clock ticks after boot (`/proc/PID/stat` field 22), so a
    /// reused pid is not taken for the holder. Absent in locks of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
}

/// A holder refreshes its lock file's modification time this often.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// A lock file not refreshed for this long is stale, whatever host wrote it.
pub const STALE_LOCK_AGE: Duration = Duration::from_secs(1800);
/// A holder whose last successful refresh is older than this no longer counts on its
/// lock for what it is about to commit (a backup's snapshot): others may think it stale
/// soon. The margin over [`STALE_LOCK_AGE`] covers a slow request and clocks that
/// differ by a few minutes (FORMAT.md, section 15.4).
pub const FRESH_LOCK_AGE: Duration = Duration::from_secs(1200);

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            LockKind::Shared => "shared",
            LockKind::Exclusive => "exclusive",
            LockKind::Prune => "prune",
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

/// A lock this process holds; refreshed while held, removed when dropped.
pub struct RepoLock {
    /// Where it is, and its object name; None for the "lock" of a read-only
    /// repository, which cannot hold one.
    held: Option<(Arc<dyn Backend>, String)>,
    /// What we wrote: the object must still hold exactly this for the lock to be ours.
    bytes: Vec<u8>,
    /// When the object was last written successfully (by `acquire` or the refresher).
    written: Arc<std::sync::Mutex<std::time::Instant>>,
    /// Dropping it stops the refresher thread.
    stop: Option<std::sync::mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RepoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoLock")
            .field("name", &self.held.as_ref().map(|(_, n)| n))
            .finish_non_exhaustive()
    }
}

impl RepoLock {
    /// Fails unless the lock object is still the one this holder wrote: someone ran
    /// `dedisk unlock --force`, or the object was damaged. Prune calls it before deleting
    /// each pack, since another command may now believe the repository is free.
    pub fn still_held(&self) -> Result<()> {
        let Some((backend, name)) = &self.held else {
            return Err(Error::LockLost {
                path: PathBuf::from("(no lock: read-only repository)"),
            });
        };
        match backend.try_get(ObjectKind::Lock, name) {
            Ok(Some(b)) if b == self.bytes => Ok(()),
            _ => Err(Error::LockLost {
                path: backend.object_name(ObjectKind::Lock, name),
            }),
        }
    }

    /// [`RepoLock::still_held`], and refreshed recently enough that no prune can take
    /// it for stale before what the holder commits next is visible (FORMAT.md, 15.4).
    pub fn still_fresh(&self) -> Result<()> {
        self.still_held()?;
        let age = self
            .written
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX);
        if age > FRESH_LOCK_AGE {
            let path = self
                .held
                .as_ref()
                .map(|(b, n)| b.object_name(ObjectKind::Lock, n))
                .unwrap_or_default();
            return Err(Error::LockNotFresh {
                path,
                minutes: age.as_secs() / 60,
            });
        }
        Ok(())
    }

    /// The lock object's name (None for a read-only repository's stand-in).
    pub fn name(&self) -> Option<&str> {
        self.held.as_ref().map(|(_, n)| n.as_str())
    }

    /// What a reader of a read-only repository holds instead of a lock: nothing on disk.
    /// A prune by someone who can write may run meanwhile; readers verify every chunk,
    /// so that shows as an error, never as wrong data.
    pub fn read_only() -> RepoLock {
        RepoLock {
            held: None,
            bytes: Vec::new(),
            written: Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
            stop: None,
            refresher: None,
        }
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        if let Some((backend, name)) = &self.held {
            if let Err(e) = backend.delete(ObjectKind::Lock, name) {
                log::warn!("removing this process's lock: {e}");
            }
        }
    }
}

/// A shared lock on a repository, handed out by [`crate::Repository::lock_shared`]:
/// proof, by type, that this process may read and add data while it is held. Engine
/// functions that read or write under a lock take one, so a command cannot forget it.
/// Released when dropped.
#[derive(Debug)]
pub struct SharedLock {
    lock: RepoLock,
    reconciled: crate::IndexRepair,
}

/// An exclusive lock, handed out by [`crate::Repository::lock_exclusive`]: nobody else
/// reads or writes meanwhile, so it may delete. It dereferences to a [`SharedLock`]:
/// whatever a shared lock allows, it allows too.
#[derive(Debug)]
pub struct ExclusiveLock {
    shared: SharedLock,
}

/// A prune's lock, handed out by [`crate::Repository::lock_prune`]: no other prune (and
/// no exclusive holder) runs meanwhile, while backups and readers may. It may delete
/// packs only as FORMAT.md section 15 says. Dereferences to a [`SharedLock`].
#[derive(Debug)]
pub struct PruneLock {
    shared: SharedLock,
}

impl SharedLock {
    pub(crate) fn new(lock: RepoLock, reconciled: crate::IndexRepair) -> Self {
        SharedLock { lock, reconciled }
    }

    /// What reconciling the index with the packs did once the lock was taken (FORMAT.md,
    /// section 12): rows of vanished packs are dropped only then, when no prune can be
    /// deleting packs.
    pub fn reconciled(&self) -> &crate::IndexRepair {
        &self.reconciled
    }

    /// False for the stand-in a read-only repository gets: no lock object.
    pub fn is_on_disk(&self) -> bool {
        self.lock.held.is_some()
    }

    /// See [`RepoLock::still_held`].
    pub fn still_held(&self) -> Result<()> {
        self.lock.still_held()
    }

    /// See [`RepoLock::still_fresh`]; true for a read-only stand-in (it commits nothing).
    pub fn still_fresh(&self) -> Result<()> {
        if !self.is_on_disk() {
            return Ok(());
        }
        self.lock.still_fresh()
    }

    /// The lock object's name, None for a read-only stand-in.
    pub fn name(&self) -> Option<&str> {
        self.lock.name()
    }
}

impl PruneLock {
    pub(crate) fn new(lock: RepoLock, reconciled: crate::IndexRepair) -> Self {
        PruneLock {
            shared: SharedLock::new(lock, reconciled),
        }
    }
}

impl std::ops::Deref for PruneLock {
    type Target = SharedLock;
    fn deref(&self) -> &SharedLock {
        &self.shared
    }
}

impl ExclusiveLock {
    pub(crate) fn new(lock: RepoLock, reconciled: crate::IndexRepair) -> Self {
        ExclusiveLock {
            shared: SharedLock::new(lock, reconciled),
        }
    }
}

impl std::ops::Deref for ExclusiveLock {
    type Target = SharedLock;
    fn deref(&self) -> &SharedLock {
        &self.shared
    }
}

/// Rewrites the lock object every [`REFRESH_EVERY`] until `stop` is dropped, so that
/// its write time says its holder is alive.
fn refresh(
    backend: Arc<dyn Backend>,
    name: String,
    bytes: Vec<u8>,
    written: Arc<std::sync::Mutex<std::time::Instant>>,
    stop: std::sync::mpsc::Receiver<()>,
) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(REFRESH_EVERY) {
        let started = std::time::Instant::now();
        match backend.put_bytes(ObjectKind::Lock, &name, &bytes) {
            Ok(()) => {
                if let Ok(mut t) = written.lock() {
                    *t = started;
                }
            }
            Err(e) => log::warn!("refreshing this process's lock: {e}"),
        }
    }
}

/// This host's name, as recorded in lock files and snapshots: DEDISK_HOSTNAME when set
/// (hosts whose system names collide across a fleet writing one repository, or
/// containers), else the system's host name.
pub fn hostname() -> String {
    if let Some(name) = std::env::var("DEDISK_HOSTNAME")
        .ok()
        .filter(|n| !n.is_empty() && n.len() <= 255 && !n.chars().any(char::is_control))
    {
        return name;
    }
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
    if pid == 0 || pid > i32::MAX as u32 {
        return false; // kill(0) or a negative pid would address process groups
    }
    // SAFETY: signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A process's start time in clock ticks after boot, from `/proc/PID/stat`.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a live `pid` is provably not a dedisk process (for locks that record no start
/// time). Unknown (another user's process, read without privileges) is not proof.
fn is_not_dedisk(pid: u32) -> bool {
    // The command name in /proc/PID/stat is readable for every process (the exe link is
    // not, without privileges); a dedisk process's is `dedisk`.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match (stat.find('('), stat.rfind(')')) {
        (Some(a), Some(b)) if a < b => !stat[a + 1..b].starts_with("dedisk"),
        _ => false,
    }
}

/// The prefix of every temporary file this process writes in a repository's `tmp/`:
/// `w<host hash>-<pid>-<start time>.`, so the next process to open the repository can
/// tell a killed writer's leftovers from a live one's and remove them at once (issue 12:
/// each killed backup left up to 8 MiB there for an hour).
pub fn writer_tag() -> String {
    let pid = std::process::id();
    format!(
        "w{}-{pid}-{}.",
        &blake3::hash(hostname().as_bytes()).to_hex()[..8],
        process_start(pid).unwrap_or(0)
    )
}

/// Whether the temporary file `name` was written by a process of this host that is gone.
/// Names without a tag (older versions) are never judged gone here.
pub fn writer_gone(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('w') else {
        return false;
    };
    let mut parts = rest.splitn(3, '-');
    let (Some(host), Some(pid), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let start = tail.split('.').next().and_then(|s| s.parse::<u64>().ok());
    let (Ok(pid), Some(start)) = (pid.parse::<u32>(), start) else {
        return false;
    };
    if host != &blake3::hash(hostname().as_bytes()).to_hex()[..8] || pid == std::process::id() {
        return false;
    }
    !pid_alive(pid) || process_start(pid).is_some_and(|now| start != 0 && now != start)
}

/// Why a lock is stale, or `None` while its holder may still run.
pub fn stale_reason(info: &LockInfo, modified_age: Option<Duration>) -> Option<String> {
    if info.hostname == hostname() && info.pid != std::process::id() {
        if !pid_alive(info.pid) {
            return Some(format!("process {} is gone", info.pid));
        }
        let other = match info.pid_start {
            Some(start) => process_start(info.pid).is_some_and(|now| now != start),
            None => is_not_dedisk(info.pid),
        };
        if other {
            return Some(format!("pid {} now belongs to another process", info.pid));
        }
    }
    match modified_age {
        Some(age) if age > STALE_LOCK_AGE => {
            Some(format!("not refreshed for {} minutes", age.as_secs() / 60))
        }
        _ => None,
    }
}

/// One lock object as listed: its name, what it says (or why it cannot be read), and
/// how long ago it was last written.
pub struct ListedLock {
    pub name: String,
    /// Where it is, for messages.
    pub path: PathBuf,
    pub info: std::result::Result<LockInfo, String>,
    pub age: Option<Duration>,
}

/// Every lock object.
pub fn list(backend: &dyn Backend) -> Result<Vec<ListedLock>> {
    let mut out = Vec::new();
    for meta in backend.list(ObjectKind::Lock)? {
        let info = match backend.try_get(ObjectKind::Lock, &meta.name) {
            Ok(Some(b)) => serde_json::from_slice::<LockInfo>(&b).map_err(|e| e.to_string()),
            // Released since it was listed.
            Ok(None) => continue,
            Err(e) => Err(e.to_string()),
        };
        out.push(ListedLock {
            path: backend.object_name(ObjectKind::Lock, &meta.name),
            age: meta.modified.and_then(|t| t.elapsed().ok()),
            name: meta.name,
            info,
        });
    }
    Ok(out)
}

impl ListedLock {
    /// Why it is stale (see the module doc), or None.
    pub fn stale_reason(&self) -> Option<String> {
        match &self.info {
            Ok(i) => stale_reason(i, self.age).map(|w| format!("{i}: {w}")),
            Err(e) => self
                .age
                .filter(|a| *a > STALE_LOCK_AGE)
                .map(|_| format!("unreadable lock file {} ({e})", self.path.display())),
        }
    }
}

/// Removes stale locks, and unreadable lock objects untouched for [`STALE_LOCK_AGE`];
/// returns what was removed and why.
pub fn clear_stale(backend: &dyn Backend) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for lock in list(backend)? {
        if let Some(why) = lock.stale_reason() {
            if backend.delete(ObjectKind::Lock, &lock.name).is_ok() {
                removed.push(why);
            }
        }
    }
    Ok(removed)
}

/// Takes a lock of `kind` for `command`, or fails with [`Error::Locked`] naming the
/// holder in the way. Stale locks are cleared first.
///
/// No conditional write is needed (Garage ignores `If-None-Match`): every holder writes
/// an object of its own, under a random name, and only then lists the others. Of two
/// holders racing, each lists the other's object (the store lists what was written
/// before the listing began), so both back off; neither proceeds unseen.
pub fn acquire(backend: Arc<dyn Backend>, kind: LockKind, command: &str) -> Result<RepoLock> {
    for gone in clear_stale(&*backend)? {
        log::info!("removed a stale lock: {gone}");
    }
    let pid = std::process::id();
    let info = LockInfo {
        kind,
        hostname: hostname(),
        pid,
        time: jiff::Timestamp::now(),
        command: command.into(),
        pid_start: process_start(pid),
    };
    let name = hex::encode(crate::ids::random_bytes()?);
    let bytes = serde_json::to_vec_pretty(&info).expect("lock info serializes");
    let started = std::time::Instant::now();
    backend.put_bytes(ObjectKind::Lock, &name, &bytes)?;
    let written = Arc::new(std::sync::Mutex::new(started));
    let mut lock = RepoLock {
        held: Some((backend.clone(), name.clone())),
        bytes: bytes.clone(),
        written: written.clone(),
        stop: None,
        refresher: None,
    };
    for other in list(&*backend)? {
        if other.name == name {
            continue;
        }
        match &other.info {
            Ok(t) if kind.conflicts_with(t.kind) => {
                return Err(Error::Locked {
                    holder: t.to_string(),
                }); // dropping `lock` removes ours
            }
            Ok(_) => {}
            // Lock objects are written whole, so an unreadable one is damage or a
            // plant, never one being written: say so now, not after a wait
            // (`clear_stale` drops it once untouched for STALE_LOCK_AGE).
            Err(e) => {
                return Err(Error::BadLock {
                    path: other.path.clone(),
                    reason: e.clone(),
                })
            }
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    lock.stop = Some(tx);
    lock.refresher = Some(std::thread::spawn(move || {
        refresh(backend, name, bytes, written, rx)
    }));
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_removed_or_replaced_by_someone_else_is_no_longer_held() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(crate::backend::LocalDir::new(dir.path()));
        let lock = acquire(backend.clone(), LockKind::Exclusive, "prune").unwrap();
        lock.still_held().unwrap();
        let path = list(&*backend).unwrap().pop().unwrap().path;
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(lock.still_held(), Err(Error::LockLost { .. })));
        // Someone else's lock at the same name is not ours either.
        std::fs::write(&path, b"{}").unwrap();
        assert!(lock.still_held().is_err());
        assert!(process_start(std::process::id()).is_some());
    }

    #[test]
    fn temporary_files_of_gone_writers_are_recognised() {
        let mine = format!("{}pack-1.tmp", writer_tag());
        assert!(!writer_gone(&mine), "{mine}");
        let dead = mine.replacen(&format!("-{}-", std::process::id()), "-4000000-", 1);
        assert!(writer_gone(&dead), "{dead}");
        assert!(!writer_gone("pack-abc.tmp") && !writer_gone(".config.json.12.tmp"));
    }
}
