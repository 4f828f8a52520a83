//! What a source file looked like when it was opened, to prove at the end of a disk that
//! it did not change while it was read (issue 12: a sparse image truncated to half during
//! a backup gave, with exit 0, a snapshot of its first half followed by zeros: SEEK_DATA
//! past the new end answers "no more data", which looked like the end of the disk).

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Identity, size and change counters of an open file or block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len_bytes: u64,
    /// Modification and status-change times in nanoseconds (files only: a block
    /// device's inode times say nothing about its content).
    mtime_ns: Option<i128>,
    ctime_ns: Option<i128>,
}

impl FileStamp {
    /// Stamps `file` as it is now.
    pub fn of(file: &File) -> std::io::Result<FileStamp> {
        let m = file.metadata()?;
        let is_file = m.file_type().is_file();
        let len_bytes = if m.file_type().is_block_device() {
            crate::io::blockdev::size_bytes(file)?
        } else {
            m.len()
        };
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len_bytes,
            mtime_ns: is_file.then(|| ns(m.mtime(), m.mtime_nsec())),
            ctime_ns: is_file.then(|| ns(m.ctime(), m.ctime_nsec())),
        })
    }

    /// Fails, saying what moved, unless `file` still matches this stamp.
    pub fn check(&self, file: &File, path: &Path) -> Result<(), super::SourceError> {
        let now = FileStamp::of(file).map_err(|source| super::SourceError::Io {
            path: path.into(),
            source,
        })?;
        let what = if now.len_bytes != self.len_bytes {
            format!(
                "its size went from {} to {} bytes",
                self.len_bytes, now.len_bytes
            )
        } else if (now.dev, now.ino) != (self.dev, self.ino) {
            "it is another file now".to_string()
        } else if now.mtime_ns != self.mtime_ns || now.ctime_ns != self.ctime_ns {
            "it was written to".to_string()
        } else {
            return Ok(());
        };
        Err(super::SourceError::Changed {
            path: path.into(),
            what,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_and_writes_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        std::fs::write(&p, vec![1u8; 8192]).unwrap();
        let f = File::open(&p).unwrap();
        let stamp = FileStamp::of(&f).unwrap();
        stamp.check(&f, &p).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let err = stamp.check(&f, &p).unwrap_err().to_string();
        assert!(err.contains("8192 to 4096"), "{err}");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(8192)
            .unwrap();
        assert!(
            stamp.check(&f, &p).is_err(),
            "same size again, but written to"
        );
    }
}
