//! The engine's error type: one matchable kind per failure an admin can act on.

use std::path::PathBuf;

use repo_format::{BlobId, PackId};

use crate::source::SourceError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A chunk that could not be restored: where it belongs and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Damage {
    pub disk: String,
    pub offset: u64,
    pub len: u64,
    pub chunk: BlobId,
    pub pack: Option<PackId>,
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "disk {} bytes {}..{}: chunk {} in pack {}: {}",
            self.disk,
            self.offset,
            self.offset + self.len,
            self.chunk.short(),
            self.pack.map_or_else(|| "(unknown)".into(), |p| p.short()),
            self.reason
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Repo(#[from] repo_format::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{path}: {source}")]
    Target {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; pass --force to overwrite it")]
    TargetExists { path: PathBuf },
    #[error("{path} holds {have_bytes} bytes but the disk needs {need_bytes}")]
    TargetTooSmall {
        path: PathBuf,
        have_bytes: u64,
        need_bytes: u64,
    },
    #[error("{path}: not a regular file or block device")]
    TargetNotADisk { path: PathBuf },
    /// Differential restore writes in place: never under a running guest or a mount.
    #[error("{path} is in use: {by}; stop what uses it first")]
    TargetInUse { path: PathBuf, by: String },
    /// `--check` re-read the restored disk and found it differs from the snapshot.
    #[error("{path} differs from the snapshot after the restore: {bytes} bytes in {ranges} range(s), the first at byte {first}")]
    CheckFailed {
        path: PathBuf,
        bytes: u64,
        ranges: u64,
        first: u64,
    },
    #[error("no snapshot matches {0:?}")]
    NoSuchSnapshot(String),
    #[error("{spec:?} is ambiguous: it matches {} snapshots ({})", .matches.len(), .matches.iter().map(|m| m.short()).collect::<Vec<_>>().join(", "))]
    AmbiguousSnapshot {
        spec: String,
        matches: Vec<repo_format::SnapshotId>,
    },
    #[error("snapshot {} has no disk {label:?} (it has: {available})", .snapshot.short())]
    NoSuchDisk {
        snapshot: repo_format::SnapshotId,
        label: String,
        available: String,
    },
    #[error("{0}")]
    Usage(String),
    /// A password could not be had from where it was to come from.
    #[error("{what}: {reason}")]
    Password { what: String, reason: String },
    /// A snapshot provider (LVM, libvirt, xe...) failed to make, check or release a view.
    #[error("snapshot: {0}")]
    Provider(#[from] crate::job::provider::ProviderError),
    #[error("snapshot {}: {} damaged chunk(s); first: {}; partial disk kept at {}", .snapshot.short(), .damage.len(), .damage[0], .partial.display())]
    Damaged {
        snapshot: repo_format::SnapshotId,
        damage: Vec<Damage>,
        /// The partially restored file or device (damaged ranges read as zeros).
        partial: PathBuf,
    },
    #[error("manifest of disk {disk} covers {got} bytes, the snapshot says {expected}")]
    SizeMismatch {
        disk: String,
        expected: u64,
        got: u64,
    },
    /// A backup from a change map re-read an extent the map called unchanged, and it
    /// had changed: the map (a dirty bitmap, CBT) lied. The disk is read in full.
    #[error("the change map missed a write: the extent at byte {offset} differs from the base")]
    MapLied { offset: u64, len: u64 },
    #[error("interrupted")]
    Interrupted,
    #[error("internal error: the {0} stage stopped unexpectedly")]
    StageFailed(&'static str),
}

impl Error {
    pub fn target(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Target {
            path: path.into(),
            source,
        }
    }
}
