//! What the last verify, prune and boot tests on this host found, kept in the host's
//! cache for the repository (`last-runs.json`, FORMAT.md section 10.5) so that
//! `dedisk metrics` and `dedisk ui` can show them without running them again.
//!
//! A cache, not a record: a missing or unreadable file means "not known", never an
//! error, and a failure to write it is logged.

use std::collections::BTreeMap;

use repo_format::Repository;
use serde::{Deserialize, Serialize};

/// Bounds what a damaged or planted cache file could make us read.
const MAX_BYTES: u64 = 4 << 20;
/// Boot results kept: the newest per VM, at most this many VMs.
const MAX_BOOT_VMS: usize = 10_000;

/// One run's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub time: jiff::Timestamp,
    /// No damage found, prune finished, the guest booted.
    pub ok: bool,
    /// One line for people: "no damage found (read 12 packs)", "reclaimed 1.2 GiB".
    pub summary: String,
    pub seconds: f64,
    /// Verify: problems found. Prune: bytes reclaimed. Boot: 0.
    #[serde(default)]
    pub value: i64,
}

/// The last runs of each kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LastRuns {
    pub verify: Option<Outcome>,
    pub prune: Option<Outcome>,
    /// Per VM, its newest snapshot's boot test.
    #[serde(default)]
    pub boot: BTreeMap<String, Outcome>,
}

/// Its file in the repository's cache folder.
const FILE: &str = "last-runs.json";

impl LastRuns {
    /// What this host recorded; empty when nothing was or the file is unreadable.
    pub fn load(repo: &Repository) -> LastRuns {
        repo_format::cache::load_json(&repo.cache_dir(), FILE, MAX_BYTES)
    }

    /// Loads, applies `change` and saves (private, atomic); failures are logged.
    pub fn update(repo: &Repository, change: impl FnOnce(&mut LastRuns)) {
        let mut r = LastRuns::load(repo);
        change(&mut r);
        if r.boot.len() > MAX_BOOT_VMS {
            let mut by_age: Vec<_> = r.boot.iter().map(|(k, v)| (v.time, k.clone())).collect();
            by_age.sort();
            for (_, k) in by_age.iter().take(r.boot.len() - MAX_BOOT_VMS) {
                r.boot.remove(k);
            }
        }
        if let Err(e) = repo_format::cache::save_json(&repo.cache_dir(), FILE, &r) {
            log::warn!("could not record the last runs in the cache: {e}");
        }
    }
}

/// Records a finished verify.
pub fn record_verify(repo: &Repository, r: &super::verify::VerifyReport, started: jiff::Timestamp) {
    let summary = if r.problem_count == 0 {
        format!(
            "no damage found in {} snapshot(s){}",
            r.snapshots,
            if r.packs_read > 0 {
                format!(", {} pack(s) read in full", r.packs_read)
            } else {
                String::new()
            }
        )
    } else {
        format!("{} problem(s) found", r.problem_count)
    };
    let outcome = Outcome {
        time: started,
        ok: r.problem_count == 0,
        summary,
        seconds: seconds_since(started),
        value: r.problem_count as i64,
    };
    LastRuns::update(repo, |l| l.verify = Some(outcome));
}

/// Records a finished prune (dry runs are not recorded).
pub fn record_prune(repo: &Repository, r: &super::prune::PruneReport, started: jiff::Timestamp) {
    if r.dry_run {
        return;
    }
    let outcome = Outcome {
        time: started,
        ok: true,
        summary: format!(
            "deleted {} pack(s), {} repacked, {} bytes reclaimed",
            r.packs_deleted,
            r.packs_repacked,
            r.bytes_reclaimed()
        ),
        seconds: seconds_since(started),
        value: r.bytes_reclaimed(),
    };
    LastRuns::update(repo, |l| l.prune = Some(outcome));
}

/// Records a boot test of VM `vm`.
pub fn record_boot(
    repo: &Repository,
    r: &crate::access::boot::BootReport,
    started: jiff::Timestamp,
) {
    let outcome = Outcome {
        time: started,
        ok: r.verdict == crate::access::boot::BootVerdict::Booted,
        summary: format!("{}: {}", r.snapshot.short(), r.reason),
        seconds: r.seconds,
        value: 0,
    };
    LastRuns::update(repo, |l| {
        l.boot.insert(r.vm.clone(), outcome);
    });
}

fn seconds_since(t: jiff::Timestamp) -> f64 {
    (jiff::Timestamp::now().as_millisecond() - t.as_millisecond()) as f64 / 1000.0
}
