//! A file an image keeps its bytes in (the image itself, an external data file, an extent).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::image::ImageError;
use crate::io::DIRECT_ALIGN;

/// One host file, opened read-only. Data reads that are 4 KiB-aligned go through a second,
/// O_DIRECT descriptor so a nightly backup does not flush the host's page cache; small
/// metadata reads and unaligned runs use the buffered one.
pub struct HostFile {
    path: PathBuf,
    file: File,
    direct: Option<File>,
    /// Alignment O_DIRECT reads are tried at: 512 first (VHD and VDI data starts on
    /// 512-byte boundaries, and most devices accept that), 4096 after an EINVAL.
    direct_align: AtomicU64,
    len_bytes: u64,
    identity: (u64, u64),
    /// The file as it was opened, checked again once the disk has been read.
    stamp: crate::source::FileStamp,
}

impl HostFile {
    /// Fails when the file changed since it was opened (see [`crate::source::FileStamp`]).
    pub fn check_unchanged(&self) -> Result<(), crate::source::SourceError> {
        self.stamp.check(&self.file, &self.path)
    }

    /// Opens `path`, which must be a regular file or a block device.
    pub fn open(path: &Path, direct: bool) -> Result<Self, ImageError> {
        let io = ImageError::io(path);
        let file = File::open(path).map_err(&io)?;
        let meta = file.metadata().map_err(&io)?;
        let ft = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        let len_bytes = if ft.is_block_device() {
            crate::io::blockdev::size_bytes(&file).map_err(&io)?
        } else if ft.is_file() {
            meta.len()
        } else {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            )));
        };
        let direct = if direct {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .map_err(|e| log::debug!("{}: O_DIRECT refused ({e})", path.display()))
                .ok()
        } else {
            None
        };
        let stamp = crate::source::FileStamp::of(&file).map_err(&io)?;
        Ok(HostFile {
            path: path.into(),
            file,
            direct,
            direct_align: AtomicU64::new(512),
            len_bytes,
            identity: (meta.dev(), meta.ino()),
            stamp,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// The O_DIRECT descriptor, when the filesystem granted one.
    pub fn direct_file(&self) -> Option<&File> {
        self.direct.as_ref()
    }

    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// (device, inode), to recognise the same file under another name.
    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// Reads exactly `buf.len()` bytes at `offset`. A range past the end of the file is a
    /// malformed image: `what` names the structure that pointed there.
    pub fn read_exact_at(
        &self,
        buf: &mut [u8],
        offset: u64,
        what: impl FnOnce() -> String,
    ) -> Result<(), ImageError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len_bytes) {
            return Err(ImageError::PastEnd {
                path: self.path.clone(),
                what: what(),
                offset,
                len_bytes: buf.len() as u64,
                file_bytes: self.len_bytes,
            });
        }
        if let Some(direct) = &self.direct {
            let align = self.direct_align.load(Ordering::Relaxed);
            let aligned = offset.is_multiple_of(align)
                && (buf.as_ptr() as u64).is_multiple_of(align)
                && (buf.len() as u64).is_multiple_of(align);
            if aligned {
                match direct.read_exact_at(buf, offset) {
                    Err(e)
                        if e.raw_os_error() == Some(libc::EINVAL)
                            && align < DIRECT_ALIGN as u64 =>
                    {
                        log::debug!(
                            "{}: O_DIRECT needs more than {align}-byte alignment",
                            self.path.display()
                        );
                        self.direct_align
                            .store(DIRECT_ALIGN as u64, Ordering::Relaxed);
                    }
                    r => return r.map_err(ImageError::io(&self.path)),
                }
            }
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(ImageError::io(&self.path))
    }

    /// Reads a table of `len` bytes at `offset`, after checking it is at most `max` bytes
    /// and lies in the file, so a header cannot make us allocate more than either.
    pub fn read_table(
        &self,
        offset: u64,
        len: u64,
        max: u64,
        what: impl Fn() -> String,
        blame: &super::image::Blame,
    ) -> Result<Vec<u8>, ImageError> {
        if len > max {
            return Err(blame.malformed(
                what(),
                offset,
                format!("claims {len} bytes, more than the {max} this format allows"),
            ));
        }
        if offset.checked_add(len).is_none_or(|e| e > self.len_bytes) {
            return Err(ImageError::PastEnd {
                path: self.path.clone(),
                what: what(),
                offset,
                len_bytes: len,
                file_bytes: self.len_bytes,
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact_at(&mut buf, offset, what)?;
        Ok(buf)
    }
}
