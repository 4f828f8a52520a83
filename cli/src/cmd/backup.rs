//! `dedisk backup`: disks (and metadata files) into one new snapshot.

use anyhow::{bail, Context, Result};
use serde_json::json;

use engine::backup::{backup, inputs_of, BackupOptions, ChangeSource, Incremental, MetaInput};
use engine::source::SourceOptions;

use crate::args::{BackupArgs, Global};
use crate::context::{lock_shared, open_repo, Outcome, CANCEL};
use crate::output::{self, bytes, rate};
use crate::progress::Bar;

/// `LABEL=PATH` gives a label; a plain `PATH` (or `-`) leaves it to the engine.
fn parse_disk(spec: &str) -> (Option<&str>, &str) {
    match spec.split_once('=') {
        Some((label, path)) if !label.is_empty() && !label.contains('/') => (Some(label), path),
        _ => (None, spec),
    }
}

pub fn backup_cmd(g: &Global, a: &BackupArgs) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let lock = lock_shared(g, &repo, "backup", &mut out)?;
    let mut disks = Vec::new();
    let mut opened_meta = Vec::new();
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
            format: a.format.source_format(),
            qcow2_snapshot: a.qcow2_snapshot.clone(),
            dirty_bitmap: a.dirty_bitmap.clone(),
        };
        let name = label.map_or_else(|| engine::source::default_label(path), str::to_string);
        let opened = engine::source::open(path, label, &opts)
            .with_context(|| format!("opening disk {name}"))?;
        let (d, m) = inputs_of(opened);
        disks.extend(d);
        opened_meta.extend(m);
    }
    if a.base.is_some() && a.dirty_bitmap.is_none() && a.changed_ranges.is_empty() {
        bail!("--base needs a change map: --dirty-bitmap NAME or --changed-ranges FILE");
    }
    if let Some(spec) = &a.base {
        // `latest` is this VM's latest, not the repository's.
        let spec = &if spec == "latest" {
            format!("{}@latest", a.name)
        } else {
            spec.clone()
        };
        let (base, _) = engine::job::select::resolve_snapshot(&repo, spec)
            .with_context(|| format!("finding the base snapshot {spec:?}"))?;
        let mut files = changed_ranges_files(a, &disks)?;
        for d in &mut disks {
            let (what, map) = if let Some(bitmap) = &a.dirty_bitmap {
                (format!("dirty bitmap {bitmap}"), ChangeSource::FromSource)
            } else if let Some((file, ranges)) = files.remove(&d.label) {
                (
                    format!("changed ranges {file}"),
                    ChangeSource::Ranges(ranges),
                )
            } else {
                (
                    "none".to_string(),
                    ChangeSource::Unusable(format!("no change map was given for disk {}", d.label)),
                )
            };
            d.incremental = Some(Incremental {
                base,
                what,
                map,
                verify_pct: a.verify_unchanged,
            });
        }
    }
    let meta = a
        .meta
        .iter()
        .map(|p| MetaInput::from_path(p))
        .chain(opened_meta)
        .collect();
    let opts = BackupOptions {
        name: a.name.clone(),
        tags: a.tags.clone(),
        workers: a.workers.unwrap_or_else(engine::default_workers),
        allow_empty: a.allow_empty,
        time: a.time,
        cancel: CANCEL.clone(),
    };
    let bar = Bar::new(g, "backup");
    let done = backup(&repo, &lock, disks, meta, &opts, &bar)
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
                "changes": d.changes,
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
        for d in &s.disks {
            if let Some(c) = &d.changes {
                output::line(format!("  {}: {}", d.label, describe_changes(c)));
            }
        }
    }
    for d in &s.disks {
        if let Some(c) = d.changes.as_ref().filter(|c| c.map_lied) {
            out.warnings.push(format!(
                "disk {}: {} missed writes; the disk was read in full ({})",
                d.label,
                c.map,
                c.full_read.as_deref().unwrap_or("")
            ));
        }
    }
    Ok(out)
}

/// One line on what a change map did for a disk.
fn describe_changes(c: &repo_format::ChangeRecord) -> String {
    let verified = if c.verify_every > 0 {
        format!(
            ", {} unchanged re-read and matched (slice {} of {})",
            bytes(c.verified_bytes),
            c.verify_round % c.verify_every + 1,
            c.verify_every
        )
    } else {
        String::new()
    };
    match (&c.base, &c.full_read) {
        (Some(base), _) => format!(
            "incremental from {} ({}: {} changed){verified}",
            base.short(),
            c.map,
            bytes(c.changed_bytes)
        ),
        (None, why) => format!("read in full: {}", why.as_deref().unwrap_or("no base")),
    }
}

/// A changed-ranges file's name and its ranges, by the disk label it is for.
type RangesByDisk = std::collections::HashMap<String, (String, Vec<(u64, u64)>)>;

/// The `--changed-ranges` files by the disk label they are for: `LABEL=FILE`, or a plain
/// `FILE` when there is one disk.
fn changed_ranges_files(
    a: &BackupArgs,
    disks: &[engine::backup::DiskInput],
) -> Result<RangesByDisk> {
    let mut out = std::collections::HashMap::new();
    for spec in &a.changed_ranges {
        let (label, path) = match parse_disk(spec) {
            (Some(l), p) => (l.to_string(), p),
            (None, p) if disks.len() == 1 => (disks[0].label.clone(), p),
            (None, _) => bail!(
                "--changed-ranges {spec}: name the disk it is for (LABEL=FILE); there are {} disks",
                disks.len()
            ),
        };
        if !disks.iter().any(|d| d.label == label) {
            bail!("--changed-ranges {spec}: there is no disk {label:?}");
        }
        let text = read_small(std::path::Path::new(path))
            .with_context(|| format!("reading changed ranges {path}"))?;
        let ranges = engine::backup::changes::parse_ranges(&text)
            .map_err(|e| anyhow::anyhow!("changed ranges {path}: {e}"))?;
        if out
            .insert(label.clone(), (path.to_string(), ranges))
            .is_some()
        {
            bail!("--changed-ranges: two files for disk {label:?}");
        }
    }
    Ok(out)
}

/// A text file of bounded size.
fn read_small(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut text = String::new();
    f.take(engine::backup::changes::MAX_RANGES_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > engine::backup::changes::MAX_RANGES_FILE_BYTES {
        bail!(
            "more than {} MiB",
            engine::backup::changes::MAX_RANGES_FILE_BYTES >> 20
        );
    }
    Ok(text)
}
