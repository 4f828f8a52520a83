//! Microsoft VHD ("vpc" in qemu): fixed, dynamic and differencing disks, as written by
//! Virtual PC, Hyper-V, XenServer (`xe vdi-export format=vhd`) and `qemu-img`.
//!
//! A fixed disk is raw data followed by a 512-byte footer. Dynamic and differencing disks
//! keep a copy of the footer at the start, then a dynamic header pointing at the block
//! allocation table (BAT); each allocated block starts with a sector bitmap saying which
//! of its sectors hold data. Sectors not in the bitmap read as zeros (dynamic) or from
//! the parent (differencing). Footer and header checksums are checked.

use std::sync::Arc;

use super::bytes::{be16, be32, be64};
use super::{Blame, Chain, HostFile, Image, ImageError, ImageInfo, Layout, Run};
use crate::source::detect::ImageFormat;

pub(in crate::source) const FOOTER_LEN: u64 = 512;
pub(in crate::source) const DYN_HEADER_LEN: u64 = 1024;
const TYPE_FIXED: u32 = 2;
pub(in crate::source) const TYPE_DYNAMIC: u32 = 3;
const TYPE_DIFFERENCING: u32 = 4;
const UNALLOCATED: u32 = 0xffff_ffff;
/// The largest VHD: 2040 GiB by the spec; qemu allows a little more.
pub(in crate::source) const MAX_SIZE: u64 = 2040 << 30;
/// 65535 cylinders * 16 heads * 255 sectors: qemu's marker for "use current_size".
const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;

/// One's-complement sum of all bytes but the 4-byte checksum field at `at`.
pub(in crate::source) fn checksum(buf: &[u8], at: usize) -> u32 {
    let sum = buf
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)));
    !sum
}

pub(in crate::source) struct Footer {
    pub(in crate::source) disk_type: u32,
    pub(in crate::source) data_offset: u64,
    pub(in crate::source) virtual_size: u64,
    uuid: [u8; 16],
    creator: String,
}

pub(in crate::source) fn parse_footer(
    buf: &[u8],
    at: u64,
    blame: &Blame,
) -> Result<Footer, ImageError> {
    // Footers of old images are 511 bytes; callers pass the 512 bytes that start with
    // the cookie.
    if &buf[..8] != b"conectix" {
        return Err(blame.malformed("footer", at, "no \"conectix\" cookie"));
    }
    let stored = be32(buf, 64);
    let computed = checksum(buf, 64);
    if stored != computed {
        return Err(blame.malformed(
            "footer",
            at,
            format!("checksum 0x{stored:08x} does not match the footer (0x{computed:08x})"),
        ));
    }
    let creator_app = &buf[28..32];
    let current_size = be64(buf, 48);
    let chs = u64::from(be16(buf, 56)) * u64::from(buf[58]) * u64::from(buf[59]);
    // qemu's rule (block/vpc.c), so the bytes match `qemu-img convert`: Virtual PC and
    // old qemu size the disk by its CHS geometry; Hyper-V, disk2vhd, XenServer and
    // newer qemu by current_size; a maximal geometry always means current_size.
    let by_size = [b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0"]
        .iter()
        .any(|c| creator_app == &c[..]);
    let virtual_size = if by_size || chs == MAX_CHS_SECTORS {
        current_size
    } else {
        chs * 512
    };
    Ok(Footer {
        disk_type: be32(buf, 60),
        data_offset: be64(buf, 16),
        virtual_size,
        uuid: buf[68..84].try_into().expect("16 bytes"),
        creator: String::from_utf8_lossy(creator_app)
            .trim_end_matches(['\0', ' '])
            .to_string(),
    })
}

/// Reads the footer: the last 512 bytes (or 511, for old images), or the copy at the
/// start of a dynamic disk whose tail was cut off.
fn read_footer(host: &HostFile, blame: &Blame) -> Result<Footer, ImageError> {
    let len = host.len_bytes();
    if len < FOOTER_LEN {
        return Err(blame.malformed("footer", 0, format!("file is only {len} bytes")));
    }
    let mut buf = [0u8; 513];
    let tail_at = len - FOOTER_LEN;
    host.read_exact_at(&mut buf[1..], tail_at, || "footer".into())?;
    if &buf[1..9] == b"conectix" {
        return parse_footer(&buf[1..], tail_at, blame);
    }
    if len > FOOTER_LEN {
        host.read_exact_at(&mut buf[..512], tail_at - 1, || "footer".into())?;
        if &buf[1..9] == b"conectix" {
            buf[512] = 0;
            return parse_footer(&buf[1..], tail_at - 1, blame);
        }
    }
    host.read_exact_at(&mut buf[..512], 0, || "footer copy".into())?;
    parse_footer(&buf[..512], 0, blame)
}

pub fn open(host: Arc<HostFile>, chain: &mut Chain) -> Result<Image, ImageError> {
    let blame = Blame::new(host.path(), ImageFormat::Vhd);
    let footer = read_footer(&host, &blame)?;
    if footer.virtual_size > MAX_SIZE {
        return Err(blame.malformed(
            "footer current size",
            48,
            format!("{} bytes is larger than a VHD can be", footer.virtual_size),
        ));
    }
    let mut info = ImageInfo::new(host.path(), ImageFormat::Vhd, footer.virtual_size);
    info.detail("creator", &footer.creator);
    match footer.disk_type {
        TYPE_FIXED => {
            info.detail("subformat", "fixed");
            let data_len = host.len_bytes() - FOOTER_LEN;
            if data_len < footer.virtual_size {
                return Err(blame.malformed("fixed disk data", 0, format!(
                    "holds {data_len} bytes but the footer says the disk has {}; the file is truncated",
                    footer.virtual_size
                )));
            }
            let layout = FixedLayout;
            Ok(Image::new(info, Box::new(layout), vec![host], None))
        }
        TYPE_DYNAMIC | TYPE_DIFFERENCING => open_dynamic(host, footer, info, blame, chain),
        t => Err(blame.unsupported(format!(
            "disk type {t} (dedisk reads fixed, dynamic and differencing)"
        ))),
    }
}

struct FixedLayout;

impl Layout for FixedLayout {
    fn map(&mut self, offset: u64) -> Result<(Run, u64), ImageError> {
        Ok((
            Run::Data {
                file: 0,
                host: offset,
            },
            u64::MAX - offset,
        ))
    }
    fn clone_layout(&self) -> Box<dyn Layout> {
        Box::new(FixedLayout)
    }
}

fn open_dynamic(
    host: Arc<HostFile>,
    footer: Footer,
    mut info: ImageInfo,
    blame: Blame,
    chain: &mut Chain,
) -> Result<Image, ImageError> {
    let at = footer.data_offset;
    let mut h = [0u8; DYN_HEADER_LEN as usize];
    host.read_exact_at(&mut h, at, || "dynamic disk header".into())?;
    if &h[..8] != b"cxsparse" {
        return Err(blame.malformed("dynamic disk header", at, "no \"cxsparse\" cookie"));
    }
    let stored = be32(&h, 36);
    if stored != checksum(&h, 36) {
        return Err(blame.malformed("dynamic disk header", at, "checksum does not match"));
    }
    let bat_offset = be64(&h, 16);
    let entries = be32(&h, 28);
    let block = u64::from(be32(&h, 32));
    if block < 512 || !block.is_power_of_two() || block > 256 << 20 {
        return Err(blame.malformed(
            "dynamic disk header block size",
            at + 32,
            format!("{block} is not a power of two between 512 B and 256 MiB"),
        ));
    }
    let need = footer.virtual_size.div_ceil(block);
    if u64::from(entries) < need {
        return Err(blame.malformed(
            "block allocation table",
            bat_offset,
            format!(
                "{entries} entries cannot map {} bytes in blocks of {block}",
                footer.virtual_size
            ),
        ));
    }
    let bat_raw = host.read_table(
        bat_offset,
        u64::from(entries) * 4,
        4 * ((MAX_SIZE / 512) + 1),
        || "block allocation table".into(),
        &blame,
    )?;
    let bat: Vec<u32> = bat_raw.chunks_exact(4).map(|c| be32(c, 0)).collect();
    // One bit per sector, rounded up to whole sectors.
    let bitmap_bytes = (block / 512).div_ceil(8).div_ceil(512) * 512;
    info.cluster_bytes = Some(block);
    let differencing = footer.disk_type == TYPE_DIFFERENCING;
    info.detail(
        "subformat",
        if differencing {
            "differencing"
        } else {
            "dynamic"
        },
    );
    let backing = if differencing {
        let parent_uuid: [u8; 16] = h[40..56].try_into().expect("16 bytes");
        let name = parent_name(&host, &h, at, &blame)?;
        info.detail("parent", &name);
        let parent = chain.open_backing(&blame, &name, None)?;
        if parent.info().format == ImageFormat::Vhd {
            let pf = read_footer(&HostFile::open(&parent.info().path, false)?, &blame)?;
            if pf.uuid != parent_uuid {
                return Err(blame.unsupported(format!(
                    "parent {} is not the disk this differencing disk was made from (UUID differs)",
                    parent.info().path.display()
                )));
            }
        }
        Some(parent)
    } else {
        None
    };
    let layout = DynamicLayout {
        blame,
        host: host.clone(),
        bat: Arc::new(bat),
        bat_offset,
        block,
        bitmap_bytes,
        differencing,
        bitmap: None,
    };
    Ok(Image::new(info, Box::new(layout), vec![host], backing))
}

/// The parent's file name, from the parent locators (relative Windows path first, then
/// absolute, then a Mac file URL), falling back to the parent's Unicode name.
fn parent_name(host: &HostFile, h: &[u8], at: u64, blame: &Blame) -> Result<String, ImageError> {
    let mut best: Option<(u8, String)> = None;
    for i in 0..8 {
        let e = &h[576 + i * 24..600 + i * 24];
        let code = &e[..4];
        let len = u64::from(be32(e, 8));
        let offset = be64(e, 16);
        let rank = match code {
            b"W2ru" => 0,
            b"W2ku" => 1,
            b"MacX" => 2,
            _ => continue,
        };
        let raw = host.read_table(offset, len, 4096, || format!("parent locator {i}"), blame)?;
        let name = if code == b"MacX" {
            let s = String::from_utf8_lossy(&raw).into_owned();
            s.strip_prefix("file://").unwrap_or(&s).to_string()
        } else {
            let units: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units).replace('\\', "/")
        };
        let name = name.trim_end_matches('\0').to_string();
        let name = name.strip_prefix("./").unwrap_or(&name).to_string();
        if !name.is_empty() && best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, name));
        }
    }
    if let Some((_, name)) = best {
        return Ok(name);
    }
    let units: Vec<u16> = h[64..576]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let name = String::from_utf16_lossy(&units)
        .trim_end_matches('\0')
        .to_string();
    if name.is_empty() {
        return Err(blame.malformed(
            "dynamic disk header",
            at + 64,
            "differencing disk names no parent",
        ));
    }
    Ok(name)
}

struct DynamicLayout {
    blame: Blame,
    host: Arc<HostFile>,
    bat: Arc<Vec<u32>>,
    bat_offset: u64,
    block: u64,
    bitmap_bytes: u64,
    differencing: bool,
    /// The last block's sector bitmap: (block index, bits).
    bitmap: Option<(u64, Vec<u8>)>,
}

impl Layout for DynamicLayout {
    fn map(&mut self, offset: u64) -> Result<(Run, u64), ImageError> {
        let unallocated = if self.differencing {
            Run::Backing
        } else {
            Run::Zero
        };
        let index = offset / self.block;
        let block_end = (index + 1) * self.block;
        let entry = self.bat.get(index as usize).copied().unwrap_or(UNALLOCATED);
        if entry == UNALLOCATED {
            // Merge following unallocated blocks so a sparse disk is skipped quickly.
            let mut end = block_end;
            let mut i = index as usize + 1;
            while self.bat.get(i) == Some(&UNALLOCATED)
                && end - offset < super::MAX_EXTENT_BYTES * 16
            {
                end += self.block;
                i += 1;
            }
            return Ok((unallocated, end - offset));
        }
        let bitmap_at = u64::from(entry) * 512;
        let data_at = bitmap_at + self.bitmap_bytes;
        if !matches!(&self.bitmap, Some((i, _)) if *i == index) {
            let bits = self.host.read_table(
                bitmap_at,
                self.bitmap_bytes,
                self.bitmap_bytes,
                || format!("sector bitmap of block {index}"),
                &self.blame,
            )?;
            self.bitmap = Some((index, bits));
        }
        let bits = &self.bitmap.as_ref().expect("loaded above").1;
        let sector = (offset % self.block) / 512;
        let set = |s: u64| bits[(s / 8) as usize] & (0x80 >> (s % 8)) != 0;
        let first = set(sector);
        let sectors = self.block / 512;
        let mut s = sector + 1;
        while s < sectors && set(s) == first {
            s += 1;
        }
        let len = s * 512 - offset % self.block;
        if first {
            Ok((
                Run::Data {
                    file: 0,
                    host: data_at + offset % self.block,
                },
                len,
            ))
        } else {
            Ok((unallocated, len))
        }
    }

    fn clone_layout(&self) -> Box<dyn Layout> {
        Box::new(DynamicLayout {
            blame: self.blame.clone(),
            host: self.host.clone(),
            bat: self.bat.clone(),
            bat_offset: self.bat_offset,
            block: self.block,
            bitmap_bytes: self.bitmap_bytes,
            differencing: self.differencing,
            bitmap: None,
        })
    }
}

#[cfg(test)]
pub(in crate::source) mod tests {
    use super::*;
    use crate::source::image::{open_image, OpenOptions};

    pub(in crate::source) const BLOCK: u64 = 1 << 20;

    fn footer(disk_type: u32, size: u64, uuid: u8) -> Vec<u8> {
        let mut f = vec![0u8; 512];
        f[..8].copy_from_slice(b"conectix");
        f[8..12].copy_from_slice(&2u32.to_be_bytes());
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        f[16..24].copy_from_slice(&512u64.to_be_bytes());
        f[28..32].copy_from_slice(b"win ");
        f[40..48].copy_from_slice(&size.to_be_bytes());
        f[48..56].copy_from_slice(&size.to_be_bytes());
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        f[68..84].fill(uuid);
        let sum = checksum(&f, 64);
        f[64..68].copy_from_slice(&sum.to_be_bytes());
        f
    }

    /// A dynamic (or, with a parent, differencing) VHD of 4 MiB in 1 MiB blocks.
    /// `sectors` lists (block, first sector, count, byte) runs to write.
    pub(in crate::source) fn vhd(
        parent: Option<(&str, u8)>,
        uuid: u8,
        sectors: &[(u64, u64, u64, u8)],
    ) -> Vec<u8> {
        let size = 4 * BLOCK;
        let kind = if parent.is_some() {
            TYPE_DIFFERENCING
        } else {
            TYPE_DYNAMIC
        };
        let mut out = footer(kind, size, uuid);
        let mut h = vec![0u8; 1024];
        h[..8].copy_from_slice(b"cxsparse");
        h[8..16].fill(0xff);
        h[16..24].copy_from_slice(&1536u64.to_be_bytes()); // BAT right after the header
        h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        h[28..32].copy_from_slice(&4u32.to_be_bytes());
        h[32..36].copy_from_slice(&(BLOCK as u32).to_be_bytes());
        let mut locator = Vec::new();
        if let Some((name, puuid)) = parent {
            h[40..56].fill(puuid);
            locator = name.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            let e = &mut h[576..600];
            e[..4].copy_from_slice(b"W2ru");
            e[4..8].copy_from_slice(&512u32.to_be_bytes());
            e[8..12].copy_from_slice(&(locator.len() as u32).to_be_bytes());
            e[16..24].copy_from_slice(&2048u64.to_be_bytes());
        }
        let sum = checksum(&h, 36);
        h[36..40].copy_from_slice(&sum.to_be_bytes());
        out.extend(h);
        let mut bat = vec![0xffu8; 512];
        out.resize(1536, 0);
        let mut blocks: Vec<u64> = sectors.iter().map(|s| s.0).collect();
        blocks.dedup();
        let mut data = Vec::new();
        let first = 2560u64; // after the locator sector
        for (i, b) in blocks.iter().enumerate() {
            let at = first + i as u64 * (512 + BLOCK);
            bat[*b as usize * 4..*b as usize * 4 + 4]
                .copy_from_slice(&((at / 512) as u32).to_be_bytes());
            let mut bitmap = vec![0u8; 512];
            let mut block = vec![0u8; BLOCK as usize];
            for &(sb, s, n, byte) in sectors.iter().filter(|s| s.0 == *b) {
                debug_assert_eq!(sb, *b);
                for k in s..s + n {
                    bitmap[(k / 8) as usize] |= 0x80 >> (k % 8);
                    block[(k * 512) as usize..(k * 512 + 512) as usize].fill(byte);
                }
            }
            data.extend(bitmap);
            data.extend(block);
        }
        out.extend(bat);
        out.resize(2048, 0);
        out.extend(&locator);
        out.resize(first as usize, 0);
        out.extend(data);
        out.extend(footer(kind, size, uuid));
        out
    }

    #[test]
    fn differencing_vhd_reads_its_parent_where_its_bitmap_is_clear() {
        let dir = tempfile::tempdir().unwrap();
        let parent = vhd(None, 1, &[(0, 0, 2048, 0xaa), (2, 10, 5, 0xbb)]);
        std::fs::write(dir.path().join("parent.vhd"), parent).unwrap();
        let child = vhd(
            Some((".\\parent.vhd", 1)),
            2,
            &[(0, 8, 8, 0xcc), (3, 0, 1, 0xdd)],
        );
        let path = dir.path().join("child.vhd");
        std::fs::write(&path, child).unwrap();
        let mut img = open_image(&path, &OpenOptions::default()).unwrap();
        assert_eq!(img.chain().len(), 2);
        let mut disk = vec![0u8; 4 * BLOCK as usize];
        assert_eq!(img.read_at(0, &mut disk).unwrap(), disk.len());
        let at = |sector: u64| disk[(sector * 512) as usize];
        assert_eq!(at(0), 0xaa, "parent data under a clear child bit");
        assert_eq!(at(8), 0xcc, "child data");
        assert_eq!(at(16), 0xaa);
        assert_eq!(at(2048), 0, "unallocated in both");
        assert_eq!(at(2 * 2048 + 10), 0xbb, "parent block the child lacks");
        assert_eq!(at(3 * 2048), 0xdd);
        assert_eq!(at(3 * 2048 + 1), 0, "child's clear bit, parent unallocated");
        let extents: Vec<_> = std::iter::successors(img.next_data(0).unwrap(), |&(_, e)| {
            img.next_data(e).unwrap()
        })
        .collect();
        assert_eq!(extents.first(), Some(&(0, BLOCK)));

        // A parent with another UUID is not this child's parent.
        let other = vhd(None, 9, &[]);
        std::fs::write(dir.path().join("parent.vhd"), other).unwrap();
        let err = open_image(&path, &OpenOptions::default()).err().unwrap();
        assert!(err.to_string().contains("UUID differs"), "{err}");
    }
}
