//! Condemnation records (FORMAT.md, section 15): how a prune deletes packs while backups
//! keep running. A prune never deletes a pack it has just found unreferenced. It writes
//! a record naming the packs, then the locks present after the record was written; a
//! later sweep deletes a pack only once every one of those locks is gone and the pack
//! is still unreferenced by the snapshots then listed. Writers that start after the
//! record treat its packs as absent (they store such blobs again), so no writer ever
//! comes to rely on a condemned pack without the sweep waiting for it.
//!
//! Records are advisory for deletion: a sweep re-checks everything it deletes against
//! the snapshots, so a forged or stale record can delay a deletion or cause one a prune
//! would make anyway, never remove a blob a listed snapshot needs.

use std::collections::HashSet;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, ObjectKind};
use crate::error::{Error, Result};
use crate::ids::PackId;

/// The version of the record layout this code writes and reads.
pub const RECORD_VERSION: u32 = 1;

/// A record larger than this is not read (a plant meant to exhaust memory): 64 MiB,
/// about 900,000 packs, far beyond what one prune condemns.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// One record, as stored (JSON, in clear: pack ids and lock names are what the lock
/// and pack objects already show).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condemnation {
    pub version: u32,
    /// When the prune wrote it (its host's clock), for people.
    pub time: jiff::Timestamp,
    /// The host that ran the prune, for people.
    pub hostname: String,
    /// The packs to delete, as lower-case hex ids.
    pub packs: Vec<String>,
    /// The names of the lock objects present once the record was visible, which the
    /// sweep waits for. Absent while the record is pending: the prune that wrote it has
    /// not listed the locks yet (it was killed, or is in its listing wait), and the next
    /// prune completes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waits_for: Option<Vec<String>>,
    /// When the store says the pending record was written (set on completion): a pack
    /// the store says was written at or after this is a new upload of the same bytes
    /// and is not swept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<jiff::Timestamp>,
}

impl Condemnation {
    /// A pending record for `packs`.
    pub fn new(packs: &[PackId]) -> Condemnation {
        Condemnation {
            version: RECORD_VERSION,
            time: jiff::Timestamp::now(),
            hostname: crate::lock::hostname(),
            packs: packs.iter().map(PackId::to_hex).collect(),
            waits_for: None,
            pending_since: None,
        }
    }

    /// The packs it names. Names that are not pack ids were refused at read.
    pub fn pack_ids(&self) -> Vec<PackId> {
        self.packs.iter().filter_map(|p| p.parse().ok()).collect()
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Condemnation, String> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(format!("{} bytes, more than the limit", bytes.len()));
        }
        let rec: Condemnation = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if rec.version != RECORD_VERSION {
            return Err(format!("record version {}", rec.version));
        }
        if let Some(p) = rec.packs.iter().find(|p| p.parse::<PackId>().is_err()) {
            return Err(format!(
                "{:?} is not a pack id",
                p.chars().take(80).collect::<String>()
            ));
        }
        let lock_name = |n: &String| {
            !n.is_empty()
                && n.len() <= 128
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if let Some(n) = rec.waits_for.iter().flatten().find(|n| !lock_name(n)) {
            return Err(format!(
                "{:?} is not a lock name",
                n.chars().take(80).collect::<String>()
            ));
        }
        Ok(rec)
    }
}

/// One listed record.
pub struct ListedCondemnation {
    pub name: String,
    /// When the store says it was last written.
    pub modified: Option<SystemTime>,
    /// The record, or why it cannot be read (damage or a plant: ignored by writers and
    /// sweeps alike, so it can neither hide a pack from a writer's deduplication
    /// wrongly nor delete one).
    pub record: std::result::Result<Condemnation, String>,
}

/// Every record in the repository.
pub fn list(backend: &dyn Backend) -> Result<Vec<ListedCondemnation>> {
    let mut out = Vec::new();
    for meta in backend.list(ObjectKind::Condemned)? {
        let record = if meta.len > MAX_RECORD_BYTES as u64 {
            Err(format!("{} bytes, more than the limit", meta.len))
        } else {
            match backend.try_get(ObjectKind::Condemned, &meta.name)? {
                Some(b) => Condemnation::decode(&b),
                None => continue, // swept since it was listed
            }
        };
        out.push(ListedCondemnation {
            name: meta.name,
            modified: meta.modified,
            record,
        });
    }
    Ok(out)
}

/// The packs every readable record condemns.
pub fn condemned_packs(records: &[ListedCondemnation]) -> HashSet<PackId> {
    records
        .iter()
        .filter_map(|r| r.record.as_ref().ok())
        .flat_map(Condemnation::pack_ids)
        .collect()
}

/// Writes (or rewrites, to complete it) record `name`.
pub fn write(backend: &dyn Backend, name: &str, rec: &Condemnation) -> Result<()> {
    let bytes = serde_json::to_vec(rec).expect("a record serializes");
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(Error::io(
            backend.object_name(ObjectKind::Condemned, name),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "too many packs for one condemnation record",
            ),
        ));
    }
    backend.put_bytes(ObjectKind::Condemned, name, &bytes)
}

/// A fresh record name: 32 random bytes, hex.
pub fn new_name() -> Result<String> {
    Ok(hex::encode(crate::ids::random_bytes()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_hostile_ones_are_refused() {
        let packs = [PackId([7; 32]), PackId([9; 32])];
        let mut rec = Condemnation::new(&packs);
        rec.waits_for = Some(vec!["ab12".into()]);
        let bytes = serde_json::to_vec(&rec).unwrap();
        let back = Condemnation::decode(&bytes).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.pack_ids(), packs);
        for bad in [
            r#"{"version":1,"time":"2026-01-01T00:00:00Z","hostname":"h","packs":["../x"]}"#,
            r#"{"version":2,"time":"2026-01-01T00:00:00Z","hostname":"h","packs":[]}"#,
            r#"{"version":1,"time":"2026-01-01T00:00:00Z","hostname":"h","packs":[],"waits_for":["a/b"]}"#,
            r#"{"version":1,"time":"2026-01-01T00:00:00Z","hostname":"h","packs":[],"extra":1}"#,
            "not json",
        ] {
            assert!(Condemnation::decode(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
