//! Disk sources: where backup reads a disk from.
//!
//! A source answers two questions, "where is the next allocated data at or after this
//! offset?" and "read these bytes", so the pipeline never branches on the format.
//! Unallocated ranges are never read: they reach the chunker as known zeros.

pub mod detect;
pub mod host;
pub mod image;
mod raw;
mod stamp;
mod stream;
pub mod vhd_stream;
pub mod xva;

use std::path::PathBuf;

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
    /// Called once every read of the disk is done: fails with [`SourceError::Changed`]
    /// when a file it read from changed meanwhile (size, identity, modification or
    /// status-change time), so a disk that moved under the backup is never saved as if
    /// it had not. Streams have nothing to re-check.
    fn check_unchanged(&self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// How to open a disk source.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// Read with O_DIRECT where possible.
    pub direct: bool,
    /// The format, or `None` to judge it from the content.
    pub format: Option<detect::ImageFormat>,
    /// qcow2: read this internal snapshot instead of the active layer.
    pub qcow2_snapshot: Option<String>,
}

/// What one disk argument turned out to be: a disk, or an XVA export holding several.
pub enum Input {
    Disk(Box<dyn DiskSource>),
    Xva(crate::source::xva::XvaExport),
}

/// Opens a path or `-` (standard input) as one disk or as an XVA export.
///
/// Standard input is a raw stream unless it starts like an XVA (a tar whose first
/// member is `ova.xml`) or `opts.format` says XVA, or says VHD (a dynamic VHD written
/// front to back, as `xe vdi-export format=vhd` does); other image formats need seeking
/// and cannot come from a pipe.
pub fn open_input(spec: &str, opts: &SourceOptions) -> Result<Input, SourceError> {
    use detect::ImageFormat;
    use std::io::Read;
    if spec == "-" {
        let mut head = vec![0u8; 512];
        let mut stdin = std::io::stdin();
        let mut n = 0;
        while n < head.len() {
            match stdin.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SourceError::Io {
                        path: "stdin".into(),
                        source,
                    })
                }
            }
        }
        head.truncate(n);
        let looks_xva = detect::detect_head(&head) == Some(ImageFormat::Xva);
        let reader = std::io::Cursor::new(head).chain(stdin);
        return match opts.format {
            None if looks_xva => Ok(Input::Xva(crate::source::xva::open_xva(Box::new(reader), "stdin")?)),
            Some(ImageFormat::Xva) => {
                Ok(Input::Xva(crate::source::xva::open_xva(Box::new(reader), "stdin")?))
            }
            None | Some(ImageFormat::Raw) => Ok(Input::Disk(Box::new(StreamSource::new(
                reader,
                "stdin".into(),
            )))),
            Some(ImageFormat::Vhd) => Ok(Input::Disk(Box::new(
                crate::source::vhd_stream::VhdStream::open(reader, "stdin")?,
            ))),
            Some(f) => Err(SourceError::Io {
                path: "stdin".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "a {f} image cannot be read from a pipe (only raw, dynamic vhd and xva); give its path"
                    ),
                ),
            }),
        };
    }
    let path = std::path::Path::new(spec);
    let format = match opts.format {
        Some(f) => f,
        None => detect_file(path)?,
    };
    if format == ImageFormat::Xva {
        let file = std::fs::File::open(path).map_err(|source| SourceError::Io {
            path: path.into(),
            source,
        })?;
        let reader = std::io::BufReader::with_capacity(1 << 20, file);
        return Ok(Input::Xva(crate::source::xva::open_xva(Box::new(reader), spec)?));
    }
    Ok(Input::Disk(open_path(path, format, opts)?))
}

/// The format of a regular file judged by content; anything else is raw.
fn detect_file(path: &std::path::Path) -> Result<detect::ImageFormat, SourceError> {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(detect::ImageFormat::Raw);
    }
    let io = |source| SourceError::Io {
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    detect::detect(&file, len).map_err(io)
}

/// Opens a path or `-` (standard input, always a raw stream) as a disk source.
///
/// Regular files are read in the format their content shows (or `opts.format`): raw
/// files and block devices directly, image containers through [`crate::source::image`], so the
/// pipeline sees the virtual disk either way.
pub fn open_source(spec: &str, opts: &SourceOptions) -> Result<Box<dyn DiskSource>, SourceError> {
    if spec == "-" {
        return Ok(Box::new(StreamSource::new(
            std::io::stdin(),
            "stdin".into(),
        )));
    }
    let path = std::path::Path::new(spec);
    let format = match opts.format {
        Some(f) => f,
        None => detect_file(path)?,
    };
    open_path(path, format, opts)
}

/// Opens `path` as `format` (detected or given; `opts.format` still says which, for the
/// backing-chain rule of [`crate::source::image::open_image`]).
fn open_path(
    path: &std::path::Path,
    format: detect::ImageFormat,
    opts: &SourceOptions,
) -> Result<Box<dyn DiskSource>, SourceError> {
    let spec = path.display().to_string();
    // A named pipe is a stream (a snapshot provider exporting into it, say): raw, or a
    // dynamic VHD when the format says so.
    if std::fs::metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo()
    }) {
        let pipe = std::fs::File::open(path).map_err(|source| SourceError::Io {
            path: path.into(),
            source,
        })?;
        if opts.format == Some(detect::ImageFormat::Vhd) {
            let reader = std::io::BufReader::with_capacity(1 << 20, pipe);
            return Ok(Box::new(crate::source::vhd_stream::VhdStream::open(
                reader, &spec,
            )?));
        }
        return Ok(Box::new(StreamSource::new(pipe, spec)));
    }
    if format == detect::ImageFormat::Raw && opts.qcow2_snapshot.is_none() {
        return Ok(Box::new(RawSource::open(path, opts.direct)?));
    }
    let image = crate::source::image::open_image(
        path,
        &crate::source::image::OpenOptions {
            direct: opts.direct,
            // Left unset when probed: that confines the backing chain (see open_image).
            format: opts.format,
            qcow2_snapshot: opts.qcow2_snapshot.clone(),
        },
    )?;
    Ok(Box::new(image))
}
