//! Snapshot files: one VM backup, `snapshots/<id>.json`, where id = BLAKE3 of the file.
//! A snapshot exists exactly when its file does; it is written last, after every pack and
//! index row it needs is durable.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::SnapshotId;
use crate::manifest::ManifestRoot;

/// Disks one snapshot may hold.
pub const MAX_DISKS: usize = 256;
/// Metadata files one snapshot may hold.
pub const MAX_META: usize = 256;
/// Largest metadata file (domain XML, NVRAM) a snapshot keeps.
pub const MAX_META_BYTES: u64 = 64 << 20;
/// Largest virtual disk size a snapshot may declare (8 EiB: far beyond any disk, and no
/// offset arithmetic below it can overflow an `i64` file offset).
pub const MAX_DISK_BYTES: u64 = i64::MAX as u64;
/// Tags per snapshot.
pub const MAX_TAGS: usize = 64;
/// Lost ranges per disk (repair merges adjacent ones).
pub const MAX_LOST_RANGES: usize = 1 << 20;

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
    /// How the disk was read when a change map was offered (FORMAT.md, section 16):
    /// absent for a plain full read. Only a record: the manifest is complete either way,
    /// so readers that predate it restore the disk the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangeRecord>,
}

/// What a backup did with a change map (a dirty bitmap, CBT, a list of changed ranges).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// The map offered: `dirty bitmap backup-vda`, `changed ranges night2.txt`.
    pub map: String,
    /// The snapshot whose manifest the unchanged ranges were taken from; absent when the
    /// disk was read in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<SnapshotId>,
    /// Bytes the map called changed.
    pub changed_bytes: u64,
    /// Position in the rotation of re-read unchanged extents (one more each night).
    pub verify_round: u64,
    /// Nights per full rotation (0: no verification).
    pub verify_every: u64,
    /// Bytes of unchanged extents read again and found as the base has them.
    pub verified_bytes: u64,
    /// Why the disk was read in full despite the map (missing, inconsistent, a resized
    /// disk, a base that is not the latest, a map that lied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_read: Option<String>,
    /// Verification found a write the map did not show.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub map_lied: bool,
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
    /// The newest snapshot of the same VM in the repository when this one was written
    /// (absent for a VM's first): a chain in which a deleted snapshot leaves a gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<SnapshotId>,
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
        Snapshot::check_name(path, id, bytes)?;
        Snapshot::parse(path, bytes)
    }

    /// Checks that a snapshot file's bytes (sealed or not) hash to its name.
    pub fn check_name(path: &Path, id: SnapshotId, bytes: &[u8]) -> Result<()> {
        if blake3::hash(bytes).as_bytes() != &id.0 {
            return Err(Error::CorruptSnapshot {
                path: path.into(),
                reason: "content does not match the file name's hash".into(),
            });
        }
        Ok(())
    }

    /// Parses and checks snapshot JSON (of a file whose name was checked, or the
    /// plaintext of a sealed one).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Snapshot> {
        let bad = |reason: String| Error::CorruptSnapshot {
            path: path.into(),
            reason,
        };
        let snap: Snapshot = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if snap.snapshot_version != SNAPSHOT_VERSION
            && snap.snapshot_version != SNAPSHOT_VERSION_REPAIRED
        {
            return Err(bad(format!(
                "snapshot version {} is not supported",
                snap.snapshot_version
            )));
        }
        snap.validate().map_err(bad)?;
        Ok(snap)
    }

    /// Checks every name, size and count (FORMAT.md, "Snapshot files"): backup calls it
    /// before writing and [`Snapshot::decode`] after every read, so nothing downstream
    /// sees a label that is not one file name, a size its manifest does not cover, or a
    /// count no honest writer makes. The VM name is only bounded here (it may be any
    /// text an older dedisk accepted): show it through [`crate::names::escape`].
    pub fn validate(&self) -> std::result::Result<(), String> {
        use crate::names::{check_label, escape};
        if self.name.is_empty() || self.name.len() > 1024 {
            return Err(format!("VM name of {} bytes", self.name.len()));
        }
        if self.disks.is_empty() || self.disks.len() > MAX_DISKS {
            return Err(format!(
                "{} disks (1 to {MAX_DISKS} allowed)",
                self.disks.len()
            ));
        }
        if self.meta.len() > MAX_META {
            return Err(format!(
                "{} metadata files (at most {MAX_META})",
                self.meta.len()
            ));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(format!("more than {MAX_TAGS} tags"));
        }
        self.tags
            .iter()
            .try_for_each(|t| crate::names::check_tag(t))?;
        if self.hostname.len() > 255 || self.program_version.len() > 64 {
            return Err("hostname or program version too long".into());
        }
        for d in &self.disks {
            if let Some(c) = &d.changes {
                if c.map.len() > 1024 || c.full_read.as_ref().is_some_and(|r| r.len() > 4096) {
                    return Err(format!("{}: change record text too long", escape(&d.label)));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        let entries = self
            .disks
            .iter()
            .map(|d| (&d.label, d.size_bytes, &d.manifest, &d.lost, MAX_DISK_BYTES))
            .chain(
                self.meta
                    .iter()
                    .map(|m| (&m.name, m.size_bytes, &m.manifest, &m.lost, MAX_META_BYTES)),
            );
        for (name, size, manifest, lost, max_size) in entries {
            check_label(name)?;
            if !seen.insert(name.as_str()) {
                return Err(format!("name {} is used twice", escape(name)));
            }
            if size != manifest.len_bytes || size > max_size {
                return Err(format!(
                    "{}: size {size} does not match its manifest ({} bytes) or exceeds {max_size}",
                    escape(name),
                    manifest.len_bytes
                ));
            }
            if manifest.extents > crate::manifest::max_extents(size) {
                return Err(format!(
                    "{}: {} extents for {size} bytes",
                    escape(name),
                    manifest.extents
                ));
            }
            if lost.len() > MAX_LOST_RANGES
                || lost
                    .iter()
                    .any(|l| l.len == 0 || l.offset.checked_add(l.len).is_none_or(|end| end > size))
            {
                return Err(format!("{}: lost ranges outside the disk", escape(name)));
            }
        }
        Ok(())
    }

    /// Logical bytes (sum of virtual disk sizes).
    pub fn size_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.size_bytes).sum()
    }

    /// Data bytes its disks reference (holes excluded), as recorded at backup time.
    pub fn data_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.stats.data_bytes).sum()
    }

    /// Bytes its backup added to the repository (compressed, sealed), as recorded.
    pub fn new_stored_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.stats.new_stored_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::BlobId;

    fn snap() -> Snapshot {
        let disk = |label: &str| SnapshotDisk {
            label: label.into(),
            source: "/dev/vg/x".into(),
            size_bytes: 1 << 20,
            manifest: ManifestRoot {
                root: BlobId([1; 32]),
                len_bytes: 1 << 20,
                extents: 4,
            },
            stats: DiskStats::default(),
            lost: vec![],
            changes: None,
        };
        Snapshot {
            snapshot_version: SNAPSHOT_VERSION,
            time: "2026-11-22T07:22:41Z".parse().unwrap(),
            name: "web01".into(),
            hostname: "kvm1".into(),
            tags: vec![],
            disks: vec![disk("vda"), disk("vdb")],
            meta: vec![],
            program_version: "0.1.0".into(),
            previous: None,
        }
    }

    #[test]
    fn validate_refuses_what_no_honest_writer_makes() {
        assert_eq!(snap().validate(), Ok(()));
        type Edit = Box<dyn Fn(&mut Snapshot)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.disks[1].label = "vda".into()), "vda"),
            (
                Box::new(|s| s.disks[0].label = "../x".into()),
                "contains '/'",
            ),
            (Box::new(|s| s.disks[0].size_bytes = 2 << 20), "size"),
            (
                Box::new(|s| s.disks[0].manifest.extents = 1 << 20),
                "extents",
            ),
            (Box::new(|s| s.disks.clear()), "disk"),
            (
                Box::new(|s| s.tags = vec!["t".into(); MAX_TAGS + 1]),
                "tags",
            ),
        ];
        for (edit, needle) in cases {
            let mut s = snap();
            edit(&mut s);
            let e = s.validate().expect_err(needle);
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn decode_checks_the_name_the_version_and_the_content() {
        let (id, bytes) = snap().encode();
        assert_eq!(
            Snapshot::decode(Path::new("s"), id, &bytes).unwrap(),
            snap()
        );
        let mut v9 = snap();
        v9.snapshot_version = 9;
        let (id9, b9) = v9.encode();
        let e = Snapshot::decode(Path::new("s"), id9, &b9)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 9"), "{e}");
        let mut bad = snap();
        bad.disks[0].label = "a/b".into();
        let (idb, bb) = bad.encode();
        assert!(Snapshot::decode(Path::new("s"), idb, &bb).is_err());
        let (_, other) = v9.encode();
        assert!(
            Snapshot::decode(Path::new("s"), id, &other).is_err(),
            "content must match the name"
        );
    }
}
