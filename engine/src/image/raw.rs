//! A raw file as a layer of a backing chain (a qcow2 overlay on a raw base, say).
//! Top-level raw disks are read by [`crate::source::RawSource`] instead.

use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use super::{HostFile, Image, ImageError, ImageInfo, Layout, Run};
use crate::source::detect::ImageFormat;

pub fn open(host: Arc<HostFile>) -> Result<Image, ImageError> {
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

impl RawLayout {
    fn lseek(&self, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor this struct keeps open has no memory effects.
        let r = unsafe { libc::lseek(self.host.file().as_raw_fd(), offset as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(r as u64))
    }
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
        match self.lseek(offset, libc::SEEK_DATA) {
            Ok(None) => Ok((Run::Zero, len - offset)),
            Ok(Some(s)) if s > offset => Ok((Run::Zero, s - offset)),
            Ok(Some(_)) => {
                let end = self
                    .lseek(offset, libc::SEEK_HOLE)
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
