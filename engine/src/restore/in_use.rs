//! Is a disk in use? Differential restore writes over an existing disk in place, so it
//! refuses one that a running guest, a mount or a loop device is using: writing under a
//! running VM corrupts it, and the VM would overwrite the restore.
//!
//! Three checks, each catching what the others miss:
//! - an OFD lock: QEMU locks the images it opens (bytes 100 and up, `locking=auto`), so a
//!   lock anyone holds on the file means a QEMU (or another careful tool) has it open.
//!   Restore then holds a write lock over the whole file itself, so a domain started
//!   meanwhile fails to open the disk instead of running on it half-restored;
//! - a process holding it open: every `/proc/PID/fd` entry naming the same inode (a
//!   file) or device number (a block device), which also finds QEMU run with
//!   `locking=off` and programs that take no lock;
//! - a loop device backed by the file (the kernel holds it; no process does).
//!
//! Block devices are opened with `O_EXCL` by the caller, which the kernel refuses while
//! the device (or a partition of it) is mounted, or held by device-mapper or md.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Who is using the disk `file` (opened from `path`), or nothing. On success the caller
/// holds a write lock over the whole file for as long as `file` stays open.
pub(crate) fn refuse_if_in_use(path: &Path, file: &File) -> Result<()> {
    let meta = file.metadata().map_err(|e| Error::target(path, e))?;
    let in_use = |by: String| Error::TargetInUse {
        path: path.into(),
        by,
    };
    if let Some(pid) = locked_by(file).map_err(|e| Error::target(path, e))? {
        let who = if pid > 0 {
            format!("process {pid} ({})", comm(pid as u32))
        } else {
            "another process".into()
        };
        return Err(in_use(format!(
            "{who} holds a lock on it (a running QEMU does)"
        )));
    }
    // udev probes a device (blkid) right after anyone wrote to it, for a moment: a
    // holder is only one if it is still there a little later.
    let mut holder = opened_by(&meta);
    for _ in 0..10 {
        if holder.is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        holder = opened_by(&meta);
    }
    if let Some((pid, name)) = holder {
        return Err(in_use(format!("process {pid} ({name}) has it open")));
    }
    if meta.file_type().is_file() {
        if let Some(loop_dev) = loop_backed_by(path) {
            return Err(in_use(format!("{loop_dev} is attached to it")));
        }
    }
    lock_whole(file).map_err(|e| match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => {
            in_use("a process that locked it a moment ago".into())
        }
        _ => Error::target(path, e),
    })
}

fn whole_file_lock(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value that the fields below fill.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = kind;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = 0;
    l.l_len = 0; // to the end, however far
    l
}

/// The process holding a lock that conflicts with writing (0 when the kernel does not
/// say: OFD locks belong to no process).
fn locked_by(file: &File) -> std::io::Result<Option<i32>> {
    let mut l = whole_file_lock(libc::F_WRLCK as libc::c_short);
    // SAFETY: F_OFD_GETLK reads and writes the flock struct `l`, which outlives the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut l) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((l.l_type != libc::F_UNLCK as libc::c_short).then_some(l.l_pid))
}

fn lock_whole(file: &File) -> std::io::Result<()> {
    let l = whole_file_lock(libc::F_WRLCK as libc::c_short);
    // SAFETY: F_OFD_SETLK reads the flock struct `l`, which outlives the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &l) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A process other than this one with a descriptor on the same file or device.
fn opened_by(meta: &std::fs::Metadata) -> Option<(u32, String)> {
    use std::os::unix::fs::FileTypeExt;
    let device = meta.file_type().is_block_device();
    let same = |m: &std::fs::Metadata| {
        if device {
            m.file_type().is_block_device() && m.rdev() == meta.rdev()
        } else {
            m.dev() == meta.dev() && m.ino() == meta.ino()
        }
    };
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Other users' processes are unreadable unless we are root; skip them.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        // metadata() follows the magic link to the open file itself, even when its
        // name was since removed or replaced.
        if fds
            .flatten()
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| same(&m)))
        {
            return Some((pid, comm(pid)));
        }
    }
    None
}

/// A process's command name, for messages (escaped: another user chose it).
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| repo_format::names::escape(s.trim_end()))
        .unwrap_or_else(|_| "?".into())
}

/// The loop device whose backing file is `path`, if any.
fn loop_backed_by(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    for entry in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(backing.trim_end()) == real {
            return Some(format!("/dev/{name}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn a_lock_or_another_holder_is_refused_and_a_free_file_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .unwrap()
        };
        let first = open();
        refuse_if_in_use(&p, &first).unwrap();
        // A second restore (or anyone taking a conflicting lock) is refused while the
        // first holds its lock.
        let second = open();
        let e = refuse_if_in_use(&p, &second).unwrap_err();
        assert!(e.to_string().contains("lock"), "{e}");
        drop(first);
        drop(second);
        refuse_if_in_use(&p, &open()).unwrap();
    }
}
