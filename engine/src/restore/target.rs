//! Where a restore writes, opened so that nobody else on the host can redirect it.
//!
//! Restore runs as root into folders other users may write to, so (issue 11):
//! - a file is written under a temporary name created with `O_CREAT | O_EXCL |
//!   O_NOFOLLOW` (random, never an existing entry, never through a symlink) under a
//!   descriptor of its directory, and renamed over the final name with `renameat` in
//!   that same directory: a symlink planted at either name is replaced, never followed;
//! - inside a restore folder every name is one validated path component resolved under
//!   the folder's descriptor, and nothing already there is ever opened, so a symlink
//!   planted in the folder cannot point the restore at a block device or another file;
//! - a target named on the command line that is a symlink is followed only with
//!   `--force`, or when only root (or the caller) could have made it: the link and its
//!   directory belong to them and its directory is writable by nobody else (the links
//!   LVM and udev make under `/dev` are of that kind);
//! - files are created with mode 0600 (or the mode asked for), whatever the umask;
//! - a failed restore removes its temporary file, except when it found damage: then the
//!   partial disk is kept under its temporary name, and the error says where.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::error::{Error, Result};

/// A directory restores create files in, held open by descriptor.
pub struct TargetDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl TargetDir {
    /// Opens (creating it, mode 0700, if missing) the folder `path` names. The path
    /// itself is the caller's to trust; entries below it are not.
    pub fn open_or_create(path: &Path) -> Result<TargetDir> {
        if !path.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| Error::target(path, e))?;
        }
        Self::open(path)
    }

    fn open(path: &Path) -> Result<TargetDir> {
        let dir = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        let fd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::target(dir, e.into()))?;
        Ok(TargetDir {
            fd,
            path: dir.into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sync(&self) -> std::io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(Into::into)
    }
}

use std::os::unix::fs::DirBuilderExt;

/// How targets are created.
#[derive(Clone, Copy, Debug)]
pub struct TargetOptions {
    /// Replace an existing file (and follow a symlink named on the command line).
    pub force: bool,
    /// Permission bits of a new file (0600 unless `--mode` says otherwise).
    pub mode: u32,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            force: false,
            mode: 0o600,
        }
    }
}

/// An open restore target.
pub(crate) enum Target {
    /// A new file under a temporary name in `dir`, renamed to `name` by [`Target::commit`].
    File {
        dir: TargetDir,
        tmp: OsString,
        name: OsString,
        /// False once committed or kept: dropping an armed target removes `tmp`.
        armed: bool,
    },
    /// An existing block device, written in place.
    Device { path: PathBuf },
}

impl Target {
    /// The path being written, for messages.
    pub(crate) fn write_path(&self) -> PathBuf {
        match self {
            Target::File { dir, tmp, .. } => dir.path.join(tmp),
            Target::Device { path } => path.clone(),
        }
    }

    pub(crate) fn is_device(&self) -> bool {
        matches!(self, Target::Device { .. })
    }

    /// Renames the finished file over its final name (durably); nothing for a device.
    pub(crate) fn commit(&mut self) -> Result<()> {
        if let Target::File {
            dir,
            tmp,
            name,
            armed,
        } = self
        {
            rustix::fs::renameat(&dir.fd, tmp.as_os_str(), &dir.fd, name.as_os_str())
                .map_err(|e| Error::target(dir.path.join(&*name), e.into()))?;
            *armed = false;
            dir.sync().map_err(|e| Error::target(&dir.path, e))?;
        }
        Ok(())
    }

    /// Leaves the temporary file where it is (a partial restore the error names).
    pub(crate) fn keep(&mut self) {
        if let Target::File { armed, .. } = self {
            *armed = false;
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Target::File {
            dir,
            tmp,
            armed: true,
            ..
        } = self
        {
            let _ = rustix::fs::unlinkat(&dir.fd, tmp.as_os_str(), AtFlags::empty());
        }
    }
}

/// Opens the target a user named: a block device to write in place, or a file path.
pub(crate) fn open_path(path: &Path, size: u64, opts: TargetOptions) -> Result<(Target, File)> {
    let name = path
        .file_name()
        .filter(|_| !path.as_os_str().as_bytes().ends_with(b"/"))
        .ok_or_else(|| Error::TargetNotADisk { path: path.into() })?;
    let parent = path.parent().unwrap_or(Path::new(""));
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_file(TargetDir::open(parent)?, name, size, opts)
        }
        Err(e) => Err(Error::target(path, e)),
        Ok(m) if m.file_type().is_symlink() => {
            let real = follow_link(path, &m, opts.force)?;
            match std::fs::symlink_metadata(&real) {
                // canonicalize resolved every link, so this recursion ends here.
                Ok(m) if !m.file_type().is_symlink() => open_path(&real, size, opts),
                _ => Err(Error::TargetNotADisk { path: path.into() }),
            }
        }
        Ok(m) if m.file_type().is_block_device() => open_device(path, size),
        Ok(m) if m.is_file() && !opts.force => Err(Error::TargetExists { path: path.into() }),
        Ok(m) if m.is_file() => create_file(TargetDir::open(parent)?, name, size, opts),
        Ok(_) => Err(Error::TargetNotADisk { path: path.into() }),
    }
}

/// Opens `name` inside a restore folder. `name` must be one path component (the
/// snapshot's validated label); whatever is already there is never opened: with
/// `--force` the new file is renamed over it (a symlink is replaced, not followed).
pub(crate) fn open_in_dir(
    dir: &TargetDir,
    name: &str,
    size: u64,
    opts: TargetOptions,
) -> Result<(Target, File)> {
    repo_format::names::check_label(name).map_err(Error::Usage)?;
    let shown = dir.path.join(name);
    match rustix::fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(Error::target(&shown, e.into())),
        Ok(st) => {
            let kind = FileType::from_raw_mode(st.st_mode);
            if kind == FileType::Directory {
                return Err(Error::TargetNotADisk { path: shown });
            }
            if !opts.force {
                return Err(Error::TargetExists { path: shown });
            }
        }
    }
    let again = TargetDir {
        fd: dir
            .fd
            .try_clone()
            .map_err(|e| Error::target(&dir.path, e))?,
        path: dir.path.clone(),
    };
    create_file(again, OsStr::new(name), size, opts)
}

/// Where the symlink at `path` (named on the command line) leads, if it may be followed:
/// with `force`, or when only root or the caller could have made it.
fn follow_link(path: &Path, link: &std::fs::Metadata, force: bool) -> Result<PathBuf> {
    if !force && !trusted_link(path, link) {
        let to = std::fs::read_link(path).unwrap_or_default();
        return Err(Error::Usage(format!(
            "{} is a symlink (to {}) that another user could have made; pass --force to write through it, or name its target",
            path.display(),
            to.display()
        )));
    }
    std::fs::canonicalize(path).map_err(|e| Error::target(path, e))
}

/// Whether only root or the caller could have made the symlink at `path`.
fn trusted_link(path: &Path, link: &std::fs::Metadata) -> bool {
    let me = rustix::process::geteuid().as_raw();
    let ours = |uid: u32| uid == 0 || uid == me;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_ok = std::fs::metadata(parent).is_ok_and(|d| ours(d.uid()) && d.mode() & 0o022 == 0);
    ours(link.uid()) && dir_ok
}

/// Opens an existing disk to restore over in place (differential restore): a regular
/// file of exactly `size` bytes, or a block device of at least `size` (opened with
/// O_EXCL, which the kernel refuses while it is mounted or held). A symlink is followed
/// on the terms of [`open_path`]. Returns the file, whether it is a device, and the
/// path opened.
pub(crate) fn open_existing(path: &Path, size: u64, force: bool) -> Result<(File, bool, PathBuf)> {
    let m = std::fs::symlink_metadata(path).map_err(|e| Error::target(path, e))?;
    if m.file_type().is_symlink() {
        let real = follow_link(path, &m, force)?;
        return match std::fs::symlink_metadata(&real) {
            Ok(m) if !m.file_type().is_symlink() => open_existing(&real, size, force),
            _ => Err(Error::TargetNotADisk { path: path.into() }),
        };
    }
    let device = m.file_type().is_block_device();
    if !device && !m.is_file() {
        return Err(Error::TargetNotADisk { path: path.into() });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | if device { libc::O_EXCL } else { 0 })
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => Error::TargetInUse {
                path: path.into(),
                by: "the kernel holds it (mounted, or used by device-mapper, md or a loop device)"
                    .into(),
            },
            _ => Error::target(path, e),
        })?;
    let have = if device {
        crate::io::blockdev::size_bytes(&file).map_err(|e| Error::target(path, e))?
    } else {
        file.metadata().map_err(|e| Error::target(path, e))?.len()
    };
    if have < size {
        return Err(Error::TargetTooSmall {
            path: path.into(),
            have_bytes: have,
            need_bytes: size,
        });
    }
    if !device && have != size {
        return Err(Error::Usage(format!(
            "{} holds {have} bytes but the disk is {size}; a differential restore writes over a disk of the same size",
            path.display()
        )));
    }
    Ok((file, device, path.into()))
}

fn open_device(path: &Path, size: u64) -> Result<(Target, File)> {
    let file = OpenOptions::new()
        .write(true)
        // O_EXCL refuses a device that is mounted; O_NOFOLLOW a link swapped in since.
        .custom_flags(libc::O_EXCL | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::target(path, e))?;
    let have = crate::io::blockdev::size_bytes(&file).map_err(|e| Error::target(path, e))?;
    if have < size {
        return Err(Error::TargetTooSmall {
            path: path.into(),
            have_bytes: have,
            need_bytes: size,
        });
    }
    Ok((Target::Device { path: path.into() }, file))
}

/// Creates a fresh temporary file for `name` in `dir`, sized `size`.
fn create_file(
    dir: TargetDir,
    name: &OsStr,
    size: u64,
    opts: TargetOptions,
) -> Result<(Target, File)> {
    let random = repo_format::ids::random_bytes().map_err(Error::Repo)?;
    let mut tmp = OsString::from(".");
    // Keep the temporary name within NAME_MAX whatever the final name's length.
    let stem = &name.as_bytes()[..name.len().min(200)];
    tmp.push(OsStr::from_bytes(stem));
    tmp.push(format!(".{}.dedisk-restore", hex::encode(&random[..8])));
    let fd = rustix::fs::openat(
        &dir.fd,
        tmp.as_os_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(opts.mode & 0o7777),
    )
    .map_err(|e| Error::target(dir.path.join(&tmp), e.into()))?;
    let target = Target::File {
        dir,
        tmp,
        name: name.into(),
        armed: true,
    };
    // The umask may have taken bits away from the mode asked for; set it exactly.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(opts.mode & 0o7777))
        .map_err(|e| Error::target(target.write_path(), e.into()))?;
    let file = File::from(fd);
    // On error `target` drops here and removes the temporary file.
    file.set_len(size)
        .map_err(|e| Error::target(target.write_path(), e))?;
    Ok((target, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_symlink_in_a_folder_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let folder = dir.path().join("restore");
        std::fs::create_dir(&folder).unwrap();
        std::os::unix::fs::symlink(&victim, folder.join("vda.raw")).unwrap();
        let td = TargetDir::open_or_create(&folder).unwrap();
        // Without --force the existing entry (a link) is refused.
        assert!(matches!(
            open_in_dir(&td, "vda.raw", 4, TargetOptions::default()),
            Err(Error::TargetExists { .. })
        ));
        let force = TargetOptions {
            force: true,
            mode: 0o600,
        };
        let (mut t, f) = open_in_dir(&td, "vda.raw", 4, force).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"new!", 0).unwrap();
        t.commit().unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        let m = std::fs::symlink_metadata(folder.join("vda.raw")).unwrap();
        assert!(m.is_file());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        // Names that are not one component never reach the filesystem.
        for bad in ["../x", "/etc/passwd", "a/b", ".."] {
            assert!(open_in_dir(&td, bad, 1, force).is_err(), "{bad}");
        }
    }

    #[test]
    fn failures_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let td = TargetDir::open_or_create(dir.path()).unwrap();
        // Larger than any file may be: set_len fails after the file was created.
        assert!(open_in_dir(&td, "big.raw", u64::MAX, TargetOptions::default()).is_err());
        let (t, _f) = open_in_dir(&td, "x.raw", 4, TargetOptions::default()).unwrap();
        drop(t);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A trailing slash names a folder, not a file.
        assert!(open_path(&dir.path().join("y/"), 4, TargetOptions::default()).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn modes_are_exact_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        let opts = TargetOptions {
            force: false,
            mode: 0o640,
        };
        let (mut t, _f) = open_path(&p, 1, opts).unwrap();
        t.commit().unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
    }
}
