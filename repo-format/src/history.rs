//! What this host has seen of a repository's snapshots, kept in its cache (FORMAT.md,
//! section 10.6): the newest snapshot of each VM it wrote or verified, and the snapshots
//! it forgot itself. Someone who can write the repository can delete or roll back
//! snapshots; `verify` compares the repository with this record to notice it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ids::SnapshotId;
use crate::repo::Repository;

/// One VM's newest snapshot seen here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub id: SnapshotId,
    pub time: jiff::Timestamp,
}

/// The record. Updates are read-modify-write without a lock: two commands of one host
/// finishing at the same instant may lose one update, which can only hide a rollback
/// from one verify, never report one that did not happen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// VM name → its newest snapshot seen.
    pub newest: BTreeMap<String, Seen>,
    /// Snapshots this host forgot (a gap they leave is no attack).
    pub forgotten: BTreeSet<SnapshotId>,
}

/// Bounds the record a damaged or planted cache file could make us read.
const MAX_HISTORY_BYTES: u64 = 64 << 20;
/// Its file in the repository's cache folder.
const FILE: &str = "seen.json";

impl History {
    /// The record for `repo`; empty when there is none or it cannot be read (a cache
    /// is never a reason to fail).
    pub fn load(repo: &Repository) -> History {
        crate::cache::load_json(&repo.cache_dir(), FILE, MAX_HISTORY_BYTES)
    }

    /// Writes the record durably (private file in the cache).
    pub fn save(&self, repo: &Repository) -> Result<()> {
        crate::cache::save_json(&repo.cache_dir(), FILE, self)
    }

    /// Notes that `id` of VM `name`, written at `time`, exists.
    pub fn saw(&mut self, name: &str, id: SnapshotId, time: jiff::Timestamp) {
        let newer = self
            .newest
            .get(name)
            .is_none_or(|s| (s.time, s.id) < (time, id));
        if newer {
            self.newest.insert(name.into(), Seen { id, time });
        }
    }

    /// Loads, applies `change` and saves; a failure to save is logged, not returned.
    pub fn update(repo: &Repository, change: impl FnOnce(&mut History)) {
        let mut h = History::load(repo);
        change(&mut h);
        if let Err(e) = h.save(repo) {
            log::warn!("could not record what this host saw in its cache: {e}");
        }
    }
}
