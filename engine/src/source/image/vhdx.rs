//! Microsoft VHDX (Hyper-V): fixed and dynamic disks, per the VHDX format specification
//! v1.0 ([MS-VHDX]).
//!
//! Two checksummed headers (the one with the higher sequence number wins), two
//! checksummed region tables locating the block allocation table (BAT) and the metadata
//! region, and metadata items giving the block size, sector size and virtual size. A
//! header whose log GUID is set means writes were interrupted and the log must be
//! replayed first; dedisk reports that rather than read possibly stale blocks.

use std::sync::Arc;

use super::bytes::{le16, le32, le64};
use super::{Blame, HostFile, Image, ImageError, ImageInfo, Layout, Run};
use crate::source::detect::ImageFormat;

const HEADER_AT: [u64; 2] = [64 << 10, 128 << 10];
const REGION_AT: [u64; 2] = [192 << 10, 256 << 10];
const REGION_LEN: u64 = 64 << 10;
const MIB: u64 = 1 << 20;
/// The spec's limit: 64 TiB.
const MAX_SIZE: u64 = 64 << 40;

const BAT_GUID: &str = "2DC27766-F623-4200-9D64-115E9BFD4A08";
const METADATA_GUID: &str = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
const FILE_PARAMETERS: &str = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B";
const VIRTUAL_DISK_SIZE: &str = "2FA54224-CD1B-4876-B211-5DBED83BF4B8";
const LOGICAL_SECTOR_SIZE: &str = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F";
const KNOWN_METADATA: [&str; 6] = [
    FILE_PARAMETERS,
    VIRTUAL_DISK_SIZE,
    LOGICAL_SECTOR_SIZE,
    "CDA348C7-445D-4471-9CC9-E9885251C556", // physical sector size
    "BECA12AB-B2E6-4523-93EF-C309E000C746", // page 83 data
    "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C", // parent locator
];

const PAYLOAD_NOT_PRESENT: u64 = 0;
const PAYLOAD_UNDEFINED: u64 = 1;
const PAYLOAD_ZERO: u64 = 2;
const PAYLOAD_UNMAPPED: u64 = 3;
const PAYLOAD_FULLY_PRESENT: u64 = 6;

/// A GUID as stored on disk: the first three fields little-endian.
fn guid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for (i, out) in b.iter_mut().enumerate() {
        // The constants above are well-formed 32-digit GUIDs.
        *out = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).expect("constant GUID");
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// CRC-32C of `buf` with its 4-byte checksum field at `at` taken as zero.
fn crc_without(buf: &[u8], at: usize) -> u32 {
    let c = crc32c::crc32c(&buf[..at]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &buf[at + 4..])
}

struct Header {
    sequence: u64,
    log_guid: [u8; 16],
    version: u16,
}

fn read_header(host: &HostFile, at: u64) -> Result<Option<Header>, ImageError> {
    let mut h = vec![0u8; 4096];
    if host.len_bytes() < at + 4096 {
        return Ok(None);
    }
    host.read_exact_at(&mut h, at, || "header".into())?;
    if &h[..4] != b"head" || le32(&h, 4) != crc_without(&h, 4) {
        return Ok(None);
    }
    Ok(Some(Header {
        sequence: le64(&h, 8),
        log_guid: h[48..64].try_into().expect("16 bytes"),
        version: le16(&h, 66),
    }))
}

/// A region table entry: (GUID, file offset, length, required).
type Region = ([u8; 16], u64, u64, bool);

fn read_regions(host: &HostFile, blame: &Blame) -> Result<Vec<Region>, ImageError> {
    for at in REGION_AT {
        if host.len_bytes() < at + REGION_LEN {
            continue;
        }
        let t = host.read_table(at, REGION_LEN, REGION_LEN, || "region table".into(), blame)?;
        if &t[..4] != b"regi" || le32(&t, 4) != crc_without(&t, 4) {
            continue;
        }
        let count = le32(&t, 8) as usize;
        if count > 2047 {
            return Err(blame.malformed(
                "region table",
                at + 8,
                format!("{count} entries (at most 2047)"),
            ));
        }
        return Ok((0..count)
            .map(|i| {
                let e = &t[16 + i * 32..48 + i * 32];
                let g: [u8; 16] = e[..16].try_into().expect("16 bytes");
                (g, le64(e, 16), u64::from(le32(e, 24)), le32(e, 28) & 1 != 0)
            })
            .collect());
    }
    Err(blame.malformed(
        "region table",
        REGION_AT[0],
        "neither copy has a valid signature and checksum",
    ))
}

pub fn open(host: Arc<HostFile>) -> Result<Image, ImageError> {
    let blame = Blame::new(host.path(), ImageFormat::Vhdx);
    let mut sig = [0u8; 8];
    host.read_exact_at(&mut sig, 0, || "file identifier".into())?;
    if &sig != b"vhdxfile" {
        return Err(blame.malformed("file identifier", 0, "no \"vhdxfile\" signature"));
    }
    let headers = [
        read_header(&host, HEADER_AT[0])?,
        read_header(&host, HEADER_AT[1])?,
    ];
    let header = headers
        .into_iter()
        .flatten()
        .max_by_key(|h| h.sequence)
        .ok_or_else(|| {
            blame.malformed(
                "header",
                HEADER_AT[0],
                "neither copy has a valid signature and checksum",
            )
        })?;
    if header.version != 1 {
        return Err(blame.unsupported(format!("VHDX version {}", header.version)));
    }
    if header.log_guid != [0; 16] {
        return Err(blame.unsupported(
            "the log is dirty (the image was not closed cleanly); replay it first by opening the disk once in Hyper-V or with `qemu-img check -r all`",
        ));
    }
    let regions = read_regions(&host, &blame)?;
    let (mut bat, mut meta) = (None, None);
    for (g, offset, len, required) in &regions {
        if *g == guid(BAT_GUID) {
            bat = Some((*offset, *len));
        } else if *g == guid(METADATA_GUID) {
            meta = Some((*offset, *len));
        } else if *required {
            return Err(blame.unsupported("an unknown required region"));
        }
    }
    let (bat_at, bat_len) =
        bat.ok_or_else(|| blame.malformed("region table", REGION_AT[0], "no BAT region"))?;
    let (meta_at, meta_len) =
        meta.ok_or_else(|| blame.malformed("region table", REGION_AT[0], "no metadata region"))?;
    let m = host.read_table(
        meta_at,
        meta_len,
        256 * MIB,
        || "metadata region".into(),
        &blame,
    )?;
    if m.len() < 32 || &m[..8] != b"metadata" {
        return Err(blame.malformed("metadata table", meta_at, "no \"metadata\" signature"));
    }
    let count = usize::from(le16(&m, 10));
    if count > 2047 || 32 + count * 32 > m.len() {
        return Err(blame.malformed(
            "metadata table",
            meta_at + 10,
            format!("{count} entries do not fit"),
        ));
    }
    let item = |id: &str, len: usize| -> Result<Option<Vec<u8>>, ImageError> {
        let want = guid(id);
        for i in 0..count {
            let e = &m[32 + i * 32..64 + i * 32];
            if e[..16] == want {
                let off = le32(e, 16) as usize;
                let n = le32(e, 20) as usize;
                if n < len || off.checked_add(n).is_none_or(|end| end > m.len()) {
                    return Err(blame.malformed(
                        format!("metadata item {id}"),
                        meta_at + off as u64,
                        "lies outside the metadata region",
                    ));
                }
                return Ok(Some(m[off..off + len].to_vec()));
            }
        }
        Ok(None)
    };
    for i in 0..count {
        let e = &m[32 + i * 32..64 + i * 32];
        let required = le32(e, 24) & 4 != 0;
        if required && !KNOWN_METADATA.iter().any(|k| e[..16] == guid(k)) {
            return Err(blame.unsupported("an unknown required metadata item"));
        }
    }
    let missing = |what: &str| blame.malformed("metadata", meta_at, format!("no {what} item"));
    let params = item(FILE_PARAMETERS, 8)?.ok_or_else(|| missing("file parameters"))?;
    let block = u64::from(le32(&params, 0));
    let has_parent = le32(&params, 4) & 2 != 0;
    let size = le64(
        &item(VIRTUAL_DISK_SIZE, 8)?.ok_or_else(|| missing("virtual disk size"))?,
        0,
    );
    let sector = u64::from(le32(
        &item(LOGICAL_SECTOR_SIZE, 4)?.ok_or_else(|| missing("logical sector size"))?,
        0,
    ));
    if has_parent {
        return Err(blame.unsupported("differencing VHDX (has a parent); merge it in Hyper-V or back up the parent chain with qemu-img convert first"));
    }
    if !(MIB..=256 * MIB).contains(&block) || !block.is_power_of_two() {
        return Err(blame.malformed(
            "file parameters block size",
            meta_at,
            format!("{block} is not a power of two from 1 MiB to 256 MiB"),
        ));
    }
    if sector != 512 && sector != 4096 {
        return Err(blame.malformed(
            "logical sector size",
            meta_at,
            format!("{sector}, expected 512 or 4096"),
        ));
    }
    if size > MAX_SIZE || !size.is_multiple_of(sector) {
        return Err(blame.malformed(
            "virtual disk size",
            meta_at,
            format!("{size} bytes is not a whole number of sectors up to 64 TiB"),
        ));
    }
    let chunk_ratio = ((1u64 << 23) * sector) / block;
    let blocks = size.div_ceil(block);
    let entries = if blocks == 0 {
        0
    } else {
        blocks + (blocks - 1) / chunk_ratio
    };
    if entries * 8 > bat_len {
        return Err(blame.malformed(
            "BAT region",
            bat_at,
            format!("{bat_len} bytes cannot hold {entries} entries"),
        ));
    }
    let raw = host.read_table(bat_at, entries * 8, 256 * MIB, || "BAT".into(), &blame)?;
    let bat: Vec<u64> = raw.chunks_exact(8).map(|c| le64(c, 0)).collect();
    let mut info = ImageInfo::new(host.path(), ImageFormat::Vhdx, size);
    info.cluster_bytes = Some(block);
    info.detail("logical_sector_bytes", sector);
    let fixed = bat.iter().enumerate().all(|(i, e)| {
        (i as u64 + 1).is_multiple_of(chunk_ratio + 1) || e & 7 == PAYLOAD_FULLY_PRESENT
    });
    info.detail("subformat", if fixed { "fixed" } else { "dynamic" });
    let layout = VhdxLayout {
        blame,
        bat: Arc::new(bat),
        bat_at,
        block,
        chunk_ratio,
    };
    Ok(Image::new(info, Box::new(layout), vec![host], None))
}

#[derive(Clone)]
struct VhdxLayout {
    blame: Blame,
    bat: Arc<Vec<u64>>,
    bat_at: u64,
    block: u64,
    chunk_ratio: u64,
}

impl VhdxLayout {
    /// The run of payload block `b`: Zero, or Data at a host offset.
    fn block(&self, b: u64) -> Result<Option<u64>, ImageError> {
        let i = b + b / self.chunk_ratio;
        let Some(&e) = self.bat.get(i as usize) else {
            return Ok(None);
        };
        match e & 7 {
            PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED => Ok(None),
            PAYLOAD_FULLY_PRESENT => {
                if e & 0xf_fff8 != 0 {
                    return Err(self.blame.malformed(
                        format!("BAT entry {i}"),
                        self.bat_at + i * 8,
                        "reserved bits set",
                    ));
                }
                Ok(Some((e >> 20) * MIB))
            }
            s => Err(self.blame.malformed(
                format!("BAT entry {i}"),
                self.bat_at + i * 8,
                format!("invalid block state {s} in a disk without a parent"),
            )),
        }
    }
}

impl Layout for VhdxLayout {
    fn map(&mut self, offset: u64) -> Result<(Run, u64), ImageError> {
        let b = offset / self.block;
        let into = offset % self.block;
        let head = self.block(b)?;
        let limit = (super::MAX_EXTENT_BYTES / self.block).max(1);
        let mut n = 1u64;
        while n < limit {
            let next = self.block(b + n)?;
            let continues = match (head, next) {
                (None, None) => true,
                (Some(h), Some(x)) => Some(x) == h.checked_add(n * self.block),
                _ => false,
            };
            if !continues {
                break;
            }
            n += 1;
        }
        let len = n * self.block - into;
        Ok(match head {
            None => (Run::Zero, len),
            Some(h) => (
                Run::Data {
                    file: 0,
                    host: h.saturating_add(into),
                },
                len,
            ),
        })
    }

    fn clone_layout(&self) -> Box<dyn Layout> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// A VHDX made by qemu-img from a raw disk with two data runs, and that disk; `None`
    /// (the test then says so and passes) without qemu-img.
    fn qemu_made(dir: &Path) -> Option<(PathBuf, Vec<u8>)> {
        let mut want = vec![0u8; 8 << 20];
        want[..300_000]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 249) as u8 | 1);
        want[5 << 20..6 << 20].fill(0x5a);
        let raw = dir.join("disk.raw");
        std::fs::write(&raw, &want).unwrap();
        let vhdx = dir.join("t.vhdx");
        let ok = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vhdx"])
            .arg(&raw)
            .arg(&vhdx)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: qemu-img cannot make a VHDX here");
            return None;
        }
        Some((vhdx, want))
    }

    fn open(path: &Path) -> Result<Image, ImageError> {
        crate::source::image::open_as(path, ImageFormat::Vhdx)
    }

    #[test]
    fn a_qemu_made_image_reads_back_its_disk() {
        let dir = tempfile::tempdir().unwrap();
        let Some((path, want)) = qemu_made(dir.path()) else {
            return;
        };
        let mut img = open(&path).unwrap();
        assert_eq!(img.virtual_size(), want.len() as u64);
        let mut got = vec![0u8; want.len()];
        let mut pos = 0;
        while let Some((s, e)) = img.next_data(pos).unwrap() {
            let e = e.min(want.len() as u64);
            img.read_at(s, &mut got[s as usize..e as usize]).unwrap();
            pos = e;
        }
        assert!(
            got == want,
            "VHDX reads back as the raw disk it was made from"
        );
    }

    #[test]
    fn damaged_headers_fall_back_to_their_copies_then_fail_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let Some((path, want)) = qemu_made(dir.path()) else {
            return;
        };
        let bytes = std::fs::read(&path).unwrap();
        let write = |b: &[u8]| std::fs::write(&path, b).unwrap();
        // One header copy damaged: the other one serves.
        let mut one = bytes.clone();
        one[HEADER_AT[0] as usize + 20] ^= 0xff;
        write(&one);
        let mut img = open(&path).unwrap();
        let mut buf = vec![0u8; 4096];
        img.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, want[..4096]);
        // Both copies of the region table damaged: refused, naming it.
        let mut both = bytes.clone();
        for at in REGION_AT {
            both[at as usize + 20] ^= 0xff;
        }
        write(&both);
        let e = open(&path).err().unwrap().to_string();
        assert!(e.contains("region table") && e.contains("t.vhdx"), "{e}");
        // No file identifier.
        let mut sig = bytes;
        sig[0] = b'X';
        write(&sig);
        let e = open(&path).err().unwrap().to_string();
        assert!(e.contains("vhdxfile"), "{e}");
    }

    #[test]
    fn guids_and_checksums_follow_the_spec() {
        // The BAT region GUID as the spec prints it, in its on-disk (mixed-endian) form.
        let g = guid(BAT_GUID);
        assert_eq!(&g[..4], &[0x66, 0x77, 0xc2, 0x2d]);
        assert_eq!(&g[8..], &[0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08]);
        let mut buf = vec![7u8; 64];
        let c = crc_without(&buf, 4);
        buf[4..8].copy_from_slice(&c.to_le_bytes());
        assert_eq!(
            crc_without(&buf, 4),
            c,
            "the checksum field itself is not covered"
        );
    }
}
