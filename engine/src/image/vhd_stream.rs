//! A dynamic VHD arriving as a stream, read once from front to back: what `xe vdi-export
//! format=vhd` writes into a pipe. Unlike a raw export it carries only the allocated
//! blocks, so a mostly empty disk crosses the pipe in a fraction of its size.
//!
//! The stream holds the footer copy, the dynamic header, the block allocation table
//! (BAT), then each allocated block (sector bitmap, data) at the offset the BAT gives,
//! then the footer. The blocks must come in the order of the disk (XAPI writes them so);
//! an export whose BAT puts a later block of the disk before an earlier one in the file
//! cannot be read in one pass and is refused (export `format=raw`, or to a file).
//! Sectors whose bitmap bit is clear read as zeros, as in [`super::vhd`].

use std::io::Read;
use std::path::Path;

use super::bytes::{be32, be64};
use super::vhd::{checksum, parse_footer, DYN_HEADER_LEN, FOOTER_LEN, TYPE_DYNAMIC};
use super::Blame;
use crate::source::detect::ImageFormat;
use crate::source::{read_full, DiskSource, SourceError};

const UNALLOCATED: u32 = 0xffff_ffff;
/// A BAT larger than this (2 TiB of 512-byte blocks, far beyond VHD's 2040 GiB) is
/// refused before it is allocated.
const MAX_BAT_ENTRIES: u64 = 1 << 32;

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
        if entries < s.size.div_ceil(s.block) || entries > MAX_BAT_ENTRIES {
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
        let mut bat = vec![0u8; (entries * 4) as usize];
        s.fill(&mut bat, "block allocation table")?;
        let mut order: Vec<(u64, u64)> = bat
            .chunks_exact(4)
            .enumerate()
            .map(|(i, e)| (be32(e, 0), i as u64))
            .filter(|(e, _)| *e != UNALLOCATED)
            .map(|(e, i)| (u64::from(e) * 512, i))
            .collect();
        order.sort_unstable();
        let data_start = s.pos;
        let mut prev_end = data_start;
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
