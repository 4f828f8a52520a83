//! Restore: rebuild a disk from its manifest, fetching, decompressing and verifying
//! chunks on parallel workers that write them out of order at their offsets.
//!
//! A new file is created sparse (holes are not written). A file is restored under a
//! temporary name and renamed only when every chunk verified, so a failed restore never
//! leaves a plausible-looking disk under the requested name. A block device is written
//! in place; its holes are zeroed (BLKZEROOUT, falling back to writing zeros).

pub mod differential;
mod in_use;
pub mod qcow2;
mod runs;
mod target;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::bounded;
use repo_format::{BlobReader, Extent, ManifestRoot, Repository};

use crate::error::{Damage, Error, Result};
use crate::io::{AlignedBuf, DIRECT_ALIGN};
use crate::progress::Progress;
use crate::read::{feed_extents, fetch_chunk};
use qcow2::Qcow2Writer;
use target::Target;
pub use target::{TargetDir, TargetOptions};

/// Readers of a repository on an object store: a ranged GET waits tens of milliseconds
/// for its answer (about 45 ms on loopback Garage), so restore keeps this many in
/// flight however few cores there are; one request at a time is why kopia restores a
/// 400 GB disk at 5-6 MB/s.
pub const REMOTE_READERS: usize = 32;

/// The reader threads for `repo`: `workers`, or for an object store at least
/// [`REMOTE_READERS`].
pub fn remote_readers(repo: &Repository, workers: usize) -> usize {
    let workers = workers.clamp(1, crate::MAX_WORKERS);
    if repo.local_root().is_none() {
        workers.max(REMOTE_READERS)
    } else {
        workers
    }
}

/// Batches between the walker (which prefetches) and the workers (which read).
const PREFETCH_BATCHES: usize = 32;
/// The most bytes a worker writes with one call: chunks that follow each other on the
/// disk are gathered first. Locally 4 MiB; from an object store, whose 32 workers each
/// also hold a fetched run of up to 4 MiB, 1 MiB.
const LOCAL_WRITE_BYTES: usize = 4 << 20;
const REMOTE_WRITE_BYTES: usize = 1 << 20;
/// Damaged chunks listed in full; past this only the count grows.
const DAMAGE_LIST_MAX: usize = 1000;
const ZERO_BUF_BYTES: usize = 1 << 20;
/// The longest run of data allocated at once ahead of the workers.
const ALLOCATE_RUN_BYTES: u64 = 64 << 20;

/// Numbers from one restored disk.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    pub size_bytes: u64,
    pub written_bytes: u64,
    pub hole_bytes: u64,
    pub chunks: u64,
    pub seconds: f64,
    pub target: PathBuf,
}

/// The restore target's descriptors. On a block device, whole aligned blocks are written
/// through an O_DIRECT descriptor: restoring a 500 GiB disk through the page cache would
/// evict everything else on the host and then flush it all at the final fsync anyway.
/// Other writes (a FastCDC chunk, an odd-sized disk's tail) use the buffered descriptor;
/// the two never touch the same block, so the page cache stays coherent.
struct Output {
    file: File,
    direct: Option<File>,
    /// Set when restoring to a qcow2 file: writes go through its cluster allocator.
    qcow2: Option<Qcow2Writer>,
}

impl Output {
    /// Writes `data` (in an aligned buffer) at `offset`: directly when both are aligned.
    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        if let Some(q) = &self.qcow2 {
            return q.write_at(data, offset);
        }
        let align = DIRECT_ALIGN as u64;
        match &self.direct {
            Some(direct)
                if offset.is_multiple_of(align) && (data.len() as u64).is_multiple_of(align) =>
            {
                // A filesystem that opened O_DIRECT but wants a larger alignment says
                // EINVAL: those bytes go through the page cache instead.
                match direct.write_all_at(data, offset) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.file.write_all_at(data, offset)
                    }
                    r => r,
                }
            }
            _ => self.file.write_all_at(data, offset),
        }
    }
}

/// Decoded chunks that follow each other on the disk, gathered in an aligned buffer to
/// be written with one call.
struct Group {
    buf: AlignedBuf,
    max: usize,
    offset: u64,
    len: usize,
}

impl Group {
    fn new(max: usize) -> Group {
        Group {
            buf: AlignedBuf::new(max + repo_format::blob::MAX_CHUNK_BYTES),
            max,
            offset: 0,
            len: 0,
        }
    }

    /// Whether `len` bytes at `offset` can join the group without a flush first.
    fn takes(&self, offset: u64, len: usize) -> bool {
        self.len == 0 || (offset == self.offset + self.len as u64 && self.len + len <= self.max)
    }

    /// Adds bytes; the caller checked [`Group::takes`] (or flushed).
    fn push(&mut self, offset: u64, data: &[u8]) {
        if self.len == 0 {
            self.offset = offset;
        }
        self.buf[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    fn flush(&mut self, out: &Output) -> std::io::Result<()> {
        if self.len > 0 {
            out.write_at(&self.buf[..self.len], self.offset)?;
            self.len = 0;
        }
        Ok(())
    }
}

/// A second, O_DIRECT descriptor (for reading or for writing) of the file `file` has
/// open, or None where the filesystem refuses O_DIRECT (tmpfs, some network
/// filesystems).
fn reopen_direct(file: &File, read: bool) -> Option<File> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    OpenOptions::new()
        .read(read)
        .write(!read)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .inspect_err(|e| log::debug!("O_DIRECT refused ({e}); buffered writes"))
        .ok()
}

/// Allocates `[offset, offset+len)` of a new file before its chunks are written. An
/// O_DIRECT write into allocated (unwritten) blocks takes ext4's inode lock shared, so
/// the workers write in parallel; into a hole it takes it exclusively. A full disk is
/// found here, before any chunk is fetched for nothing. Filesystems that cannot
/// allocate ahead are simply written.
fn allocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len) {
        Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Zeroes `[offset, offset+len)`: a block device is asked to do it itself (BLKZEROOUT);
/// where that is refused (an older device, or a regular file) zeros are written.
fn write_zeros(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    if crate::io::blockdev::zero_out(file, offset, len).is_ok() {
        return Ok(());
    }
    let zeros = vec![0u8; ZERO_BUF_BYTES];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(ZERO_BUF_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The file format a disk is restored in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetFormat {
    /// The disk's bytes (a sparse file, or a block device).
    #[default]
    Raw,
    /// A sparse qcow2 file (not for block devices).
    Qcow2,
}

/// Where one disk goes.
#[derive(Clone, Copy)]
pub enum RestoreTo<'a> {
    /// A path named by the user: a block device, or a file (created, or replaced with
    /// `--force`).
    Path(&'a Path),
    /// One entry of a restore folder, by a validated single-component name.
    InDir { dir: &'a TargetDir, name: &'a str },
}

impl RestoreTo<'_> {
    /// The path, for messages.
    pub fn display_path(&self) -> PathBuf {
        match self {
            RestoreTo::Path(p) => p.to_path_buf(),
            RestoreTo::InDir { dir, name } => dir.path().join(name),
        }
    }
}

/// What to restore where.
pub struct RestoreRequest<'a> {
    /// Names the snapshot in messages.
    pub snapshot: &'a repo_format::SnapshotId,
    /// Names the disk (or metadata file) in messages.
    pub label: &'a str,
    pub manifest: &'a ManifestRoot,
    pub target: RestoreTo<'a>,
    /// Replacing existing files, and the new file's mode.
    pub target_opts: TargetOptions,
    pub format: TargetFormat,
    pub workers: usize,
    /// Checked before every extent; set it to stop (the partial file is removed).
    pub cancel: &'a crate::cancel::Cancel,
}

/// Restores one disk (or metadata file) to its target.
///
/// Every chunk's BLAKE3 is checked. Damaged chunks do not stop the restore: they are all
/// collected, and the call returns `Error::Damaged` naming each (disk, offset, chunk,
/// pack), leaving the partial file under its temporary name.
pub fn restore_disk(
    repo: &Repository,
    _lock: &repo_format::lock::SharedLock,
    req: &RestoreRequest<'_>,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let RestoreRequest {
        snapshot,
        label,
        manifest,
        target,
        target_opts,
        format,
        workers,
        cancel,
    } = *req;
    let started = Instant::now();
    let size = manifest.len_bytes;
    let (mut kind, file) = match target {
        RestoreTo::Path(path) => target::open_path(path, size, target_opts)?,
        RestoreTo::InDir { dir, name } => target::open_in_dir(dir, name, size, target_opts)?,
    };
    let write_path = kind.write_path();
    let qcow2 = match (&kind, format) {
        (_, TargetFormat::Raw) => None,
        (Target::Device { path }, TargetFormat::Qcow2) => {
            return Err(Error::Usage(format!(
                "{} is a block device; --format qcow2 writes a file",
                path.display()
            )));
        }
        (Target::File { .. }, TargetFormat::Qcow2) => {
            let clone = file
                .try_clone()
                .map_err(|e| Error::target(&write_path, e))?;
            // On error `kind` drops and removes the temporary file.
            Some(Qcow2Writer::new(clone, size).map_err(|e| Error::target(&write_path, e))?)
        }
    };
    let direct = match &kind {
        // Opened after the exclusive descriptor, which already holds the device.
        Target::Device { path } => match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                log::debug!(
                    "{}: O_DIRECT refused ({e}); buffered writes",
                    path.display()
                );
                None
            }
        },
        // The same inode again, through /proc (never by name: the folder may be
        // writable by others). Aligned chunks then skip the page cache: on this
        // machine's ext4, buffered writes from two workers spent a fifth of the
        // restore copying into the cache and spinning on the inode lock.
        Target::File { .. } if qcow2.is_none() => reopen_direct(&file, false),
        Target::File { .. } => None,
    };
    let out = Output {
        file,
        direct,
        qcow2,
    };
    let is_device = kind.is_device();
    let damage = Mutex::new(Vec::<Damage>::new());
    let mut report = RestoreReport {
        size_bytes: size,
        target: target.display_path(),
        ..Default::default()
    };
    let workers = match (&out.direct, repo.local_root()) {
        // A worker blocks in its direct write while another decodes: two a core keep
        // both the cores and the disk busy (3.9 s against 4.3 s for the workload's
        // day 7 here).
        (Some(_), Some(_)) => 2 * workers.clamp(1, crate::MAX_WORKERS),
        _ => remote_readers(repo, workers),
    };
    progress.start(label, Some(size));

    // The walker locates each chunk and asks the kernel to prefetch it; the queue's
    // length sets how far ahead (about 16 MiB of packs).
    // On an object store the extents go in runs, several chunks a request (runs.rs).
    let remote = repo.local_root().is_none();
    let overhead = repo_format::pack::blob_overhead(repo.codec());
    let group_max = if remote {
        REMOTE_WRITE_BYTES
    } else {
        LOCAL_WRITE_BYTES
    };
    // Locally the queue holds batches of up to LOCAL_WRITE_BYTES: 128 MiB of the disk
    // (about 50 MiB of packs) prefetched ahead of the workers. A shorter queue (32 MiB)
    // left the workers waiting on cold pack reads: 4.3 s against 3.9 s for day 7.
    let (tx, rx) = bounded::<Vec<runs::Item>>(if remote { workers } else { PREFETCH_BATCHES });
    let outcome: Result<()> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                let (out, damage, write_path) = (&out, &damage, &write_path);
                s.spawn(move || -> Result<()> {
                    let mut reader = BlobReader::new(repo)?;
                    let mut group = Group::new(group_max);
                    let write =
                        |g: &mut Group| g.flush(out).map_err(|e| Error::target(write_path, e));
                    for batch in rx.iter() {
                        // A store error here is not the chunks' fault: each is then
                        // read alone, and what fails is reported for that chunk.
                        // (Only remote batches are runs of one pack.)
                        let fetched = remote
                            .then(|| runs::span(&batch, overhead))
                            .flatten()
                            .and_then(|(p, at, len)| repo.read_pack_range(&p, at, len).ok());
                        for (offset, extent, loc) in batch {
                            let read =
                                |reader: &mut BlobReader<&Repository>, id| match (&fetched, loc) {
                                    (Some(range), Some(l)) => reader
                                        .read_from(range, &l)
                                        .or_else(|_| fetch_chunk(reader, id, loc)),
                                    _ => fetch_chunk(reader, id, loc),
                                };
                            match extent {
                                Extent::Chunk { id, len } => match read(&mut reader, &id) {
                                    Ok(data) => {
                                        if !group.takes(offset, data.len()) {
                                            write(&mut group)?;
                                        }
                                        group.push(offset, &data);
                                    }
                                    Err(failed) => {
                                        let (pack, e) = *failed;
                                        let mut d = damage.lock().expect("no panics hold it");
                                        if d.len() < DAMAGE_LIST_MAX {
                                            d.push(Damage {
                                                disk: label.into(),
                                                offset,
                                                len: len as u64,
                                                chunk: id,
                                                pack,
                                                reason: e.to_string(),
                                            });
                                        }
                                    }
                                },
                                Extent::Hole { len } => {
                                    if is_device {
                                        write_zeros(&out.file, offset, len)
                                            .map_err(|e| Error::target(write_path, e))?;
                                    }
                                }
                            }
                            progress.advance(extent.len());
                        }
                        write(&mut group)?;
                    }
                    Ok(())
                })
            })
            .collect();
        drop(rx);
        let mut batcher = runs::Runs::new(overhead);
        let mut send = |batch: Vec<runs::Item>| tx.send(batch).is_ok();
        // A new file written directly has its data allocated a run at a time, before
        // the run's chunks go to the workers (see `allocate`). Locally, chunks that
        // follow each other on the disk go to one worker together, which writes them
        // with one call (small O_DIRECT writes cost a device request each).
        let preallocate = !is_device && out.direct.is_some();
        // `held`: chunks that follow each other on the disk, not yet sent.
        let mut held: Vec<runs::Item> = Vec::new();
        let span = |held: &[runs::Item]| match (held.first(), held.last()) {
            (Some(first), Some(last)) => (first.0, last.0 + last.1.len()),
            _ => (0, 0),
        };
        let mut release = |held: &mut Vec<runs::Item>, allocate_them: bool| -> Result<bool> {
            let (from, to) = span(held);
            if preallocate && allocate_them && to > from {
                allocate(&out.file, from, to - from).map_err(|e| Error::target(&write_path, e))?;
            }
            // A closed queue means a worker failed; its error is reported below.
            if remote {
                return Ok(held.drain(..).all(|item| batcher.push(item, &mut send)));
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            for item in held.drain(..) {
                bytes += item.1.len();
                batch.push(item);
                if bytes >= group_max as u64 {
                    bytes = 0;
                    if !send(std::mem::take(&mut batch)) {
                        return Ok(false);
                    }
                }
            }
            Ok(batch.is_empty() || send(batch))
        };
        // Walk the manifest here, feeding the workers in disk order; a run is released
        // at a hole and when it is long enough.
        let walked = feed_extents(repo, *manifest, |offset, extent, loc| {
            cancel.check()?;
            let mut more = true;
            match extent {
                Extent::Chunk { len, .. } => {
                    report.chunks += 1;
                    report.written_bytes += len as u64;
                    let (from, to) = span(&held);
                    if to - from >= ALLOCATE_RUN_BYTES {
                        more = release(&mut held, true)?;
                    }
                    held.push((offset, extent, loc));
                }
                Extent::Hole { len } => {
                    report.hole_bytes += len;
                    more = release(&mut held, true)?
                        && release(&mut vec![(offset, extent, loc)], false)?;
                }
            }
            Ok(more)
        });
        let walked = walked.and_then(|end| release(&mut held, true).map(|_| end));
        if walked.is_ok() {
            batcher.flush(&mut send);
        }
        drop(tx);
        if remote {
            log::debug!(
                "{label}: {} chunk(s) read with {} request(s)",
                batcher.chunks,
                batcher.batches
            );
        }
        let mut first_err = None;
        for h in handles {
            let r = h.join().map_err(|_| Error::StageFailed("restore worker"))?;
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let end = walked?;
        if end != size {
            return Err(Error::SizeMismatch {
                disk: label.into(),
                expected: size,
                got: end,
            });
        }
        Ok(())
    });
    progress.finish();
    // Any error below drops `kind`, which removes the temporary file.
    outcome?;
    // One fsync flushes the buffered writes and the device's write cache for both.
    match out.qcow2 {
        Some(q) => q.finish().map(drop),
        None => out.file.sync_all(),
    }
    .map_err(|e| Error::target(&write_path, e))?;
    let damage = damage.into_inner().expect("workers joined");
    if !damage.is_empty() {
        // Keep the partial file under its temporary name; the error names it.
        kind.keep();
        return Err(Error::Damaged {
            snapshot: *snapshot,
            damage,
            partial: write_path,
        });
    }
    kind.commit()?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
