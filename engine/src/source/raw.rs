//! Raw image files and block devices: the top of a backup ([`RawSource`]) and a raw
//! layer under an image ([`open_layer`]), over one [`HostFile`] and one SEEK_DATA walk.
//!
//! Opened with O_DIRECT where the filesystem allows it: a nightly backup reads the whole
//! allocated disk once, and pushing it through the page cache would evict the host's
//! working set (and the VMs' own cache) for nothing. Where O_DIRECT is refused (tmpfs,
//! some FUSE filesystems) the source falls back to buffered reads and says so in the log.
//! Sparse files are walked with SEEK_DATA/SEEK_HOLE so unallocated ranges are never read.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use super::image::{Image, ImageError, ImageInfo, Layout, Run};
use super::{detect::ImageFormat, host::HostFile, DiskSource, SourceError};
use crate::io::{AlignedBuf, DIRECT_ALIGN};

/// `lseek(offset, whence)` for SEEK_DATA/SEEK_HOLE; `None` for ENXIO (no data, or no
/// hole, at or after `offset`). The one place both raw readers ask the filesystem.
fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on a descriptor `file` keeps open has no memory effects.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// A raw image file or block device, the top of a backup.
pub struct RawSource {
    host: Arc<HostFile>,
    /// SEEK_DATA works here (false for block devices and filesystems without it).
    seek_data: bool,
    /// Bounce buffer for O_DIRECT reads into unaligned caller buffers.
    bounce: Option<AlignedBuf>,
}

impl RawSource {
    /// Opens a raw image or block device read-only. `direct` asks for O_DIRECT.
    pub fn open(path: &Path, direct: bool) -> Result<Self, SourceError> {
        let meta = std::fs::metadata(path).map_err(|source| SourceError::Io {
            path: path.into(),
            source,
        })?;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(SourceError::NotADisk { path: path.into() });
        }
        let host = HostFile::open(path, direct)?;
        Ok(RawSource {
            host: Arc::new(host),
            seek_data: ft.is_file(),
            bounce: None,
        })
    }

    fn io(&self) -> impl Fn(std::io::Error) -> SourceError + '_ {
        move |source| SourceError::Io {
            path: self.host.path().into(),
            source,
        }
    }

    fn size(&self) -> u64 {
        self.host.len_bytes()
    }
}

impl DiskSource for RawSource {
    fn describe(&self) -> String {
        self.host.path().display().to_string()
    }

    fn clone_reader(&self) -> Option<Box<dyn DiskSource>> {
        // pread ignores the shared file offset, so one descriptor serves every reader.
        Some(Box::new(RawSource {
            host: self.host.clone(),
            seek_data: self.seek_data,
            bounce: None,
        }))
    }

    fn check_unchanged(&self) -> Result<(), SourceError> {
        self.host.check_unchanged()
    }

    fn size_bytes(&self) -> Option<u64> {
        Some(self.size())
    }

    fn next_data(&mut self, offset: u64) -> Result<Option<(u64, u64)>, SourceError> {
        let size = self.size();
        if offset >= size {
            return Ok(None);
        }
        if !self.seek_data {
            return Ok(Some((offset, size)));
        }
        let start = match seek(self.host.file(), offset, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // The filesystem cannot tell: treat everything as data.
                self.seek_data = false;
                return Ok(Some((offset, size)));
            }
            Err(e) => return Err(self.io()(e)),
        };
        let end = seek(self.host.file(), start, libc::SEEK_HOLE)
            .map_err(self.io())?
            .unwrap_or(size);
        // Round outwards to whole blocks: a hole edge inside a block reads as zeros anyway.
        let a = DIRECT_ALIGN as u64;
        let start = (start / a * a).max(offset);
        let end = end.div_ceil(a).saturating_mul(a).min(size);
        Ok(Some((start, end)))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        let size = self.size();
        if offset >= size {
            return Ok(0);
        }
        let want = buf.len().min((size - offset) as usize);
        let aligned = offset.is_multiple_of(DIRECT_ALIGN as u64)
            && (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
            && buf.len().is_multiple_of(DIRECT_ALIGN);
        // Disjoint borrows of the fields: the host file to read, the bounce buffer to fill.
        let (host, bounce) = (&self.host, &mut self.bounce);
        let io = |source| SourceError::Io {
            path: host.path().into(),
            source,
        };
        let mut done = 0;
        match host.direct_file() {
            Some(direct) if !aligned => {
                // Unaligned request under O_DIRECT: go through an aligned bounce buffer.
                let bounce = bounce.get_or_insert_with(|| AlignedBuf::new(1 << 20));
                while done < want {
                    let at = offset + done as u64;
                    let base = at / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
                    let skip = (at - base) as usize;
                    let n = direct.read_at(bounce, base).map_err(io)?;
                    if n <= skip {
                        break;
                    }
                    let take = (n - skip).min(want - done);
                    buf[done..done + take].copy_from_slice(&bounce[skip..skip + take]);
                    done += take;
                }
            }
            // With O_DIRECT a read at the unaligned end of a file returns the short tail.
            file => {
                let file = file.unwrap_or(host.file());
                while done < want {
                    let n = file
                        .read_at(&mut buf[done..], offset + done as u64)
                        .map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
            }
        }
        if done < want {
            return Err(SourceError::Shrank {
                path: host.path().into(),
                expected: size,
                got: offset + done as u64,
            });
        }
        Ok(done)
    }
}

/// A raw file as a layer of a backing chain (a qcow2 overlay on a raw base, say).
pub(super) fn open_layer(host: Arc<HostFile>) -> Result<Image, ImageError> {
    let info = ImageInfo::new(host.path(), ImageFormat::Raw, host.len_bytes());
    let layout = RawLayout {
        host: host.clone(),
        seek_data: true,
    };
    Ok(Image::new(info, Box::new(layout), vec![host], None))
}

struct RawLayout {
    host: Arc<HostFile>,
    /// SEEK_DATA works on this file (false once it has said EINVAL).
    seek_data: bool,
}

impl Layout for RawLayout {
    fn map(&mut self, offset: u64) -> Result<(Run, u64), ImageError> {
        let len = self.host.len_bytes();
        let data = Run::Data {
            file: 0,
            host: offset,
        };
        if !self.seek_data {
            return Ok((data, len - offset));
        }
        let io = ImageError::io(self.host.path());
        match seek(self.host.file(), offset, libc::SEEK_DATA) {
            Ok(None) => Ok((Run::Zero, len - offset)),
            Ok(Some(s)) if s > offset => Ok((Run::Zero, s - offset)),
            Ok(Some(_)) => {
                let end = seek(self.host.file(), offset, libc::SEEK_HOLE)
                    .map_err(io)?
                    .unwrap_or(len);
                Ok((data, end.max(offset + 1) - offset))
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.seek_data = false;
                Ok((data, len - offset))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn clone_layout(&self) -> Box<dyn Layout> {
        Box::new(RawLayout {
            host: self.host.clone(),
            seek_data: self.seek_data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn sparse_file_extents_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.raw");
        let mut f = File::create(&path).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 5000]).unwrap();
        f.set_len(8 << 20).unwrap();
        drop(f);
        let mut src = RawSource::open(&path, true).unwrap();
        assert_eq!(src.size_bytes(), Some(8 << 20));
        let (s, e) = src.next_data(0).unwrap().unwrap();
        assert!(s <= 1 << 20 && e >= (1 << 20) + 5000, "{s}..{e}");
        let mut buf = vec![0u8; 10];
        src.read_at((1 << 20) + 4990, &mut buf).unwrap();
        assert_eq!(&buf, &[7, 7, 7, 7, 7, 7, 7, 7, 7, 7]);
    }

    #[test]
    fn missing_file_and_directory_are_clear_errors() {
        let err = RawSource::open(Path::new("/nonexistent/disk.raw"), true)
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/disk.raw"), "{err}");
        let err = RawSource::open(Path::new("/"), true).err().unwrap();
        assert!(matches!(err, SourceError::NotADisk { .. }));
    }
}
