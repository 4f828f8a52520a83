//! The dedisk engine: reading disks, cutting them into chunks, and the backup, restore,
//! access and maintenance work over a [`repo_format::Repository`].
//!
//! Floors, bottom up; a module imports only from its own floor or below:
//!
//! | floor | modules | owns |
//! |---|---|---|
//! | 0 | [`cancel`], [`io`], [`progress`] | stop flag, O_DIRECT buffers and device ioctls, progress reporting |
//! | 1 | [`source`], [`chunk`] | disk sources (raw, images, streams, XVA) behind one [`source::open`]; content-defined cut points |
//! | 2 | [`secret`], [`store`], [`backup`], [`read`], [`maintain`], [`locking`] | passwords and opening a repository with its key, the write side (packs, index), the backup pipeline, the read path, verify/forget/prune/repair, waiting for locks |
//! | 3 | [`restore`], [`access`], [`job`] | restore targets, NBD and FUSE, the job runner and snapshot providers |
//!
//! [`error`] stands beside the floors: the crate's one error type, made of each floor's
//! own errors ([`source::SourceError`], [`job::provider::ProviderError`], the
//! repository's), so every API returns the same matchable kind.
//!
//! Work that reads or writes a repository takes a lock guard by type
//! ([`repo_format::lock::SharedLock`], [`repo_format::lock::ExclusiveLock`]), handed out
//! by the repository: a caller cannot forget to lock.
//!
//! ```no_run
//! use engine::backup::{backup, inputs_of, BackupOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let repo = repo_format::Repository::open(std::path::Path::new("/srv/backup/repo"))?;
//! let lock = repo.lock_shared("backup")?;
//! let opened = engine::source::open("/var/lib/libvirt/images/vm1.qcow2", Some("vda"), &Default::default())?;
//! let (disks, meta) = inputs_of(opened);
//! let opts = BackupOptions { name: "vm1".into(), tags: vec![], workers: 2, cancel: Default::default(), allow_empty: false, time: None };
//! let done = backup(&repo, &lock, disks, meta, &opts, &engine::progress::NoProgress)?;
//! println!("snapshot {}", done.id.short());
//! # Ok(()) }
//! ```

// The crate-wide error type, built from each floor's own errors.
pub mod error;
// Floors, bottom up; a module imports only from its own floor or below (see the
// table above). Floor 0: shared support.
pub mod cancel;
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
pub mod secret;
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
