//! Backups from a change map: read only what the hypervisor says changed since the base
//! snapshot, reuse the base's manifest for the rest, and still write the manifest a full
//! read would have written.
//!
//! ```text
//!  base extents ─────────────┐ copied up to the last safe cut point before a change
//!  disk: ░░░░░░░░░R▓▓▓▓▓▓▓▓▓▓▓P░░░░░░░░
//!                  └ cut again ┘ from R (a base cut point, `lookahead` before the change)
//!                    until a cut the new cutter makes is also a base cut point (P),
//!                    past the change: from there both cut the same bytes the same way
//! ```
//!
//! Why the result is exactly the full read's manifest (same cut points, same chunk ids,
//! same root; the property test below checks it over random disks and change maps):
//!
//! - A cut point's decision depends on the bytes before it and at most `lookahead` bytes
//!   after it (a 64-byte window at a candidate block, a zero run long enough to be a
//!   hole). So every base cut point at least `lookahead` before the first changed byte is
//!   also a cut point of the full read, with the same chunks before it.
//! - At a block-aligned cut point a cutter carries nothing from before it
//!   ([`Cutter::resume_at`]), so cutting again from such a point R gives the full
//!   read's cuts from R on.
//! - Once that new cutter makes a block-aligned cut P past the change that the base also
//!   has, both are in the same state on the same bytes: the base's extents from P on
//!   are the full read's, up to the next change.
//!
//! Trust, then verify: the extents copied from the base in a rotating slice of the disk
//! ([`VerifySlice`]) are read again and checked against the base's chunk ids. A map that
//! left out a write is caught there ([`Error::MapLied`]), and the caller reads the disk
//! in full.

use repo_format::{BlobId, ChunkerParams, Extent};

use super::prefetch::Prefetch;
use crate::cancel::Cancel;
use crate::chunk::{is_zero, Cut, Cutter};
use crate::error::{Error, Result};
use crate::source::DiskSource;

/// Changed ranges of a disk: sorted, merged, non-empty, inside the disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeMap {
    ranges: Vec<(u64, u64)>,
}

impl ChangeMap {
    /// A map from `[start, end)` ranges in any order, overlapping or not, checked against
    /// the disk size: a map that names bytes past the end of the disk belongs to another
    /// disk, and is refused rather than trusted.
    pub fn new(mut ranges: Vec<(u64, u64)>, disk_size: u64) -> std::result::Result<Self, String> {
        ranges.retain(|r| r.0 != r.1);
        for &(s, e) in &ranges {
            if s > e {
                return Err(format!("range {s}..{e} ends before it starts"));
            }
            if e > disk_size {
                return Err(format!(
                    "range {s}..{e} ends past the end of the disk ({disk_size} bytes)"
                ));
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Ok(ChangeMap { ranges: merged })
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Bytes the map says changed.
    pub fn changed_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1 - r.0).sum()
    }
}

/// Largest `--changed-ranges` file read.
pub const MAX_RANGES_FILE_BYTES: u64 = 256 << 20;

/// Block size of a XenServer CBT bitmap: one bit per 64 KiB.
pub const CBT_BLOCK_BYTES: u64 = 64 << 10;

/// Parses a changed-ranges file, judged by its content:
/// - `OFFSET LENGTH` byte counts per line (decimal, or hex with `0x`), `#` comments and
///   blank lines ignored: the common format, for anything a script converts;
/// - `thin_delta` XML output, as it is ([`parse_thin_delta`]);
/// - `xe vdi-list-changed-blocks` output, as it is ([`parse_cbt_bitmap`]).
pub fn parse_ranges(text: &str) -> std::result::Result<Vec<(u64, u64)>, String> {
    let t = text.trim();
    if t.starts_with('<') {
        return parse_thin_delta(t);
    }
    if !t.is_empty() && !t.contains(char::is_whitespace) && !t.starts_with('#') {
        return parse_cbt_bitmap(t);
    }
    parse_offset_lines(text)
}

/// A XenServer CBT bitmap (`xe vdi-list-changed-blocks`): base64, one bit per 64 KiB
/// block, the most significant bit of each byte first.
pub fn parse_cbt_bitmap(b64: &str) -> std::result::Result<Vec<(u64, u64)>, String> {
    use base64::Engine;
    let bits = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("not a CBT bitmap (base64: {e})"))?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, byte) in bits.iter().enumerate() {
        for j in 0..8 {
            if byte & (0x80 >> j) == 0 {
                continue;
            }
            let start = (i as u64 * 8 + j) * CBT_BLOCK_BYTES;
            match out.last_mut() {
                Some(last) if last.1 == start => last.1 += CBT_BLOCK_BYTES,
                _ => out.push((start, start + CBT_BLOCK_BYTES)),
            }
        }
    }
    Ok(out)
}

/// The changed byte ranges in `thin_delta` XML: `<different>`, `<right_only>` (newly
/// written) and `<left_only>` (discarded: reads as zeros now) runs, in units of the
/// superblock's `data_block_size` sectors.
pub fn parse_thin_delta(xml: &str) -> Result<Vec<(u64, u64)>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("thin_delta output: {e}"))?;
    let sb = doc.root_element();
    if !sb.has_tag_name("superblock") {
        return Err("thin_delta output has no <superblock>".into());
    }
    let sectors: u64 = sb
        .attribute("data_block_size")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .ok_or("thin_delta output has no data_block_size")?;
    let block = sectors * 512;
    let mut out = Vec::new();
    for run in sb.descendants().filter(|n| {
        n.has_tag_name("different") || n.has_tag_name("right_only") || n.has_tag_name("left_only")
    }) {
        let num = |a: &str| run.attribute(a).and_then(|v| v.parse::<u64>().ok());
        let (Some(begin), Some(len)) = (num("begin"), num("length")) else {
            return Err("thin_delta run without begin or length".into());
        };
        let start = begin
            .checked_mul(block)
            .ok_or("thin_delta run out of range")?;
        let end = begin
            .checked_add(len)
            .and_then(|e| e.checked_mul(block))
            .ok_or("thin_delta run out of range")?;
        out.push((start, end));
    }
    Ok(out)
}

fn parse_offset_lines(text: &str) -> std::result::Result<Vec<(u64, u64)>, String> {
    let num = |t: &str| match t.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => t.parse::<u64>().ok(),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(a), Some(b), None) = (f.next(), f.next(), f.next()) else {
            return Err(format!("line {}: expected OFFSET LENGTH", i + 1));
        };
        let (Some(offset), Some(len)) = (num(a), num(b)) else {
            return Err(format!("line {}: {line:?} is not two byte counts", i + 1));
        };
        let end = offset
            .checked_add(len)
            .ok_or_else(|| format!("line {}: range overflows", i + 1))?;
        out.push((offset, end));
    }
    Ok(out)
}

/// Granularity of the verification rotation: the disk is cut into slots of this size,
/// and each night re-reads every `every`-th slot, starting at `round % every`.
pub const VERIFY_SLOT_BYTES: u64 = 1 << 20;

/// Which unchanged extents a night re-reads: slot `i` (of [`VERIFY_SLOT_BYTES`]) when
/// `i % every == round % every`. Round after round, every byte is re-read every `every`
/// nights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifySlice {
    pub round: u64,
    /// 0 turns verification off.
    pub every: u64,
}

impl VerifySlice {
    /// The slice of `round` that re-reads `pct` percent of the disk each night (rounded
    /// so that the whole disk is covered in `ceil(100 / pct)` nights).
    pub fn percent(pct: f64, round: u64) -> Self {
        let every = if pct <= 0.0 {
            0
        } else {
            (100.0 / pct.min(100.0)).ceil() as u64
        };
        VerifySlice { round, every }
    }

    pub fn covers(&self, offset: u64) -> bool {
        self.every > 0 && (offset / VERIFY_SLOT_BYTES) % self.every == self.round % self.every
    }
}

/// An incremental read of one disk: the base's manifest, what changed since, and the
/// slice of the rest to check.
#[derive(Clone, Debug)]
pub struct Plan {
    pub base: repo_format::ManifestRoot,
    pub changes: ChangeMap,
    pub verify: VerifySlice,
}

/// What the splice hands on, in disk order.
#[derive(Debug)]
pub enum Item {
    /// An extent of the base, unchanged.
    Known(Extent),
    /// A chunk or hole cut from bytes read now.
    Cut(Cut),
    /// An extent of the base in the verification slice, with the bytes read now: its id
    /// must come out the same.
    Verify {
        offset: u64,
        id: BlobId,
        data: Vec<u8>,
    },
}

/// What a splice read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// Bytes read from the source (changes, cutting around them, verification).
    pub read_bytes: u64,
    /// Bytes read to verify unchanged extents.
    pub verified_bytes: u64,
}

/// Bytes after a cut point that can still change whether the cutter cuts there: the
/// zero run that decides if a data run ends (and becomes a hole), plus the candidate
/// window and a block of margin.
pub fn lookahead(params: &ChunkerParams) -> u64 {
    params.zero_run_min_bytes as u64 + 4 * params.align_bytes as u64
}

/// The base manifest's extents, one ahead.
struct Base<'a> {
    next: Option<(u64, Extent)>,
    fetch: &'a mut dyn FnMut() -> Result<Option<(u64, Extent)>>,
}

impl Base<'_> {
    fn advance(&mut self) -> Result<()> {
        self.next = (self.fetch)()?;
        Ok(())
    }
}

/// Reads the disk for a splice: holes the source knows are never read, and what the
/// read-ahead already has is not read again.
struct Reader<'a> {
    source: &'a mut dyn DiskSource,
    size: u64,
    buf: Vec<u8>,
    stats: SpliceStats,
    prefetch: Option<&'a Prefetch>,
}

impl Reader<'_> {
    /// Feeds `[from, to)` of the disk to `cutter`.
    fn feed(
        &mut self,
        cutter: &mut Cutter,
        from: u64,
        to: u64,
        out: &mut impl FnMut(Cut),
    ) -> Result<()> {
        let mut pos = from;
        while pos < to {
            let (start, end) = match self.source.next_data(pos)? {
                Some((s, e)) => (s.max(pos).min(to), e.min(to)),
                None => (to, to),
            };
            if start > pos {
                cutter.feed_zeros(start - pos, out);
                pos = start;
            }
            while pos < end {
                let want = ((end - pos) as usize).min(self.buf.len());
                let n = self.read_exact(pos, want)?;
                cutter.feed(&self.buf[..n], out);
                pos += n as u64;
            }
        }
        Ok(())
    }

    /// Reads `want` bytes at `pos` into the front of `buf`.
    fn read_exact(&mut self, pos: u64, want: usize) -> Result<usize> {
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let mut done = 0;
        while done < want {
            let at = pos + done as u64;
            if let Some(n) = self.prefetch.map(|p| p.take(at, &mut self.buf[done..want])) {
                if n > 0 {
                    done += n;
                    continue;
                }
            }
            let n = self.source.read_at(at, &mut self.buf[done..want])?;
            if n == 0 {
                return Err(crate::source::SourceError::Shrank {
                    path: self.source.describe().into(),
                    expected: self.size,
                    got: pos + done as u64,
                }
                .into());
            }
            done += n;
        }
        self.stats.read_bytes += want as u64;
        Ok(want)
    }

    /// True when `[from, to)` reads as zeros (holes the source knows count as zeros).
    fn reads_zero(&mut self, from: u64, to: u64) -> Result<bool> {
        let mut pos = from;
        while pos < to {
            let Some((s, e)) = self.source.next_data(pos)? else {
                return Ok(true);
            };
            pos = s.max(pos);
            let end = e.min(to);
            while pos < end {
                let want = ((end - pos) as usize).min(self.buf.len());
                self.read_exact(pos, want)?;
                self.stats.verified_bytes += want as u64;
                if !is_zero(&self.buf[..want]) {
                    return Ok(false);
                }
                pos += want as u64;
            }
        }
        Ok(true)
    }
}

/// Produces the disk's extents in order from the base's extents (`base`, which must
/// tile `size` bytes) and the bytes of `changes` read from `source`. `out` returns false
/// when downstream has gone away (the splice then stops). See the module doc.
///
/// What it will read (around each change, and the verification slice) is read ahead by
/// up to `readers` clones of the source at once ([`Prefetch`]).
#[allow(clippy::too_many_arguments)]
pub fn splice(
    params: ChunkerParams,
    secret: Option<[u8; 32]>,
    base: &mut dyn FnMut() -> Result<Option<(u64, Extent)>>,
    source: &mut dyn DiskSource,
    size: u64,
    changes: &ChangeMap,
    verify: VerifySlice,
    readers: usize,
    cancel: &Cancel,
    out: &mut dyn FnMut(Item) -> bool,
) -> Result<SpliceStats> {
    let clones: Vec<Box<dyn DiskSource>> =
        (0..readers).map_while(|_| source.clone_reader()).collect();
    if clones.is_empty() {
        return splice_with(
            params, secret, base, source, size, changes, verify, None, cancel, out,
        );
    }
    let prefetch = Prefetch::new(planned_reads(&params, changes, verify, size), size);
    std::thread::scope(|s| {
        for mut clone in clones {
            let p = &prefetch;
            s.spawn(move || p.run_reader(clone.as_mut()));
        }
        let r = splice_with(
            params,
            secret,
            base,
            source,
            size,
            changes,
            verify,
            Some(&prefetch),
            cancel,
            out,
        );
        prefetch.stop();
        r
    })
}

/// The ranges a splice will most likely read: around each change (from a possible cut
/// point before it to where the cuts likely meet again after it) and the verification
/// slots. Reads outside them are made directly, so this needs to be likely, not exact.
fn planned_reads(
    params: &ChunkerParams,
    changes: &ChangeMap,
    verify: VerifySlice,
    size: u64,
) -> Vec<(u64, u64)> {
    let max = params.max_bytes as u64;
    // Cutting resumes about a chunk before the lookahead, and meets the base again
    // about a chunk or two after the change: read-ahead past that is mostly waste.
    let before = lookahead(params) + params.avg_bytes as u64;
    let after = 2 * params.avg_bytes as u64;
    let mut out: Vec<(u64, u64)> = changes
        .ranges()
        .iter()
        .map(|&(s, e)| (s.saturating_sub(before), e.saturating_add(after).min(size)))
        .collect();
    if verify.every > 0 {
        let slots = size.div_ceil(VERIFY_SLOT_BYTES);
        let mut i = verify.round % verify.every;
        while i < slots {
            let s = i * VERIFY_SLOT_BYTES;
            out.push((s, (s + VERIFY_SLOT_BYTES + max).min(size)));
            i += verify.every;
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn splice_with(
    params: ChunkerParams,
    secret: Option<[u8; 32]>,
    base: &mut dyn FnMut() -> Result<Option<(u64, Extent)>>,
    source: &mut dyn DiskSource,
    size: u64,
    changes: &ChangeMap,
    verify: VerifySlice,
    prefetch: Option<&Prefetch>,
    cancel: &Cancel,
    out: &mut dyn FnMut(Item) -> bool,
) -> Result<SpliceStats> {
    let align = params.align_bytes as u64;
    let lookahead = lookahead(&params);
    let mut base = Base {
        next: None,
        fetch: base,
    };
    base.advance()?;
    let mut reader = Reader {
        source,
        size,
        buf: vec![0; 1 << 20],
        stats: SpliceStats::default(),
        prefetch,
    };
    let ranges = changes.ranges();
    let mut next_range = 0;
    // The disk's extents are settled up to `pos`, a cut point where a cutter may resume,
    // and the base's next extent starts there.
    let mut pos = 0u64;
    let mut open = true;
    while pos < size && open {
        cancel.check()?;
        // Copy the base up to the last block-aligned cut point at least `lookahead`
        // before the next change (or to the end).
        let limit = ranges
            .get(next_range)
            .map_or(size, |r| r.0.saturating_sub(lookahead));
        let mut held: Vec<(u64, Extent)> = Vec::new();
        while let Some((at, extent)) = base.next {
            let end = at + extent.len();
            if end > limit {
                break;
            }
            base.advance()?;
            held.push((at, extent));
            if end % align == 0 || end == size {
                for (at, extent) in held.drain(..) {
                    open = known(&mut reader, at, extent, verify, out)?;
                    if !open {
                        return Ok(reader.stats);
                    }
                }
                pos = end;
            }
        }
        if pos >= size {
            break;
        }
        let Some(&(_, first_end)) = ranges.get(next_range) else {
            // The base did not reach the end of the disk: the caller checked sizes, so
            // this is a damaged manifest.
            return Err(Error::Usage(format!(
                "the base manifest ends at {pos} bytes, the disk has {size}"
            )));
        };
        next_range += 1;
        // Cut again from `pos` until a cut meets the base past every change absorbed.
        let mut cutter = Cutter::resume_at(params, secret, pos);
        let mut changed_to = first_end;
        let mut met: Option<u64> = None;
        let mut fed = pos;
        // The first read reaches past the change; later ones go a chunk at a time.
        let mut step = (changed_to - pos).max(params.max_bytes as u64);
        let mut failed: Result<()> = Ok(());
        while met.is_none() && fed < size {
            cancel.check()?;
            let to = fed.saturating_add(step).min(size);
            step = params.max_bytes as u64;
            // Changes that start in what is read now must be passed before a meet.
            while let Some(&(s, e)) = ranges.get(next_range) {
                if s >= to {
                    break;
                }
                changed_to = changed_to.max(e);
                next_range += 1;
            }
            let mut emit = |cut: Cut| {
                if met.is_some() || !open || failed.is_err() {
                    return;
                }
                let end = match &cut {
                    Cut::Chunk { offset, data } => offset + data.len() as u64,
                    Cut::Hole { offset, len } => offset + len,
                };
                open = out(Item::Cut(cut));
                // Pass the base's extents that start before this cut's end.
                while base.next.is_some_and(|(at, _)| at < end) {
                    if let Err(e) = base.advance() {
                        failed = Err(e);
                        return;
                    }
                }
                let base_cuts_here = base.next.is_some_and(|(at, _)| at == end);
                if end >= changed_to && end % align == 0 && base_cuts_here {
                    met = Some(end);
                }
            };
            reader.feed(&mut cutter, fed, to, &mut emit)?;
            std::mem::replace(&mut failed, Ok(()))?;
            if !open {
                return Ok(reader.stats);
            }
            fed = to;
        }
        match met {
            Some(at) => pos = at,
            None => {
                // Cut to the end of the disk: the rest is new.
                let mut emit = |cut: Cut| {
                    if open {
                        open = out(Item::Cut(cut));
                    }
                };
                cutter.finish(&mut emit);
                pos = size;
            }
        }
    }
    Ok(reader.stats)
}

/// Hands on one unchanged base extent, read again when the verification slice covers it.
/// Returns false when downstream has gone away.
fn known(
    reader: &mut Reader<'_>,
    at: u64,
    extent: Extent,
    verify: VerifySlice,
    out: &mut dyn FnMut(Item) -> bool,
) -> Result<bool> {
    if !verify.covers(at) {
        return Ok(out(Item::Known(extent)));
    }
    match extent {
        Extent::Hole { len } => {
            if !reader.reads_zero(at, at + len)? {
                return Err(Error::MapLied { offset: at, len });
            }
            Ok(out(Item::Known(extent)))
        }
        Extent::Chunk { id, len } => {
            let n = reader.read_exact(at, len as usize)?;
            reader.stats.verified_bytes += n as u64;
            Ok(out(Item::Verify {
                offset: at,
                id,
                data: reader.buf[..n].to_vec(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use repo_format::ChunkerAlgorithm;

    /// A disk in memory, with the holes of a sparse file: blocks of `hole_block` bytes
    /// that are all zero are reported unallocated (as SEEK_DATA would).
    struct Mem {
        data: Vec<u8>,
        reads: u64,
    }

    impl DiskSource for Mem {
        fn describe(&self) -> String {
            "memory".into()
        }
        fn size_bytes(&self) -> Option<u64> {
            Some(self.data.len() as u64)
        }
        fn next_data(
            &mut self,
            offset: u64,
        ) -> std::result::Result<Option<(u64, u64)>, crate::source::SourceError> {
            const B: u64 = 65536;
            let len = self.data.len() as u64;
            let mut at = offset;
            while at < len {
                let end = ((at / B + 1) * B).min(len);
                if !is_zero(&self.data[at as usize..end as usize]) {
                    let mut e = end;
                    while e < len {
                        let n = (e + B).min(len);
                        if is_zero(&self.data[e as usize..n as usize]) {
                            break;
                        }
                        e = n;
                    }
                    return Ok(Some((at, e)));
                }
                at = end;
            }
            Ok(None)
        }
        fn read_at(
            &mut self,
            offset: u64,
            buf: &mut [u8],
        ) -> std::result::Result<usize, crate::source::SourceError> {
            let len = self.data.len() as u64;
            if offset >= len {
                return Ok(0);
            }
            let n = buf.len().min((len - offset) as usize);
            buf[..n].copy_from_slice(&self.data[offset as usize..offset as usize + n]);
            self.reads += n as u64;
            Ok(n)
        }
        fn clone_reader(&self) -> Option<Box<dyn DiskSource>> {
            Some(Box::new(Mem {
                data: self.data.clone(),
                reads: 0,
            }))
        }
    }

    fn params(algorithm: ChunkerAlgorithm) -> ChunkerParams {
        ChunkerParams {
            algorithm,
            min_bytes: 8192,
            avg_bytes: 16384,
            max_bytes: 32768,
            align_bytes: 4096,
            seed: 0,
            zero_run_min_bytes: 8192,
            file_start_tail_bytes: 0,
        }
    }

    fn id(data: &[u8]) -> BlobId {
        BlobId(*blake3::hash(data).as_bytes())
    }

    /// The full read's extents with their offsets.
    fn full(p: ChunkerParams, data: &[u8]) -> Vec<(u64, Extent)> {
        let mut c = Cutter::new(p);
        let mut out = vec![];
        let mut emit = |cut: Cut| {
            out.push(match cut {
                Cut::Chunk { offset, data } => (
                    offset,
                    Extent::Chunk {
                        id: id(&data),
                        len: data.len() as u32,
                    },
                ),
                Cut::Hole { offset, len } => (offset, Extent::Hole { len }),
            })
        };
        for piece in data.chunks(100_000) {
            c.feed(piece, &mut emit);
        }
        c.finish(&mut emit);
        out
    }

    /// The splice's extents, and the bytes it read.
    fn spliced(
        p: ChunkerParams,
        base: &[(u64, Extent)],
        data: &[u8],
        changes: &ChangeMap,
        verify: VerifySlice,
    ) -> Result<(Vec<(u64, Extent)>, u64)> {
        spliced_by(p, base, data, changes, verify, 0)
    }

    /// [`spliced`] with `readers` reading ahead.
    fn spliced_by(
        p: ChunkerParams,
        base: &[(u64, Extent)],
        data: &[u8],
        changes: &ChangeMap,
        verify: VerifySlice,
        readers: usize,
    ) -> Result<(Vec<(u64, Extent)>, u64)> {
        let mut it = base.iter().copied();
        let mut fetch = || Ok(it.next());
        let mut src = Mem {
            data: data.to_vec(),
            reads: 0,
        };
        let mut out = vec![];
        let mut at = 0u64;
        let mut lied = None;
        let mut emit = |item: Item| {
            let e = match item {
                Item::Known(e) => e,
                Item::Cut(Cut::Chunk { data, .. }) => Extent::Chunk {
                    id: id(&data),
                    len: data.len() as u32,
                },
                Item::Cut(Cut::Hole { len, .. }) => Extent::Hole { len },
                Item::Verify {
                    offset,
                    id: want,
                    data,
                } => {
                    if id(&data) != want {
                        lied.get_or_insert(offset);
                    }
                    Extent::Chunk {
                        id: want,
                        len: data.len() as u32,
                    }
                }
            };
            out.push((at, e));
            at += e.len();
            true
        };
        let stats = splice(
            p,
            None,
            &mut fetch,
            &mut src,
            data.len() as u64,
            changes,
            verify,
            readers,
            &Cancel::default(),
            &mut emit,
        )?;
        if let Some(offset) = lied {
            return Err(Error::MapLied { offset, len: 0 });
        }
        if readers == 0 {
            assert_eq!(stats.read_bytes, src.reads);
        }
        Ok((out, stats.read_bytes))
    }

    /// Random test disk: random data, text, long and short zero runs.
    fn disk(seed: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut x = seed | 1;
        let mut at = 0;
        while at < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let run = 512 * (1 + (x % 100) as usize);
            let end = (at + run).min(len);
            match x % 6 {
                0 | 1 => {}
                2 => {
                    for (i, b) in out[at..end].iter_mut().enumerate() {
                        *b = b"dedisk "[i % 7];
                    }
                }
                _ => {
                    let mut y = x;
                    for b in &mut out[at..end] {
                        y = y
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        *b = (y >> 56) as u8;
                    }
                }
            }
            at = end;
        }
        out
    }

    /// Writes made to `data` at random places (random bytes or zeros), and their map.
    fn write(data: &mut [u8], seed: u64, writes: usize, grain: u64) -> Vec<(u64, u64)> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let len = data.len() as u64;
        let mut map = vec![];
        for _ in 0..writes {
            let at = next() % len;
            let n = (1 + next() % 20_000).min(len - at);
            let zeros = next() % 3 == 0;
            for b in &mut data[at as usize..(at + n) as usize] {
                *b = if zeros { 0 } else { next() as u8 | 1 };
            }
            // The map is at the hypervisor's grain, as a dirty bitmap is.
            let s = at / grain * grain;
            let e = ((at + n).div_ceil(grain) * grain).min(len);
            map.push((s, e));
        }
        map
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The manifest from a change map is exactly the full read's, whatever the disk,
        /// the writes, their grain and the chunker.
        #[test]
        fn splice_gives_the_full_reads_manifest(
            seed in 1u64..1_000_000,
            len in 1usize..(3 << 20),
            writes in 0usize..12,
            grain_shift in 9u32..17,
            alg in 0..4u8,
            round in 0u64..4,
            readers in 0usize..3,
        ) {
            // The disk's zero runs come in 512-byte steps, so blocks ending in a file's
            // slack (and file starts below `min`) are common with the fourth.
            let p = match alg {
                0 => params(ChunkerAlgorithm::AlignedCdc),
                1 => params(ChunkerAlgorithm::Fastcdc),
                2 => params(ChunkerAlgorithm::Fixed),
                _ => ChunkerParams { file_start_tail_bytes: 256, ..params(ChunkerAlgorithm::AlignedCdc) },
            };
            let before = disk(seed, len);
            let base = full(p, &before);
            let mut after = before.clone();
            let map = write(&mut after, seed, writes, 1 << grain_shift);
            let changes = ChangeMap::new(map, len as u64).unwrap();
            let (got, read) = spliced_by(p, &base, &after, &changes, VerifySlice::percent(25.0, round), readers).unwrap();
            prop_assert_eq!(&got, &full(p, &after));
            // Nothing is read twice but a little past a meet.
            prop_assert!(read <= len as u64 + (writes as u64 + 1) * 2 * p.max_bytes as u64, "read {}", read);
        }
    }

    #[test]
    fn an_unchanged_disk_reads_only_its_verification_slice() {
        let p = ChunkerParams::default();
        let data = disk(9, 16 << 20);
        let base = full(p, &data);
        let (got, read) = spliced(
            p,
            &base,
            &data,
            &ChangeMap::default(),
            VerifySlice::percent(0.0, 0),
        )
        .unwrap();
        assert_eq!(got, base);
        assert_eq!(read, 0);
        let (got, read) = spliced(
            p,
            &base,
            &data,
            &ChangeMap::default(),
            VerifySlice::percent(25.0, 1),
        )
        .unwrap();
        assert_eq!(got, base);
        assert!(read > 0 && read < 6 << 20, "25% of 16 MiB, read {read}");
    }

    #[test]
    fn reads_stay_near_the_changes() {
        let p = ChunkerParams::default();
        let before = disk(5, 64 << 20);
        let base = full(p, &before);
        let mut after = before.clone();
        let map = write(&mut after, 77, 20, 65536);
        let changes = ChangeMap::new(map, after.len() as u64).unwrap();
        let (got, read) =
            spliced(p, &base, &after, &changes, VerifySlice::percent(0.0, 0)).unwrap();
        assert_eq!(got, full(p, &after));
        let changed = changes.changed_bytes();
        // Each change costs the cut point before it and the chunk that meets after it.
        assert!(
            read <= changed + 20 * (2 * p.max_bytes as u64 + lookahead(&p)),
            "read {read} for {changed} changed"
        );
    }

    #[test]
    fn a_map_that_misses_a_write_is_caught_by_the_slice_that_covers_it() {
        let p = ChunkerParams::default();
        let before = disk(3, 8 << 20);
        let base = full(p, &before);
        let mut after = before.clone();
        // A write at 5 MiB the map does not show.
        after[5 << 20..(5 << 20) + 4096].fill(0xAB);
        let mut caught = vec![];
        for round in 0..4 {
            let r = spliced(
                p,
                &base,
                &after,
                &ChangeMap::default(),
                VerifySlice::percent(25.0, round),
            );
            if let Err(Error::MapLied { .. }) = r {
                caught.push(round);
            }
        }
        assert_eq!(
            caught.len(),
            1,
            "one round in four re-reads the chunk: {caught:?}"
        );
    }

    #[test]
    fn thin_delta_runs_become_byte_ranges() {
        let xml = r#"<superblock uuid="" time="2" transaction="4" data_block_size="128" nr_data_blocks="1024">
  <diff left="1" right="2">
    <same begin="0" length="16"/>
    <different begin="16" length="2"/>
    <right_only begin="40" length="1"/>
    <left_only begin="50" length="3"/>
  </diff>
</superblock>"#;
        assert_eq!(
            parse_thin_delta(xml).unwrap(),
            [
                (16 << 16, 18 << 16),
                (40 << 16, 41 << 16),
                (50 << 16, 53 << 16)
            ]
        );
        assert!(parse_thin_delta("<superblock><diff/></superblock>").is_err());
        assert!(parse_thin_delta(
            "<superblock data_block_size='128'><different begin='x' length='1'/></superblock>"
        )
        .is_err());
        assert!(parse_thin_delta(&format!(
            "<superblock data_block_size='128'><different begin='{}' length='1'/></superblock>",
            u64::MAX
        ))
        .is_err());
    }

    #[test]
    fn cbt_bitmaps_are_64k_per_bit_most_significant_first() {
        // 0b1100_0000, 0b0000_0001: blocks 0, 1 and 15.
        assert_eq!(
            parse_ranges("wAE=\n").unwrap(),
            [(0, 2 << 16), (15 << 16, 16 << 16)]
        );
        assert!(parse_cbt_bitmap("not*base64").is_err());
    }

    #[test]
    fn ranges_files_parse_and_name_bad_lines() {
        let r = parse_ranges("# night 2\n0 4096\n\n0x10000 0x1000 # a comment\n").unwrap();
        assert_eq!(r, vec![(0, 4096), (65536, 69632)]);
        assert!(parse_ranges("1 2 3").unwrap_err().contains("line 1"));
        assert!(parse_ranges("x 2").is_err());
        assert!(parse_ranges(&format!("{} 2", u64::MAX)).is_err());
    }

    #[test]
    fn maps_are_merged_and_checked_against_the_disk() {
        let m = ChangeMap::new(vec![(10, 20), (0, 5), (15, 30), (5, 5)], 100).unwrap();
        assert_eq!(m.ranges(), &[(0, 5), (10, 30)]);
        assert_eq!(m.changed_bytes(), 25);
        assert!(ChangeMap::new(vec![(90, 101)], 100).is_err());
        assert!(ChangeMap::new(vec![(9, 3)], 100).is_err());
    }
}
