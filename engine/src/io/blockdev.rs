//! Block-device ioctls shared by sources (reading) and restore (writing).

use std::fs::File;
use std::os::unix::io::AsRawFd;

/// Size in bytes of the block device open as `file` (BLKGETSIZE64).
pub fn size_bytes(file: &File) -> std::io::Result<u64> {
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: the ioctl writes one u64 into `size`, which outlives the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

/// The size of the file or block device at `path`.
pub fn path_len(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path)?;
    if meta.file_type().is_block_device() {
        size_bytes(&File::open(path)?)
    } else {
        Ok(meta.len())
    }
}

/// Asks the device to zero `[offset, offset+len)` itself (BLKZEROOUT). An error means the
/// caller should write zeros.
pub fn zero_out(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // BLKZEROOUT = _IO(0x12, 127)
    const BLKZEROOUT: libc::c_ulong = 0x127f;
    let range = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) from `range`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
