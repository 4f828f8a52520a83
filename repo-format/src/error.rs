//! The one error type of this crate. Each variant names the file, pack, blob or offset
//! involved so that a message printed at the CLI edge tells an admin where to look.

use std::path::PathBuf;

use crate::ids::{BlobId, PackId};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with the thing it went wrong on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a dedisk repository (no config.json)")]
    NotARepository { path: PathBuf },
    #[error("{path} already exists and is not empty; refusing to create a repository there")]
    AlreadyExists { path: PathBuf },
    #[error("{path}: repository format version {found} is not supported (this dedisk reads versions 1 to {supported})")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: invalid repository config: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("pack {pack}: {reason} (at byte {offset})")]
    CorruptPack {
        pack: String,
        offset: u64,
        reason: String,
    },
    #[error("blob {blob} in pack {pack} at byte {offset}: {reason}")]
    CorruptBlob {
        blob: BlobId,
        pack: PackId,
        offset: u64,
        reason: String,
    },
    #[error("blob {0} is not in the repository index")]
    MissingBlob(BlobId),
    #[error("the repository is in use: {holder}; if that process is gone, `dedisk unlock` removes its lock (`--force` for another host's)")]
    Locked { holder: String },
    #[error("lock file {path} cannot be read ({reason}); if no dedisk process uses the repository, `dedisk unlock --force` removes it")]
    BadLock { path: PathBuf, reason: String },
    #[error("this process's lock {path} was removed or changed by someone else (`dedisk unlock --force`?); stopped before deleting anything more")]
    LockLost { path: PathBuf },
    #[error("this process's lock {path} was last refreshed {minutes} minutes ago (the store was slow or unreachable); stopped before committing, since a prune elsewhere may soon take it for stale")]
    LockNotFresh { path: PathBuf, minutes: u64 },
    #[error("pack {pack} is referenced by the index but missing on disk ({path})")]
    MissingPack { pack: PackId, path: PathBuf },
    #[error("manifest node {node}: {reason}")]
    CorruptManifest { node: BlobId, reason: String },
    #[error("snapshot file {path}: {reason}")]
    CorruptSnapshot { path: PathBuf, reason: String },
    #[error("refusing to write an invalid snapshot: {0}")]
    InvalidSnapshot(String),
    #[error("invalid {kind} id {text:?}")]
    BadId { kind: &'static str, text: String },
    #[error("index {path}: {source}")]
    Index {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("blob of {len_bytes} bytes is larger than the format allows ({max_bytes})")]
    BlobTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("compression failed: {0}")]
    Compress(String),
    #[error("random source failed: {0}")]
    Random(String),
    /// No key file opens with the password given.
    #[error("{key}: wrong password (or the key file was changed)")]
    WrongPassword { key: String },
    /// A sealed object does not authenticate under the repository's key: damaged, forged,
    /// or moved from another object's place.
    #[error("{what}: does not authenticate (damaged, forged, or moved from elsewhere)")]
    Unauthenticated { what: String },
    #[error("{what}: {reason}")]
    BadKey { what: String, reason: String },
    /// An encrypted repository opened without its key.
    #[error("{path} is encrypted: a password is needed (DEDISK_PASSWORD, DEDISK_PASSWORD_FILE, DEDISK_PASSWORD_COMMAND or a terminal)")]
    KeyNeeded { path: PathBuf },
    /// No key file to try.
    #[error("{path}: no key file (the repository's keys/ is empty; pass the one kept elsewhere with --key-file)")]
    NoKeyFile { path: PathBuf },
    /// An object store refused or failed a request (after its retries): the object or
    /// bucket, and the store's answer in one line.
    #[error("{object}: {reason}")]
    Store { object: String, reason: String },
    /// `--repo` (or DEDISK_REPO) is neither a path nor a valid `s3://BUCKET/PREFIX`.
    #[error("repository location {text:?}: {reason}")]
    BadLocation { text: String, reason: String },
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the index file itself is damaged or not an index of this version:
    /// rebuilding it from the packs is the cure (it is only a cache of their TOCs).
    pub fn is_broken_index(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match self {
            Error::Index { source, .. } => match source {
                rusqlite::Error::SqliteFailure(e, _) => {
                    matches!(e.code, DatabaseCorrupt | NotADatabase)
                }
                // Our own schema check, and rows that do not decode.
                rusqlite::Error::InvalidParameterName(_)
                | rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::IntegralValueOutOfRange(..) => true,
                _ => false,
            },
            _ => false,
        }
    }

    /// True when the error means stored data is damaged (as opposed to an operational failure).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::CorruptPack { .. }
                | Error::CorruptBlob { .. }
                | Error::CorruptManifest { .. }
                | Error::CorruptSnapshot { .. }
                | Error::MissingBlob(_)
                | Error::MissingPack { .. }
        )
    }
}

/// Extension to attach a path to `std::io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
