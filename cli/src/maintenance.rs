//! Locking at the CLI edge, and the commands that delete: `prune`, `unlock`.

use std::time::Duration;

use anyhow::{Context, Result};
use repo_format::lock::{LockKind, RepoLock};
use repo_format::Repository;
use serde_json::json;

use crate::args::{Global, PruneArgs};
use crate::commands::{open_repo, Outcome, CANCEL};
use crate::output::{self, bytes};

/// Takes a repository lock, waiting up to `--lock-wait` seconds for a conflicting holder
/// (a nightly backup should wait for a prune to finish, not fail).
/// What the reconciliation under the lock found missing becomes a warning in `out`: it
/// is true (no prune can be running), unlike what an unlocked open sees.
pub fn lock(
    g: &Global,
    repo: &Repository,
    kind: LockKind,
    command: &str,
    out: &mut Outcome,
) -> Result<RepoLock> {
    let (lock, r) = engine::locking::lock_reconciled(
        repo,
        kind,
        command,
        Duration::from_secs(g.lock_wait),
        &CANCEL,
    )
    .context("locking the repository")?;
    if r.packs_dropped > 0 {
        out.warnings.push(format!(
            "{} pack(s) listed in the index are missing on disk; run `dedisk verify`",
            r.packs_dropped
        ));
    }
    Ok(lock)
}

/// Runs a prune under an exclusive lock and prints what it reclaimed.
pub fn run_prune(
    g: &Global,
    repo: &Repository,
    max_unused_pct: f64,
    dry_run: bool,
    out: &mut Outcome,
) -> Result<()> {
    let lock = lock(g, repo, LockKind::Exclusive, "prune", out)?;
    let opts = engine::maintain::prune::PruneOptions {
        max_unused_pct,
        dry_run,
    };
    let r = engine::maintain::prune::prune(repo, &lock, &opts, &CANCEL)
        .context("prune stopped; the repository is intact and the next prune finishes the job")?;
    if g.json {
        output::json(
            &json!({"type": "prune", "report": r, "bytes_reclaimed": r.bytes_reclaimed()}),
        );
        return Ok(());
    }
    let verb = if dry_run { "would" } else { "did" };
    output::line(format!(
        "{} snapshot(s), {} live blob(s); {} packs, {} before",
        r.snapshots,
        r.live_blobs,
        r.packs_before,
        bytes(r.bytes_before)
    ));
    output::line(format!(
        "prune {verb} delete {} pack(s) ({} of them repacked into {} new), reclaiming {}",
        r.packs_deleted,
        r.packs_repacked,
        if dry_run {
            "about".to_string()
        } else {
            r.packs_written.to_string()
        },
        bytes(r.bytes_reclaimed().max(0) as u64)
    ));
    if r.missing_blobs > 0 {
        log::warn!(
            "{} referenced blob(s) are missing from the repository; run `dedisk verify`",
            r.missing_blobs
        );
    }
    Ok(())
}

pub fn prune(g: &Global, a: &PruneArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    run_prune(g, &repo, a.max_unused, a.dry_run, &mut out)?;
    Ok(out)
}

/// Removes the locks whose holder is provably gone (see `repo_format::lock`); with
/// `--force` also other hosts' locks and unreadable lock files, each named in a warning.
/// A live process on this host keeps its lock whatever the flags: stop it instead.
pub fn unlock(g: &Global, force: bool) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let me = repo_format::lock::hostname();
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for (path, info) in repo_format::lock::list(&repo.locks_dir())? {
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        let (what, remove) = match &info {
            Ok(i) => match repo_format::lock::stale_reason(i, age) {
                Some(why) => (format!("{i} ({why})"), true),
                None if i.hostname != me && force => {
                    out.warnings.push(format!(
                        "removed the {i} held on another host: if that process still runs, it may now lose data"
                    ));
                    (i.to_string(), true)
                }
                None if i.hostname != me => (
                    format!("{i}: held on another host; --force removes it"),
                    false,
                ),
                None => (
                    format!("{i}: that process is running on this host; stop it instead"),
                    false,
                ),
            },
            Err(e) if force => (
                format!("unreadable lock file {} ({e})", path.display()),
                true,
            ),
            Err(e) => (
                format!(
                    "unreadable lock file {} ({e}); --force removes it",
                    path.display()
                ),
                false,
            ),
        };
        if remove {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(what);
        } else {
            kept.push(what);
        }
    }
    if g.json {
        output::json(&json!({"type": "unlock", "removed": removed, "kept": kept}));
    } else {
        for r in &removed {
            output::line(format!("removed the {r}"));
        }
        for k in &kept {
            output::line(format!("kept the {k}"));
        }
        output::line(format!(
            "{} lock(s) removed, {} kept",
            removed.len(),
            kept.len()
        ));
    }
    Ok(out)
}
