//! Snapshot files: one VM backup, `snapshots/<id>.json`, where id = BLAKE3 of the file.
//! A snapshot exists exactly when its file does; it is written last, after every pack and
//! index row it needs is durable.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::SnapshotId;
use crate::manifest::ManifestRoot;

/// Version of the snapshot JSON shape (bumped with the repository format).
pub const SNAPSHOT_VERSION: u32 = 1;
/// Version of a snapshot rewritten by `repair snapshots`: it lists lost ranges, which a
/// version-1 reader would not know and would restore as plain zeros. Readers that
/// predate it refuse it instead of restoring silently.
pub const SNAPSHOT_VERSION_REPAIRED: u32 = 2;

/// A range of a disk whose data was lost (found damaged by `repair snapshots`): it reads
/// as zeros, and every restore says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRange {
    pub offset: u64,
    pub len: u64,
    /// Why, e.g. "chunk 3fa2c1d0 missing from the repository".
    pub reason: String,
}

/// Per-disk numbers recorded at backup time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskStats {
    /// Bytes actually read from the source.
    pub read_bytes: u64,
    /// Bytes recorded as holes (unallocated, or all-zero runs), never stored.
    pub hole_bytes: u64,
    /// Bytes referenced as data chunks (virtual size minus holes).
    pub data_bytes: u64,
    /// Chunk references in the manifest.
    pub chunks: u64,
    /// Chunks this backup stored for the first time.
    pub new_chunks: u64,
    /// Uncompressed bytes of those new chunks.
    pub new_bytes: u64,
    /// Bytes those new chunks take in packs (after compression, with blob headers).
    pub new_stored_bytes: u64,
    /// Wall-clock seconds the disk took.
    pub seconds: f64,
}

/// One disk of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotDisk {
    /// Name of the disk within the snapshot (`vda`, `disk0`, ...).
    pub label: String,
    /// Where it was read from, as given on the command line.
    pub source: String,
    /// Virtual size in bytes.
    pub size_bytes: u64,
    pub manifest: ManifestRoot,
    pub stats: DiskStats,
    /// Ranges lost to damage (only in repaired snapshots, version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<LostRange>,
}

/// A small file kept beside the disks (domain XML, Xen .cfg, NVRAM).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// File name within the snapshot.
    pub name: String,
    pub size_bytes: u64,
    /// Its bytes, stored exactly like a disk.
    pub manifest: ManifestRoot,
    /// Ranges lost to damage (only in repaired snapshots, version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<LostRange>,
}

/// The contents of a snapshot file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub snapshot_version: u32,
    pub time: jiff::Timestamp,
    /// The VM (or any grouping name) the snapshot belongs to.
    pub name: String,
    pub hostname: String,
    pub tags: Vec<String>,
    pub disks: Vec<SnapshotDisk>,
    pub meta: Vec<SnapshotMeta>,
    /// The dedisk version that wrote it.
    pub program_version: String,
}

impl Snapshot {
    /// Serializes the snapshot and computes the id it will be stored under.
    pub fn encode(&self) -> (SnapshotId, Vec<u8>) {
        // Serializing plain data to a Vec cannot fail.
        let mut bytes = serde_json::to_vec_pretty(self).expect("snapshot serializes");
        bytes.push(b'\n');
        (SnapshotId(*blake3::hash(&bytes).as_bytes()), bytes)
    }

    /// Parses a snapshot file, checking that its content matches its name.
    pub fn decode(path: &Path, id: SnapshotId, bytes: &[u8]) -> Result<Snapshot> {
        let bad = |reason: String| Error::CorruptSnapshot {
            path: path.into(),
            reason,
        };
        if blake3::hash(bytes).as_bytes() != &id.0 {
            return Err(bad("content does not match the file name's hash".into()));
        }
        let snap: Snapshot = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if snap.snapshot_version != SNAPSHOT_VERSION
            && snap.snapshot_version != SNAPSHOT_VERSION_REPAIRED
        {
            return Err(bad(format!(
                "snapshot version {} is not supported",
                snap.snapshot_version
            )));
        }
        Ok(snap)
    }

    /// Logical bytes (sum of virtual disk sizes).
    pub fn size_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.size_bytes).sum()
    }
}
