//! Differential restore: bring an existing disk to a snapshot's content by writing only
//! what differs.
//!
//! - **Compare** (the default): the target is read at the snapshot's chunk boundaries
//!   (O_DIRECT, several reads in flight), each chunk's range is hashed the way the
//!   repository names chunks (keyed BLAKE3 in an encrypted one), and only chunks whose
//!   id differs are fetched and written. Ranges the snapshot has as holes are read and
//!   zeroed only where the target is not zero (a hole punched in a file; a zero-out,
//!   which discards where the device can, on a block device). A file's own holes are
//!   never read (SEEK_DATA).
//! - **Since** (`--since`): the admin states the target holds exactly an older
//!   snapshot's disk; the two manifests are compared and nothing is read from the target.
//! - **Check** (`--check`): afterwards every range is read back and compared, as compare
//!   mode does, without writing.
//!
//! The target is written in place (there is no second copy to rename over it): until
//! the restore completes it is a mix of old and new, and a restore interrupted by any
//! cause is finished by running it again, which then writes only what is still missing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crossbeam_channel::bounded;
use repo_format::{
    BlobId, BlobReader, Extent, ManifestRoot, ManifestWalker, Repository, SnapshotId,
};

use super::{runs::Item, Group, Output, LOCAL_WRITE_BYTES};
use crate::error::{Error, Result};
use crate::io::{AlignedBuf, DIRECT_ALIGN};
use crate::progress::Progress;
use crate::read::fetch_chunk;

/// Workers of a restore from an object store (each fetch waits tens of milliseconds).
const REMOTE_WORKERS: usize = 16;
/// Bytes of a hole (or of a check's read) read with one call.
const PIECE_BYTES: usize = 4 << 20;
/// Zeroing works at this grain: a piece of a hole is zeroed in blocks of it that hold
/// anything but zeros.
const ZERO_GRAIN: usize = 64 << 10;

/// What to restore differentially, and where.
pub struct DiffRequest<'a> {
    pub snapshot: &'a SnapshotId,
    pub label: &'a str,
    pub manifest: &'a ManifestRoot,
    /// An existing file of the disk's size, or a block device at least that large.
    pub target: &'a Path,
    /// The target holds exactly this disk (an older snapshot's): compare manifests.
    pub since: Option<&'a ManifestRoot>,
    /// Read the target back afterwards and compare it with the snapshot.
    pub check: bool,
    /// Follow a symlink named as the target even when another user could have made it.
    pub force: bool,
    pub workers: usize,
    pub cancel: &'a crate::cancel::Cancel,
}

/// What a differential restore did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DiffReport {
    pub target: PathBuf,
    /// `compare` or `since`.
    pub mode: &'static str,
    pub size_bytes: u64,
    /// Bytes read from the target (its holes and --since read nothing).
    pub read_bytes: u64,
    /// Bytes of chunks compared by hash (or, with --since, by manifest).
    pub compared_bytes: u64,
    /// Bytes of chunks found equal and left alone.
    pub unchanged_bytes: u64,
    /// Bytes of chunks written.
    pub written_bytes: u64,
    pub chunks_written: u64,
    /// Bytes zeroed (holes in the snapshot that held data in the target).
    pub zeroed_bytes: u64,
    /// With --check: the bytes read back and found equal.
    pub checked_bytes: Option<u64>,
    pub seconds: f64,
}

/// One unit of work, in disk order: extents that follow each other.
struct Batch {
    items: Vec<Item>,
    how: How,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    /// Read the target; write chunks that differ, zero holes that are not zero.
    Compare,
    /// Write the chunks and zero the holes (the manifests said they differ).
    Write,
    /// Read the target and count what differs; write nothing.
    Check,
}

/// Counters the workers add to.
#[derive(Default)]
struct Tally {
    read: u64,
    compared: u64,
    unchanged: u64,
    written: u64,
    chunks_written: u64,
    zeroed: u64,
    /// Check mode: bytes that differ, their ranges, the first offset.
    differ: u64,
    differ_ranges: u64,
    first_differ: Option<u64>,
    /// Chunks that could not be read from the repository.
    damaged: Vec<crate::error::Damage>,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.read += o.read;
        self.compared += o.compared;
        self.unchanged += o.unchanged;
        self.written += o.written;
        self.chunks_written += o.chunks_written;
        self.zeroed += o.zeroed;
        self.differ += o.differ;
        self.differ_ranges += o.differ_ranges;
        self.first_differ = match (self.first_differ, o.first_differ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.damaged.extend(o.damaged);
    }

    fn differs(&mut self, offset: u64, len: u64) {
        self.differ += len;
        self.differ_ranges += 1;
        self.first_differ = Some(self.first_differ.map_or(offset, |f| f.min(offset)));
    }
}

/// The open target.
struct Disk {
    out: Output,
    /// An O_DIRECT descriptor for reading (None where the filesystem refuses it).
    direct_read: Option<File>,
    is_device: bool,
    path: PathBuf,
}

/// Restores `req.manifest` over the existing disk `req.target`, writing only what
/// differs.
pub fn restore_differential(
    repo: &Repository,
    _lock: &repo_format::lock::SharedLock,
    req: &DiffRequest<'_>,
    progress: &dyn Progress,
) -> Result<DiffReport> {
    let started = Instant::now();
    let size = req.manifest.len_bytes;
    if let Some(base) = req.since {
        if base.len_bytes != size {
            return Err(Error::Usage(format!(
                "--since: that snapshot's disk {} is {} bytes, this one {size}; a differential restore needs the same size",
                req.label, base.len_bytes
            )));
        }
    }
    let (file, is_device, path) = super::target::open_existing(req.target, size, req.force)?;
    super::in_use::refuse_if_in_use(&path, &file)?;
    let direct_read = super::reopen_direct(&file, true);
    let direct = super::reopen_direct(&file, false);
    let disk = Disk {
        out: Output {
            file,
            direct,
            qcow2: None,
        },
        direct_read,
        is_device,
        path,
    };
    // Two a core locally (one reads the target while the other hashes); from an object
    // store, enough to keep 16 fetches of differing chunks in flight.
    let workers = match repo.local_root() {
        Some(_) => 2 * req.workers.clamp(1, crate::MAX_WORKERS),
        None => REMOTE_WORKERS,
    };
    let mut report = DiffReport {
        target: req.target.into(),
        mode: if req.since.is_some() {
            "since"
        } else {
            "compare"
        },
        size_bytes: size,
        ..Default::default()
    };
    progress.start(req.label, Some(size));
    let how = if req.since.is_some() {
        How::Write
    } else {
        How::Compare
    };
    let tally = run(repo, req, &disk, workers, how, progress);
    progress.finish();
    let mut tally = tally?;
    disk.out
        .file
        .sync_all()
        .map_err(|e| Error::target(&disk.path, e))?;
    if !tally.damaged.is_empty() {
        return Err(Error::Damaged {
            snapshot: *req.snapshot,
            damage: std::mem::take(&mut tally.damaged),
            partial: disk.path.clone(),
        });
    }
    report.read_bytes = tally.read;
    report.compared_bytes = tally.compared;
    report.unchanged_bytes = tally.unchanged;
    report.written_bytes = tally.written;
    report.chunks_written = tally.chunks_written;
    report.zeroed_bytes = tally.zeroed;
    if req.check {
        // Read back what the disk holds now, not what the page cache kept of our writes.
        drop_cached(&disk.out.file);
        progress.start(&format!("{} (check)", req.label), Some(size));
        let checked = run(repo, req, &disk, workers, How::Check, progress);
        progress.finish();
        let checked = checked?;
        if checked.differ > 0 {
            return Err(Error::CheckFailed {
                path: disk.path,
                bytes: checked.differ,
                ranges: checked.differ_ranges,
                first: checked.first_differ.unwrap_or(0),
            });
        }
        report.read_bytes += checked.read;
        report.checked_bytes = Some(size);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Asks the kernel to forget the file's cached pages (written back by the fsync before).
fn drop_cached(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; it is advice.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Walks the snapshot (and, with --since on a writing pass, the base) and has the
/// workers do `how` to each batch.
fn run(
    repo: &Repository,
    req: &DiffRequest<'_>,
    disk: &Disk,
    workers: usize,
    how: How,
    progress: &dyn Progress,
) -> Result<Tally> {
    let (tx, rx) = bounded::<Batch>(workers * 2);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || -> Result<Tally> {
                    let mut w = Worker::new(repo, req.label, disk)?;
                    for batch in rx.iter() {
                        w.batch(batch, progress)?;
                    }
                    w.group
                        .flush(&disk.out)
                        .map_err(|e| Error::target(&disk.path, e))?;
                    Ok(w.tally)
                })
            })
            .collect();
        drop(rx);
        let walked = walk(repo, req, how, &mut |b| tx.send(b).is_ok(), progress);
        drop(tx);
        let (end, mut total) = match walked {
            Ok((end, counted)) => (Ok(end), counted),
            Err(e) => (Err(e), Tally::default()),
        };
        let mut first_err = None;
        for h in handles {
            match h
                .join()
                .map_err(|_| Error::StageFailed("differential restore worker"))?
            {
                Ok(t) => total.add(t),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let end = end?;
        if end != req.manifest.len_bytes {
            return Err(Error::SizeMismatch {
                disk: req.label.into(),
                expected: req.manifest.len_bytes,
                got: end,
            });
        }
        Ok(total)
    })
}

/// Feeds batches in disk order: runs of chunks up to LOCAL_WRITE_BYTES, holes alone.
/// Returns where the snapshot's manifest ended, and (with --since) the bytes compared
/// and found unchanged by manifest.
fn walk(
    repo: &Repository,
    req: &DiffRequest<'_>,
    how: How,
    send: &mut dyn FnMut(Batch) -> bool,
    progress: &dyn Progress,
) -> Result<(u64, Tally)> {
    let mut base = match (how, req.since) {
        (How::Write, Some(root)) => Some(Base::new(repo, *root)?),
        _ => None,
    };
    let mut run: Vec<Item> = Vec::new();
    let mut run_bytes = 0u64;
    let mut counted = Tally::default();
    // Chunks are located in the index (and their packs prefetched) only when they are
    // to be written: with --since here; when comparing, by the worker that finds one
    // differs (prefetching every chunk's pack read 1.4 GB for nothing on day 7).
    let mut ahead = BlobReader::new(repo)?;
    let mut each = |offset: u64, extent: Extent| -> Result<bool> {
        req.cancel.check()?;
        let loc = None;
        let Some(base) = base.as_mut() else {
            // Compare and check: every extent goes to the workers.
            return Ok(match extent {
                Extent::Chunk { len, .. } => {
                    run.push((offset, extent, loc));
                    run_bytes += len as u64;
                    run_bytes < LOCAL_WRITE_BYTES as u64
                        || flush(send, &mut run, &mut run_bytes, how)
                }
                Extent::Hole { .. } => {
                    flush(send, &mut run, &mut run_bytes, how)
                        && send(Batch {
                            items: vec![(offset, extent, loc)],
                            how,
                        })
                }
            });
        };
        // --since: only what the manifests say changed goes to the workers.
        match extent {
            Extent::Chunk { len, .. } => {
                counted.compared += len as u64;
                if base.same(offset, &extent)? {
                    counted.unchanged += len as u64;
                    progress.advance(extent.len());
                    return Ok(flush(send, &mut run, &mut run_bytes, How::Write));
                }
                let loc = match extent {
                    Extent::Chunk { id, .. } => ahead.locate(&id).ok(),
                    Extent::Hole { .. } => None,
                };
                if let Some(l) = &loc {
                    let _ = ahead.prefetch(l); // advice; the worker reports a bad pack
                }
                run.push((offset, extent, loc));
                run_bytes += len as u64;
                Ok(run_bytes < LOCAL_WRITE_BYTES as u64
                    || flush(send, &mut run, &mut run_bytes, How::Write))
            }
            Extent::Hole { len } => {
                let mut more = flush(send, &mut run, &mut run_bytes, How::Write);
                // Zero only where the base had data; its holes are zero already.
                let data = base.data_in(offset, len)?;
                let zeroed: u64 = data.iter().map(|(_, l)| l).sum();
                progress.advance(len - zeroed);
                for (at, n) in data {
                    more = more
                        && send(Batch {
                            items: vec![(at, Extent::Hole { len: n }, None)],
                            how: How::Write,
                        });
                }
                Ok(more)
            }
        }
    };
    let mut nodes = BlobReader::new(repo)?;
    let mut walker = ManifestWalker::new(*req.manifest, |id: &BlobId| nodes.read_node(id));
    let mut end = 0;
    while let Some((offset, extent)) = walker.next_extent()? {
        end = offset + extent.len();
        if !each(offset, extent)? {
            break;
        }
    }
    flush(send, &mut run, &mut run_bytes, how);
    Ok((end, counted))
}

/// Sends the run gathered so far (if any); false when the workers are gone.
fn flush(
    send: &mut dyn FnMut(Batch) -> bool,
    run: &mut Vec<Item>,
    run_bytes: &mut u64,
    how: How,
) -> bool {
    *run_bytes = 0;
    run.is_empty()
        || send(Batch {
            items: std::mem::take(run),
            how,
        })
}

/// The base manifest, walked alongside the snapshot's (both in disk order).
type FetchNode<'r> = Box<dyn FnMut(&BlobId) -> repo_format::Result<repo_format::Node> + 'r>;

struct Base<'r> {
    walker: ManifestWalker<FetchNode<'r>>,
    cur: Option<(u64, Extent)>,
}

impl<'r> Base<'r> {
    fn new(repo: &'r Repository, root: ManifestRoot) -> Result<Self> {
        let mut nodes = BlobReader::new(repo)?;
        let fetch: FetchNode<'r> = Box::new(move |id: &BlobId| nodes.read_node(id));
        let mut walker = ManifestWalker::new(root, fetch);
        let cur = walker.next_extent()?;
        Ok(Base { walker, cur })
    }

    /// Moves past the base extents that end at or before `offset`.
    fn skip_to(&mut self, offset: u64) -> Result<()> {
        while let Some((o, e)) = self.cur {
            if o + e.len() > offset {
                break;
            }
            self.cur = self.walker.next_extent()?;
        }
        Ok(())
    }

    /// Whether the base has exactly `extent` at `offset`.
    fn same(&mut self, offset: u64, extent: &Extent) -> Result<bool> {
        self.skip_to(offset)?;
        Ok(matches!(self.cur, Some((o, e)) if o == offset && e == *extent))
    }

    /// The parts of `[offset, offset+len)` the base holds data in.
    fn data_in(&mut self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        self.skip_to(offset)?;
        let end = offset + len;
        let mut out = Vec::new();
        while let Some((o, e)) = self.cur {
            if o >= end {
                break;
            }
            if let Extent::Chunk { .. } = e {
                let (from, to) = (o.max(offset), (o + e.len()).min(end));
                out.push((from, to - from));
            }
            if o + e.len() > end {
                break;
            }
            self.cur = self.walker.next_extent()?;
        }
        Ok(out)
    }
}

/// One worker's reader, buffers and counters.
struct Worker<'a> {
    repo: &'a Repository,
    label: &'a str,
    disk: &'a Disk,
    reader: BlobReader<&'a Repository>,
    group: Group,
    buf: AlignedBuf,
    tally: Tally,
}

impl<'a> Worker<'a> {
    fn new(repo: &'a Repository, label: &'a str, disk: &'a Disk) -> Result<Self> {
        Ok(Worker {
            repo,
            label,
            disk,
            reader: BlobReader::new(repo)?,
            group: Group::new(LOCAL_WRITE_BYTES),
            buf: AlignedBuf::new(
                PIECE_BYTES.max(LOCAL_WRITE_BYTES + repo_format::blob::MAX_CHUNK_BYTES)
                    + 2 * DIRECT_ALIGN,
            ),
            tally: Tally::default(),
        })
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::target(&self.disk.path, e)
    }

    fn batch(&mut self, batch: Batch, progress: &dyn Progress) -> Result<()> {
        let Some(&(start, _, _)) = batch.items.first() else {
            return Ok(());
        };
        if let [(offset, Extent::Hole { len }, _)] = batch.items[..] {
            self.hole(offset, len, batch.how)?;
            progress.advance(len);
            return Ok(());
        }
        let end = batch.items.last().map_or(start, |(o, e, _)| o + e.len());
        // Compare and check read the run's range first (a file's hole reads nothing:
        // it is zeros, which no chunk is, so every chunk there differs).
        let have = match batch.how {
            How::Write => None,
            How::Compare | How::Check => Some(self.read(start, end)?),
        };
        for &(offset, extent, loc) in &batch.items {
            let Extent::Chunk { id, len } = extent else {
                continue; // runs hold chunks only
            };
            let len64 = len as u64;
            if let Some(have) = &have {
                self.tally.compared += len64;
                let equal = match have {
                    Some(at) => {
                        let i = (offset - at) as usize;
                        self.repo.blob_id(&self.buf[i..i + len as usize]) == id
                    }
                    None => false,
                };
                if equal {
                    self.tally.unchanged += len64;
                    progress.advance(len64);
                    continue;
                }
                if batch.how == How::Check {
                    self.tally.differs(offset, len64);
                    progress.advance(len64);
                    continue;
                }
            }
            match fetch_chunk(&mut self.reader, &id, loc) {
                Ok(data) => {
                    if !self.group.takes(offset, data.len()) {
                        self.group
                            .flush(&self.disk.out)
                            .map_err(|e| Error::target(&self.disk.path, e))?;
                    }
                    self.group.push(offset, &data);
                    self.tally.written += len64;
                    self.tally.chunks_written += 1;
                }
                Err(failed) => {
                    let (pack, e) = *failed;
                    if self.tally.damaged.len() < super::DAMAGE_LIST_MAX {
                        self.tally.damaged.push(crate::error::Damage {
                            disk: self.label.into(),
                            offset,
                            len: len64,
                            chunk: id,
                            pack,
                            reason: e.to_string(),
                        });
                    }
                }
            }
            progress.advance(len64);
        }
        Ok(())
    }

    /// Reads `[start, end)` of the target into `self.buf` (from `start` rounded down to
    /// the direct-I/O alignment). Returns that rounded offset, or None when the range is
    /// all a hole of a file.
    fn read(&mut self, start: u64, end: u64) -> Result<Option<u64>> {
        if !self.disk.is_device && !has_data(&self.disk.out.file, start, end) {
            return Ok(None);
        }
        let align = DIRECT_ALIGN as u64;
        let from = start / align * align;
        let to = end.div_ceil(align) * align;
        let n = (to - from) as usize;
        let got = match &self.disk.direct_read {
            Some(direct) => match read_full(direct, &mut self.buf[..n], from) {
                // O_DIRECT opened but refused at this alignment: read through the cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    read_full(&self.disk.out.file, &mut self.buf[..n], from)
                }
                r => r,
            },
            None => read_full(&self.disk.out.file, &mut self.buf[..n], from),
        }
        .map_err(|e| self.io(e))?;
        if (got as u64) < end - from {
            return Err(self.io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "ends at byte {}, before the disk's {end}",
                    from + got as u64
                ),
            )));
        }
        self.tally.read += end - start;
        Ok(Some(from))
    }

    /// A hole of the snapshot: compare and check read the target there (a file only
    /// where it has data) and zero (or count) what is not zero; a write zeroes all of it.
    fn hole(&mut self, offset: u64, len: u64, how: How) -> Result<()> {
        if how == How::Write {
            zero(&self.disk.out.file, self.disk.is_device, offset, len).map_err(|e| self.io(e))?;
            self.tally.zeroed += len;
            return Ok(());
        }
        let end = offset + len;
        let segments = if self.disk.is_device {
            vec![(offset, end)]
        } else {
            data_segments(&self.disk.out.file, offset, end).map_err(|e| self.io(e))?
        };
        for (from, to) in segments {
            let mut at = from;
            while at < to {
                let piece_end = (at + PIECE_BYTES as u64).min(to);
                let Some(base) = self.read(at, piece_end)? else {
                    at = piece_end; // a hole of the file: zeros
                    continue;
                };
                let skip = (at - base) as usize;
                let bytes = &self.buf[skip..skip + (piece_end - at) as usize];
                // Blocks of the piece that are not zero, coalesced.
                let mut dirty: Vec<(u64, u64)> = Vec::new();
                for (i, block) in bytes.chunks(ZERO_GRAIN).enumerate() {
                    if block.iter().all(|&b| b == 0) {
                        continue;
                    }
                    let o = at + (i * ZERO_GRAIN) as u64;
                    let l = block.len() as u64;
                    match dirty.last_mut() {
                        Some((s, n)) if *s + *n == o => *n += l,
                        _ => dirty.push((o, l)),
                    }
                }
                for (o, l) in dirty {
                    if how == How::Check {
                        self.tally.differs(o, l);
                    } else {
                        zero(&self.disk.out.file, self.disk.is_device, o, l)
                            .map_err(|e| self.io(e))?;
                        self.tally.zeroed += l;
                    }
                }
                at = piece_end;
            }
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Whether a file has data (not a hole) anywhere in `[start, end)`.
fn has_data(file: &File, start: u64, end: u64) -> bool {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(start)) {
        Ok(at) => at < end,
        Err(rustix::io::Errno::NXIO) => false, // no data past `start`
        Err(_) => true,                        // cannot tell: read it
    }
}

/// The data (non-hole) parts of `[start, end)` of a file.
fn data_segments(file: &File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let data = match seek(file, SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => {
                return Ok(vec![(at, end)]); // no hole support: all of it may be data
            }
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        let hole = match seek(file, SeekFrom::Hole(data)) {
            Ok(h) => h.min(end),
            Err(_) => end,
        };
        out.push((data, hole));
        at = hole;
    }
    Ok(out)
}

/// Makes `[offset, offset+len)` read as zeros: a punched hole in a file; on a device a
/// discard where it guarantees zeros, else a zero-out (which the kernel falls back to
/// writing when the device has no offload).
fn zero(file: &File, is_device: bool, offset: u64, len: u64) -> std::io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    match fallocate(file, punch, offset, len) {
        Ok(()) => Ok(()),
        // A device without a zeroing discard, or a filesystem that cannot punch holes.
        Err(e) if is_device || e == rustix::io::Errno::OPNOTSUPP => {
            super::write_zeros(file, offset, len)
        }
        Err(e) => Err(e.into()),
    }
}
