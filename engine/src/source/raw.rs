//! Raw image files and block devices.
//!
//! Opened with O_DIRECT where the filesystem allows it: a nightly backup reads the whole
//! allocated disk once, and pushing it through the page cache would evict the host's
//! working set (and the VMs' own cache) for nothing. Where O_DIRECT is refused (tmpfs,
//! some FUSE filesystems) the source falls back to buffered reads and says so in the log.
//! Sparse files are walked with SEEK_DATA/SEEK_HOLE so unallocated ranges are never read.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::aligned::{AlignedBuf, DIRECT_ALIGN};
use super::{DiskSource, SourceError};

pub struct RawSource {
    path: PathBuf,
    file: File,
    size: u64,
    direct: bool,
    /// SEEK_DATA works here (false for block devices and filesystems without it).
    seek_data: bool,
    /// Bounce buffer for O_DIRECT reads into unaligned caller buffers.
    bounce: Option<AlignedBuf>,
    /// The file as it was opened, checked again once it has been read.
    stamp: super::FileStamp,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.into(),
        source,
    }
}

impl RawSource {
    /// Opens a raw image or block device read-only. `direct` asks for O_DIRECT.
    pub fn open(path: &Path, direct: bool) -> Result<Self, SourceError> {
        let meta = std::fs::metadata(path).map_err(io(path))?;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(SourceError::NotADisk { path: path.into() });
        }
        let (file, direct) = if direct {
            match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    log::debug!(
                        "{}: O_DIRECT refused ({e}); using buffered reads",
                        path.display()
                    );
                    (File::open(path).map_err(io(path))?, false)
                }
                Err(e) => return Err(io(path)(e)),
            }
        } else {
            (File::open(path).map_err(io(path))?, false)
        };
        let size = if ft.is_block_device() {
            crate::blockdev::size_bytes(&file).map_err(io(path))?
        } else {
            meta.len()
        };
        let stamp = super::FileStamp::of(&file).map_err(io(path))?;
        Ok(RawSource {
            path: path.into(),
            file,
            size,
            direct,
            seek_data: ft.is_file(),
            bounce: None,
            stamp,
        })
    }

    fn lseek(&self, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on a valid fd owned by self.file has no memory effects.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None); // no data (or hole) at or after offset
            }
            return Err(e);
        }
        Ok(Some(r as u64))
    }
}

impl DiskSource for RawSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn clone_reader(&self) -> Option<Box<dyn DiskSource>> {
        // pread ignores the shared file offset, so a dup'd descriptor is independent.
        let file = self.file.try_clone().ok()?;
        Some(Box::new(RawSource {
            path: self.path.clone(),
            file,
            size: self.size,
            direct: self.direct,
            seek_data: self.seek_data,
            bounce: None,
            stamp: self.stamp,
        }))
    }

    fn check_unchanged(&self) -> Result<(), SourceError> {
        self.stamp.check(&self.file, &self.path)
    }

    fn size_bytes(&self) -> Option<u64> {
        Some(self.size)
    }

    fn next_data(&mut self, offset: u64) -> Result<Option<(u64, u64)>, SourceError> {
        if offset >= self.size {
            return Ok(None);
        }
        if !self.seek_data {
            return Ok(Some((offset, self.size)));
        }
        let start = match self.lseek(offset, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // The filesystem cannot tell: treat everything as data.
                self.seek_data = false;
                return Ok(Some((offset, self.size)));
            }
            Err(e) => return Err(io(&self.path)(e)),
        };
        let end = self
            .lseek(start, libc::SEEK_HOLE)
            .map_err(io(&self.path))?
            .unwrap_or(self.size);
        // Round outwards to whole blocks: a hole edge inside a block reads as zeros anyway.
        let a = DIRECT_ALIGN as u64;
        let start = (start / a * a).max(offset);
        let end = end.div_ceil(a).saturating_mul(a).min(self.size);
        Ok(Some((start, end)))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        if offset >= self.size {
            return Ok(0);
        }
        let want = buf.len().min((self.size - offset) as usize);
        let aligned = offset.is_multiple_of(DIRECT_ALIGN as u64)
            && (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
            && buf.len().is_multiple_of(DIRECT_ALIGN);
        let mut done = 0;
        if !self.direct || aligned {
            // With O_DIRECT a read at the unaligned end of a file returns the short tail.
            while done < want {
                let n = self
                    .file
                    .read_at(&mut buf[done..], offset + done as u64)
                    .map_err(io(&self.path))?;
                if n == 0 {
                    break;
                }
                done += n;
            }
        } else {
            // Unaligned request under O_DIRECT: go through an aligned bounce buffer.
            let bounce = self.bounce.get_or_insert_with(|| AlignedBuf::new(1 << 20));
            while done < want {
                let at = offset + done as u64;
                let base = at / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
                let skip = (at - base) as usize;
                let n = self.file.read_at(bounce, base).map_err(io(&self.path))?;
                if n <= skip {
                    break;
                }
                let take = (n - skip).min(want - done);
                buf[done..done + take].copy_from_slice(&bounce[skip..skip + take]);
                done += take;
            }
        }
        if done < want {
            return Err(SourceError::Shrank {
                path: self.path.clone(),
                expected: self.size,
                got: offset + done as u64,
            });
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
