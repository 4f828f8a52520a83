//! What the dashboard shows, read from the repository, this host's cache and the job
//! reports named on the command line. Read again at most every [`FRESH_FOR`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use repo_format::{Repository, Snapshot, SnapshotId};

/// How long one reading serves requests (a page reload on a large S3 repository must
/// not list every snapshot again).
const FRESH_FOR: Duration = Duration::from_secs(15);
/// A report file larger than this is not a job's report.
const MAX_REPORT_BYTES: u64 = 16 << 20;

/// One reading.
pub struct Data {
    pub at: jiff::Timestamp,
    pub repo: String,
    pub encrypted: bool,
    pub totals: repo_format::index::IndexTotals,
    /// Oldest first.
    pub snapshots: Vec<(SnapshotId, Snapshot)>,
    /// Snapshot files that could not be read, one line each.
    pub unreadable: Vec<String>,
    pub last: engine::maintain::last_runs::LastRuns,
    /// Each report file: its job report, or why it could not be read.
    pub reports: Vec<(PathBuf, std::result::Result<serde_json::Value, String>)>,
}

/// Reads `Data`, sharing one reading between requests for a while.
pub struct Source {
    repo: Arc<Repository>,
    reports: Vec<PathBuf>,
    cached: Mutex<Option<(Instant, Arc<Data>)>>,
}

impl Source {
    pub fn new(repo: Arc<Repository>, reports: Vec<PathBuf>) -> Self {
        Source {
            repo,
            reports,
            cached: Mutex::new(None),
        }
    }

    pub fn get(&self) -> Result<Arc<Data>> {
        let mut cached = self.cached.lock().expect("no panics while held");
        if let Some((when, d)) = cached.as_ref() {
            if when.elapsed() < FRESH_FOR {
                return Ok(d.clone());
            }
        }
        let d = Arc::new(self.read()?);
        *cached = Some((Instant::now(), d.clone()));
        Ok(d)
    }

    fn read(&self) -> Result<Data> {
        let repo = &self.repo;
        let totals = repo
            .index()?
            .totals()
            .context("reading the index's totals")?;
        let mut snapshots = Vec::new();
        let mut unreadable = Vec::new();
        for r in repo.list_snapshots().context("listing the snapshots")? {
            match r {
                Ok(s) => snapshots.push(s),
                Err(e) => unreadable.push(e.to_string()),
            }
        }
        snapshots.sort_by_key(|(id, s)| (s.time, *id));
        let reports = self
            .reports
            .iter()
            .map(|p| (p.clone(), read_report(p)))
            .collect();
        Ok(Data {
            at: jiff::Timestamp::now(),
            repo: repo.describe(),
            encrypted: repo.is_encrypted(),
            totals,
            snapshots,
            unreadable,
            last: engine::maintain::last_runs::LastRuns::load(repo),
            reports,
        })
    }
}

/// A job's report file, as the job wrote it.
fn read_report(p: &std::path::Path) -> std::result::Result<serde_json::Value, String> {
    let meta = std::fs::metadata(p).map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.len() > MAX_REPORT_BYTES {
        return Err("not a job report (not a file, or too large)".into());
    }
    let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if v.get("vms").is_some_and(|x| x.is_array()) && v.get("status").is_some() {
        Ok(v)
    } else {
        Err("not a job report (no status and vms)".into())
    }
}
