//! Waiting for a repository lock the way every command does: the repository hands out
//! the guards ([`Repository::lock_shared`], [`Repository::lock_exclusive`]); this waits
//! for a conflicting holder up to a limit, checking for cancellation meanwhile (a nightly
//! backup should wait for a prune to finish, not fail).

use std::time::{Duration, Instant};

use repo_format::lock::{ExclusiveLock, PruneLock, SharedLock};
use repo_format::Repository;

use crate::cancel::Cancel;
use crate::error::Result;

/// A shared lock for `command`, waiting up to `wait` for a conflicting holder.
pub fn shared(
    repo: &Repository,
    command: &str,
    wait: Duration,
    cancel: &Cancel,
) -> Result<SharedLock> {
    waiting(wait, cancel, || repo.lock_shared(command))
}

/// An exclusive lock for `command`, waiting up to `wait` for conflicting holders.
pub fn exclusive(
    repo: &Repository,
    command: &str,
    wait: Duration,
    cancel: &Cancel,
) -> Result<ExclusiveLock> {
    waiting(wait, cancel, || repo.lock_exclusive(command))
}

/// A prune's lock for `command`, waiting up to `wait` for another prune or an
/// exclusive holder (backups never hold it up).
pub fn prune(
    repo: &Repository,
    command: &str,
    wait: Duration,
    cancel: &Cancel,
) -> Result<PruneLock> {
    waiting(wait, cancel, || repo.lock_prune(command))
}

fn waiting<L>(
    wait: Duration,
    cancel: &Cancel,
    mut attempt: impl FnMut() -> repo_format::Result<L>,
) -> Result<L> {
    let started = Instant::now();
    let mut told = false;
    loop {
        match attempt() {
            Err(repo_format::Error::Locked { holder }) if started.elapsed() < wait => {
                if !told {
                    log::warn!("waiting up to {}s for the {holder}", wait.as_secs());
                    told = true;
                }
                cancel.check()?;
                std::thread::sleep(Duration::from_millis(500));
            }
            r => return Ok(r?),
        }
    }
}
