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

// Floors, bottom up; a module imports only from its own floor or below (see the
// crate README and ARCHITECTURE.md). Floor 0: shared support.
pub mod cancel;
pub mod error;
pub mod io;
pub mod progress;
// Floor 1: where bytes come from, and how they are cut.
pub mod chunk;
pub mod source;
// Floor 2: writing to and reading from a repository.
pub mod backup;
pub mod locking;
pub mod maintain;
pub mod read;
pub mod store;
// Floor 3: what users run on top.
pub mod access;
pub mod job;
pub mod restore;

pub use error::{Damage, Error, Result};

/// Most worker threads any pipeline starts (issue 11: `--workers 100000` panicked
/// spawning threads).
pub const MAX_WORKERS: usize = 256;

/// Worker threads to use by default: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
