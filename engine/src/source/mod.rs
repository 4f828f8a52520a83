//! Disk sources: where backup reads a disk from.
//!
//! A source answers two questions, "where is the next allocated data at or after this
//! offset?" and "read these bytes", so the pipeline never branches on the format.
//! Unallocated ranges are never read: they reach the chunker as known zeros.
//!
//! [`open`] is the one way in: a path, a device or `-` becomes the disks it holds (one,
//! or several for an XVA export) and the metadata that came with them; [`inspect`] shows
//! the same without reading data. Nothing here knows of repositories.
//!
//! ```text
//! open ─▶ detect ─┬─ raw file / device ───────▶ RawSource
//!                 ├─ qcow2 vhd vhdx vmdk vdi ─▶ image::Image (+ backing chain, host files)
//!                 ├─ pipe: raw / dynamic vhd ─▶ StreamSource / VhdStream
//!                 ├─ nbd:// nbd+unix:// ──────▶ nbd::NbdSource (+ its dirty bitmap)
//!                 └─ xva (file or pipe) ──────▶ xva: one XvaSource per VDI, plus ova.xml
//! ```

pub mod detect;
pub mod host;
pub mod image;
pub mod nbd;
mod open;
mod raw;
mod stamp;
mod stream;
pub mod vhd_stream;
pub mod xva;

use std::path::PathBuf;

pub use detect::{ImageFormat, SourceFormat};
pub use open::{
    default_label, inspect, open, Inspected, Opened, OpenedDisk, OpenedMeta, SourceOptions,
    XvaDiskInfo,
};
pub use raw::RawSource;
pub use stamp::FileStamp;
pub use stream::StreamSource;

/// Errors from opening or reading a source. Each names the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file or block device")]
    NotADisk { path: PathBuf },
    /// An NBD server could not be reached, refused the export, or answered out of line.
    #[error("{uri}: {reason}")]
    Nbd { uri: String, reason: String },
    #[error(transparent)]
    Image(#[from] crate::source::image::ImageError),
    #[error("{path} changed while it was read ({what}); no snapshot was written: back up a snapshot (LVM, ZFS, btrfs, a stopped VM), not a disk in use")]
    Changed { path: PathBuf, what: String },
    #[error("{path}: the source shrank while it was read (expected {expected} bytes, got {got})")]
    Shrank {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
}

/// Reads until `buf` is full or the input ends; returns the bytes read. Pipes return
/// short reads, and the callers want whole records.
pub fn read_full(r: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Every data range `next_data` reports from offset 0, adjacent ones merged: what
/// `inspect` lists. Costs metadata walks only (streams read as they go).
pub fn data_extents<E>(
    mut next_data: impl FnMut(u64) -> Result<Option<(u64, u64)>, E>,
) -> Result<Vec<(u64, u64)>, E> {
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0;
    while let Some((s, e)) = next_data(pos)? {
        match extents.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => extents.push((s, e)),
        }
        pos = e;
    }
    Ok(extents)
}

/// A disk to back up.
pub trait DiskSource: Send {
    /// Names the source in messages (path or `stdin`).
    fn describe(&self) -> String;
    /// Virtual size, when known before reading (not for streams).
    fn size_bytes(&self) -> Option<u64>;
    /// The next range `[start, end)` at or after `offset` that may hold data, or `None`
    /// when the rest of the disk is unallocated. `end` may be `u64::MAX` for "to the end".
    fn next_data(&mut self, offset: u64) -> Result<Option<(u64, u64)>, SourceError>;
    /// Reads up to `buf.len()` bytes at `offset`; returns 0 only at the end of the disk.
    /// Streams only accept the offset that follows the previous read.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError>;
    /// Another handle on the same disk for parallel reads, where the source allows it
    /// (files and devices do; streams do not).
    fn clone_reader(&self) -> Option<Box<dyn DiskSource>> {
        None
    }
    /// Whether `read_at` takes any offset. Streams (stdin, a pipe, an XVA or VHD stream)
    /// only take the next one, so they cannot be read from a change map.
    fn random_access(&self) -> bool {
        true
    }
    /// The source's own change map, when it has one: the `[start, end)` ranges an NBD
    /// export's dirty bitmap marks changed. `None` for sources without a map.
    fn changed_ranges(&mut self) -> Option<Result<Vec<(u64, u64)>, SourceError>> {
        None
    }
    /// Called once every read of the disk is done: fails with [`SourceError::Changed`]
    /// when a file it read from changed meanwhile (size, identity, modification or
    /// status-change time), so a disk that moved under the backup is never saved as if
    /// it had not. Streams have nothing to re-check.
    fn check_unchanged(&self) -> Result<(), SourceError> {
        Ok(())
    }
}
