//! VMware VMDK: monolithicSparse, streamOptimized, monolithicFlat, and descriptor files
//! whose extents are sparse, flat (incl. VMFS) or zero, split or not (twoGbMaxExtent*).
//!
//! A sparse extent ("KDMV") maps grains through a grain directory (GD) of grain tables
//! (GT). streamOptimized extents store each grain zlib-compressed behind a 12-byte marker
//! and may keep their real header in a footer at the end. A descriptor with a
//! `parentCID` and `parentFileNameHint` is a delta disk; its parent becomes the backing.

use std::sync::Arc;

use super::bytes::{le32, le64};
use super::{Blame, Chain, Codec, Compressed, HostFile, Image, ImageError, ImageInfo, Layout, Run};
use crate::source::detect::ImageFormat;

const SPARSE_MAGIC: &[u8; 4] = b"KDMV";
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const GD_AT_END: u64 = u64::MAX;
/// Descriptor files are a few hundred bytes; anything this large is not one.
const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// 2^63 bytes, in sectors.
const MAX_CAPACITY_SECTORS: u64 = 1 << 54;
const MAX_GD_BYTES: u64 = 256 << 20;

struct SparseHeader {
    flags: u32,
    capacity: u64,
    grain: u64,
    descriptor_offset: u64,
    descriptor_sectors: u64,
    gtes_per_gt: u64,
    gd_offset: u64,
    compression: u16,
}

fn parse_sparse_header(h: &[u8], at: u64, blame: &Blame) -> Result<SparseHeader, ImageError> {
    if &h[..4] != SPARSE_MAGIC {
        return Err(blame.malformed("sparse extent header", at, "no KDMV magic"));
    }
    let version = le32(h, 4);
    if !(1..=3).contains(&version) {
        return Err(blame.unsupported(format!("sparse extent version {version}")));
    }
    let s = SparseHeader {
        flags: le32(h, 8),
        capacity: le64(h, 12),
        grain: le64(h, 20),
        descriptor_offset: le64(h, 28),
        descriptor_sectors: le64(h, 36),
        gtes_per_gt: u64::from(le32(h, 44)),
        gd_offset: le64(h, 56),
        compression: u16::from_le_bytes([h[77], h[78]]),
    };
    if s.capacity > MAX_CAPACITY_SECTORS {
        return Err(blame.malformed(
            "sparse extent capacity",
            at + 12,
            format!("{} sectors is more than 2^63 bytes", s.capacity),
        ));
    }
    if s.grain == 0 || !s.grain.is_power_of_two() || s.grain > super::MAX_UNIT_BYTES / 512 {
        return Err(blame.malformed(
            "sparse extent grain size",
            at + 20,
            format!("{} sectors is not a power of two up to 16 MiB", s.grain),
        ));
    }
    if s.gtes_per_gt == 0 || s.gtes_per_gt > 512 {
        return Err(blame.malformed(
            "sparse extent numGTEsPerGT",
            at + 44,
            format!("{} is outside 1..=512", s.gtes_per_gt),
        ));
    }
    if s.flags & FLAG_COMPRESSED != 0 && s.compression != 1 {
        return Err(blame.unsupported(format!("grain compression algorithm {}", s.compression)));
    }
    Ok(s)
}

/// One extent of the virtual disk, `sectors` long.
enum Extent {
    Flat { file: usize, offset_bytes: u64 },
    Zero,
    Sparse(Arc<Sparse>),
}

/// A sparse extent's grain directory, loaded whole (it is small: 4 bytes per 32 MiB).
struct Sparse {
    file: usize,
    host: Arc<HostFile>,
    blame: Blame,
    grain_bytes: u64,
    gtes_per_gt: u64,
    gd: Vec<u32>,
    compressed: bool,
    markers: bool,
    zero_grains: bool,
    capacity_bytes: u64,
}

fn open_sparse(
    host: Arc<HostFile>,
    file: usize,
    blame: &Blame,
) -> Result<(Sparse, SparseHeader), ImageError> {
    let mut h = [0u8; 512];
    host.read_exact_at(&mut h, 0, || "sparse extent header".into())?;
    let mut hdr = parse_sparse_header(&h, 0, blame)?;
    if hdr.gd_offset == GD_AT_END {
        // streamOptimized written in one pass: the real header is in the footer, 1 KiB
        // before the end (a footer marker sector, this header, an end-of-stream marker).
        let len = host.len_bytes();
        if len < 1536 {
            return Err(blame.malformed("stream footer", 0, "file too short to hold one"));
        }
        host.read_exact_at(&mut h, len - 1024, || "stream footer".into())?;
        hdr = parse_sparse_header(&h, len - 1024, blame)?;
        if hdr.gd_offset == GD_AT_END {
            return Err(blame.malformed(
                "stream footer",
                len - 1024,
                "grain directory offset still unknown",
            ));
        }
    }
    let grain_bytes = hdr.grain * 512;
    let gt_span = grain_bytes * hdr.gtes_per_gt;
    let capacity_bytes = hdr.capacity * 512;
    let gd_entries = capacity_bytes.div_ceil(gt_span);
    let gd_offset = hdr.gd_offset.saturating_mul(512);
    let raw = host.read_table(
        gd_offset,
        gd_entries * 4,
        MAX_GD_BYTES,
        || "grain directory".into(),
        blame,
    )?;
    let gd = raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
    let sparse = Sparse {
        file,
        host,
        blame: blame.clone(),
        grain_bytes,
        gtes_per_gt: hdr.gtes_per_gt,
        gd,
        compressed: hdr.flags & FLAG_COMPRESSED != 0,
        markers: hdr.flags & FLAG_MARKERS != 0,
        zero_grains: hdr.flags & FLAG_ZERO_GRAIN != 0,
        capacity_bytes,
    };
    Ok((sparse, hdr))
}

pub fn open(host: Arc<HostFile>, chain: &mut Chain) -> Result<Image, ImageError> {
    let blame = Blame::new(host.path(), ImageFormat::Vmdk);
    let mut head = [0u8; 4];
    host.read_exact_at(&mut head, 0, || "header".into())?;
    let mut files = vec![host.clone()];
    let mut extents: Vec<(u64, Extent)> = Vec::new();
    let descriptor;
    let mut info_grain = None;
    if &head == SPARSE_MAGIC {
        let (sparse, hdr) = open_sparse(host.clone(), 0, &blame)?;
        info_grain = Some(sparse.grain_bytes);
        descriptor = if hdr.descriptor_offset > 0 && hdr.descriptor_sectors > 0 {
            let len = hdr
                .descriptor_sectors
                .saturating_mul(512)
                .min(MAX_DESCRIPTOR_BYTES);
            let raw = host.read_table(
                hdr.descriptor_offset.saturating_mul(512),
                len,
                MAX_DESCRIPTOR_BYTES,
                || "embedded descriptor".into(),
                &blame,
            )?;
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            Some(String::from_utf8_lossy(&raw[..end]).into_owned())
        } else {
            None
        };
        extents.push((hdr.capacity, Extent::Sparse(Arc::new(sparse))));
    } else if &head == b"COWD" {
        return Err(blame.unsupported(
            "ESX COWD (vmfsSparse) extents; convert with vmkfstools or qemu-img first",
        ));
    } else {
        let raw = host.read_table(
            0,
            host.len_bytes(),
            MAX_DESCRIPTOR_BYTES,
            || "descriptor file".into(),
            &blame,
        )?;
        let text = String::from_utf8(raw)
            .map_err(|_| blame.malformed("descriptor file", 0, "not UTF-8 text"))?;
        for (n, line) in text.lines().enumerate() {
            let Some(e) = parse_extent_line(line) else {
                continue;
            };
            let (access, sectors, kind, name, offset) = e.map_err(|problem| {
                blame.malformed(format!("descriptor line {}", n + 1), 0, problem)
            })?;
            if access == "NOACCESS" {
                return Err(blame.unsupported(format!("extent {name:?} is NOACCESS")));
            }
            let extent = match kind.as_str() {
                "ZERO" => Extent::Zero,
                "FLAT" | "VMFS" => {
                    let path = chain.confined(&blame, &name, "VMDK extent")?;
                    files.push(Arc::new(HostFile::open(&path, chain.direct)?));
                    Extent::Flat {
                        file: files.len() - 1,
                        offset_bytes: offset.saturating_mul(512),
                    }
                }
                "SPARSE" => {
                    let path = chain.confined(&blame, &name, "VMDK extent")?;
                    let f = Arc::new(HostFile::open(&path, chain.direct)?);
                    files.push(f.clone());
                    let (sparse, _) =
                        open_sparse(f, files.len() - 1, &Blame::new(&path, ImageFormat::Vmdk))?;
                    info_grain = Some(sparse.grain_bytes);
                    Extent::Sparse(Arc::new(sparse))
                }
                other => {
                    return Err(blame.unsupported(format!(
                        "extent type {other} (dedisk reads SPARSE, FLAT, VMFS and ZERO)"
                    )))
                }
            };
            extents.push((sectors, extent));
        }
        if extents.is_empty() {
            return Err(blame.malformed("descriptor file", 0, "lists no extents"));
        }
        descriptor = Some(text);
    }
    let mut virtual_sectors = 0u64;
    for (sectors, _) in &extents {
        virtual_sectors = virtual_sectors
            .checked_add(*sectors)
            .filter(|s| *s <= MAX_CAPACITY_SECTORS)
            .ok_or_else(|| blame.malformed("extents", 0, "add up to more than 2^63 bytes"))?;
    }
    let mut info = ImageInfo::new(host.path(), ImageFormat::Vmdk, virtual_sectors * 512);
    info.cluster_bytes = info_grain;
    let field = |key: &str| descriptor.as_deref().and_then(|d| descriptor_field(d, key));
    info.detail(
        "create_type",
        field("createType").unwrap_or_else(|| "(no descriptor)".into()),
    );
    info.detail("extents", extents.len());
    let backing = match (field("parentCID"), field("parentFileNameHint")) {
        (Some(cid), Some(hint)) if !cid.eq_ignore_ascii_case("ffffffff") => {
            info.detail("parent", &hint);
            Some(chain.open_backing(&blame, &hint, None)?)
        }
        (Some(cid), None) if !cid.eq_ignore_ascii_case("ffffffff") => {
            return Err(blame.unsupported("delta disk without a parentFileNameHint"));
        }
        _ => None,
    };
    let mut starts = Vec::new();
    let mut at = 0u64;
    for (sectors, e) in extents {
        starts.push((at * 512, sectors * 512, e));
        at += sectors;
    }
    let layout = VmdkLayout {
        extents: Arc::new(starts),
        gt_cache: None,
    };
    Ok(Image::new(info, Box::new(layout), files, backing))
}

type ExtentLine = (String, u64, String, String, u64);

/// Parses `RW 20480 SPARSE "name.vmdk" [offset]`; `None` for lines that are not extents.
fn parse_extent_line(line: &str) -> Option<Result<ExtentLine, String>> {
    let line = line.trim();
    let access = ["RW ", "RDONLY ", "NOACCESS "]
        .iter()
        .find(|a| line.starts_with(**a))?;
    let rest = &line[access.len()..];
    let mut parts = rest.trim_start().splitn(2, ' ');
    let sectors = parts.next()?;
    let Ok(sectors) = sectors.parse::<u64>() else {
        return Some(Err(format!("extent size {sectors:?} is not a number")));
    };
    let rest = parts.next().unwrap_or("").trim_start();
    let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let rest = rest.trim_start();
    let (name, rest) = if let Some(r) = rest.strip_prefix('"') {
        match r.split_once('"') {
            Some((n, after)) => (n.to_string(), after),
            None => return Some(Err("unterminated file name".into())),
        }
    } else {
        (String::new(), rest)
    };
    if kind != "ZERO" && name.is_empty() {
        return Some(Err(format!("{kind} extent without a file name")));
    }
    let offset = match rest.trim() {
        "" => 0,
        o => match o.parse() {
            Ok(v) => v,
            Err(_) => return Some(Err(format!("extent offset {o:?} is not a number"))),
        },
    };
    Some(Ok((
        access.trim().to_string(),
        sectors,
        kind.to_string(),
        name,
        offset,
    )))
}

/// `key="value"` or `key=value` from a descriptor.
fn descriptor_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

struct VmdkLayout {
    /// (start byte, length in bytes, extent), in disk order.
    extents: Arc<Vec<(u64, u64, Extent)>>,
    /// The last grain table read: (host offset, entries).
    gt_cache: Option<(u64, Vec<u32>)>,
}

impl VmdkLayout {
    fn map_sparse(
        &mut self,
        s: &Sparse,
        offset: u64,
        limit: u64,
    ) -> Result<(Run, u64), ImageError> {
        if offset >= s.capacity_bytes {
            return Ok((Run::Zero, limit));
        }
        let gt_span = s.grain_bytes * s.gtes_per_gt;
        let gd_index = (offset / gt_span) as usize;
        let gt_end = (gd_index as u64 + 1) * gt_span;
        let gt_sector = s.gd.get(gd_index).copied().unwrap_or(0);
        if gt_sector == 0 {
            return Ok((Run::Backing, (gt_end - offset).min(limit)));
        }
        let gt_at = u64::from(gt_sector) * 512;
        if !matches!(&self.gt_cache, Some((at, _)) if *at == gt_at) {
            let what = || format!("grain table of grain directory entry {gd_index}");
            let raw = s
                .host
                .read_table(gt_at, s.gtes_per_gt * 4, 2048, what, &s.blame)?;
            self.gt_cache = Some((gt_at, raw.chunks_exact(4).map(|c| le32(c, 0)).collect()));
        }
        let gt = &self.gt_cache.as_ref().expect("loaded above").1;
        let first = ((offset % gt_span) / s.grain_bytes) as usize;
        let into = offset % s.grain_bytes;
        let grain_start = offset - into;
        let kind = |e: u32| match e {
            0 => 0u8,
            1 if s.zero_grains => 1,
            _ => 2,
        };
        let e = gt[first];
        if kind(e) == 2 && s.compressed {
            let at = u64::from(e) * 512;
            let (host, len) = if s.markers {
                let mut m = [0u8; 12];
                s.host.read_exact_at(&mut m, at, || {
                    format!("grain marker for guest offset {offset}")
                })?;
                let lba = le64(&m, 0);
                if lba.checked_mul(512) != Some(grain_start) {
                    return Err(s.blame.malformed(
                        "grain marker",
                        at,
                        format!(
                            "says sector {lba}, the grain table says {}",
                            grain_start / 512
                        ),
                    ));
                }
                (at + 12, u64::from(le32(&m, 8)))
            } else {
                (at, s.grain_bytes * 2)
            };
            let unit_len = s.grain_bytes.min(s.capacity_bytes - grain_start);
            let c = Compressed {
                file: s.file,
                host,
                len,
                codec: Codec::Zlib,
                unit_start: grain_start,
                unit_len,
            };
            return Ok((Run::Compressed(c), (unit_len - into).min(limit)));
        }
        let mut n = 1usize;
        while first + n < gt.len() {
            let next = gt[first + n];
            let same = match kind(e) {
                2 => {
                    kind(next) == 2
                        && u64::from(next) == u64::from(e) + n as u64 * (s.grain_bytes / 512)
                }
                k => kind(next) == k,
            };
            if !same {
                break;
            }
            n += 1;
        }
        let len = (n as u64 * s.grain_bytes - into).min(limit);
        Ok(match kind(e) {
            0 => (Run::Backing, len),
            1 => (Run::Zero, len),
            _ => (
                Run::Data {
                    file: s.file,
                    host: u64::from(e) * 512 + into,
                },
                len,
            ),
        })
    }
}

impl Layout for VmdkLayout {
    fn map(&mut self, offset: u64) -> Result<(Run, u64), ImageError> {
        let extents = self.extents.clone();
        let i = extents
            .partition_point(|(start, _, _)| *start <= offset)
            .saturating_sub(1);
        let Some((start, len, extent)) = extents.get(i) else {
            return Ok((Run::Zero, u64::MAX - offset));
        };
        let into = offset - start;
        if into >= *len {
            return Ok((Run::Zero, u64::MAX - offset));
        }
        let limit = len - into;
        match extent {
            Extent::Zero => Ok((Run::Zero, limit)),
            Extent::Flat { file, offset_bytes } => Ok((
                Run::Data {
                    file: *file,
                    host: offset_bytes.saturating_add(into),
                },
                limit,
            )),
            Extent::Sparse(s) => {
                let (run, n) = self.map_sparse(s, into, limit)?;
                let run = match run {
                    Run::Compressed(mut c) => {
                        c.unit_start += start;
                        Run::Compressed(c)
                    }
                    r => r,
                };
                Ok((run, n))
            }
        }
    }

    fn clone_layout(&self) -> Box<dyn Layout> {
        Box::new(VmdkLayout {
            extents: self.extents.clone(),
            gt_cache: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::image::{open_image, OpenOptions};

    /// A streamOptimized extent of one grain table whose first grain's marker claims
    /// sector 2^62: found by the image_vmdk fuzz target (issue 3), it overflowed `lba * 512`.
    #[test]
    fn grain_marker_with_a_huge_sector_is_an_error_not_an_overflow() {
        let mut f = vec![0u8; 4096];
        f[..4].copy_from_slice(SPARSE_MAGIC);
        f[4..8].copy_from_slice(&3u32.to_le_bytes());
        f[8..12].copy_from_slice(&(FLAG_COMPRESSED | FLAG_MARKERS).to_le_bytes());
        f[12..20].copy_from_slice(&2048u64.to_le_bytes()); // capacity: 1 MiB
        f[20..28].copy_from_slice(&128u64.to_le_bytes()); // 64 KiB grains
        f[44..48].copy_from_slice(&512u32.to_le_bytes());
        f[56..64].copy_from_slice(&1u64.to_le_bytes()); // GD at sector 1
        f[77..79].copy_from_slice(&1u16.to_le_bytes()); // deflate
        f[512..516].copy_from_slice(&2u32.to_le_bytes()); // GT at sector 2
        f[1024..1028].copy_from_slice(&6u32.to_le_bytes()); // grain 0 at sector 6
        f[3072..3080].copy_from_slice(&(1u64 << 62).to_le_bytes());
        f[3080..3084].copy_from_slice(&100u32.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.vmdk");
        std::fs::write(&path, f).unwrap();
        let mut img = open_image(&path, &OpenOptions::default()).unwrap();
        let err = img.read_at(0, &mut [0u8; 512]).unwrap_err();
        assert!(err.to_string().contains("grain marker"), "{err}");
    }
}
