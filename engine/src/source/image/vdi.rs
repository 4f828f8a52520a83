//! VirtualBox VDI, version 1.1: static (preallocated) and dynamic images.
//!
//! A pre-header and header, then a block map (one little-endian u32 per block: the
//! block's index in the data area, or "unallocated"/"discarded", both reading as zeros),
//! then the data area. Differencing images need their parent, which VirtualBox keeps in
//! its own registry rather than in the file; they are refused with a clear message.

use std::sync::Arc;

use super::bytes::{le32, le64};
use super::{Blame, HostFile, Image, ImageError, ImageInfo, Layout, Run};
use crate::source::detect::ImageFormat;

const SIGNATURE: u32 = 0xbeda_107f;
const VERSION_1_1: u32 = 0x0001_0001;
const TYPE_DYNAMIC: u32 = 1;
const TYPE_STATIC: u32 = 2;
const TYPE_UNDO: u32 = 3;
const TYPE_DIFF: u32 = 4;
const UNALLOCATED: u32 = 0xffff_ffff;
const DISCARDED: u32 = 0xffff_fffe;
/// qemu's limit: 512 TiB worth of 1 MiB blocks.
const MAX_BLOCKS: u64 = 0x3fff_ffff;

pub fn open(host: Arc<HostFile>) -> Result<Image, ImageError> {
    let blame = Blame::new(host.path(), ImageFormat::Vdi);
    let mut h = [0u8; 0x1c8];
    if host.len_bytes() < h.len() as u64 {
        return Err(blame.malformed(
            "header",
            0,
            format!("file is only {} bytes", host.len_bytes()),
        ));
    }
    host.read_exact_at(&mut h, 0, || "header".into())?;
    if le32(&h, 0x40) != SIGNATURE {
        return Err(blame.malformed("header", 0x40, "no VDI signature"));
    }
    let version = le32(&h, 0x44);
    if version != VERSION_1_1 {
        return Err(blame.unsupported(format!(
            "VDI version {}.{} (dedisk reads 1.1)",
            version >> 16,
            version & 0xffff
        )));
    }
    let kind = le32(&h, 0x4c);
    let offset_blocks = u64::from(le32(&h, 0x154));
    let offset_data = u64::from(le32(&h, 0x158));
    let sector_bytes = le32(&h, 0x168);
    let virtual_size = le64(&h, 0x170);
    let block = u64::from(le32(&h, 0x178));
    let block_extra = u64::from(le32(&h, 0x17c));
    let blocks = u64::from(le32(&h, 0x180));
    let link_uuid = &h[0x1a8..0x1b8];
    if kind == TYPE_DIFF || kind == TYPE_UNDO || link_uuid.iter().any(|&b| b != 0) {
        return Err(blame.unsupported(
            "differencing VDI (a VirtualBox snapshot): its parent is not named in the file; back up the merged disk (VBoxManage clonemedium) instead",
        ));
    }
    if kind != TYPE_DYNAMIC && kind != TYPE_STATIC {
        return Err(blame.unsupported(format!("image type {kind}")));
    }
    if sector_bytes != 512 {
        return Err(blame.malformed(
            "header sector size",
            0x168,
            format!("{sector_bytes}, expected 512"),
        ));
    }
    if block == 0 || !block.is_power_of_two() || block > 256 << 20 {
        return Err(blame.malformed(
            "header block size",
            0x178,
            format!("{block} is not a power of two up to 256 MiB"),
        ));
    }
    if block_extra != 0 {
        return Err(blame.unsupported(format!("blocks with {block_extra} extra bytes")));
    }
    if blocks > MAX_BLOCKS || blocks * block < virtual_size {
        return Err(blame.malformed(
            "header block count",
            0x180,
            format!("{blocks} blocks of {block} bytes cannot hold {virtual_size} bytes"),
        ));
    }
    let map_raw = host.read_table(
        offset_blocks,
        blocks * 4,
        MAX_BLOCKS * 4,
        || "block map".into(),
        &blame,
    )?;
    let map: Vec<u32> = map_raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
    let mut info = ImageInfo::new(host.path(), ImageFormat::Vdi, virtual_size);
    info.cluster_bytes = Some(block);
    info.detail(
        "subformat",
        if kind == TYPE_STATIC {
            "static"
        } else {
            "dynamic"
        },
    );
    let text = String::from_utf8_lossy(&h[..0x40]);
    info.detail("creator", text.trim_matches(['<', '>', ' ', '\n', '\0']));
    let layout = VdiLayout {
        blame,
        map: Arc::new(map),
        offset_blocks,
        offset_data,
        block,
    };
    Ok(Image::new(info, Box::new(layout), vec![host], None))
}

#[derive(Clone)]
struct VdiLayout {
    blame: Blame,
    map: Arc<Vec<u32>>,
    offset_blocks: u64,
    offset_data: u64,
    block: u64,
}

impl Layout for VdiLayout {
    fn map(&mut self, offset: u64) -> Result<(Run, u64), ImageError> {
        let index = offset / self.block;
        let into = offset % self.block;
        let entry = self.map.get(index as usize).copied().unwrap_or(UNALLOCATED);
        let hole = |e: u32| e == UNALLOCATED || e == DISCARDED;
        let mut n = 1u64;
        let limit = (super::MAX_EXTENT_BYTES / self.block).max(1);
        if hole(entry) {
            while n < limit && self.map.get((index + n) as usize).is_some_and(|&e| hole(e)) {
                n += 1;
            }
            return Ok((Run::Zero, n * self.block - into));
        }
        if u64::from(entry) >= self.map.len() as u64 {
            return Err(self.blame.malformed(
                format!("block map entry {index}"),
                self.offset_blocks + index * 4,
                format!(
                    "data block {entry} is beyond the {} blocks the image has",
                    self.map.len()
                ),
            ));
        }
        while n < limit && self.map.get((index + n) as usize) == Some(&(entry + n as u32)) {
            n += 1;
        }
        let host = self.offset_data + u64::from(entry) * self.block + into;
        Ok((Run::Data { file: 0, host }, n * self.block - into))
    }

    fn clone_layout(&self) -> Box<dyn Layout> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    const MIB: usize = 1 << 20;

    /// A dynamic VDI 1.1 of 4 MiB in 1 MiB blocks, by hand from the layout qemu's and
    /// VirtualBox's readers agree on: header, block map at 0x200 (only guest block 1
    /// allocated, as data block 0), data at 0x400. `edit` changes the bytes first.
    fn image(dir: &Path, edit: impl FnOnce(&mut Vec<u8>)) -> (PathBuf, Vec<u8>) {
        let mut b = vec![0u8; 0x400 + MIB];
        b[..34].copy_from_slice(b"<<< QEMU VM Virtual Disk Image >>>");
        let put32 =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(&mut b, 0x40, SIGNATURE);
        put32(&mut b, 0x44, VERSION_1_1);
        put32(&mut b, 0x48, 0x190);
        put32(&mut b, 0x4c, TYPE_DYNAMIC);
        put32(&mut b, 0x154, 0x200);
        put32(&mut b, 0x158, 0x400);
        put32(&mut b, 0x168, 512);
        b[0x170..0x178].copy_from_slice(&(4 * MIB as u64).to_le_bytes());
        put32(&mut b, 0x178, MIB as u32);
        put32(&mut b, 0x180, 4);
        put32(&mut b, 0x184, 1);
        b[0x188] = 1; // image uuid: not null
        for (i, e) in [UNALLOCATED, 0, UNALLOCATED, DISCARDED].iter().enumerate() {
            put32(&mut b, 0x200 + 4 * i, *e);
        }
        let data: Vec<u8> = (0..MIB).map(|i| (i % 241) as u8 | 1).collect();
        b[0x400..].copy_from_slice(&data);
        edit(&mut b);
        let path = dir.join("t.vdi");
        std::fs::write(&path, &b).unwrap();
        (path, data)
    }

    fn open(path: &Path) -> Result<Image, ImageError> {
        crate::source::image::open_as(path, ImageFormat::Vdi)
    }

    fn err(path: &Path) -> String {
        open(path).err().expect("refused").to_string()
    }

    #[test]
    fn a_hand_made_image_reads_its_one_block_and_qemu_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let (path, data) = image(dir.path(), |_| {});
        let mut img = open(&path).unwrap();
        assert_eq!(img.virtual_size(), 4 * MIB as u64);
        assert_eq!(
            img.next_data(0).unwrap(),
            Some((MIB as u64, 2 * MIB as u64))
        );
        assert_eq!(
            img.next_data(2 * MIB as u64).unwrap(),
            None,
            "discarded reads as zeros"
        );
        let mut buf = vec![0u8; MIB];
        img.read_at(MIB as u64, &mut buf).unwrap();
        assert_eq!(buf, data);
        let mut want = vec![0u8; MIB];
        want.extend_from_slice(&data);
        want.resize(4 * MIB, 0);
        crate::source::image::assert_qemu_agrees(&path, "vdi", &want);
    }

    #[test]
    fn malformed_and_unsupported_images_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let set = |at: usize, v: u32| {
            move |b: &mut Vec<u8>| b[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        for (edit, needle) in [
            (set(0x40, 0), "no VDI signature"),
            (set(0x44, 0x0001_0000), "VDI version 1.0"),
            (set(0x4c, TYPE_DIFF), "differencing VDI"),
            (set(0x4c, 9), "image type 9"),
            (set(0x168, 4096), "sector size"),
            (set(0x178, 3 << 20), "block size"),
            (set(0x17c, 512), "extra bytes"),
            (set(0x180, 2), "cannot hold"),
            (set(0x154, 0x7fff_0000), "past the end of the file"),
        ] {
            let (p, _) = image(dir.path(), edit);
            let e = err(&p);
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(e.contains("t.vdi"), "{e}");
        }
        let (p, _) = image(dir.path(), |b| b.truncate(0x100));
        assert!(err(&p).contains("file is only 256 bytes"));
    }

    #[test]
    fn a_map_entry_beyond_the_image_fails_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = image(dir.path(), |b| {
            b[0x204..0x208].copy_from_slice(&9u32.to_le_bytes())
        });
        let mut img = open(&p).unwrap();
        let e = img.next_data(0).unwrap_err().to_string();
        assert!(e.contains("block map entry 1"), "{e}");
    }
}
