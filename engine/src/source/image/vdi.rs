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
