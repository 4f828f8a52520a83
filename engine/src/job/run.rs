//! Running a job: per VM, pre hook -> snapshot -> backup -> release -> post hook ->
//! retention; then the job's post hook, a scheduled prune, the status log, the JSON
//! report and the notify command. Releases and post hooks run whatever happened before.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use repo_format::{Repository, SnapshotId};

use super::provider::{self, shell, BaseSnapshot, ViewChanges, ViewDisk};
use super::{Job, VmPlan};
use crate::backup::{backup, BackupOptions, MetaInput};
use crate::cancel::Cancel;
use crate::error::Result;
use crate::progress::Progress;
use crate::source::SourceOptions;

/// How long a job waits for a conflicting lock (a prune running from another job).
const LOCK_WAIT: Duration = Duration::from_secs(3600);

/// How one VM's night ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    Ok,
    Failed,
    /// Its pre hook failed: nothing was tried.
    Skipped,
}

/// How the whole job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Success,
    /// Some VMs failed (or something after them did: a prune, the status log).
    Partial,
    /// Every VM failed, or the job could not start (its pre hook, the repository).
    Failed,
}

impl VmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::Ok => "ok",
            VmStatus::Failed => "failed",
            VmStatus::Skipped => "skipped",
        }
    }
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Success => "success",
            JobStatus::Partial => "partial",
            JobStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for VmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot id as the report shows it: its short form (as listings do).
fn short_id<S: serde::Serializer>(
    id: &Option<SnapshotId>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_some(&id.short()),
        None => s.serialize_none(),
    }
}

/// What happened to one VM.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VmResult {
    pub name: String,
    pub status: VmStatus,
    #[serde(serialize_with = "short_id")]
    pub snapshot: Option<SnapshotId>,
    pub size_bytes: u64,
    pub new_stored_bytes: u64,
    pub seconds: f64,
    pub forgotten: usize,
    /// Bytes read from the disks (less than their size when a change map was used).
    pub read_bytes: u64,
    /// One line per disk read from a change map, or read in full despite one.
    pub disks: Vec<String>,
    /// Things that went wrong without failing the VM (a change map that lied).
    pub warnings: Vec<String>,
    /// Every error, in order (a failed backup and a failed release are both kept).
    pub errors: Vec<String>,
    /// The boot test of the new snapshot, on the job's boot-test days.
    pub boot: Option<crate::access::boot::BootReport>,
}

/// The whole run, as written to the JSON report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobReport {
    pub job: String,
    pub started: jiff::Timestamp,
    pub finished: jiff::Timestamp,
    pub status: JobStatus,
    pub vms: Vec<VmResult>,
    pub pruned: Option<crate::maintain::prune::PruneReport>,
    /// The copy into the job's second repository, when it asks for one.
    pub copied: Option<crate::maintain::copy::CopyReport>,
    pub errors: Vec<String>,
}

/// The job's repository, unlocked once with the job's password source (or the
/// DEDISK_PASSWORD variables) and key file (or DEDISK_KEY_FILE); nobody is asked: a job
/// runs unattended.
fn open_repository(job: &Job) -> Result<Repository> {
    let from_env = std::env::var_os("DEDISK_KEY_FILE")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    let access = crate::secret::KeyAccess {
        key_file: job.key_file.as_deref().or(from_env.as_deref()),
        password: job
            .password
            .clone()
            .or_else(crate::secret::PasswordFrom::from_env),
        prompt: None,
    };
    crate::secret::open_repository(&job.repository, &access)
}

/// The night's copy: every snapshot of the job's VMs that the target lacks (a snapshot
/// copied before is recognised and skipped), under the target's own key.
fn copy_to(
    repo: &Repository,
    job: &Job,
    target: &crate::job::CopyTarget,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<crate::maintain::copy::CopyReport> {
    let to = target.open()?;
    let from_lock = crate::locking::shared(repo, "run copy", LOCK_WAIT, cancel)?;
    let to_lock = crate::locking::shared(&to, "run copy", LOCK_WAIT, cancel)?;
    let opts = crate::maintain::copy::CopyOptions {
        names: job.vms.iter().map(|v| v.name.clone()).collect(),
        ..Default::default()
    };
    crate::maintain::copy::copy(repo, &from_lock, &to, &to_lock, &opts, cancel, progress)
}

/// `--preview`: the resolved plan, and every problem found without changing anything.
pub fn preview(job: &Job) -> (Vec<String>, Vec<String>) {
    let mut plan = Vec::new();
    let mut problems = Vec::new();
    match open_repository(job) {
        Ok(repo) => {
            let probe = repo
                .tmp_dir()
                .join(format!("preview-{}", std::process::id()));
            match std::fs::write(&probe, b"") {
                Ok(()) => {
                    let _ = std::fs::remove_file(&probe);
                }
                Err(e) => problems.push(format!(
                    "repository {} is not writable: {e}",
                    job.repository
                )),
            }
        }
        Err(e) => problems.push(format!("repository {}: {e}", job.repository)),
    }
    let free = match &job.repository {
        repo_format::Location::Local(p) => provider::free_bytes(p).ok(),
        repo_format::Location::S3 { .. } => None,
    };
    plan.push(match free {
        Some(free) => format!(
            "repository {} ({:.1} GiB free)",
            job.repository,
            free as f64 / (1u64 << 30) as f64
        ),
        None => format!("repository {}", job.repository),
    });
    for hook in [&job.pre_hook, &job.post_hook, &job.notify]
        .into_iter()
        .flatten()
    {
        problems.extend(provider::check_executable(hook));
    }
    for vm in &job.vms {
        let p = provider::for_vm(vm);
        plan.push(format!("vm {}: snapshot {}", vm.name, p.describe()));
        match p.discovered_disks() {
            None => {
                for (label, path) in &vm.disks {
                    plan.push(format!("  disk {label}: {}", path.display()));
                }
            }
            Some(Ok(disks)) => {
                for (label, what) in disks {
                    plan.push(format!("  disk {label}: {what}"));
                }
            }
            // preview() reports why.
            Some(Err(_)) => plan.push("  disks: cannot be listed".into()),
        }
        for m in &vm.meta {
            plan.push(format!("  meta {}", m.display()));
        }
        let policy = vm.settings.policy();
        plan.push(format!(
            "  retention: {}",
            policy
                .as_ref()
                .map_or_else(|e| e.to_string(), describe_policy)
        ));
        for hook in [&vm.settings.pre_hook, &vm.settings.post_hook]
            .into_iter()
            .flatten()
        {
            problems
                .extend(provider::check_executable(hook).map(|p| format!("vm {}: {p}", vm.name)));
        }
        problems.extend(
            p.preview()
                .into_iter()
                .map(|p| format!("vm {}: {p}", vm.name)),
        );
        problems.extend(
            vm.meta
                .iter()
                .filter(|m| !m.is_file())
                .map(|m| format!("vm {}: meta {} does not exist", vm.name, m.display())),
        );
    }
    if let Some(c) = &job.copy {
        plan.push(format!("copy the VMs' snapshots to {}", c.to));
        if let Err(e) = c.open() {
            problems.push(format!("copy target {}: {e}", c.to));
        }
    }
    if let Some(b) = &job.boot_test {
        plan.push(format!(
            "boot test of each new snapshot on {:?} (evidence in {})",
            b.on,
            b.evidence_dir.display()
        ));
    }
    if !job.prune_on.is_empty() {
        plan.push(format!("prune on {:?}", job.prune_on));
    }
    (plan, problems)
}

fn describe_policy(p: &crate::maintain::forget::Policy) -> String {
    if p.is_empty() {
        return "keep everything".into();
    }
    let mut parts = Vec::new();
    for (n, what) in [
        (p.last, "last"),
        (p.hourly, "hourly"),
        (p.daily, "daily"),
        (p.weekly, "weekly"),
        (p.monthly, "monthly"),
        (p.yearly, "yearly"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if let Some(w) = &p.within {
        parts.push(format!("within {w}"));
    }
    for t in &p.tags {
        parts.push(format!("tag {t}"));
    }
    parts.join(", ")
}

/// The VM's latest snapshot and its small metadata files, for a provider that counts
/// changes from it. Metadata that cannot be read is left out (the provider then has no
/// checkpoint to count from, and reads in full).
fn latest_base(repo: &Repository, name: &str) -> Result<Option<BaseSnapshot>> {
    let Some((id, snap)) = crate::backup::latest_of(repo, name)? else {
        return Ok(None);
    };
    let mut meta = std::collections::BTreeMap::new();
    for m in snap
        .meta
        .iter()
        .filter(|m| m.size_bytes <= provider::BASE_META_MAX)
    {
        match crate::read::read_whole(repo, m.manifest, provider::BASE_META_MAX) {
            Ok(bytes) => {
                meta.insert(m.name.clone(), bytes);
            }
            Err(e) => log::warn!("snapshot {}: metadata {}: {e}", id.short(), m.name),
        }
    }
    Ok(Some(BaseSnapshot { id, meta }))
}

#[allow(clippy::too_many_arguments)] // one call site; the pieces are what a VM backup is made of
fn backup_vm(
    repo: &Repository,
    lock: &repo_format::lock::SharedLock,
    vm: &VmPlan,
    base: Option<SnapshotId>,
    disks: Vec<ViewDisk>,
    provider_meta: Vec<MetaInput>,
    cancel: &Cancel,
    progress: &dyn Progress,
    result: &mut VmResult,
) -> Result<()> {
    let mut inputs = Vec::new();
    let mut meta: Vec<MetaInput> = vm.meta.iter().map(|p| MetaInput::from_path(p)).collect();
    let verify_pct = vm
        .settings
        .verify_unchanged
        .unwrap_or(3.0)
        .clamp(0.0, 100.0);
    for d in disks {
        let bitmap = match &d.changes {
            Some(ViewChanges::Bitmap(b)) => Some(b.clone()),
            _ => None,
        };
        let opened = crate::source::open(
            &d.path,
            Some(&d.label),
            &SourceOptions {
                direct: true,
                format: d.format.map(crate::source::SourceFormat::Image),
                dirty_bitmap: bitmap,
                ..Default::default()
            },
        )?;
        let (mut disks, metas) = crate::backup::inputs_of(opened);
        if let (Some(changes), Some(base), [one]) = (d.changes, base, disks.as_mut_slice()) {
            use crate::backup::{ChangeSource, Incremental};
            let (what, map) = match changes {
                ViewChanges::Bitmap(b) => (format!("dirty bitmap {b}"), ChangeSource::FromSource),
                ViewChanges::Ranges(what, r) => (what, ChangeSource::Ranges(r)),
                ViewChanges::Unusable(why) => ("none".to_string(), ChangeSource::Unusable(why)),
            };
            one.incremental = Some(Incremental {
                base,
                what,
                map,
                verify_pct,
            });
        }
        inputs.extend(disks);
        meta.extend(metas);
    }
    meta.extend(provider_meta);
    let opts = BackupOptions {
        name: vm.name.clone(),
        tags: vm.settings.tags.clone().unwrap_or_default(),
        workers: vm.settings.workers.unwrap_or_else(crate::default_workers),
        cancel: cancel.clone(),
        allow_empty: false,
        time: None,
    };
    let progress = crate::progress::Prefixed {
        prefix: format!("{}/", vm.name),
        inner: progress,
    };
    let done = backup(repo, lock, inputs, meta, &opts, &progress)?;
    result.snapshot = Some(done.id);
    result.size_bytes = done.snapshot.size_bytes();
    result.read_bytes = done.snapshot.disks.iter().map(|d| d.stats.read_bytes).sum();
    for d in &done.snapshot.disks {
        let Some(c) = &d.changes else { continue };
        result.disks.push(match (&c.base, &c.full_read) {
            (Some(b), _) => format!(
                "{}: incremental from {} ({}, {} bytes changed, {} read, {} verified)",
                d.label,
                b.short(),
                c.map,
                c.changed_bytes,
                d.stats.read_bytes,
                c.verified_bytes
            ),
            (None, why) => format!(
                "{}: read in full: {}",
                d.label,
                why.as_deref().unwrap_or("")
            ),
        });
        if c.map_lied {
            result.warnings.push(format!(
                "disk {}: {} missed writes; the disk was read in full",
                d.label, c.map
            ));
        }
    }
    result.new_stored_bytes = done.snapshot.new_stored_bytes();
    Ok(())
}

fn run_vm(repo: &Repository, vm: &VmPlan, cancel: &Cancel, progress: &dyn Progress) -> VmResult {
    let started = Instant::now();
    let mut r = VmResult {
        name: vm.name.clone(),
        status: VmStatus::Ok,
        snapshot: None,
        size_bytes: 0,
        new_stored_bytes: 0,
        seconds: 0.0,
        forgotten: 0,
        read_bytes: 0,
        disks: Vec::new(),
        warnings: Vec::new(),
        errors: Vec::new(),
        boot: None,
    };
    let labels = vm
        .disks
        .iter()
        .map(|(l, _)| l.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let env = |phase: &str| {
        vec![
            ("DEDISK_VM", vm.name.clone()),
            ("DEDISK_DISKS", labels.clone()),
            ("DEDISK_PHASE", phase.to_string()),
        ]
    };
    // A name from a job file or a hypervisor listing (tenants choose those) is checked
    // before any provider builds a path or a call from it.
    if let Err(e) = repo_format::names::check_vm_name(&vm.name) {
        r.status = VmStatus::Failed;
        r.errors.push(e);
        r.seconds = started.elapsed().as_secs_f64();
        return r;
    }
    if let Some(hook) = &vm.settings.pre_hook {
        if let Err(e) = shell(hook, &env("pre")) {
            r.status = VmStatus::Skipped;
            r.errors.push(format!("pre hook: {e}"));
            r.seconds = started.elapsed().as_secs_f64();
            return r;
        }
    }
    let mut provider = provider::for_vm(vm);
    let outcome = (|| -> Result<()> {
        let lock = crate::locking::shared(repo, "run", LOCK_WAIT, cancel)?;
        let base = latest_base(repo, &vm.name)?;
        let base_id = base.as_ref().map(|b| b.id);
        provider.set_base(base);
        let disks = provider
            .acquire()
            .map_err(|e| e.in_provider(provider.name()))?;
        let meta = provider.take_meta();
        backup_vm(
            repo, &lock, vm, base_id, disks, meta, cancel, progress, &mut r,
        )?;
        // A copy taken from a snapshot that broke meanwhile is not a backup: drop it.
        if let Err(e) = provider.check_after() {
            if let Some(id) = r.snapshot.take() {
                repo.remove_snapshot(&id)?;
            }
            return Err(e.in_provider(provider.name()).into());
        }
        if let Some(id) = r.snapshot {
            provider.committed(id);
        }
        Ok(())
    })();
    if let Err(e) = outcome {
        r.errors.push(e.to_string());
    }
    // Always: the snapshot is released even when the backup failed or was interrupted.
    if let Err(e) = provider.release() {
        r.errors.push(format!("releasing the snapshot: {e}"));
    }
    if !r.errors.is_empty() {
        r.status = VmStatus::Failed;
    }
    if let Some(hook) = &vm.settings.post_hook {
        let mut env = env("post");
        env.push(("DEDISK_STATUS", r.status.to_string()));
        env.push((
            "DEDISK_SNAPSHOT",
            r.snapshot.map(|id| id.short()).unwrap_or_default(),
        ));
        env.push(("DEDISK_BYTES", r.new_stored_bytes.to_string()));
        if let Err(e) = shell(hook, &env) {
            r.errors.push(format!("post hook: {e}"));
        }
    }
    // Retention, only after a good backup: a failing VM keeps its old snapshots.
    if r.status == VmStatus::Ok {
        match vm.settings.policy() {
            Ok(p) if !p.is_empty() => {
                let forgotten =
                    crate::locking::shared(repo, "run", LOCK_WAIT, cancel).and_then(|l| {
                        crate::maintain::forget::forget(
                            repo,
                            &l,
                            &p,
                            Some(&vm.name),
                            false,
                            &jiff::tz::TimeZone::system(),
                        )
                    });
                match forgotten {
                    Ok(d) => r.forgotten = d.iter().filter(|d| !d.keep).count(),
                    Err(e) => r.errors.push(format!("retention: {e}")),
                }
            }
            Ok(_) => {}
            Err(e) => r.errors.push(format!("retention: {e}")),
        }
    }
    r.seconds = started.elapsed().as_secs_f64();
    r
}

/// Runs the job. Problems are recorded in the report rather than returned, so the
/// status log, the report and the notification always happen.
/// With `--json`, `progress` hears of the phases `backup` (disks labelled `VM/disk`),
/// `copy` and the prune's.
pub fn run(job: &Job, cancel: &Cancel, progress: &dyn Progress) -> JobReport {
    let started = jiff::Timestamp::now();
    let mut report = JobReport {
        job: job.path.display().to_string(),
        started,
        finished: started,
        status: JobStatus::Success,
        vms: Vec::new(),
        pruned: None,
        copied: None,
        errors: Vec::new(),
    };
    let job_env = |phase: &str| {
        vec![
            ("DEDISK_JOB", job.path.display().to_string()),
            ("DEDISK_PHASE", phase.to_string()),
        ]
    };
    let pre_ok = match &job.pre_hook {
        Some(h) => shell(h, &job_env("pre"))
            .map_err(|e| report.errors.push(format!("job pre hook: {e}")))
            .is_ok(),
        None => true,
    };
    let opened = open_repository(job);
    let repository_opened = opened.is_ok();
    let mut metrics = super::metrics::Metrics::default();
    match opened {
        Ok(repo) if pre_ok => {
            let repo = std::sync::Arc::new(repo);
            for vm in &job.vms {
                if cancel.check().is_err() {
                    report.errors.push("interrupted".into());
                    break;
                }
                progress.phase("backup");
                report.vms.push(run_vm(&repo, vm, cancel, progress));
            }
            let today = jiff::Zoned::now().weekday();
            if let Some(b) = job.boot_test.as_ref().filter(|b| b.on.contains(&today)) {
                for v in report.vms.iter_mut() {
                    if cancel.check().is_ok() {
                        boot_test_vm(&repo, b, v, cancel);
                    }
                }
            }
            if let (Some(target), Ok(())) = (&job.copy, cancel.check()) {
                progress.phase("copy");
                match copy_to(&repo, job, target, cancel, progress) {
                    Ok(c) => report.copied = Some(c),
                    Err(e) => report.errors.push(format!("copy to {}: {e}", target.to)),
                }
            }
            if job.prune_on.contains(&today) && cancel.check().is_ok() {
                let opts = crate::maintain::prune::PruneOptions::default();
                let pruned =
                    crate::locking::prune(&repo, "run prune", LOCK_WAIT, cancel).and_then(|l| {
                        crate::maintain::prune::prune(&repo, &l, &opts, cancel, progress)
                    });
                match pruned {
                    Ok(p) => report.pruned = Some(p),
                    Err(e) => report.errors.push(format!("prune: {e}")),
                }
            }
            if job.metrics_file.is_some() {
                if let Err(e) = super::metrics::repository(&repo, &mut metrics) {
                    report
                        .errors
                        .push(format!("metrics of the repository: {e}"));
                }
            }
        }
        Ok(_) => {}
        Err(e) => report
            .errors
            .push(format!("repository {}: {e}", job.repository)),
    }
    let failed = report
        .vms
        .iter()
        .filter(|v| v.status != VmStatus::Ok)
        .count();
    let job_failed = !pre_ok || !repository_opened;
    report.status = if job_failed || (failed > 0 && failed == report.vms.len()) {
        JobStatus::Failed
    } else if failed > 0
        || !report.errors.is_empty()
        || report.vms.iter().any(|v| !v.warnings.is_empty())
    {
        JobStatus::Partial
    } else {
        JobStatus::Success
    };
    if let Some(h) = &job.post_hook {
        let mut env = job_env("post");
        env.push(("DEDISK_STATUS", report.status.to_string()));
        if let Err(e) = shell(h, &env) {
            report.errors.push(format!("job post hook: {e}"));
        }
    }
    report.finished = jiff::Timestamp::now();
    // Notifications first, so that one that fails is in the status log, the report and
    // the exit code (a run whose mail did not go out is partial, not a success).
    let mut notify_failed = false;
    if let Some(n) = &job.notify {
        if let Err(e) = notify(n, &summary(&report)) {
            report.errors.push(format!("notify: {e}"));
            notify_failed = true;
        }
    }
    if let Some(m) = &job.notify_email {
        if m.on == super::email::SendOn::Always || report.status != JobStatus::Success {
            if let Err(e) = super::email::send(m, &mail_subject(job, &report), &summary(&report)) {
                report.errors.push(format!("notify_email: {e}"));
                notify_failed = true;
            }
        }
    }
    if notify_failed && report.status == JobStatus::Success {
        report.status = JobStatus::Partial;
    }
    if let Some(path) = &job.metrics_file {
        super::metrics::job_run(&report, &mut metrics);
        if let Err(e) = super::metrics::write_textfile(path, &metrics.render()) {
            report
                .errors
                .push(format!("metrics file {}: {e}", path.display()));
        }
    }
    if let Err(e) = append_status(&job.status_log, &report) {
        report
            .errors
            .push(format!("status log {}: {e}", job.status_log.display()));
    }
    let json = serde_json::to_vec_pretty(&report).expect("report serializes");
    if let Err(e) = std::fs::write(&job.report, json) {
        report
            .errors
            .push(format!("report {}: {e}", job.report.display()));
    }
    report
}

/// Boots the VM's new snapshot; a boot that fails (or cannot be tried) is a warning on
/// the VM, which makes the job partial.
fn boot_test_vm(
    repo: &std::sync::Arc<Repository>,
    b: &super::BootTest,
    v: &mut VmResult,
    cancel: &Cancel,
) {
    let Some(id) = v.snapshot.filter(|_| v.status == VmStatus::Ok) else {
        return;
    };
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let opts = crate::access::boot::BootOptions {
        signal: b.signal.clone(),
        timeout: b.timeout,
        accel: b.accel,
        max_memory_mib: b.memory_mib,
        // The VM name was validated as one file name when the snapshot was made.
        evidence: b
            .evidence_dir
            .join(format!("{}-{}-{stamp}", v.name, id.short())),
        qemu: "qemu-system-x86_64".into(),
    };
    let tried = std::fs::DirBuilder::new()
        .recursive(true)
        .create(&b.evidence_dir)
        .map_err(|e| crate::error::Error::target(&b.evidence_dir, e))
        .and_then(|()| crate::locking::shared(repo, "run boot test", LOCK_WAIT, cancel))
        .and_then(|lock| crate::access::boot::boot_test(repo.clone(), lock, id, &opts, cancel));
    match tried {
        Ok(r) => {
            if r.verdict != crate::access::boot::BootVerdict::Booted {
                v.warnings
                    .push(format!("boot test of {}: {}", id.short(), r.reason));
            }
            v.boot = Some(r);
        }
        Err(e) => v
            .warnings
            .push(format!("boot test of {} could not run: {e}", id.short())),
    }
}

/// One line per VM: `TIME VM STATUS snapshot=.. new_bytes=.. seconds=.. [error=".."]`.
fn append_status(path: &Path, r: &JobReport) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for v in &r.vms {
        let mut line = format!(
            "{} {} {} snapshot={} new_bytes={} seconds={:.1} forgotten={}",
            r.finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
            v.name,
            v.status,
            v.snapshot.map_or("-".into(), |id| id.short()),
            v.new_stored_bytes,
            v.seconds,
            v.forgotten
        );
        line.push_str(&format!(" read_bytes={}", v.read_bytes));
        if !v.warnings.is_empty() {
            line.push_str(&format!(" warning={:?}", v.warnings.join("; ")));
        }
        if !v.errors.is_empty() {
            line.push_str(&format!(" error={:?}", v.errors.join("; ")));
        }
        writeln!(f, "{line}")?;
    }
    f.sync_all()
}

/// `[dedisk] nightly on backup01: partial, 2 of 3 VMs backed up`.
fn mail_subject(job: &Job, r: &JobReport) -> String {
    let stem = job
        .path
        .file_stem()
        .map_or("job".into(), |s| s.to_string_lossy().into_owned());
    let ok = r.vms.iter().filter(|v| v.status == VmStatus::Ok).count();
    format!(
        "[dedisk] {stem} on {}: {}, {ok} of {} VMs backed up",
        repo_format::lock::hostname(),
        r.status,
        r.vms.len()
    )
}

/// A short text for people: status, then one line per VM.
pub fn summary(r: &JobReport) -> String {
    let mut s = format!("dedisk job {}: {}\n", r.job, r.status);
    for v in &r.vms {
        s.push_str(&format!(
            "  {} {} snapshot {} ({} new bytes, {:.1}s){}\n",
            v.name,
            v.status,
            v.snapshot.map_or("-".into(), |id| id.short()),
            v.new_stored_bytes,
            v.seconds,
            if v.errors.is_empty() {
                String::new()
            } else {
                format!(": {}", v.errors.join("; "))
            }
        ));
        for d in &v.disks {
            s.push_str(&format!("    {d}\n"));
        }
        if let Some(b) = &v.boot {
            s.push_str(&format!(
                "    boot test: {:?}{} ({}), evidence {}\n",
                b.verdict,
                b.boot_seconds
                    .map(|t| format!(" in {t:.1}s"))
                    .unwrap_or_default(),
                b.reason,
                b.evidence.display()
            ));
        }
        for w in &v.warnings {
            s.push_str(&format!("    warning: {w}\n"));
        }
    }
    if let Some(c) = &r.copied {
        s.push_str(&format!(
            "  copy: {} snapshot(s) copied, {} already there, {} new bytes sent\n",
            c.snapshots.iter().filter(|x| !x.already).count(),
            c.snapshots.iter().filter(|x| x.already).count(),
            c.bytes_sent
        ));
    }
    for e in &r.errors {
        s.push_str(&format!("  error: {e}\n"));
    }
    s
}

fn notify(cmd: &str, text: &str) -> std::result::Result<(), String> {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("`{cmd}`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes());
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{cmd}` failed ({status})"))
    }
}
