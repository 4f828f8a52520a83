//! `dedisk backup`: disks (and metadata files) into one new snapshot.

use anyhow::{bail, Context, Result};
use serde_json::json;

use engine::backup::{backup, inputs_of, BackupOptions, MetaInput};
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
        };
        let name = label.map_or_else(|| engine::source::default_label(path), str::to_string);
        let opened = engine::source::open(path, label, &opts)
            .with_context(|| format!("opening disk {name}"))?;
        let (d, m) = inputs_of(opened);
        disks.extend(d);
        opened_meta.extend(m);
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
        cancel: CANCEL.clone(),
    };
    let bar = Bar::new(!g.json && !g.quiet);
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
