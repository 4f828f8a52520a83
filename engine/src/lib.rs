//! The dedisk engine: reading disks, cutting them into chunks, and the backup and
//! restore pipelines over a [`repo_format::Repository`].
//!
//! ```no_run
//! use engine::backup::{backup, BackupOptions, DiskInput};
//! use engine::source::open_source;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let repo = repo_format::Repository::open("/srv/backup/repo".as_ref())?;
//! let disk = DiskInput { label: "vda".into(), source: open_source("/var/lib/libvirt/images/vm1.qcow2", &Default::default())? };
//! let opts = BackupOptions { name: "vm1".into(), tags: vec![], workers: 2, cancel: Default::default(), allow_empty: false };
//! let done = backup(&repo, vec![disk], vec![], &opts, &engine::progress::NoProgress)?;
//! println!("snapshot {}", done.id.short());
//! # Ok(()) }
//! ```

pub mod backup;
pub mod blockdev;
pub mod cancel;
pub mod chunker;
pub mod disk_reader;
pub mod error;
pub mod forget;
pub mod image;
pub mod job;
pub mod locking;
pub mod mount;
pub mod nbd;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod select;
pub mod source;
pub mod verify;
pub mod xva;

pub use error::{Damage, Error, Result};

/// Most worker threads any pipeline starts (issue 11: `--workers 100000` panicked
/// spawning threads).
pub const MAX_WORKERS: usize = 256;

/// Worker threads to use by default: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
