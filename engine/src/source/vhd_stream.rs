//! A dynamic VHD arriving as a stream, read once from front to back: what `xe vdi-export
//! format=vhd` writes into a pipe. Unlike a raw export it carries only the allocated
//! blocks, so a mostly empty disk crosses the pipe in a fraction of its size.
//!
//! The stream holds the footer copy, the dynamic header, the block allocation table
//! (BAT), then each allocated block (sector bitmap, data) at the offset the BAT gives,
//! then the footer. The blocks must come in the order of the disk (XAPI writes them so);
//! an export whose BAT puts a later block of the disk before an earlier one in the file
//! cannot be read in one pass and is refused (export `format=raw`, or to a file).
//! Sectors whose bitmap bit is clear read as zeros, as in [`super::image::vhd`].

use std::io::Read;
use std::path::Path;

use super::image::bytes::{be32, be64};
use super::image::vhd::{
    checksum, parse_footer, DYN_HEADER_LEN, FOOTER_LEN, MAX_SIZE, TYPE_DYNAMIC,
};
use super::image::Blame;
use crate::source::detect::ImageFormat;
use crate::source::{read_full, DiskSource, SourceError};

const UNALLOCATED: u32 = 0xffff_ffff;
/// The BAT is read in pieces of this many bytes, keeping only allocated entries, so
/// memory follows what the stream really carries, not what its header claims.
const BAT_PIECE: usize = 64 << 10;

pub struct VhdStream<R> {
    reader: R,
    blame: Blame,
    /// Bytes of the stream consumed so far.
    pos: u64,
    size: u64,
    block: u64,
    bitmap_bytes: u64,
    /// (stream offset of the block's bitmap, block index), in stream order.
    order: Vec<(u64, u64)>,
    next: usize,
    /// The block in hand: its index and data, unmapped sectors zeroed.
    cur: Option<(u64, Vec<u8>)>,
}

impl<R: Read + Send> VhdStream<R> {
    /// Reads the footer copy, the dynamic header and the BAT.
    pub fn open(reader: R, name: &str) -> Result<Self, SourceError> {
        let blame = Blame::new(Path::new(name), ImageFormat::Vhd);
        let mut s = VhdStream {
            reader,
            blame,
            pos: 0,
            size: 0,
            block: 0,
            bitmap_bytes: 0,
            order: Vec::new(),
            next: 0,
            cur: None,
        };
        let mut footer = [0u8; FOOTER_LEN as usize];
        s.fill(&mut footer, "footer copy")?;
        let f = parse_footer(&footer, 0, &s.blame)?;
        if f.disk_type != TYPE_DYNAMIC {
            return Err(s
                .blame
                .unsupported(format!(
                    "a stream must be a dynamic VHD (disk type 3), this one has type {}; export it to a file instead",
                    f.disk_type
                ))
                .into());
        }
        if f.virtual_size > MAX_SIZE {
            return Err(s
                .blame
                .malformed(
                    "footer current size",
                    48,
                    format!("{} bytes is larger than a VHD can be", f.virtual_size),
                )
                .into());
        }
        s.size = f.virtual_size;
        s.skip_to(f.data_offset, "dynamic disk header")?;
        let at = s.pos;
        let mut h = [0u8; DYN_HEADER_LEN as usize];
        s.fill(&mut h, "dynamic disk header")?;
        if &h[..8] != b"cxsparse" {
            return Err(s
                .blame
                .malformed("dynamic disk header", at, "no \"cxsparse\" cookie")
                .into());
        }
        if be32(&h, 36) != checksum(&h, 36) {
            return Err(s
                .blame
                .malformed("dynamic disk header", at, "checksum does not match")
                .into());
        }
        let bat_at = be64(&h, 16);
        let entries = u64::from(be32(&h, 28));
        s.block = u64::from(be32(&h, 32));
        if s.block < 512 || !s.block.is_power_of_two() || s.block > 256 << 20 {
            return Err(s
                .blame
                .malformed(
                    "dynamic disk header block size",
                    at + 32,
                    format!(
                        "{} is not a power of two between 512 B and 256 MiB",
                        s.block
                    ),
                )
                .into());
        }
        if entries < s.size.div_ceil(s.block) {
            return Err(s
                .blame
                .malformed(
                    "block allocation table",
                    bat_at,
                    format!(
                        "{entries} entries do not fit {} bytes in blocks of {}",
                        s.size, s.block
                    ),
                )
                .into());
        }
        s.bitmap_bytes = (s.block / 512).div_ceil(8).div_ceil(512) * 512;
        s.skip_to(bat_at, "block allocation table")?;
        let mut order: Vec<(u64, u64)> = Vec::new();
        let mut piece = vec![0u8; BAT_PIECE];
        let mut index = 0u64;
        let mut left = entries * 4;
        while left > 0 {
            let n = left.min(BAT_PIECE as u64) as usize;
            s.fill(&mut piece[..n], "block allocation table")?;
            for e in piece[..n].chunks_exact(4) {
                let e = be32(e, 0);
                if e != UNALLOCATED {
                    order.push((u64::from(e) * 512, index));
                }
                index += 1;
            }
            left -= n as u64;
        }
        order.sort_unstable();
        let mut prev_end = s.pos;
        for w in order.windows(2) {
            if w[1].1 < w[0].1 {
                return Err(s
                    .blame
                    .unsupported(format!(
                        "block {} of the disk comes after block {} in the stream, so it cannot be read in one pass; export format=raw or to a file",
                        w[1].1, w[0].1
                    ))
                    .into());
            }
        }
        for &(at, index) in &order {
            if at < prev_end || index * s.block >= s.size {
                return Err(s
                    .blame
                    .malformed(
                        "block allocation table",
                        bat_at + index * 4,
                        format!("block {index} at byte {at} overlaps the tables or another block, or lies past the disk"),
                    )
                    .into());
            }
            prev_end = at + s.bitmap_bytes + s.block;
        }
        s.order = order;
        Ok(s)
    }

    /// Fills `buf` from the stream; the stream ending first is a truncated export.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), SourceError> {
        let n = read_full(&mut self.reader, buf).map_err(|source| SourceError::Io {
            path: self.blame.path.clone(),
            source,
        })?;
        if n < buf.len() {
            return Err(self
                .blame
                .malformed(
                    what,
                    self.pos + n as u64,
                    "the stream ended early; the export is truncated",
                )
                .into());
        }
        self.pos += n as u64;
        Ok(())
    }

    /// Reads and drops bytes up to stream offset `at`, which must not be behind us.
    fn skip_to(&mut self, at: u64, what: &str) -> Result<(), SourceError> {
        if at < self.pos {
            return Err(self
                .blame
                .malformed(
                    what,
                    at,
                    format!(
                        "it starts at byte {at}, before the end of what precedes it ({})",
                        self.pos
                    ),
                )
                .into());
        }
        let gap = at - self.pos;
        let copied = std::io::copy(&mut (&mut self.reader).take(gap), &mut std::io::sink())
            .map_err(|source| SourceError::Io {
                path: self.blame.path.clone(),
                source,
            })?;
        if copied < gap {
            return Err(self
                .blame
                .malformed(
                    what,
                    self.pos + copied,
                    "the stream ended early; the export is truncated",
                )
                .into());
        }
        self.pos = at;
        Ok(())
    }

    /// Reads the next block of the stream into `cur`.
    fn load_next(&mut self) -> Result<Option<u64>, SourceError> {
        let Some(&(at, index)) = self.order.get(self.next) else {
            self.cur = None;
            return Ok(None);
        };
        self.next += 1;
        self.skip_to(at, "data block")?;
        let mut bits = vec![0u8; self.bitmap_bytes as usize];
        self.fill(&mut bits, "sector bitmap")?;
        let mut data = match self.cur.take() {
            Some((_, mut v)) => {
                v.resize(self.block as usize, 0);
                v
            }
            None => vec![0u8; self.block as usize],
        };
        self.fill(&mut data, "data block")?;
        for (s, sector) in data.chunks_exact_mut(512).enumerate() {
            if bits[s / 8] & (0x80 >> (s % 8)) == 0 {
                sector.fill(0);
            }
        }
        self.cur = Some((index, data));
        Ok(Some(index))
    }
}

impl<R: Read + Send> DiskSource for VhdStream<R> {
    fn random_access(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        self.blame.path.display().to_string()
    }

    fn size_bytes(&self) -> Option<u64> {
        Some(self.size)
    }

    fn next_data(&mut self, offset: u64) -> Result<Option<(u64, u64)>, SourceError> {
        loop {
            if let Some((index, _)) = &self.cur {
                let start = index * self.block;
                let end = (start + self.block).min(self.size);
                if offset < end {
                    return Ok(Some((offset.max(start), end)));
                }
            }
            if self.load_next()?.is_none() {
                return Ok(None);
            }
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        let Some((index, data)) = &self.cur else {
            return Ok(0);
        };
        let start = index * self.block;
        let end = (start + self.block).min(self.size);
        if offset < start || offset >= end {
            return Err(self
                .blame
                .malformed(
                    "data block",
                    offset,
                    format!("read at guest offset {offset} outside block {index}"),
                )
                .into());
        }
        let n = buf.len().min((end - offset) as usize);
        let at = (offset - start) as usize;
        buf[..n].copy_from_slice(&data[at..at + n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::image::vhd::tests::{vhd, BLOCK};

    /// Every (offset, byte) the stream yields, reading as the backup does.
    fn read_all(bytes: Vec<u8>) -> Result<Vec<(u64, Vec<u8>)>, SourceError> {
        let mut s = VhdStream::open(std::io::Cursor::new(bytes), "t.vhd")?;
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((start, end)) = s.next_data(pos)? {
            let mut buf = vec![0u8; (end - start) as usize];
            let n = s.read_at(start, &mut buf)?;
            buf.truncate(n);
            out.push((start, buf));
            pos = start + n as u64;
        }
        Ok(out)
    }

    #[test]
    fn yields_allocated_blocks_with_unmapped_sectors_zeroed() {
        let got = read_all(vhd(None, 1, &[(0, 0, 2048, 0xaa), (2, 10, 5, 0xbb)])).unwrap();
        assert_eq!(got.len(), 2, "blocks 1 and 3 are holes");
        assert_eq!(got[0].0, 0);
        assert!(got[0].1.iter().all(|&b| b == 0xaa));
        assert_eq!(got[1].0, 2 * BLOCK);
        let b = &got[1].1;
        assert_eq!(b.len() as u64, BLOCK);
        assert!(b[..10 * 512].iter().all(|&x| x == 0));
        assert!(b[10 * 512..15 * 512].iter().all(|&x| x == 0xbb));
        assert!(b[15 * 512..].iter().all(|&x| x == 0));
    }

    #[test]
    fn a_huge_claimed_bat_costs_only_what_arrives() {
        // Found by the vhd_stream fuzz target: 512 Mi entries claimed, allocated at once.
        let mut bytes = vhd(None, 1, &[(0, 0, 1, 0x11)]);
        let h = &mut bytes[512..1536];
        h[28..32].copy_from_slice(&0x2000_0000u32.to_be_bytes());
        let sum = checksum(h, 36);
        h[36..40].copy_from_slice(&sum.to_be_bytes());
        let e = read_all(bytes).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn a_short_stream_is_a_truncated_export() {
        let mut bytes = vhd(None, 1, &[(1, 0, 2048, 0x22)]);
        bytes.truncate(4000);
        let e = read_all(bytes).unwrap_err().to_string();
        assert!(e.contains("data block") && e.contains("truncated"), "{e}");
    }
}
