//! The commands that check and change what is stored: `verify`, `forget`, `prune`,
//! `copy`, `repair`, `unlock`.

use anyhow::{bail, Context, Result};
use repo_format::Repository;
use serde_json::json;

use engine::job::select::resolve_snapshot;

use crate::args::{CopyArgs, ForgetArgs, Global, PruneArgs, RepairWhat, VerifyArgs};
use crate::context::{lock_exclusive, lock_prune, lock_shared, open_repo, Outcome, CANCEL};
use crate::output::{self, bytes};
use crate::progress::Bar;

pub fn verify(g: &Global, a: &VerifyArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let lock = lock_shared(g, &repo, "verify", &mut out)?;

    let subset = match &a.subset {
        Some(text) => engine::maintain::verify::Subset::parse(text)?,
        None => engine::maintain::verify::Subset::All,
    };
    let snapshot = match &a.snapshot {
        Some(spec) => Some(resolve_snapshot(&repo, spec)?.0),
        None => None,
    };
    let opts = engine::maintain::verify::VerifyOptions {
        read_data: a.read_data,
        subset,
        name: a.name.clone(),
        snapshot,
        // One more than the cores: while one worker waits for its pack to be read, the
        // others keep the cores decoding (issue 19: 2.98 s -> 2.67 s on 2 cores).
        workers: a.workers.unwrap_or_else(|| engine::default_workers() + 1),
    };
    let progress = Bar::new(g, "verify");
    let report = engine::maintain::verify::verify(&repo, &lock, &opts, &progress)
        .context("verifying the repository")?;
    if g.json {
        output::json(&json!({"type": "verify", "report": report}));
    } else {
        for p in &report.problems {
            output::line(format!("damaged: {p}"));
        }
        let data = if a.read_data {
            format!(
                ", read {} of {} packs ({} blobs, {})",
                report.packs_read,
                report.packs,
                report.blobs_read,
                bytes(report.bytes_read)
            )
        } else {
            String::new()
        };
        output::line(format!(
            "verified {} snapshot(s), {} disk(s), {} chunk references{data}: {}",
            report.snapshots,
            report.disks,
            report.chunk_refs,
            if report.problem_count == 0 {
                "no damage found".to_string()
            } else if report.problem_count > report.problems.len() as u64 {
                format!(
                    "{} problem(s), the first {} listed",
                    report.problem_count,
                    report.problems.len()
                )
            } else {
                format!("{} problem(s)", report.problem_count)
            }
        ));
    }
    out.warnings.extend(report.warnings.iter().cloned());
    if report.problem_count > 0 {
        bail!(
            "the repository is damaged: {} problem(s), listed above",
            report.problem_count
        );
    }
    Ok(out)
}

pub fn forget(g: &Global, a: &ForgetArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let lock = lock_shared(g, &repo, "forget", &mut out)?;
    let policy = engine::maintain::forget::Policy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a
            .keep_within
            .as_deref()
            .map(engine::maintain::forget::parse_within)
            .transpose()?,
        tags: a.keep_tags.clone(),
    };
    let tz = jiff::tz::TimeZone::system();
    let decisions =
        engine::maintain::forget::forget(&repo, &lock, &policy, a.name.as_deref(), a.dry_run, &tz)?;
    drop(lock); // a prune below takes its own lock
    if g.json {
        output::json(&json!({"type": "forget", "dry_run": a.dry_run, "decisions": decisions}));
    } else {
        print_decisions(&decisions, a.dry_run);
    }
    if a.prune {
        run_prune(
            g,
            &repo,
            10.0,
            a.dry_run,
            std::time::Duration::ZERO,
            &mut out,
        )?;
    }
    Ok(out)
}

/// What `forget` decided, per VM, and a count.
fn print_decisions(decisions: &[engine::maintain::forget::Decision], dry_run: bool) {
    let removed = decisions.iter().filter(|d| !d.keep).count();
    let mut vm = "";
    for d in decisions {
        if d.name != vm {
            vm = &d.name;
            output::line(format!("{vm}:"));
        }
        output::line(format!(
            "  {} {}  {:<6}  {}",
            d.id.short(),
            output::time(d.time),
            if d.keep { "keep" } else { "remove" },
            d.reasons.join(", ")
        ));
    }
    output::line(format!(
        "{} {removed} of {} snapshot(s){}",
        if dry_run { "would forget" } else { "forgot" },
        decisions.len(),
        if removed > 0 && !dry_run {
            "; their unique data stays in the packs until a prune"
        } else {
            ""
        }
    ));
}

pub fn repair(g: &Global, what: &RepairWhat) -> Result<Outcome> {
    match what {
        RepairWhat::Index => {
            // Opening may itself rebuild a broken index; rebuild explicitly either way.
            let repo = crate::context::open_quietly(g)?;
            // The rebuild replaces every row: what the reconciliation drops says nothing.
            let _lock = lock_exclusive(g, &repo, "repair index", &mut Outcome::default())?;
            let r = repo.rebuild_index().context("rebuilding the index")?;
            if g.json {
                output::json(&json!({"type": "repair-index", "packs": r.packs_added}));
            } else {
                output::line(format!("index rebuilt from {} pack(s)", r.packs_added));
            }
            Ok(Outcome::default())
        }
        RepairWhat::Snapshots { read_data, dry_run } => {
            let mut out = Outcome::default();
            let repo = open_repo(g, &mut out)?;
            let lock = lock_exclusive(g, &repo, "repair snapshots", &mut out)?;
            let r = engine::maintain::repair::repair_snapshots(
                &repo, &lock, *read_data, *dry_run, &CANCEL,
            )
            .context("repairing snapshots")?;
            for u in &r.unreadable {
                out.warnings.push(format!("left in place, unreadable: {u}"));
            }
            if g.json {
                output::json(&json!({"type": "repair-snapshots", "report": r}));
                return Ok(out);
            }
            for s in &r.repaired {
                let new = s.new.map_or("(dry run)".to_string(), |n| n.short());
                output::line(format!(
                    "snapshot {} of {} -> {new}:",
                    s.old.short(),
                    s.name
                ));
                for (label, l) in &s.lost {
                    output::line(format!(
                        "  {label} bytes {}..{} lost: {}",
                        l.offset,
                        l.offset + l.len,
                        l.reason
                    ));
                }
            }
            output::line(format!(
                "checked {} snapshot(s); {} {}",
                r.checked,
                r.repaired.len(),
                if *dry_run {
                    "would be rewritten"
                } else {
                    "rewritten with their lost ranges recorded"
                }
            ));
            Ok(out)
        }
    }
}

/// Runs a prune under a prune lock (backups go on beside it) and prints what it did.
pub fn run_prune(
    g: &Global,
    repo: &Repository,
    max_unused_pct: f64,
    dry_run: bool,
    listing_lag: std::time::Duration,
    out: &mut Outcome,
) -> Result<()> {
    let lock = lock_prune(g, repo, "prune", out)?;
    let opts = engine::maintain::prune::PruneOptions {
        max_unused_pct,
        dry_run,
        listing_lag,
    };
    let r = engine::maintain::prune::prune(repo, &lock, &opts, &CANCEL, &Bar::new(g, "prune"))
        .context("prune stopped; the repository is intact and the next prune finishes the job")?;
    if g.json {
        output::json(
            &json!({"type": "prune", "report": r, "bytes_reclaimed": r.bytes_reclaimed()}),
        );
        return Ok(());
    }
    output::line(format!(
        "{} snapshot(s), {} live blob(s); {} packs, {} before",
        r.snapshots,
        r.live_blobs,
        r.packs_before,
        bytes(r.bytes_before)
    ));
    let reclaimed = bytes(r.bytes_reclaimed().max(0) as u64);
    output::line(if dry_run {
        format!(
            "prune would delete {} pack(s) ({} of them repacked), reclaiming about {reclaimed}",
            r.packs_deleted, r.packs_repacked
        )
    } else {
        format!(
            "prune condemned {} pack(s) ({} repacked into {} new) and deleted {}, reclaiming {reclaimed}",
            r.packs_condemned, r.packs_repacked, r.packs_written, r.packs_deleted
        )
    });
    if r.records_waiting > 0 && !dry_run {
        output::line(format!(
            "{} condemnation record(s) wait for commands that were running when they were written; a later prune deletes their packs",
            r.records_waiting
        ));
    }
    if r.packs_kept > 0 {
        output::line(format!(
            "{} condemned pack(s) kept: snapshots written meanwhile need them",
            r.packs_kept
        ));
    }
    if r.missing_blobs > 0 {
        log::warn!(
            "{} referenced blob(s) are missing from the repository; run `dedisk verify`",
            r.missing_blobs
        );
    }
    Ok(())
}

/// `dedisk copy --to TARGET`: the selected snapshots into the target, under its keys.
pub fn copy(g: &Global, a: &CopyArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let target = crate::context::open_target(&a.to, a.to_key_file.as_deref())?;
    let from_lock = lock_shared(g, &repo, "copy", &mut out)?;
    let to_lock = lock_shared(g, &target, "copy", &mut out)?;
    let mut snapshots = Vec::new();
    for spec in &a.snapshots {
        snapshots.push(resolve_snapshot(&repo, spec)?.0);
    }
    let opts = engine::maintain::copy::CopyOptions {
        names: a.name.clone(),
        snapshots,
        dry_run: a.dry_run,
    };
    let progress = Bar::new(g, "copy");
    let r = engine::maintain::copy::copy(
        &repo, &from_lock, &target, &to_lock, &opts, &CANCEL, &progress,
    )
    .with_context(|| {
            format!(
                "copy to {} stopped; the snapshots copied so far are complete, the next copy sends the rest",
                target.describe()
            )
        })?;
    if g.json {
        output::json(&json!({"type": "copy", "report": r}));
        return Ok(out);
    }
    for c in &r.snapshots {
        output::line(format!(
            "{} {} {}  {}",
            c.source.short(),
            output::time(c.time),
            c.name,
            match (&c.target, c.already) {
                (_, true) => "already there".to_string(),
                (Some(t), _) => format!("copied as {}", t.short()),
                (None, _) => "would be copied".to_string(),
            }
        ));
    }
    let copied = r.snapshots.iter().filter(|c| !c.already).count();
    output::line(format!(
        "{} {copied} snapshot(s) to {}: {} of {} chunk(s) read were new there ({})",
        if a.dry_run { "would copy" } else { "copied" },
        target.describe(),
        r.chunks_sent,
        r.chunks_read,
        bytes(r.bytes_sent)
    ));
    Ok(out)
}

pub fn prune(g: &Global, a: &PruneArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    run_prune(g, &repo, a.max_unused, a.dry_run, a.listing_lag, &mut out)?;
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
    for lock in repo_format::lock::list(repo.backend())? {
        let (path, age) = (&lock.path, lock.age);
        let (what, remove) = match &lock.info {
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
            repo.backend()
                .delete(repo_format::backend::ObjectKind::Lock, &lock.name)
                .with_context(|| format!("removing {}", path.display()))?;
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
