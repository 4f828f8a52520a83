//! Host I/O helpers shared by the floors that touch files and devices: aligned buffers
//! for O_DIRECT and block-device ioctls. Knows nothing of images or repositories.

mod aligned;
pub mod blockdev;
pub mod nbd_wire;

pub use aligned::{AlignedBuf, DIRECT_ALIGN};

/// Writes `data` to a new file at `path` with permission bits `mode` (whatever the
/// umask), never through a symlink and never over an existing file, and syncs it.
pub fn write_new_file(path: &std::path::Path, mode: u32, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(data)?;
    f.sync_all()
}
