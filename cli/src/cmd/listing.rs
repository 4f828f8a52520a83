//! `dedisk snapshots` and `dedisk stats`: what the repository holds.

use anyhow::{Context, Result};
use serde_json::json;

use crate::args::{Global, SnapshotsArgs};
use crate::context::{open_repo, Outcome};
use crate::output::{self, bytes};

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
                let mut v = json!({
                    "id": id, "time": s.time, "name": s.name, "hostname": s.hostname, "tags": s.tags,
                    "size_bytes": s.size_bytes(),
                    "disks": s.disks.iter().map(|d| json!({"label": d.label, "size_bytes": d.size_bytes, "new_stored_bytes": d.stats.new_stored_bytes})).collect::<Vec<_>>(),
                    "meta": s.meta.iter().map(|m| &m.name).collect::<Vec<_>>(),
                });
                if a.full {
                    v["record"] = serde_json::to_value(s).unwrap_or_default();
                }
                v
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
        let added = s.new_stored_bytes();
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
                data += s.data_bytes();
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
            "format_version": repo.config().format_version, "encrypted": repo.is_encrypted(),
        }));
    } else {
        output::line(format!(
            "encryption:         {}",
            if repo.is_encrypted() {
                "keyed BLAKE3 ids, AES-256-GCM, Padmé padding (format version 2)"
            } else {
                "none: this repository is UNENCRYPTED (format version 1)"
            }
        ));
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

/// `dedisk metrics`: the repository in Prometheus' text format (for a textfile
/// collector, or a scrape through any exporter that runs a command).
pub fn metrics(g: &Global) -> Result<Outcome> {
    let mut out = Outcome::default();
    let repo = open_repo(g, &mut out)?;
    let mut m = engine::job::metrics::Metrics::default();
    engine::job::metrics::repository(&repo, &mut m)?;
    // A pipe closed early (`dedisk metrics | head`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout(), m.render().as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing the metrics")?
        }
        _ => {}
    }
    Ok(out)
}
