//! Taking a repository lock the way every command does: wait for a conflicting holder
//! up to a limit, then reconcile the index (FORMAT.md, section 12).

use std::time::{Duration, Instant};

use repo_format::lock::{LockKind, RepoLock};
use repo_format::{IndexRepair, Repository};

use crate::error::Result;

/// Takes a `kind` lock for `command`, waiting up to `wait` (checking `cancel`) while
/// another holder conflicts. Once held, the index is reconciled with the packs: rows of
/// packs that are gone are dropped only here, under the lock, where no prune can be
/// deleting packs meanwhile (issue 12: a backup started right after a prune warned of
/// missing packs that the prune had just removed).
pub fn lock(
    repo: &Repository,
    kind: LockKind,
    command: &str,
    wait: Duration,
    cancel: &crate::cancel::Cancel,
) -> Result<RepoLock> {
    lock_reconciled(repo, kind, command, wait, cancel).map(|(l, _)| l)
}

/// [`lock`], also returning what the reconciliation under the lock did.
pub fn lock_reconciled(
    repo: &Repository,
    kind: LockKind,
    command: &str,
    wait: Duration,
    cancel: &crate::cancel::Cancel,
) -> Result<(RepoLock, IndexRepair)> {
    if !repo.is_writable() {
        if kind == LockKind::Shared {
            log::warn!(
                "the repository is read-only for this process: reading it without a lock (a prune run by its owner meanwhile would make reads fail, never return wrong data)"
            );
            return Ok((RepoLock::read_only(), IndexRepair::default()));
        }
        return Err(repo_format::Error::io(
            repo.root(),
            std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem),
        )
        .into());
    }
    let started = Instant::now();
    let mut told = false;
    loop {
        match repo.lock(kind, command) {
            Ok(l) => {
                let mut index = repo.index()?;
                let r = match repo.reconcile(&mut index) {
                    // Damage the unlocked open did not touch (it reads less): rebuild now.
                    Err(e) if e.is_broken_index() => {
                        repo.recover_index(&index, &e)?;
                        let mut index = repo.index()?;
                        repo.reconcile(&mut index)?
                    }
                    r => r?,
                };
                return Ok((l, r));
            }
            Err(repo_format::Error::Locked { holder }) if started.elapsed() < wait => {
                if !told {
                    log::warn!("waiting up to {}s for the {holder}", wait.as_secs());
                    told = true;
                }
                cancel.check()?;
                std::thread::sleep(Duration::from_millis(500));
            }
            // A lock file that cannot be written (a full filesystem, a read-only one met
            // after opening): readers go on without one, as on a read-only repository.
            Err(repo_format::Error::Io { path, source })
                if kind == LockKind::Shared && cannot_write(&source) =>
            {
                log::warn!(
                    "cannot write a lock in {} ({source}): reading without a lock",
                    path.display()
                );
                return Ok((RepoLock::read_only(), IndexRepair::default()));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Errors that mean "this filesystem takes no new file", not "something is wrong".
fn cannot_write(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EROFS | libc::EACCES | libc::EPERM | libc::EDQUOT)
    )
}
