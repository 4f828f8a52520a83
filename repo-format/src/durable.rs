//! Durable file writes: the write order that keeps an interrupted backup harmless.
//!
//! Every immutable repository file is written under a temporary name in the same
//! directory tree, fsync'd, renamed into place, and its directory fsync'd. A crash at any
//! point leaves either no file or the complete file under its final name; never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{IoContext, Result};

/// Mode of every file dedisk creates in a repository: it holds every guest's data.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of every directory dedisk creates in a repository.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents with mode 0700 (existing ones are left alone).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .at(dir)
}

/// fsyncs a directory so that a rename or create inside it survives a power loss.
/// An empty path (the parent of a bare file name) means the current directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, tmp_dir: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_dir.join(format!(
        "{}{}.tmp",
        crate::lock::writer_tag(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)
    })();
    if let Err(e) = written {
        // A full filesystem takes the name but not the bytes: leave no torn file.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    rename_durable(&tmp, path)
}

/// Renames `from` to `to` and fsyncs the destination directory (and the source's, if different).
pub fn rename_durable(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).at(to)?;
    if let Some(parent) = to.parent() {
        sync_dir(parent)?;
    }
    if let (Some(a), Some(b)) = (from.parent(), to.parent()) {
        if a != b {
            sync_dir(a)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_file_names_are_synced_in_the_current_directory() {
        // Path::new("disk.raw").parent() is Some(""), which must mean ".".
        sync_dir(Path::new("")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"x").unwrap();
        rename_durable(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"x");
    }
}
