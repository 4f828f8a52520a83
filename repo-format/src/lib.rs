//! The dedisk repository format: everything about bytes at rest.
//!
//! A repository is a directory of immutable, content-addressed files (packs of
//! compressed chunks, snapshot files) plus a SQLite index that caches where each chunk
//! lives. This crate reads and writes those files and nothing else: no image parsing,
//! no pipeline, no command line. `FORMAT.md` beside this crate's Cargo.toml is the normative spec.
//!
//! ```no_run
//! use repo_format::{Repository, BlobReader};
//! # fn main() -> Result<(), repo_format::Error> {
//! let repo = Repository::open(std::path::Path::new("/srv/backup/repo"))?;
//! let mut reader = BlobReader::new(&repo)?;
//! for snap in repo.list_snapshots()? {
//!     let (id, snap) = snap?;
//!     println!("{} {} {} disk(s)", id.short(), snap.name, snap.disks.len());
//! }
//! # let _ = &mut reader; Ok(()) }
//! ```

pub mod backend;
pub mod blob;
pub mod blob_reader;
pub mod cache;
pub mod condemn;
pub mod config;
pub mod crypto;
pub mod durable;
pub mod error;
pub mod history;
pub mod ids;
pub mod index;
pub mod keys;
pub mod lock;
pub mod manifest;
pub mod names;
pub mod pack;
pub mod repo;
pub mod snapshot;

pub use backend::Location;
pub use blob::{BlobCodec, BlobEncoder, BlobKind, Compression, EncodedBlob};
pub use blob_reader::BlobReader;
pub use config::{
    ChunkerAlgorithm, ChunkerParams, CompressionParams, RepoConfig, FORMAT_VERSION,
    FORMAT_VERSION_SEALED,
};
pub use error::{Error, Result};
pub use ids::{BlobId, PackId, RepoId, SnapshotId};
pub use index::{BlobLocation, Index, IndexTotals};
pub use manifest::{ChildRef, Extent, ManifestBuilder, ManifestRoot, ManifestWalker, Node, Step};
pub use pack::{FinishedPack, PackWriter, SealedPack, TocEntry};
pub use repo::{IndexRepair, PackHandle, PackRange, Repository};
pub use snapshot::{ChangeRecord, DiskStats, LostRange, Snapshot, SnapshotDisk, SnapshotMeta};
