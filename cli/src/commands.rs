//! One function per subcommand: parse what the user gave, call the engine, print.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use engine::backup::{backup, BackupOptions, DiskInput, MetaContent, MetaInput};
use engine::restore::restore_disk;
use engine::job::select::{resolve_snapshot, split_label};
use engine::source::{Input, SourceOptions};
use repo_format::lock::LockKind;
use repo_format::{ChunkerAlgorithm, ChunkerParams, CompressionParams, RepoConfig, Repository};

use crate::args::*;
use crate::output::{self, bytes, rate};
use crate::progress::Bar;

/// What a command reports besides its output.
#[derive(Default)]
pub struct Outcome {
    /// Things the user should know; exit code 3 when non-empty.
    pub warnings: Vec<String>,
}

/// Set by SIGINT/SIGTERM (see `main`): backup and restore stop at the next safe point.
pub static CANCEL: std::sync::LazyLock<engine::cancel::Cancel> =
    std::sync::LazyLock::new(engine::cancel::Cancel::new);

fn repo_path(g: &Global) -> Result<&Path> {
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

pub fn init(g: &Global, a: &InitArgs) -> Result<Outcome> {
    let path = a
        .path
        .as_deref()
        .or(g.repo.as_deref())
        .context("where? give `dedisk init REPO` or --repo")?;
    let algorithm = match a.chunker {
        ChunkerArg::AlignedCdc => ChunkerAlgorithm::AlignedCdc,
        ChunkerArg::Fastcdc => ChunkerAlgorithm::Fastcdc,
        ChunkerArg::Fixed => ChunkerAlgorithm::Fixed,
    };
    let mut chunker = ChunkerParams {
        algorithm,
        ..ChunkerParams::default()
    };
    if let Some(k) = a.chunk_min {
        chunker.min_bytes = k.saturating_mul(1024);
    }
    if let Some(k) = a.chunk_avg {
        chunker.avg_bytes = k.saturating_mul(1024);
    }
    if let Some(k) = a.chunk_max {
        chunker.max_bytes = k.saturating_mul(1024);
    }
    chunker.zero_run_min_bytes = chunker
        .zero_run_min_bytes
        .min(chunker.min_bytes.max(chunker.align_bytes));
    chunker.zero_run_min_bytes -= chunker.zero_run_min_bytes % chunker.align_bytes;
    if let Err(e) = chunker.validate() {
        bail!("invalid chunk sizes: {e}");
    }
    let compression = CompressionParams {
        level: a.compression_level,
        ..CompressionParams::default()
    };
    let config = RepoConfig::new(chunker, compression, a.pack_size << 20)?;
    let repo = Repository::init(path, config)
        .with_context(|| format!("creating repository {}", path.display()))?;
    let c = repo.config();
    if g.json {
        output::json(&json!({"type": "init", "repo": path, "config": c}));
    } else {
        output::line(format!(
            "created repository {} (id {}, chunker {} {}/{}/{} KiB, zstd level {})",
            path.display(),
            c.repo_id.short(),
            c.chunker.algorithm,
            c.chunker.min_bytes / 1024,
            c.chunker.avg_bytes / 1024,
            c.chunker.max_bytes / 1024,
            c.compression.level
        ));
    }
    Ok(Outcome::default())
}

/// `LABEL=PATH` or `PATH` (label = file name) or `-` (label `stdin`).
fn parse_disk(spec: &str) -> (String, String) {
    if let Some((label, path)) = spec.split_once('=') {
        if !label.is_empty() && !label.contains('/') {
            return (label.to_string(), path.to_string());
        }
    }
    if spec == "-" {
        return ("stdin".into(), spec.into());
    }
    let label = Path::new(spec)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string());
    (label, spec.to_string())
}

pub fn backup_cmd(g: &Global, a: &BackupArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let _lock = crate::maintenance::lock(g, &repo, LockKind::Shared, "backup", &mut out)?;
    let mut disks = Vec::new();
    let mut xva_meta = Vec::new();
    let mut stdin_used = false;
    for spec in &a.disks {
        let (label, path) = parse_disk(spec);
        if path == "-" {
            if stdin_used {
                bail!("only one disk can come from stdin");
            }
            stdin_used = true;
        }
        let opts = SourceOptions {
            direct: !a.no_direct,
            format: a.format.image_format(),
            qcow2_snapshot: a.qcow2_snapshot.clone(),
        };
        let input = engine::source::open_input(&path, &opts)
            .with_context(|| format!("opening disk {label}"))?;
        match input {
            Input::Disk(source) => disks.push(DiskInput { label, source }),
            Input::Xva(export) => {
                // Each VDI is a disk (xvda, ...; LABEL- prefixed when LABEL= was given),
                // and ova.xml is kept beside them.
                let prefix = if spec.contains('=') {
                    format!("{label}-")
                } else {
                    String::new()
                };
                for d in export.disks {
                    disks.push(DiskInput {
                        label: format!("{prefix}{}", d.label),
                        source: d.source,
                    });
                }
                xva_meta.push(MetaInput {
                    name: format!("{prefix}ova.xml"),
                    content: MetaContent::Bytes {
                        origin: format!("{path} ova.xml"),
                        bytes: export.ova_xml,
                    },
                });
            }
        }
    }
    let meta = a
        .meta
        .iter()
        .map(|p| MetaInput::from_path(p))
        .chain(xva_meta)
        .collect();
    let opts = BackupOptions {
        name: a.name.clone(),
        tags: a.tags.clone(),
        workers: a.workers.unwrap_or_else(engine::default_workers),
        allow_empty: a.allow_empty,
        cancel: CANCEL.clone(),
    };
    let bar = Bar::new(!g.json && !g.quiet);
    let done = backup(&repo, disks, meta, &opts, &bar)
        .context("backup failed; no snapshot was written")?;
    let s = &done.snapshot;
    if g.json {
        output::json(&json!({
            "type": "summary",
            "snapshot": done.id,
            "name": s.name,
            "time": s.time,
            "tags": s.tags,
            "disks": s.disks.iter().map(|d| json!({
                "label": d.label, "source": d.source, "size_bytes": d.size_bytes, "stats": d.stats,
            })).collect::<Vec<_>>(),
            "meta": s.meta.iter().map(|m| json!({"name": m.name, "size_bytes": m.size_bytes})).collect::<Vec<_>>(),
        }));
    } else {
        output::line(format!(
            "snapshot {} saved ({} {})",
            done.id.short(),
            s.name,
            output::time(s.time)
        ));
        for d in &s.disks {
            let st = &d.stats;
            output::line(format!(
                "  {}: size {}, read {}, holes {}, new {} -> {} stored, {} chunks ({} new), {} in {:.1}s ({})",
                d.label,
                bytes(d.size_bytes),
                bytes(st.read_bytes),
                bytes(st.hole_bytes),
                bytes(st.new_bytes),
                bytes(st.new_stored_bytes),
                st.chunks,
                st.new_chunks,
                bytes(d.size_bytes),
                st.seconds,
                rate(d.size_bytes, st.seconds)
            ));
        }
        for m in &s.meta {
            output::line(format!("  meta {}: {}", m.name, bytes(m.size_bytes)));
        }
    }
    Ok(out)
}

pub fn snapshots(g: &Global, a: &SnapshotsArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let mut rows = Vec::new();
    for r in repo.list_snapshots()? {
        match r {
            Ok((id, s)) if a.name.as_ref().is_none_or(|n| *n == s.name) => rows.push((id, s)),
            Ok(_) => {}
            Err(e) => out.warnings.push(e.to_string()),
        }
    }
    if g.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(id, s)| {
                json!({
                    "id": id, "time": s.time, "name": s.name, "hostname": s.hostname, "tags": s.tags,
                    "size_bytes": s.size_bytes(),
                    "disks": s.disks.iter().map(|d| json!({"label": d.label, "size_bytes": d.size_bytes, "new_stored_bytes": d.stats.new_stored_bytes})).collect::<Vec<_>>(),
                    "meta": s.meta.iter().map(|m| &m.name).collect::<Vec<_>>(),
                })
            })
            .collect();
        output::json(&json!({"type": "snapshots", "version": 1, "snapshots": list}));
        return Ok(out);
    }
    output::line(format!(
        "{:<10} {:<19} {:<16} {:<12} {:>11} {:>11}  DISKS",
        "ID", "TIME", "VM", "TAGS", "SIZE", "ADDED"
    ));
    for (id, s) in &rows {
        let added: u64 = s.disks.iter().map(|d| d.stats.new_stored_bytes).sum();
        output::line(format!(
            "{:<10} {:<19} {:<16} {:<12} {:>11} {:>11}  {}",
            id.short(),
            output::time(s.time),
            repo_format::names::escape(&s.name),
            s.tags
                .iter()
                .map(|t| repo_format::names::escape(t))
                .collect::<Vec<_>>()
                .join(","),
            bytes(s.size_bytes()),
            bytes(added),
            s.disks
                .iter()
                .map(|d| d.label.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    output::line(format!("{} snapshot(s)", rows.len()));
    Ok(out)
}

pub fn restore(g: &Global, a: &RestoreArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let _lock = crate::maintenance::lock(g, &repo, LockKind::Shared, "restore", &mut out)?;
    let (spec, label) = split_label(&a.snapshot);
    let (id, snap) = resolve_snapshot(&repo, spec)?;
    let workers = a.workers.unwrap_or_else(engine::default_workers);
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
                    snapshot: id.short(),
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
    let bar = Bar::new(!g.json && !g.quiet);
    let mut reports = Vec::new();
    for (label, manifest, name, format) in jobs {
        let short = id.short();
        let to = match (&name, &folder) {
            (Some(name), Some(dir)) => engine::restore::RestoreTo::InDir { dir, name },
            _ => engine::restore::RestoreTo::Path(&a.target),
        };
        let target = to.display_path();
        let req = engine::restore::RestoreRequest {
            snapshot: &short,
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
        let report = restore_disk(&repo, &req, &bar);
        let report = match report {
            Err(engine::Error::Damaged {
                snapshot,
                damage,
                partial,
            }) => {
                for d in &damage {
                    eprintln!("dedisk: damaged: snapshot {snapshot} {d}");
                }
                bail!(
                    "restore of snapshot {snapshot} disk {label} found {} damaged chunk(s); nothing was written to {}; the partial disk (damaged ranges zeroed) is at {}",
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

pub fn stats(g: &Global) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let t = repo.index()?.totals()?;
    let (mut snapshots, mut logical, mut data) = (0u64, 0u64, 0u64);
    for r in repo.list_snapshots()? {
        match r {
            Ok((_, s)) => {
                snapshots += 1;
                logical += s.size_bytes();
                data += s.disks.iter().map(|d| d.stats.data_bytes).sum::<u64>();
            }
            Err(e) => out.warnings.push(e.to_string()),
        }
    }
    let index_bytes: u64 = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", repo.index_path().display())).ok())
        .map(|m| m.len())
        .sum();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let dedup = ratio(data, t.data_raw_bytes);
    let compression = ratio(t.data_raw_bytes, t.data_stored_bytes);
    if g.json {
        output::json(&json!({
            "type": "stats", "snapshots": snapshots, "logical_bytes": logical, "referenced_data_bytes": data,
            "unique_bytes": t.data_raw_bytes, "stored_bytes": t.pack_bytes, "chunks": t.data_blobs,
            "manifest_nodes": t.node_blobs, "packs": t.packs, "index_bytes": index_bytes,
            "dedup_ratio": dedup, "compression_ratio": compression,
        }));
    } else {
        output::line(format!("snapshots:          {snapshots}"));
        output::line(format!(
            "logical size:       {} (virtual disk sizes)",
            bytes(logical)
        ));
        output::line(format!(
            "referenced data:    {} (excluding holes)",
            bytes(data)
        ));
        output::line(format!(
            "unique data:        {} in {} chunks",
            bytes(t.data_raw_bytes),
            t.data_blobs
        ));
        output::line(format!(
            "stored:             {} in {} packs",
            bytes(t.pack_bytes),
            t.packs
        ));
        output::line(format!(
            "manifests:          {} nodes, {}",
            t.node_blobs,
            bytes(t.node_stored_bytes)
        ));
        output::line(format!("index:              {}", bytes(index_bytes)));
        output::line(format!("dedup ratio:        {dedup:.2}x"));
        output::line(format!("compression ratio:  {compression:.2}x"));
        output::line(format!(
            "overall:            {:.2}x (logical / stored)",
            ratio(logical, t.pack_bytes)
        ));
    }
    Ok(out)
}

pub fn verify(g: &Global, a: &VerifyArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let _lock = crate::maintenance::lock(g, &repo, LockKind::Shared, "verify", &mut out)?;
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
        workers: a.workers.unwrap_or_else(engine::default_workers),
    };
    let report = engine::maintain::verify::verify(&repo, &opts).context("verifying the repository")?;
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
    let lock = crate::maintenance::lock(g, &repo, LockKind::Shared, "forget", &mut out)?;
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
    let decisions = engine::maintain::forget::forget(&repo, &policy, a.name.as_deref(), a.dry_run, &tz)?;
    drop(lock); // a prune below takes the exclusive lock
    let removed = decisions.iter().filter(|d| !d.keep).count();
    if g.json {
        output::json(&json!({"type": "forget", "dry_run": a.dry_run, "decisions": decisions}));
        if a.prune {
            crate::maintenance::run_prune(g, &repo, 10.0, a.dry_run, &mut out)?;
        }
        return Ok(out);
    }
    let mut vm = "";
    for d in &decisions {
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
        if a.dry_run { "would forget" } else { "forgot" },
        decisions.len(),
        if removed > 0 && !a.dry_run {
            "; their unique data stays in the packs until a prune"
        } else {
            ""
        }
    ));
    if a.prune {
        crate::maintenance::run_prune(g, &repo, 10.0, a.dry_run, &mut out)?;
    }
    Ok(out)
}

pub fn repair(g: &Global, what: &RepairWhat) -> Result<Outcome> {
    match what {
        RepairWhat::Index => {
            let path = repo_path(g)?;
            // Opening may itself rebuild a broken index; rebuild explicitly either way.
            let repo = Repository::open(path)
                .with_context(|| format!("opening repository {}", path.display()))?;
            // The rebuild replaces every row: what the reconciliation drops says nothing.
            let _lock = crate::maintenance::lock(
                g,
                &repo,
                LockKind::Exclusive,
                "repair index",
                &mut Outcome::default(),
            )?;
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
            let _lock = crate::maintenance::lock(
                g,
                &repo,
                LockKind::Exclusive,
                "repair snapshots",
                &mut out,
            )?;
            let r = engine::maintain::repair::repair_snapshots(&repo, *read_data, *dry_run, &CANCEL)
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
