//! `dedisk restore`: a snapshot's disks (or one of them) to files, devices or a folder.

use anyhow::{bail, Context, Result};
use serde_json::json;

use engine::job::select::{resolve_snapshot, split_label};
use engine::restore::restore_disk;

use crate::args::{Global, RestoreArgs, RestoreFormatArg};
use crate::context::{lock_shared, open_repo, Outcome, CANCEL};
use crate::output::{self, bytes, rate};
use crate::progress::Bar;

pub fn restore(g: &Global, a: &RestoreArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let lock = lock_shared(g, &repo, "restore", &mut out)?;
    let (spec, label) = split_label(&a.snapshot);
    let (id, snap) = resolve_snapshot(&repo, spec)?;
    let workers = a.workers.unwrap_or_else(engine::default_workers);
    if a.differential {
        return differential(g, a, &repo, &lock, (id, snap), label, workers, out);
    }
    use engine::restore::TargetFormat;
    let disk_format = match a.format {
        RestoreFormatArg::Raw => TargetFormat::Raw,
        RestoreFormatArg::Qcow2 => TargetFormat::Qcow2,
    };
    // (label, manifest, target file name in a folder or None for `a.target`, format):
    // metadata files are always restored as they are.
    let mut jobs: Vec<(
        String,
        repo_format::ManifestRoot,
        Option<String>,
        TargetFormat,
    )> = Vec::new();
    let ext = match disk_format {
        TargetFormat::Raw => "raw",
        TargetFormat::Qcow2 => "qcow2",
    };
    // A target ending in '/' or naming a folder receives the disks as LABEL.EXT files.
    let into_folder = a.target.as_os_str().as_encoded_bytes().ends_with(b"/") || a.target.is_dir();
    match label {
        Some(label) => {
            let manifest = snap
                .disks
                .iter()
                .find(|d| d.label == label)
                .map(|d| (d.manifest, disk_format, format!("{label}.{ext}")))
                .or_else(|| {
                    snap.meta
                        .iter()
                        .find(|m| m.name == label)
                        .map(|m| (m.manifest, TargetFormat::Raw, label.to_string()))
                });
            let Some((manifest, format, file_name)) = manifest else {
                let available: Vec<_> = snap
                    .disks
                    .iter()
                    .map(|d| repo_format::names::escape(&d.label))
                    .chain(
                        snap.meta
                            .iter()
                            .map(|m| repo_format::names::escape(&m.name)),
                    )
                    .collect();
                return Err(engine::Error::NoSuchDisk {
                    snapshot: id,
                    label: label.into(),
                    available: available.join(", "),
                }
                .into());
            };
            jobs.push((
                label.to_string(),
                manifest,
                into_folder.then_some(file_name),
                format,
            ));
        }
        None if snap.disks.len() == 1 && snap.meta.is_empty() && !into_folder => {
            let d = &snap.disks[0];
            jobs.push((d.label.clone(), d.manifest, None, disk_format));
        }
        None => {
            // Several disks (or metadata): the target is a folder that receives them all,
            // each under its label (validated as one file name when the snapshot was read).
            for d in &snap.disks {
                jobs.push((
                    d.label.clone(),
                    d.manifest,
                    Some(format!("{}.{ext}", d.label)),
                    disk_format,
                ));
            }
            for m in &snap.meta {
                jobs.push((
                    m.name.clone(),
                    m.manifest,
                    Some(m.name.clone()),
                    TargetFormat::Raw,
                ));
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for (label, _, name, _) in &jobs {
        if let Some(name) = name.as_ref().filter(|n| !names.insert(n.as_str())) {
            bail!(
                "snapshot {} would restore two files named {} ({label} is one); restore them one at a time with SNAPSHOT:LABEL",
                id.short(),
                repo_format::names::escape(name)
            );
        }
    }
    let folder = if jobs.iter().any(|j| j.2.is_some()) {
        Some(
            engine::restore::TargetDir::open_or_create(&a.target)
                .with_context(|| format!("opening folder {}", a.target.display()))?,
        )
    } else {
        None
    };
    let bar = Bar::new(g, "restore");
    let mut reports = Vec::new();
    for (label, manifest, name, format) in jobs {
        let to = match (&name, &folder) {
            (Some(name), Some(dir)) => engine::restore::RestoreTo::InDir { dir, name },
            _ => engine::restore::RestoreTo::Path(&a.target),
        };
        let target = to.display_path();
        let req = engine::restore::RestoreRequest {
            snapshot: &id,
            label: &label,
            manifest: &manifest,
            target: to,
            target_opts: engine::restore::TargetOptions {
                force: a.force,
                mode: a.mode,
            },
            format,
            workers,
            cancel: &CANCEL,
        };
        let report = restore_disk(&repo, &lock, &req, &bar);
        let report = match report {
            Err(engine::Error::Damaged {
                snapshot,
                damage,
                partial,
            }) => {
                for d in &damage {
                    eprintln!("dedisk: damaged: snapshot {} {d}", snapshot.short());
                }
                bail!(
                    "restore of snapshot {} disk {label} found {} damaged chunk(s); nothing was written to {}; the partial disk (damaged ranges zeroed) is at {}",
                    snapshot.short(),
                    damage.len(),
                    target.display(),
                    partial.display()
                );
            }
            r => r.with_context(|| {
                format!(
                    "restoring snapshot {} disk {label} to {}",
                    id.short(),
                    target.display()
                )
            })?,
        };
        if !g.json {
            output::line(format!(
                "restored {} disk {} -> {}: {} ({} data, {} holes) in {:.1}s ({})",
                id.short(),
                label,
                target.display(),
                bytes(report.size_bytes),
                bytes(report.written_bytes),
                bytes(report.hole_bytes),
                report.seconds,
                rate(report.size_bytes, report.seconds)
            ));
        }
        // A repaired snapshot says which ranges it lost; a restore repeats it every time.
        let lost = snap
            .disks
            .iter()
            .filter(|d| d.label == label)
            .flat_map(|d| d.lost.iter())
            .chain(
                snap.meta
                    .iter()
                    .filter(|m| m.name == label)
                    .flat_map(|m| m.lost.iter()),
            );
        for l in lost {
            out.warnings.push(format!(
                "{label}: bytes {}..{} were lost to damage before `repair snapshots` and read as zeros ({})",
                l.offset,
                l.offset + l.len,
                l.reason
            ));
        }
        reports.push(json!({"label": label, "report": report}));
    }
    if g.json {
        output::json(&json!({"type": "restore", "snapshot": id, "disks": reports}));
    }
    Ok(out)
}

/// `restore --differential`: one disk over an existing file or device, in place.
#[allow(clippy::too_many_arguments)]
fn differential(
    g: &Global,
    a: &RestoreArgs,
    repo: &repo_format::Repository,
    lock: &repo_format::lock::SharedLock,
    (id, snap): (repo_format::SnapshotId, repo_format::Snapshot),
    label: Option<&str>,
    workers: usize,
    out: Outcome,
) -> Result<Outcome> {
    let disk = match label {
        Some(l) => snap.disks.iter().find(|d| d.label == l),
        None if snap.disks.len() == 1 => snap.disks.first(),
        None => bail!(
            "snapshot {} has {} disks; name one as SNAPSHOT:LABEL for --differential",
            id.short(),
            snap.disks.len()
        ),
    };
    let Some(disk) = disk else {
        let available: Vec<_> = snap
            .disks
            .iter()
            .map(|d| repo_format::names::escape(&d.label))
            .collect();
        return Err(engine::Error::NoSuchDisk {
            snapshot: id,
            label: label.unwrap_or_default().into(),
            available: available.join(", "),
        }
        .into());
    };
    let since = match &a.since {
        None => None,
        Some(spec) => {
            let (base_id, base) = resolve_snapshot(repo, spec).context("--since")?;
            let Some(d) = base.disks.iter().find(|d| d.label == disk.label) else {
                bail!(
                    "--since: snapshot {} has no disk {}",
                    base_id.short(),
                    repo_format::names::escape(&disk.label)
                );
            };
            Some((base_id, d.manifest))
        }
    };
    let req = engine::restore::differential::DiffRequest {
        snapshot: &id,
        label: &disk.label,
        manifest: &disk.manifest,
        target: &a.target,
        since: since.as_ref().map(|(_, m)| m),
        check: a.check,
        force: a.force,
        workers,
        cancel: &CANCEL,
    };
    let bar = Bar::new(g, "restore");
    let report = match engine::restore::differential::restore_differential(repo, lock, &req, &bar) {
        Err(engine::Error::Damaged { damage, .. }) => {
            for d in &damage {
                eprintln!("dedisk: damaged: snapshot {} {d}", id.short());
            }
            bail!(
                "differential restore of snapshot {} disk {} found {} damaged chunk(s); {} holds the other chunks, the damaged ranges still hold what they held",
                id.short(),
                disk.label,
                damage.len(),
                a.target.display()
            );
        }
        r => r.with_context(|| {
            format!(
                "restoring snapshot {} disk {} over {}",
                id.short(),
                disk.label,
                a.target.display()
            )
        })?,
    };
    let mut out = out;
    for l in &disk.lost {
        out.warnings.push(format!(
            "{}: bytes {}..{} were lost to damage before `repair snapshots` and read as zeros ({})",
            disk.label,
            l.offset,
            l.offset + l.len,
            l.reason
        ));
    }
    if g.json {
        output::json(&json!({
            "type": "restore",
            "snapshot": id,
            "differential": true,
            "since": since.map(|(b, _)| b),
            "disks": [{"label": disk.label, "report": report}],
        }));
    } else {
        output::line(format!(
            "restored {} disk {} over {} ({}): {}; read {}, compared {}, unchanged {}, wrote {} ({} chunks), zeroed {}{} in {:.1}s",
            id.short(),
            disk.label,
            a.target.display(),
            report.mode,
            bytes(report.size_bytes),
            bytes(report.read_bytes),
            bytes(report.compared_bytes),
            bytes(report.unchanged_bytes),
            bytes(report.written_bytes),
            report.chunks_written,
            bytes(report.zeroed_bytes),
            if report.checked_bytes.is_some() { "; checked: identical" } else { "" },
            report.seconds,
        ));
    }
    Ok(out)
}
