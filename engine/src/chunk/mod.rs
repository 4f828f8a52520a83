//! Cutting a disk into chunks and holes.
//!
//! The [`Cutter`] is fed the disk in order, as data pieces and known-zero spans, at any
//! piece sizes. It first splits the disk into runs of all-zero aligned blocks (at least
//! `zero_run_min_bytes` long: recorded as holes, never stored) and data runs; then it
//! cuts each data run into chunks with the configured algorithm. Every decision depends
//! only on the bytes and their absolute disk offsets, never on how the input was split
//! into pieces, so the same disk always gives the same chunks whatever the buffer size,
//! read size or thread count (a property test below proves it).

use std::sync::Arc;

use repo_format::{ChunkerAlgorithm, ChunkerParams};

/// A piece of the cut disk, in disk order.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut {
    /// A chunk: its disk offset and bytes.
    Chunk { offset: u64, data: ChunkBytes },
    /// `len` bytes of zeros starting at `offset`.
    Hole { offset: u64, len: u64 },
}

/// A read buffer that chunks point into ([`Cutter::feed_shared`]): it stays alive while
/// any chunk cut from it does, and whoever made it learns when the last one is gone
/// (the backup's reader takes its buffer back then).
pub type SharedBuf = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A chunk's bytes: a range of a shared read buffer, or a copy of its own where the
/// chunk straddles two reads (or was fed by [`Cutter::feed`]).
pub enum ChunkBytes {
    Shared(SharedRange),
    Owned(Vec<u8>),
}

impl std::ops::Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkBytes::Shared(range) => range.bytes(),
            ChunkBytes::Owned(v) => v,
        }
    }
}

impl From<Vec<u8>> for ChunkBytes {
    fn from(v: Vec<u8>) -> Self {
        ChunkBytes::Owned(v)
    }
}

impl PartialEq for ChunkBytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for ChunkBytes {}

impl std::fmt::Debug for ChunkBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            ChunkBytes::Shared(_) => "shared",
            ChunkBytes::Owned(_) => "owned",
        };
        write!(f, "ChunkBytes({kind}, {} bytes)", self.len())
    }
}

/// `start..end` of a shared buffer: a chunk's bytes, or the part of the cutter's
/// current data run that still lies in the buffer being fed.
pub struct SharedRange {
    buf: SharedBuf,
    start: usize,
    end: usize,
}

impl SharedRange {
    fn bytes(&self) -> &[u8] {
        &(*self.buf).as_ref()[self.start..self.end]
    }
}

/// True when every byte is zero. Reads eight bytes at a time with no early exit inside
/// a 256-byte stretch, which the compiler vectorizes.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(256);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            acc |= u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Bytes of the block start that aligned-cdc hashes to decide a cut.
const ALIGNED_WINDOW: usize = 64;

/// Chooses cut points inside a data run.
#[derive(Clone)]
pub struct CutPoints {
    params: ChunkerParams,
    /// aligned-cdc: a block boundary is a cut candidate when `hash & mask == 0`.
    aligned_mask: u64,
    fastcdc: Option<FastCdcTables>,
    /// The key of the cut decision in an encrypted repository.
    secret: Option<[u8; 32]>,
}

#[derive(Clone)]
struct FastCdcTables {
    mask_s: u64,
    mask_l: u64,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl CutPoints {
    /// Panics if `params` do not validate; configs are validated when a repository opens.
    pub fn new(params: ChunkerParams) -> Self {
        CutPoints::keyed(params, None)
    }

    /// Cut points whose decisions are keyed by `secret` (an encrypted repository's
    /// chunker secret, FORMAT.md section 7.2): without it nobody can tell where a known
    /// file's chunks would end, which is what fingerprints content from chunk sizes
    /// (ePrint 2025/558, 2025/532). `None` is the published, unkeyed chunker.
    pub fn keyed(params: ChunkerParams, secret: Option<[u8; 32]>) -> Self {
        assert!(
            params.validate().is_ok(),
            "unvalidated chunker params {params:?}"
        );
        // Expected chunk = min + align * 2^bits: pick bits so that lands near avg.
        let gap_blocks = ((params.avg_bytes - params.min_bytes) / params.align_bytes).max(1);
        let bits = (gap_blocks as f64).log2().round() as u32;
        let aligned_mask = (1u64 << bits) - 1;
        let fastcdc = (params.algorithm == ChunkerAlgorithm::Fastcdc).then(|| {
            // Normalization level 1, as the fastcdc crate's default constructor uses.
            let bits = fastcdc::v2020::logarithm2(params.avg_bytes);
            let (gear, gear_ls) = match &secret {
                None => fastcdc::v2020::get_gear_with_seed(params.seed),
                Some(key) => {
                    // A secret gear table: 256 words of keyed BLAKE3 output.
                    let mut xof = blake3::Hasher::new_keyed(key)
                        .update(b"dedisk fastcdc gear")
                        .finalize_xof();
                    let mut gear = Box::new([0u64; 256]);
                    let mut word = [0u8; 8];
                    for g in gear.iter_mut() {
                        xof.fill(&mut word);
                        *g = u64::from_le_bytes(word);
                    }
                    let mut gear_ls = Box::new([0u64; 256]);
                    for (l, g) in gear_ls.iter_mut().zip(gear.iter()) {
                        *l = g << 1;
                    }
                    (gear, gear_ls)
                }
            };
            FastCdcTables {
                mask_s: fastcdc::v2020::MASKS[(bits + 1) as usize],
                mask_l: fastcdc::v2020::MASKS[(bits - 1) as usize],
                gear,
                gear_ls,
            }
        });
        CutPoints {
            params,
            aligned_mask,
            fastcdc,
            secret,
        }
    }

    pub fn params(&self) -> &ChunkerParams {
        &self.params
    }

    /// Length of the next chunk of a data run whose next byte sits at disk `offset`.
    ///
    /// Callers pass at least `max_bytes` of data unless the run ends within `data`.
    /// Returns a length in `1..=min(max_bytes, data.len())`.
    pub fn next_cut(&self, data: &[u8], offset: u64) -> usize {
        let p = &self.params;
        let (min, max) = (p.min_bytes as usize, p.max_bytes as usize);
        if data.len() <= min && p.file_start_tail_bytes == 0 {
            return data.len();
        }
        let limit = data.len().min(max);
        match p.algorithm {
            ChunkerAlgorithm::Fixed => {
                // Boundaries on the absolute grid, so a chunk after a hole still lines up.
                let avg = p.avg_bytes as u64;
                let to_grid = (avg - offset % avg) as usize;
                to_grid.min(limit)
            }
            ChunkerAlgorithm::AlignedCdc => {
                let align = p.align_bytes as usize;
                // Below `min` only a file start cuts; from `min` on, the hash too.
                let mut at = if p.file_start_tail_bytes > 0 {
                    align
                } else {
                    min
                };
                while at < limit {
                    if at + ALIGNED_WINDOW <= data.len() {
                        let window = &data[at..at + ALIGNED_WINDOW];
                        if self.file_starts_at(data, at)
                            || (at >= min && self.aligned_candidate(window))
                        {
                            return at;
                        }
                    }
                    at += align;
                }
                limit
            }
            ChunkerAlgorithm::Fastcdc => {
                let t = self.fastcdc.as_ref().expect("tables built for fastcdc");
                let (_, len) = fastcdc::v2020::cut_gear(
                    &data[..limit],
                    min,
                    p.avg_bytes as usize,
                    max,
                    t.mask_s,
                    t.mask_l,
                    t.mask_s << 1,
                    t.mask_l << 1,
                    &t.gear,
                    &t.gear_ls,
                );
                len.max(1)
            }
        }
    }

    /// Whether the block boundary `at` of a chunk's `data` (`at` is at least one block in)
    /// looks like the start of a file: the `file_start_tail_bytes` before it are zero, as
    /// the slack after a file's last byte in its last block is, and the block it starts
    /// does not begin with zeros. Filesystems start files on block boundaries, so cutting
    /// there makes the same files give the same chunks in any order and at any offset;
    /// a false start inside a file costs a smaller chunk, never a lost match, since the
    /// decision reads only bytes of the chunk being cut (so a resumed cutter, section 16
    /// of FORMAT.md, decides the same). Not keyed: see FORMAT.md 7.2 for what that shows.
    fn file_starts_at(&self, data: &[u8], at: usize) -> bool {
        let tail = self.params.file_start_tail_bytes as usize;
        tail > 0 && is_zero(&data[at - tail..at]) && !is_zero(&data[at..at + ALIGNED_WINDOW])
    }

    /// aligned-cdc's decision for a block boundary, from the first 64 bytes of the block
    /// that starts there. In a disk, files start on block boundaries, so this looks at file
    /// heads: the same file gives the same cuts wherever its blocks sit. A window of zeros
    /// is never a candidate (it says nothing about the content).
    fn aligned_candidate(&self, window: &[u8]) -> bool {
        if let Some(key) = &self.secret {
            // Keyed: the decision is a PRF of the window (one BLAKE3 block per 4 KiB of
            // disk, still tens of GiB/s).
            if window.iter().all(|&b| b == 0) {
                return false;
            }
            let h = blake3::keyed_hash(key, window);
            let h = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
            return h & self.aligned_mask == 0;
        }
        let mut h = self.params.seed ^ 0x2545_f491_4f6c_dd1d;
        let mut any = 0u64;
        for w in window.chunks_exact(8) {
            let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            any |= v;
            h = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 29;
        }
        any != 0 && (h >> 20) & self.aligned_mask == 0
    }
}

/// The streaming zero-run splitter and chunker. See the module doc.
///
/// The current data run's bytes not yet cut are `pending[head..]` (bytes the cutter had
/// to copy: ones fed by [`Cutter::feed`], the end of an earlier read, zeros of a source
/// hole) followed by `shared` (a range of the read buffer being fed, not copied). Chunks
/// that lie in `shared` alone go on as ranges of it; only a chunk that straddles two
/// reads is copied. Copying every chunk twice (into `pending`, then out of it) cost about
/// a tenth of a full backup's CPU time.
pub struct Cutter {
    points: CutPoints,
    align: u64,
    zero_run_min: u64,
    /// Disk offset of the next byte to be fed.
    pos: u64,
    /// Zero bytes seen since the last data byte (whole blocks, or a tail at the end).
    zero_run: u64,
    /// Disk offset where the current zero run starts (meaningful while `zero_run > 0`).
    zero_run_at: u64,
    /// Copied data of the current run not yet cut; `pending[head..]` starts at disk
    /// `pending_at`, and `shared` follows it.
    pending: Vec<u8>,
    head: usize,
    pending_at: u64,
    /// The rest of the run, in the buffer of the current [`Cutter::feed_shared`] call
    /// (copied into `pending` before any other input is taken, so it always is).
    shared: Option<SharedRange>,
    /// A partial block carried between pieces (pieces need not be block-aligned).
    partial: Vec<u8>,
}

impl Cutter {
    pub fn new(params: ChunkerParams) -> Self {
        Cutter::keyed(params, None)
    }

    /// A cutter whose cut decisions are keyed (see [`CutPoints::keyed`]).
    pub fn keyed(params: ChunkerParams, secret: Option<[u8; 32]>) -> Self {
        Cutter {
            align: params.align_bytes as u64,
            zero_run_min: params.zero_run_min_bytes as u64,
            points: CutPoints::keyed(params, secret),
            pos: 0,
            zero_run: 0,
            zero_run_at: 0,
            pending: Vec::with_capacity(2 * params.max_bytes as usize),
            head: 0,
            pending_at: 0,
            shared: None,
            partial: Vec::new(),
        }
    }

    /// A cutter that starts at disk `offset` instead of 0, as if it had just cut there:
    /// what a backup from a change map uses to cut again from a cut point of the base
    /// (see [`crate::backup::changes`]).
    ///
    /// At a block-aligned cut point (a chunk's end, a hole's start or end) the cutter's
    /// state holds nothing from before that point: what is pending starts there, and a
    /// zero run that began earlier was either short and already taken into the data,
    /// or long and cut as a hole. So a cutter resumed there on the same bytes cuts
    /// exactly as the one that ran from 0 (the property test in
    /// `backup::changes` proves it). Panics when `offset` is not block-aligned: between
    /// blocks the zero-block detection would see a different grid.
    pub fn resume_at(params: ChunkerParams, secret: Option<[u8; 32]>, offset: u64) -> Self {
        let mut c = Cutter::keyed(params, secret);
        assert_eq!(offset % c.align, 0, "a cutter resumes on a block boundary");
        c.pos = offset;
        c.pending_at = offset;
        c
    }

    /// Disk offset of the next byte to be fed.
    pub fn position(&self) -> u64 {
        self.pos + self.partial.len() as u64
    }

    /// Feeds the next bytes of the disk; every chunk is a copy.
    pub fn feed(&mut self, mut data: &[u8], out: &mut impl FnMut(Cut)) {
        self.settle();
        let align = self.align as usize;
        if !self.partial.is_empty() {
            let need = align - self.partial.len();
            let take = need.min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < align {
                return;
            }
            let block = std::mem::take(&mut self.partial);
            self.feed_blocks(&block, None, out);
        }
        let whole = data.len() - data.len() % align;
        self.feed_blocks(&data[..whole], None, out);
        self.partial.extend_from_slice(&data[whole..]);
    }

    /// Feeds the next bytes of the disk, all of `buf`: chunks that lie inside it are
    /// ranges of it, not copies (see [`SharedBuf`]). Cuts as [`Cutter::feed`] would.
    pub fn feed_shared(&mut self, buf: &SharedBuf, out: &mut impl FnMut(Cut)) {
        self.settle();
        let data: &[u8] = (**buf).as_ref();
        if !self.partial.is_empty() {
            // Blocks would not start at the buffer's block boundaries (only a stream's
            // short reads do this).
            return self.feed(data, out);
        }
        let whole = data.len() - data.len() % self.align as usize;
        self.feed_blocks(&data[..whole], Some(buf), out);
        self.partial.extend_from_slice(&data[whole..]);
    }

    /// Feeds `len` bytes known to be zero (a hole of the source) without materializing them.
    pub fn feed_zeros(&mut self, mut len: u64, out: &mut impl FnMut(Cut)) {
        self.settle();
        // Complete a partial block with real zeros first, so blocks stay aligned.
        while len > 0 && !self.partial.is_empty() {
            let need = (self.align as usize - self.partial.len()).min(len as usize);
            let zeros = vec![0u8; need];
            self.feed(&zeros, out);
            len -= need as u64;
        }
        let whole = len - len % self.align;
        if self.zero_run == 0 {
            self.zero_run_at = self.pos;
        }
        self.zero_run += whole;
        self.pos += whole;
        if len > whole {
            let zeros = vec![0u8; (len - whole) as usize];
            self.feed(&zeros, out);
        }
    }

    /// Copies what is left of the last shared buffer into `pending`: input from
    /// elsewhere is about to follow it.
    fn settle(&mut self) {
        if let Some(run) = self.shared.take() {
            self.pending.extend_from_slice(run.bytes());
        }
    }

    /// Feeds whole blocks starting at `self.pos` (block-aligned). `data` is all of
    /// `shared`'s bytes when given.
    fn feed_blocks(&mut self, data: &[u8], shared: Option<&SharedBuf>, out: &mut impl FnMut(Cut)) {
        let align = self.align as usize;
        let mut start_of_data: Option<usize> = None;
        for (i, block) in data.chunks(align).enumerate() {
            let at = i * align;
            if is_zero(block) {
                if let Some(s) = start_of_data.take() {
                    self.push_data(
                        self.pos + s as u64,
                        &data[s..at],
                        shared.map(|b| (b, s)),
                        out,
                    );
                }
                if self.zero_run == 0 {
                    self.zero_run_at = self.pos + at as u64;
                }
                self.zero_run += block.len() as u64;
            } else if start_of_data.is_none() {
                self.end_zero_run(out);
                start_of_data = Some(at);
            }
        }
        if let Some(s) = start_of_data {
            self.push_data(self.pos + s as u64, &data[s..], shared.map(|b| (b, s)), out);
        }
        self.pos += data.len() as u64;
    }

    /// Decides what the zero run before the next data becomes: a hole if long enough,
    /// otherwise zeros inside the current data run.
    fn end_zero_run(&mut self, out: &mut impl FnMut(Cut)) {
        if self.zero_run == 0 {
            return;
        }
        let run_start = self.zero_run_at;
        if self.zero_run >= self.zero_run_min {
            self.flush_run(out);
            out(Cut::Hole {
                offset: run_start,
                len: self.zero_run,
            });
        } else {
            let n = self.zero_run as usize;
            if self.run_len() == 0 {
                self.pending_at = run_start;
            }
            let run_end = self.pending_at + self.run_len() as u64;
            match &mut self.shared {
                // The zeros follow the shared range in its buffer (the buffer being
                // fed holds every block since: see `shared`): take them from there.
                Some(run) if run_end == run_start => {
                    debug_assert!(is_zero(&(*run.buf).as_ref()[run.end..run.end + n]));
                    run.end += n;
                }
                _ => {
                    self.settle();
                    self.pending.resize(self.pending.len() + n, 0);
                }
            }
            self.cut_ready(out);
        }
        self.zero_run = 0;
    }

    /// Copied bytes of the run not yet cut.
    fn pending_len(&self) -> usize {
        self.pending.len() - self.head
    }

    /// Bytes of the run not yet cut.
    fn run_len(&self) -> usize {
        self.pending_len() + self.shared.as_ref().map_or(0, |r| r.end - r.start)
    }

    /// Appends data that starts at disk `offset` to the current run: `data` is at
    /// `shared.1` in the shared buffer when one is given.
    fn push_data(
        &mut self,
        offset: u64,
        data: &[u8],
        shared: Option<(&SharedBuf, usize)>,
        out: &mut impl FnMut(Cut),
    ) {
        debug_assert_eq!(self.zero_run, 0);
        if self.run_len() == 0 {
            self.pending_at = offset;
        }
        debug_assert_eq!(self.pending_at + self.run_len() as u64, offset);
        match (shared, &mut self.shared) {
            (Some((_, at)), Some(run)) if run.end == at => run.end += data.len(),
            (Some((buf, at)), _) => {
                self.settle();
                self.shared = Some(SharedRange {
                    buf: buf.clone(),
                    start: at,
                    end: at + data.len(),
                });
            }
            (None, _) => {
                self.settle();
                self.pending.extend_from_slice(data);
            }
        }
        self.cut_ready(out);
    }

    /// Emits every chunk whose end is already decided (at least `max` bytes pending).
    fn cut_ready(&mut self, out: &mut impl FnMut(Cut)) {
        let max = self.points.params().max_bytes as usize;
        while self.run_len() >= max {
            self.emit_one(out);
        }
        // Keep the buffer from growing: move the undecided tail to the front.
        if self.head > 0 && self.head >= self.pending.len() / 2 {
            self.pending.drain(..self.head);
            self.head = 0;
        }
    }

    /// Cuts the next chunk of the run: at least `max` bytes of it are here, or all of it.
    fn emit_one(&mut self, out: &mut impl FnMut(Cut)) {
        let offset = self.pending_at;
        let own = self.pending_len();
        let data = match self.shared.as_mut() {
            // All in the shared buffer: a range of it.
            Some(run) if own == 0 => {
                let len = self.points.next_cut(run.bytes(), offset);
                let data = ChunkBytes::Shared(SharedRange {
                    buf: run.buf.clone(),
                    start: run.start,
                    end: run.start + len,
                });
                run.start += len;
                if run.start == run.end {
                    self.shared = None;
                }
                data
            }
            // Copied bytes, then the shared buffer: the cut may lie in either, so look
            // `max` bytes ahead through a copy of the shared bytes it needs.
            Some(run) => {
                let max = self.points.params().max_bytes as usize;
                let ahead = (run.end - run.start).min(max.saturating_sub(own));
                self.pending.extend_from_slice(&run.bytes()[..ahead]);
                let len = self.points.next_cut(&self.pending[self.head..], offset);
                let data = self.pending[self.head..self.head + len].to_vec();
                if len >= own {
                    run.start += len - own;
                    self.pending.clear();
                    self.head = 0;
                    if run.start == run.end {
                        self.shared = None;
                    }
                } else {
                    self.pending.truncate(self.pending.len() - ahead);
                    self.head += len;
                }
                ChunkBytes::Owned(data)
            }
            None => {
                let data = &self.pending[self.head..];
                let len = self.points.next_cut(data, offset);
                self.head += len;
                ChunkBytes::Owned(data[..len].to_vec())
            }
        };
        self.pending_at += data.len() as u64;
        out(Cut::Chunk { offset, data });
    }

    /// Ends the current data run: cuts everything pending.
    fn flush_run(&mut self, out: &mut impl FnMut(Cut)) {
        while self.run_len() > 0 {
            self.emit_one(out);
        }
        self.pending.clear();
        self.head = 0;
    }

    /// Ends the disk. Returns its size in bytes.
    pub fn finish(mut self, out: &mut impl FnMut(Cut)) -> u64 {
        self.settle();
        // The last partial block (a disk size that is not a multiple of the block size).
        if !self.partial.is_empty() {
            let tail = std::mem::take(&mut self.partial);
            if is_zero(&tail) {
                if self.zero_run == 0 {
                    self.zero_run_at = self.pos;
                }
                self.zero_run += tail.len() as u64;
            } else {
                self.end_zero_run(out);
                self.push_data(self.pos, &tail, None, out);
            }
            self.pos += tail.len() as u64;
        }
        if self.zero_run > 0 {
            // Trailing zeros: a hole however short, since nothing follows to share a chunk.
            self.flush_run(out);
            out(Cut::Hole {
                offset: self.zero_run_at,
                len: self.zero_run,
            });
        } else {
            self.flush_run(out);
        }
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(algorithm: ChunkerAlgorithm) -> ChunkerParams {
        ChunkerParams {
            algorithm,
            min_bytes: 8192,
            avg_bytes: 32768,
            max_bytes: 65536,
            align_bytes: 4096,
            seed: 0,
            zero_run_min_bytes: 8192,
            file_start_tail_bytes: 0,
        }
    }

    /// [`params`] with cuts at file starts.
    fn with_file_starts(algorithm: ChunkerAlgorithm) -> ChunkerParams {
        ChunkerParams {
            file_start_tail_bytes: 256,
            ..params(algorithm)
        }
    }

    /// A disk-like test image: pseudo-random blocks, text, zero runs, an unaligned size.
    fn disk(seed: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut x = seed | 1;
        let mut at = 0;
        while at < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let run = 4096 * (1 + (x % 40) as usize);
            let end = (at + run).min(len);
            match x % 5 {
                0 => {} // zeros
                1 => {
                    for (i, b) in out[at..end].iter_mut().enumerate() {
                        *b = b"the quick brown fox "[i % 20];
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

    fn cut_all(
        p: ChunkerParams,
        data: &[u8],
        piece: usize,
        zeros_as_holes: bool,
    ) -> Vec<(u64, u64, bool)> {
        let mut c = Cutter::new(p);
        let mut cuts = vec![];
        let mut out = |cut: Cut| {
            cuts.push(match cut {
                Cut::Chunk { offset, data } => (offset, data.len() as u64, true),
                Cut::Hole { offset, len } => (offset, len, false),
            })
        };
        for part in data.chunks(piece) {
            if zeros_as_holes && is_zero(part) {
                c.feed_zeros(part.len() as u64, &mut out);
            } else {
                c.feed(part, &mut out);
            }
        }
        let size = c.finish(&mut out);
        assert_eq!(size, data.len() as u64);
        cuts
    }

    /// [`cut_all`] through [`Cutter::feed_shared`] (all-zero pieces as source holes when
    /// `zeros_as_holes`). Checks every chunk's and hole's bytes against `data`, and
    /// returns the cuts and how many chunks were copies.
    fn cut_all_shared(
        p: ChunkerParams,
        data: &[u8],
        piece: usize,
        zeros_as_holes: bool,
    ) -> (Vec<(u64, u64, bool)>, usize) {
        let mut c = Cutter::new(p);
        let mut cuts = vec![];
        let mut copied = 0;
        let mut out = |cut: Cut| match cut {
            Cut::Chunk {
                offset,
                data: bytes,
            } => {
                let at = offset as usize;
                assert!(
                    *bytes == data[at..at + bytes.len()],
                    "chunk at {at} holds other bytes"
                );
                copied += matches!(bytes, ChunkBytes::Owned(_)) as usize;
                cuts.push((offset, bytes.len() as u64, true));
            }
            Cut::Hole { offset, len } => {
                let at = offset as usize;
                assert!(is_zero(&data[at..at + len as usize]));
                cuts.push((offset, len, false));
            }
        };
        for part in data.chunks(piece) {
            if zeros_as_holes && is_zero(part) {
                c.feed_zeros(part.len() as u64, &mut out);
            } else {
                let buf: SharedBuf = Arc::new(part.to_vec());
                c.feed_shared(&buf, &mut out);
            }
        }
        let size = c.finish(&mut out);
        assert_eq!(size, data.len() as u64);
        (cuts, copied)
    }

    #[test]
    fn only_chunks_across_two_reads_are_copied() {
        for p in [
            with_file_starts(ChunkerAlgorithm::AlignedCdc),
            params(ChunkerAlgorithm::Fastcdc),
        ] {
            let alg = p.algorithm;
            let data = disk(7, 16 << 20);
            let piece = 1 << 20;
            let (cuts, copied) = cut_all_shared(p, &data, piece, false);
            assert_eq!(cuts, cut_all(p, &data, 1 << 20, false));
            let chunks = cuts.iter().filter(|c| c.2).count();
            // Only chunks that start within `max` of a read's end can need the next
            // read: at most max/align of them per read (and the short zero runs that
            // end a read are copied too, as are the chunks they start).
            let bound = (data.len() / piece) * (p.max_bytes / p.align_bytes) as usize;
            assert!(
                copied <= bound,
                "{alg:?}: {copied} of {chunks} chunks copied"
            );
            assert!(
                copied * 4 < chunks,
                "{alg:?}: {copied} of {chunks} chunks copied"
            );
        }
    }

    fn check_cover(p: &ChunkerParams, data: &[u8], cuts: &[(u64, u64, bool)]) {
        let mut at = 0;
        for &(off, len, is_chunk) in cuts {
            assert_eq!(off, at, "cuts must tile the disk");
            assert!(len > 0);
            if is_chunk {
                assert!(len <= p.max_bytes as u64);
            } else {
                assert!(is_zero(&data[off as usize..(off + len) as usize]));
            }
            at += len;
        }
        assert_eq!(at, data.len() as u64);
    }

    #[test]
    fn keyed_cuts_depend_on_the_secret_and_keep_every_rule() {
        let data = disk(11, 6 << 20);
        for alg in [ChunkerAlgorithm::AlignedCdc, ChunkerAlgorithm::Fastcdc] {
            let p = ChunkerParams::default_for(alg);
            let cuts_with = |secret: Option<[u8; 32]>| {
                let mut c = Cutter::keyed(p, secret);
                let mut cuts = vec![];
                let mut out = |cut: Cut| {
                    if let Cut::Chunk { offset, data } = cut {
                        cuts.push((offset, data.len() as u64));
                    }
                };
                for part in data.chunks(123_457) {
                    c.feed(part, &mut out);
                }
                c.finish(&mut out);
                cuts
            };
            let a = cuts_with(Some([1; 32]));
            assert_eq!(a, cuts_with(Some([1; 32])), "{alg}: same secret, same cuts");
            assert_ne!(a, cuts_with(Some([2; 32])), "{alg}: the secret decides");
            assert_ne!(
                a,
                cuts_with(None),
                "{alg}: keyed is not the published chunker"
            );
            let mean = a.iter().map(|c| c.1).sum::<u64>() / a.len() as u64;
            assert!(
                (p.avg_bytes as u64 / 2..p.avg_bytes as u64 * 2).contains(&mean),
                "{alg}: mean chunk {mean}"
            );
            for (offset, len) in &a {
                assert!(*len <= p.max_bytes as u64);
                if alg == ChunkerAlgorithm::AlignedCdc {
                    assert_eq!(
                        offset % p.align_bytes as u64,
                        0,
                        "aligned cuts stay aligned"
                    );
                }
            }
        }
    }

    #[test]
    fn chunks_tile_the_disk_for_every_algorithm() {
        let data = disk(7, 3 << 20 | 1234);
        for alg in [
            ChunkerAlgorithm::AlignedCdc,
            ChunkerAlgorithm::Fastcdc,
            ChunkerAlgorithm::Fixed,
        ] {
            let p = params(alg);
            let cuts = cut_all(p, &data, 1 << 20, false);
            check_cover(&p, &data, &cuts);
            let chunks = cuts.iter().filter(|c| c.2).count();
            assert!(chunks > 20, "{alg}: {chunks} chunks");
            assert!(
                cuts.iter().any(|c| !c.2),
                "{alg}: zero runs must become holes"
            );
        }
    }

    #[test]
    fn aligned_cdc_cuts_only_on_block_boundaries() {
        let data = disk(3, 2 << 20);
        let cuts = cut_all(params(ChunkerAlgorithm::AlignedCdc), &data, 65536, false);
        for (off, _, _) in cuts {
            assert_eq!(off % 4096, 0);
        }
    }

    #[test]
    fn aligned_cdc_average_is_near_target() {
        let data = disk(11, 16 << 20);
        let p = params(ChunkerAlgorithm::AlignedCdc);
        let cuts = cut_all(p, &data, 1 << 20, false);
        let chunk_lens: Vec<u64> = cuts.iter().filter(|c| c.2).map(|c| c.1).collect();
        let avg = chunk_lens.iter().sum::<u64>() / chunk_lens.len() as u64;
        assert!((16_000..=48_000).contains(&avg), "average {avg}");
    }

    #[test]
    fn in_place_change_keeps_other_chunks() {
        let a = disk(5, 4 << 20);
        let mut b = a.clone();
        for x in &mut b[2_000_000..2_004_096] {
            *x = x.wrapping_add(1);
        }
        for alg in [
            ChunkerAlgorithm::AlignedCdc,
            ChunkerAlgorithm::Fastcdc,
            ChunkerAlgorithm::Fixed,
        ] {
            let ca = cut_all(params(alg), &a, 1 << 20, false);
            let cb = cut_all(params(alg), &b, 1 << 20, false);
            let changed = cb.iter().filter(|c| !ca.contains(c)).count();
            assert!(
                changed <= 3,
                "{alg}: {changed} cuts moved after a 4 KiB in-place change"
            );
        }
    }

    /// Files of random sizes, each starting on a block and followed by zero slack up to
    /// the next block, in one order and then in another order at another offset: what a
    /// second VM installed from the same files on another filesystem holds.
    fn files_in_order(files: &[Vec<u8>], order: &[usize], lead_blocks: usize) -> Vec<u8> {
        let mut disk = vec![0xa5u8; lead_blocks * 4096];
        for &i in order {
            disk.extend_from_slice(&files[i]);
            disk.resize(disk.len().next_multiple_of(4096), 0);
        }
        disk
    }

    #[test]
    fn the_same_files_in_another_order_make_the_same_chunks() {
        let mut x = 99u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // 600 files of 1 KiB to 120 KiB of incompressible bytes that never end in zeros.
        let files: Vec<Vec<u8>> = (0..600)
            .map(|_| {
                let len = 1024 + (next() % (120 << 10)) as usize;
                (0..len).map(|_| (next() % 255) as u8 + 1).collect()
            })
            .collect();
        let a_order: Vec<usize> = (0..files.len()).collect();
        let mut b_order = a_order.clone();
        for i in (1..b_order.len()).rev() {
            b_order.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let a = files_in_order(&files, &a_order, 3);
        let b = files_in_order(&files, &b_order, 7);
        let new_share = |p: ChunkerParams| {
            let chunks = |d: &[u8]| {
                let mut set = std::collections::HashMap::new();
                for (off, len, is_chunk) in cut_all(p, d, 1 << 20, false) {
                    if is_chunk {
                        let bytes = &d[off as usize..(off + len) as usize];
                        set.insert(blake3::hash(bytes), len);
                    }
                }
                set
            };
            let (ca, cb) = (chunks(&a), chunks(&b));
            let new: u64 = cb
                .iter()
                .filter(|(h, _)| !ca.contains_key(*h))
                .map(|(_, l)| l)
                .sum();
            new as f64 / b.len() as f64
        };
        let without = new_share(params(ChunkerAlgorithm::AlignedCdc));
        let with = new_share(with_file_starts(ChunkerAlgorithm::AlignedCdc));
        // Without file starts every chunk that spans two files is new (61 % here). With
        // them only what follows a file whose slack is shorter than the tail (1 file in
        // 16) is (6.2 %).
        assert!(with < 0.08, "with file starts {:.1} % is new", with * 100.0);
        assert!(without > 0.4, "without {:.1} % is new", without * 100.0);
    }

    #[test]
    fn only_a_file_start_cuts_below_min() {
        let p = with_file_starts(ChunkerAlgorithm::AlignedCdc);
        let data = disk(17, 8 << 20);
        let mut files = vec![];
        let mut x = 5u64;
        for _ in 0..200 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            files.push(vec![(x >> 60) as u8 | 1; 100 + (x >> 40) as usize % 30_000]);
        }
        let order: Vec<usize> = (0..files.len()).collect();
        let mut data = [data, files_in_order(&files, &order, 1)].concat();
        // A block whose zero tail is one byte short of the rule: no file start there.
        data.extend_from_slice(&[7u8; 4096 - 255]);
        data.extend_from_slice(&[0u8; 255]);
        data.extend_from_slice(&[7u8; 40_000]);
        let cuts = cut_all(p, &data, 1 << 20, false);
        check_cover(&p, &data, &cuts);
        let chunks: Vec<_> = cuts.iter().filter(|c| c.2).collect();
        let mut short = 0;
        for (i, &&(off, len, _)) in chunks.iter().enumerate() {
            assert_eq!(off % 4096, 0);
            let end = (off + len) as usize;
            let is_last_of_run = chunks.get(i + 1).is_none_or(|n| n.0 != off + len);
            if len < p.min_bytes as u64 && !is_last_of_run {
                short += 1;
                assert!(
                    is_zero(&data[end - 256..end]) && !is_zero(&data[end..end + 64]),
                    "a {len}-byte chunk at {off} ends where no file starts"
                );
            }
        }
        assert!(short > 30, "{short} chunks cut at file starts below min");
        let near = data.len() - 40_000 - 4096;
        assert!(
            chunks.iter().all(|c| c.0 + c.1 != near as u64 + 4096),
            "255 zero bytes are not a file's slack"
        );
    }

    #[test]
    fn short_zero_runs_stay_inside_chunks_and_trailing_zeros_are_a_hole() {
        let mut data = vec![1u8; 40960];
        data[8192..12288].fill(0); // one zero block: shorter than zero_run_min
        data.extend_from_slice(&[0u8; 100]);
        let cuts = cut_all(params(ChunkerAlgorithm::Fixed), &data, 7000, false);
        assert_eq!(cuts.iter().filter(|c| !c.2).count(), 1, "{cuts:?}");
        assert_eq!(*cuts.last().unwrap(), (40960, 100, false));
    }

    /// Pins the cut points of each algorithm with the default parameters: they decide what
    /// deduplicates against what, so they are part of the format (FORMAT.md §7). If this
    /// fails, the change breaks dedup against every existing repository.
    #[test]
    fn golden_cut_points() {
        let data = disk(42, 8 << 20);
        // The first three are the defaults before file starts (and what every repository
        // made before them still cuts with); the last is today's default.
        for (alg, tail, expected) in [
            (ChunkerAlgorithm::AlignedCdc, 0, "5a00659d9a446d64"),
            (ChunkerAlgorithm::Fastcdc, 0, "d9ca8aae4181f860"),
            (ChunkerAlgorithm::Fixed, 0, "04e6051074f0362a"),
            (ChunkerAlgorithm::AlignedCdc, 256, "620cd65d0c64408c"),
        ] {
            let p = ChunkerParams {
                algorithm: alg,
                file_start_tail_bytes: tail,
                ..ChunkerParams::default()
            };
            let cuts = cut_all(p, &data, 1 << 20, false);
            let mut h = blake3::Hasher::new();
            for (off, len, chunk) in &cuts {
                h.update(&off.to_le_bytes());
                h.update(&len.to_le_bytes());
                h.update(&[*chunk as u8]);
            }
            let digest = h.finalize().to_hex()[..16].to_string();
            println!("{alg}: {} cuts, {digest}", cuts.len());
            assert_eq!(digest, expected, "{alg} cut points moved");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The same disk gives the same cuts whatever the piece size and whether zeros
        /// arrive as data or as source holes.
        #[test]
        fn cuts_do_not_depend_on_piece_sizes(seed in 1u64..10_000, len in 1usize..(1 << 20), piece in 1usize..300_000, alg in 0..4u8) {
            let p = match alg {
                0 => params(ChunkerAlgorithm::AlignedCdc),
                1 => params(ChunkerAlgorithm::Fastcdc),
                2 => params(ChunkerAlgorithm::Fixed),
                _ => with_file_starts(ChunkerAlgorithm::AlignedCdc),
            };
            let data = disk(seed, len);
            let reference = cut_all(p, &data, 1 << 20, false);
            check_cover(&p, &data, &reference);
            prop_assert_eq!(&cut_all(p, &data, piece, false), &reference);
            prop_assert_eq!(&cut_all(p, &data, 4096 * (1 + piece % 64), true), &reference);
            prop_assert_eq!(&cut_all_shared(p, &data, piece, false).0, &reference);
            prop_assert_eq!(&cut_all_shared(p, &data, 4096 * (1 + piece % 64), true).0, &reference);
        }
    }
}
