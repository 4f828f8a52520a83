//! `verify --fsck` and `verify --boot`: checks of what the guest would see, run
//! against a snapshot without restoring it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use engine::access::boot::{Accel, BootOptions, BootVerdict, Signal};
use engine::access::fsck::Verdict;
use engine::job::select::resolve_snapshot;

use crate::args::{AccelArg, Global, VerifyArgs};
use crate::context::{lock_shared, open_repo, Outcome, CANCEL};
use crate::output;

pub fn verify(g: &Global, a: &VerifyArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = Arc::new(open_repo(g, &mut out)?);
    let lock = lock_shared(g, &repo, "verify", &mut out)?;
    match (&a.fsck, &a.boot) {
        (Some(spec), _) => fsck(g, a, repo, lock, spec, out),
        (_, Some(spec)) => boot(g, a, repo, lock, spec, out),
        _ => unreachable!("main dispatches here only with --fsck or --boot"),
    }
}

fn fsck(
    g: &Global,
    a: &VerifyArgs,
    repo: Arc<repo_format::Repository>,
    lock: repo_format::lock::SharedLock,
    spec: &str,
    mut out: Outcome,
) -> Result<Outcome> {
    let (id, _) = resolve_snapshot(&repo, spec)?;
    let checks = engine::access::fsck::check_snapshot(
        repo,
        lock,
        id,
        Duration::from_secs(a.fsck_timeout),
        &CANCEL,
    )
    .with_context(|| format!("checking the filesystems of snapshot {}", id.short()))?;
    if g.json {
        output::json(&json!({"type": "fsck", "snapshot": id, "partitions": checks}));
    } else {
        for c in &checks {
            let verdict = match c.verdict {
                Verdict::Clean => "clean".to_string(),
                Verdict::Errors => format!("ERRORS ({})", c.detail),
                Verdict::NotChecked => format!("not checked ({})", c.detail),
                Verdict::Failed => format!("check failed ({})", c.detail),
            };
            output::line(format!(
                "{} {}: {verdict}{}",
                c.partition,
                if c.filesystem.is_empty() {
                    "-"
                } else {
                    &c.filesystem
                },
                c.checker
                    .as_ref()
                    .map(|cmd| format!(" [{cmd}, {:.1}s]", c.seconds))
                    .unwrap_or_default()
            ));
            if c.verdict == Verdict::Errors {
                for l in &c.output {
                    output::line(format!("    {l}"));
                }
            }
        }
    }
    for c in checks.iter().filter(|c| c.verdict == Verdict::Failed) {
        out.warnings
            .push(format!("{}: not checked: {}", c.partition, c.detail));
    }
    let bad: Vec<String> = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Errors)
        .map(|c| format!("{} ({})", c.partition, c.filesystem))
        .collect();
    if !bad.is_empty() {
        bail!(
            "snapshot {}: {} filesystem(s) with errors: {}",
            id.short(),
            bad.len(),
            bad.join(", ")
        );
    }
    Ok(out)
}

fn boot(
    g: &Global,
    a: &VerifyArgs,
    repo: Arc<repo_format::Repository>,
    lock: repo_format::lock::SharedLock,
    spec: &str,
    out: Outcome,
) -> Result<Outcome> {
    let (id, _) = resolve_snapshot(&repo, spec)?;
    let signal = match (&a.boot_serial, a.boot_agent) {
        (Some(re), _) => Signal::serial(re)?,
        (None, true) => Signal::Agent,
        (None, false) => Signal::Screen(Duration::from_secs(a.boot_screen.max(2))),
    };
    let evidence = a.evidence.clone().unwrap_or_else(|| {
        let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
        std::path::PathBuf::from(format!("dedisk-boot-{}-{now}", id.short()))
    });
    let opts = BootOptions {
        signal,
        timeout: Duration::from_secs(a.boot_timeout),
        accel: match a.accel {
            AccelArg::Auto => Accel::Auto,
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg,
        },
        max_memory_mib: a.boot_memory,
        evidence,
        qemu: "qemu-system-x86_64".into(),
    };
    let r = engine::access::boot::boot_test(repo, lock, id, &opts, &CANCEL)
        .with_context(|| format!("boot test of snapshot {}", id.short()))?;
    if g.json {
        output::json(&json!({"type": "boot", "report": r}));
    } else {
        output::line(format!(
            "boot test of {} {} ({}, {}, {}): {}{} — {}; evidence in {}",
            repo_format::names::escape(&r.vm),
            id.short(),
            r.machine,
            r.firmware,
            r.accel,
            match r.verdict {
                BootVerdict::Booted => "BOOTED",
                BootVerdict::Failed => "FAILED",
                BootVerdict::TimedOut => "TIMED OUT",
            },
            r.boot_seconds
                .map(|s| format!(" in {s:.1}s"))
                .unwrap_or_default(),
            r.reason,
            r.evidence.display()
        ));
        if let Some(why) = &r.kvm_failed {
            output::line(format!("  ran under TCG: {why}"));
        }
    }
    if r.verdict != BootVerdict::Booted {
        bail!("snapshot {} did not boot: {}", id.short(), r.reason);
    }
    Ok(out)
}
