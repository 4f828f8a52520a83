//! Restore: rebuild a disk from its manifest, fetching, decompressing and verifying
//! chunks on parallel workers that write them out of order at their offsets.
//!
//! A new file is created sparse (holes are not written). A file is restored under a
//! temporary name and renamed only when every chunk verified, so a failed restore never
//! leaves a plausible-looking disk under the requested name. A block device is written
//! in place; its holes are zeroed (BLKZEROOUT, falling back to writing zeros).

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

/// Chunks between the walker (which prefetches) and the workers (which read).
const PREFETCH_CHUNKS: usize = 512;
/// Damaged chunks listed in full; past this only the count grows.
const DAMAGE_LIST_MAX: usize = 1000;
const ZERO_BUF_BYTES: usize = 1 << 20;

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
    fn write_at(
        &self,
        data: &[u8],
        offset: u64,
        bounce: &mut Option<AlignedBuf>,
    ) -> std::io::Result<()> {
        if let Some(q) = &self.qcow2 {
            return q.write_at(data, offset);
        }
        let align = DIRECT_ALIGN as u64;
        if let Some(direct) = &self.direct {
            if offset.is_multiple_of(align)
                && (data.len() as u64).is_multiple_of(align)
                && !data.is_empty()
            {
                let buf = bounce
                    .get_or_insert_with(|| AlignedBuf::new(repo_format::blob::MAX_CHUNK_BYTES));
                buf[..data.len()].copy_from_slice(data);
                return direct.write_all_at(&buf[..data.len()], offset);
            }
        }
        self.file.write_all_at(data, offset)
    }
}

/// Zeroes `[offset, offset+len)` of a block device.
fn zero_device_range(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
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
    let workers = remote_readers(repo, workers);
    progress.start(label, Some(size));

    // The walker locates each chunk and asks the kernel to prefetch it; the queue's
    // length sets how far ahead (about 16 MiB of packs).
    // On an object store the extents go in runs, several chunks a request (runs.rs).
    let remote = repo.local_root().is_none();
    let overhead = repo_format::pack::blob_overhead(repo.codec());
    let (tx, rx) = bounded::<Vec<runs::Item>>(if remote { workers } else { PREFETCH_CHUNKS });
    let outcome: Result<()> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                let (out, damage, write_path) = (&out, &damage, &write_path);
                s.spawn(move || -> Result<()> {
                    let mut reader = BlobReader::new(repo)?;
                    let mut bounce = None;
                    for (fetched, (offset, extent, loc)) in rx.iter().flat_map(|batch| {
                        // A store error here is not the chunks' fault: each is then
                        // read alone, and what fails is reported for that chunk.
                        let fetched = runs::span(&batch, overhead)
                            .and_then(|(p, at, len)| repo.read_pack_range(&p, at, len).ok())
                            .map(std::sync::Arc::new);
                        batch.into_iter().map(move |item| (fetched.clone(), item))
                    }) {
                        let read = |reader: &mut BlobReader<&Repository>, id| match (&fetched, loc)
                        {
                            (Some(range), Some(l)) => reader
                                .read_from(range, &l)
                                .or_else(|_| fetch_chunk(reader, id, loc)),
                            _ => fetch_chunk(reader, id, loc),
                        };
                        match extent {
                            Extent::Chunk { id, len } => match read(&mut reader, &id) {
                                Ok(data) => out
                                    .write_at(&data, offset, &mut bounce)
                                    .map_err(|e| Error::target(write_path, e))?,
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
                                    zero_device_range(&out.file, offset, len)
                                        .map_err(|e| Error::target(write_path, e))?;
                                }
                            }
                        }
                        progress.advance(extent.len());
                    }
                    Ok(())
                })
            })
            .collect();
        drop(rx);
        let mut batcher = runs::Runs::new(overhead);
        let mut send = |batch: Vec<runs::Item>| tx.send(batch).is_ok();
        // Walk the manifest here, feeding the workers in disk order.
        let walked = feed_extents(repo, *manifest, |offset, extent, loc| {
            cancel.check()?;
            match extent {
                Extent::Chunk { len, .. } => {
                    report.chunks += 1;
                    report.written_bytes += len as u64;
                }
                Extent::Hole { len } => report.hole_bytes += len,
            }
            // A closed queue means a worker failed; its error is reported below.
            let item = (offset, extent, loc);
            Ok(if remote {
                batcher.push(item, &mut send)
            } else {
                send(vec![item])
            })
        });
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
