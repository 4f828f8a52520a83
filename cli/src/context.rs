//! What every command shares: its [`Outcome`], the cancellation flag, opening the
//! repository and taking its locks. Commands import from here; this module imports from
//! no command.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use repo_format::lock::{ExclusiveLock, SharedLock};
use repo_format::Repository;

use crate::args::Global;

/// What a command reports besides its output.
#[derive(Default)]
pub struct Outcome {
    /// Things the user should know; exit code 3 when non-empty.
    pub warnings: Vec<String>,
}

/// Set by SIGINT/SIGTERM (see `main`): backup and restore stop at the next safe point.
pub static CANCEL: std::sync::LazyLock<engine::cancel::Cancel> =
    std::sync::LazyLock::new(engine::cancel::Cancel::new);

pub fn repo_path(g: &Global) -> Result<&Path> {
    g.repo
        .as_deref()
        .context("no repository given: pass --repo REPO or set DEDISK_REPO")
}

/// Opens the repository, turning what opening had to repair into warnings.
pub fn open_repo(g: &Global, out: &mut Outcome) -> Result<Repository> {
    let path = repo_path(g)?;
    let repo =
        Repository::open(path).with_context(|| format!("opening repository {}", path.display()))?;
    let r = repo.index_repair;
    if r.rebuilt {
        out.warnings.push(format!(
            "the index was missing or unusable and was rebuilt from {} packs",
            r.packs_added
        ));
    }
    Ok(repo)
}

/// A shared lock, waiting up to `--lock-wait` seconds for a conflicting holder (a
/// nightly backup should wait for a prune to finish, not fail). What the reconciliation
/// under the lock found missing becomes a warning in `out`: it is true (no prune can be
/// running), unlike what an unlocked open sees.
pub fn lock_shared(
    g: &Global,
    repo: &Repository,
    command: &str,
    out: &mut Outcome,
) -> Result<SharedLock> {
    let lock = engine::locking::shared(repo, command, Duration::from_secs(g.lock_wait), &CANCEL)
        .context("locking the repository")?;
    warn_dropped(&lock, out);
    Ok(lock)
}

/// An exclusive lock, waiting as [`lock_shared`] does.
pub fn lock_exclusive(
    g: &Global,
    repo: &Repository,
    command: &str,
    out: &mut Outcome,
) -> Result<ExclusiveLock> {
    let lock = engine::locking::exclusive(repo, command, Duration::from_secs(g.lock_wait), &CANCEL)
        .context("locking the repository")?;
    warn_dropped(&lock, out);
    Ok(lock)
}

fn warn_dropped(lock: &SharedLock, out: &mut Outcome) {
    let dropped = lock.reconciled().packs_dropped;
    if dropped > 0 {
        out.warnings.push(format!(
            "{dropped} pack(s) listed in the index are missing on disk; run `dedisk verify`"
        ));
    }
}
