//! Recognising disk-image containers by their magic bytes, not their file names.
//!
//! Backing up a qcow2 or VHD file as if it were a raw disk would store the container, and
//! a restore would give back that container rather than the disk the VM sees, so the
//! format is always judged from the content (a `.qcow2` name on a raw file is common).

use std::fs::File;
use std::os::unix::fs::FileExt;

/// What a file holds, judged from its first and last bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
    /// Microsoft VHD (a "conectix" footer at the end, or its copy at the start).
    Vhd,
    Vhdx,
    Vmdk,
    /// VirtualBox VDI.
    Vdi,
}

/// What a disk argument holds: one disk in an image format, or a container of whole
/// VMs that yields several disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    Image(ImageFormat),
    /// XenServer `xe vm-export`: a tar of `ova.xml` and 1 MiB blocks per disk.
    Xva,
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceFormat::Image(i) => i.fmt(f),
            SourceFormat::Xva => f.write_str("xva"),
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vdi => "vdi",
        })
    }
}

/// Looks at the head and tail of `file` (of `len_bytes`). Anything unrecognised is raw.
pub fn detect(file: &File, len_bytes: u64) -> std::io::Result<SourceFormat> {
    let mut head = [0u8; 512];
    let n = read_up_to(file, &mut head, 0)?;
    if let Some(f) = detect_head(&head[..n]) {
        return Ok(f);
    }
    Ok(SourceFormat::Image(detect_tail(file, len_bytes)?))
}

/// [`detect`] for a layer of a backing chain, which is always an image: an XVA there is
/// refused by the caller.
pub fn detect_image(file: &File, len_bytes: u64) -> std::io::Result<Option<ImageFormat>> {
    Ok(match detect(file, len_bytes)? {
        SourceFormat::Image(f) => Some(f),
        SourceFormat::Xva => None,
    })
}

/// A fixed VHD's footer at the end, or raw.
fn detect_tail(file: &File, len_bytes: u64) -> std::io::Result<ImageFormat> {
    if len_bytes >= 512 {
        // Fixed VHDs are a raw disk plus a 512-byte footer (511 bytes in old versions).
        let mut tail = [0u8; 512];
        let n = read_up_to(file, &mut tail, len_bytes - 512)?;
        if n == 512 && (tail.starts_with(b"conectix") || &tail[1..9] == b"conectix") {
            return Ok(ImageFormat::Vhd);
        }
    }
    Ok(ImageFormat::Raw)
}

/// The format the first (up to 512) bytes show, if they show one. A fixed VHD only
/// shows at its end, so `None` is not proof of a raw disk.
pub fn detect_head(head: &[u8]) -> Option<SourceFormat> {
    use SourceFormat::Image;
    if head.starts_with(b"QFI\xfb") {
        return Some(Image(ImageFormat::Qcow2));
    }
    if head.starts_with(b"vhdxfile") {
        return Some(Image(ImageFormat::Vhdx));
    }
    if head.starts_with(b"KDMV")
        || head.starts_with(b"COWD")
        || head.starts_with(b"# Disk DescriptorFile")
    {
        return Some(Image(ImageFormat::Vmdk));
    }
    if head.len() >= 0x44 && head[0x40..0x44] == 0xbeda107fu32.to_le_bytes() {
        return Some(Image(ImageFormat::Vdi));
    }
    // A tar whose first member is ova.xml (name field at 0, "ustar" magic at 257).
    if head.starts_with(b"ova.xml\0") && head.len() >= 262 && &head[257..262] == b"ustar" {
        return Some(SourceFormat::Xva);
    }
    if head.starts_with(b"conectix") {
        return Some(Image(ImageFormat::Vhd)); // dynamic VHDs copy the footer to the start
    }
    None
}

fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn detect_bytes(head: &[u8], tail: Option<&[u8]>) -> SourceFormat {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(head).unwrap();
        f.write_all(&vec![0u8; 4096]).unwrap();
        if let Some(t) = tail {
            f.write_all(t).unwrap();
        }
        let len = f.metadata().unwrap().len();
        detect(&f, len).unwrap()
    }

    #[test]
    fn magics_are_recognised_and_everything_else_is_raw() {
        assert_eq!(
            detect_bytes(b"QFI\xfb\0\0\0\x03", None),
            SourceFormat::Image(ImageFormat::Qcow2)
        );
        assert_eq!(
            detect_bytes(b"vhdxfile", None),
            SourceFormat::Image(ImageFormat::Vhdx)
        );
        assert_eq!(
            detect_bytes(b"KDMV\x01\0\0\0", None),
            SourceFormat::Image(ImageFormat::Vmdk)
        );
        assert_eq!(
            detect_bytes(b"# Disk DescriptorFile\n", None),
            SourceFormat::Image(ImageFormat::Vmdk)
        );
        let mut vdi = vec![0u8; 0x44];
        vdi[0x40..0x44].copy_from_slice(&0xbeda107fu32.to_le_bytes());
        assert_eq!(
            detect_bytes(&vdi, None),
            SourceFormat::Image(ImageFormat::Vdi)
        );
        let mut footer = vec![0u8; 512];
        footer[..8].copy_from_slice(b"conectix");
        assert_eq!(
            detect_bytes(b"", Some(&footer)),
            SourceFormat::Image(ImageFormat::Vhd)
        );
        assert_eq!(
            detect_bytes(b"\xeb\x63\x90 an MBR boot sector", None),
            SourceFormat::Image(ImageFormat::Raw)
        );
        assert_eq!(
            detect(&tempfile::tempfile().unwrap(), 0).unwrap(),
            SourceFormat::Image(ImageFormat::Raw)
        );
        let mut xva = vec![0u8; 512];
        xva[..8].copy_from_slice(b"ova.xml\0");
        xva[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect_bytes(&xva, None), SourceFormat::Xva);
    }
}
