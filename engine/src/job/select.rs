//! Naming snapshots on the command line: `latest`, `VM@latest`, `VM@PREFIX`, or a unique
//! id prefix, optionally followed by `:LABEL` to pick one disk.

use repo_format::{Repository, Snapshot, SnapshotId};

use crate::error::{Error, Result};

/// Splits `SNAPSHOT[:LABEL]`. The label follows the last ':'.
pub fn split_label(spec: &str) -> (&str, Option<&str>) {
    match spec.rsplit_once(':') {
        Some((snap, label)) if !label.is_empty() => (snap, Some(label)),
        _ => (spec, None),
    }
}

/// Finds the one snapshot `spec` names.
pub fn resolve_snapshot(repo: &Repository, spec: &str) -> Result<(SnapshotId, Snapshot)> {
    let mut all = Vec::new();
    for r in repo.list_snapshots()? {
        match r {
            Ok(x) => all.push(x),
            Err(e) => log::warn!("{e}"),
        }
    }
    let (vm, what) = match spec.split_once('@') {
        Some((vm, what)) => (Some(vm), what),
        None => (None, spec),
    };
    let candidates: Vec<_> = all
        .into_iter()
        .filter(|(_, s)| vm.is_none_or(|vm| s.name == vm))
        .collect();
    if what == "latest" {
        // list_snapshots is sorted oldest first.
        return candidates
            .into_iter()
            .last()
            .ok_or_else(|| Error::NoSuchSnapshot(spec.into()));
    }
    let prefix = what.to_ascii_lowercase();
    if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Usage(format!(
            "{spec:?} does not name a snapshot: give `latest`, `VM@latest`, or at least 4 hex digits of a snapshot id"
        )));
    }
    let mut matches: Vec<_> = candidates
        .into_iter()
        .filter(|(id, _)| id.to_hex().starts_with(&prefix))
        .collect();
    match matches.len() {
        0 => Err(Error::NoSuchSnapshot(spec.into())),
        1 => Ok(matches.pop().expect("one element")),
        _ => Err(Error::AmbiguousSnapshot {
            spec: spec.into(),
            matches: matches.iter().map(|(id, _)| *id).collect(),
        }),
    }
}
