//! Prometheus metrics (text exposition format 0.0.4): what `dedisk metrics` prints for a
//! repository, and what a job writes for node_exporter's textfile collector after each
//! run (`metrics_file` in the job file).
//!
//! Names follow Prometheus conventions: a `dedisk_` prefix, base units in the name
//! (`_bytes`, `_seconds`, `_timestamp_seconds`), `_total` only for counters (there are
//! none: every value here is a gauge, a state read at one moment). VM names are label
//! values; they were validated as file names, and are escaped as the format asks anyway.

use std::collections::BTreeMap;
use std::fmt::Write;

use repo_format::Repository;

use crate::error::Result;

/// Metric families in order of first use, each with its samples.
#[derive(Default)]
pub struct Metrics {
    families: Vec<(String, String, Vec<String>)>,
}

/// A label value as the exposition format writes it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Adds one sample of gauge `name` (documented by `help` at its first use).
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let labels = if labels.is_empty() {
            String::new()
        } else {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        let sample = format!("{name}{labels} {value}");
        match self.families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.2.push(sample),
            None => self
                .families
                .push((name.to_string(), help.to_string(), vec![sample])),
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, samples) in &self.families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for s in samples {
                let _ = writeln!(out, "{s}");
            }
        }
        out
    }
}

/// The repository's size and each VM's newest snapshot.
pub fn repository(repo: &Repository, m: &mut Metrics) -> Result<()> {
    let t = repo.index()?.totals()?;
    let mut snapshots = 0u64;
    let mut referenced = 0u64;
    // Per VM: (snapshots, newest time, its size, its new stored bytes).
    let mut vms: BTreeMap<String, (u64, jiff::Timestamp, u64, u64)> = BTreeMap::new();
    for (_, s) in repo.list_snapshots()?.into_iter().flatten() {
        snapshots += 1;
        referenced += s.data_bytes();
        let new = s.new_stored_bytes();
        let e = vms
            .entry(s.name.clone())
            .or_insert((0, s.time, s.size_bytes(), new));
        e.0 += 1;
        if s.time >= e.1 {
            (e.1, e.2, e.3) = (s.time, s.size_bytes(), new);
        }
    }
    m.gauge(
        "dedisk_repository_snapshots",
        "Snapshots in the repository.",
        &[],
        snapshots as f64,
    );
    m.gauge(
        "dedisk_repository_stored_bytes",
        "Bytes the repository's packs take.",
        &[],
        t.pack_bytes as f64,
    );
    m.gauge(
        "dedisk_repository_unique_bytes",
        "Uncompressed bytes of the distinct chunks stored.",
        &[],
        t.data_raw_bytes as f64,
    );
    m.gauge(
        "dedisk_repository_referenced_bytes",
        "Data bytes all snapshots reference (before deduplication).",
        &[],
        referenced as f64,
    );
    m.gauge(
        "dedisk_repository_packs",
        "Pack files in the repository.",
        &[],
        t.packs as f64,
    );
    for (vm, (count, time, size, new)) in &vms {
        let l = [("vm", vm.as_str())];
        m.gauge(
            "dedisk_vm_snapshots",
            "Snapshots of the VM in the repository.",
            &l,
            *count as f64,
        );
        m.gauge(
            "dedisk_vm_last_snapshot_timestamp_seconds",
            "When the VM's newest snapshot was taken (Unix time).",
            &l,
            time.as_second() as f64,
        );
        m.gauge(
            "dedisk_vm_last_snapshot_size_bytes",
            "Size of the disks in the VM's newest snapshot.",
            &l,
            *size as f64,
        );
        m.gauge(
            "dedisk_vm_last_snapshot_new_stored_bytes",
            "Bytes the VM's newest snapshot added to the repository.",
            &l,
            *new as f64,
        );
    }
    // What this host's last verify, prune and boot tests found (its cache).
    let last = crate::maintain::last_runs::LastRuns::load(repo);
    if let Some(v) = &last.verify {
        m.gauge(
            "dedisk_repository_last_verify_timestamp_seconds",
            "When this host's last verify of the whole repository started (Unix time).",
            &[],
            v.time.as_second() as f64,
        );
        m.gauge(
            "dedisk_repository_last_verify_problems",
            "Problems that verify found (0: no damage).",
            &[],
            v.value as f64,
        );
    }
    if let Some(p) = &last.prune {
        m.gauge(
            "dedisk_repository_last_prune_timestamp_seconds",
            "When this host's last prune started (Unix time).",
            &[],
            p.time.as_second() as f64,
        );
        m.gauge(
            "dedisk_repository_last_prune_reclaimed_bytes",
            "Bytes the last prune gave back.",
            &[],
            p.value as f64,
        );
    }
    for (vm, b) in &last.boot {
        let l = [("vm", vm.as_str())];
        m.gauge(
            "dedisk_vm_last_boot_test_timestamp_seconds",
            "When the VM's last boot test on this host ran (Unix time).",
            &l,
            b.time.as_second() as f64,
        );
        m.gauge(
            "dedisk_vm_last_boot_test_success",
            "1 when the VM's last boot test booted.",
            &l,
            if b.ok { 1.0 } else { 0.0 },
        );
    }
    Ok(())
}

/// A job run: per VM its outcome, and the job's.
pub fn job_run(r: &crate::job::run::JobReport, m: &mut Metrics) {
    use crate::job::run::{JobStatus, VmStatus};
    m.gauge(
        "dedisk_job_last_run_timestamp_seconds",
        "When the job's last run finished (Unix time).",
        &[],
        r.finished.as_second() as f64,
    );
    for status in [JobStatus::Success, JobStatus::Partial, JobStatus::Failed] {
        m.gauge(
            "dedisk_job_status",
            "The job's last run ended this way (1) or not (0).",
            &[("status", status.as_str())],
            if r.status == status { 1.0 } else { 0.0 },
        );
    }
    for v in &r.vms {
        let l = [("vm", v.name.as_str())];
        m.gauge(
            "dedisk_job_vm_success",
            "1 when the VM's backup succeeded in the job's last run.",
            &l,
            if v.status == VmStatus::Ok { 1.0 } else { 0.0 },
        );
        m.gauge(
            "dedisk_job_vm_duration_seconds",
            "Seconds the VM's backup took in the job's last run.",
            &l,
            v.seconds,
        );
        m.gauge(
            "dedisk_job_vm_read_bytes",
            "Bytes read from the VM's disks in the job's last run.",
            &l,
            v.read_bytes as f64,
        );
        m.gauge(
            "dedisk_job_vm_new_stored_bytes",
            "Bytes the VM's backup added to the repository in the job's last run.",
            &l,
            v.new_stored_bytes as f64,
        );
        m.gauge(
            "dedisk_job_vm_warnings",
            "Warnings about the VM in the job's last run.",
            &l,
            v.warnings.len() as f64,
        );
        if let Some(b) = &v.boot {
            m.gauge(
                "dedisk_job_vm_boot_success",
                "1 when the VM's new snapshot booted in the job's last boot test.",
                &l,
                if b.verdict == crate::access::boot::BootVerdict::Booted {
                    1.0
                } else {
                    0.0
                },
            );
        }
    }
    if let Some(p) = &r.pruned {
        m.gauge(
            "dedisk_job_prune_deleted_bytes",
            "Bytes the job's last prune gave back.",
            &[],
            p.bytes_deleted as f64,
        );
    }
}

/// Writes `text` to `path` atomically (a temporary file beside it, then a rename), as
/// the textfile collector asks: it must never read a half-written file. Mode 0644: the
/// collector runs as another user, and these numbers hold no secret.
pub fn write_textfile(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the metrics file has no name"))?;
    let random = repo_format::ids::random_bytes().map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(&random[..6])
    ));
    let written = crate::io::write_new_file(&tmp, 0o644, text.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_group_samples_and_labels_are_escaped() {
        let mut m = Metrics::default();
        m.gauge("dedisk_a_bytes", "A.", &[("vm", "x")], 1.0);
        m.gauge("dedisk_b_seconds", "B.", &[], 2.5);
        m.gauge("dedisk_a_bytes", "A.", &[("vm", "q\"\\\n")], 3.0);
        assert_eq!(
            m.render(),
            "# HELP dedisk_a_bytes A.\n# TYPE dedisk_a_bytes gauge\ndedisk_a_bytes{vm=\"x\"} 1\n\
             dedisk_a_bytes{vm=\"q\\\"\\\\\\n\"} 3\n# HELP dedisk_b_seconds B.\n\
             # TYPE dedisk_b_seconds gauge\ndedisk_b_seconds 2.5\n"
        );
    }
}
