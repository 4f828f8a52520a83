//! Restore from an object store reads several chunks with one ranged GET: chunks that
//! follow each other on the disk mostly follow each other in a pack too (a backup writes
//! them in disk order; an encrypted one spreads them over three packs, each still in
//! order). The walker's extents are gathered into runs, one per pack, each read by one
//! worker with one request. Every request costs tens of milliseconds however small (and
//! a store like Garage reads whole 1 MiB blocks for it): one GET per chunk restored an
//! 8 GiB disk from loopback Garage at 43 MB/s.

use repo_format::{BlobLocation, Extent, PackId};

/// One extent to restore: its disk offset, the extent, and where its chunk is.
pub type Item = (u64, Extent, Option<BlobLocation>);

/// A run's largest span in its pack: 32 workers hold at most 32 of them in memory.
pub const MAX_RUN_BYTES: u64 = 4 << 20;
/// Bytes between two chunks of a run that are fetched without being needed (another
/// backup's chunks, nodes): cheaper than a request of their own.
const MAX_GAP_BYTES: u64 = 1 << 20;
/// Runs open at once; past this the oldest is sent (chunks from many packs: an
/// incremental's chunks are spread over the nights that stored them; a chunk stored
/// once and used at several places opens a run of its own beside its pack's run).
const MAX_OPEN_RUNS: usize = 32;

/// A run being gathered: items in disk order, their chunks in one pack, ascending.
struct Run {
    pack: PackId,
    items: Vec<Item>,
    start: u64,
    end: u64,
}

/// Gathers extents into batches: a run of chunks in one pack, or one extent alone.
pub struct Runs {
    /// Oldest first.
    open: Vec<Run>,
    overhead: u64,
    /// Batches sent and chunks in them, for the log.
    pub batches: u64,
    pub chunks: u64,
}

/// Where a blob's bytes end in its pack (header included).
fn end_of(loc: &BlobLocation, overhead: u64) -> u64 {
    loc.entry.offset + overhead + loc.entry.stored_len as u64
}

impl Runs {
    /// `overhead`: the bytes before each blob's payload in a pack (its clear header).
    pub fn new(overhead: u64) -> Runs {
        Runs {
            open: Vec::new(),
            overhead,
            batches: 0,
            chunks: 0,
        }
    }

    fn send(&mut self, items: Vec<Item>, send: &mut impl FnMut(Vec<Item>) -> bool) -> bool {
        self.batches += 1;
        self.chunks += items.len() as u64;
        send(items)
    }

    /// Takes the next extent in disk order; calls `send` with each batch that is
    /// complete. Returns false as soon as `send` does.
    pub fn push(&mut self, item: Item, send: &mut impl FnMut(Vec<Item>) -> bool) -> bool {
        let Some(loc) = item.2 else {
            return self.send(vec![item], send); // a hole, or a chunk the index lacks
        };
        let end = end_of(&loc, self.overhead);
        let follows = |r: &Run| {
            r.pack == loc.pack
                && loc.entry.offset >= r.end
                && loc.entry.offset - r.end <= MAX_GAP_BYTES
                && end - r.start <= MAX_RUN_BYTES
        };
        if let Some(run) = self.open.iter_mut().find(|r| follows(r)) {
            run.items.push(item);
            run.end = end;
            return true;
        }
        // A run of this pack that the chunk cannot join is full, or the chunk lies
        // elsewhere in the pack: full runs go now, others stay open beside the new one.
        let mut i = 0;
        while i < self.open.len() {
            let r = &self.open[i];
            if r.pack == loc.pack
                && end.saturating_sub(r.start) > MAX_RUN_BYTES
                && loc.entry.offset >= r.end
            {
                let run = self.open.remove(i);
                if !self.send(run.items, send) {
                    return false;
                }
            } else {
                i += 1;
            }
        }
        if self.open.len() >= MAX_OPEN_RUNS {
            let run = self.open.remove(0);
            if !self.send(run.items, send) {
                return false;
            }
        }
        self.open.push(Run {
            pack: loc.pack,
            start: loc.entry.offset,
            end,
            items: vec![item],
        });
        true
    }

    /// Sends every open run.
    pub fn flush(&mut self, send: &mut impl FnMut(Vec<Item>) -> bool) -> bool {
        let runs = std::mem::take(&mut self.open);
        runs.into_iter().all(|r| self.send(r.items, send))
    }
}

/// The span of pack bytes a batch of two or more chunks needs: (pack, start, len).
pub fn span(batch: &[Item], overhead: u64) -> Option<(PackId, u64, u64)> {
    if batch.len() < 2 {
        return None;
    }
    let first = batch.first()?.2?;
    let last = batch.last()?.2?;
    let start = first.entry.offset;
    Some((first.pack, start, end_of(&last, overhead) - start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use repo_format::{BlobId, BlobKind, Compression, TocEntry};

    fn chunk(disk: u64, pack: u8, offset: u64, len: u32) -> Item {
        let entry = TocEntry {
            id: BlobId([disk as u8; 32]),
            kind: BlobKind::Data,
            compression: Compression::None,
            stored_len: len,
            raw_len: len,
            offset,
        };
        (
            disk,
            Extent::Chunk { id: entry.id, len },
            Some(BlobLocation {
                pack: PackId([pack; 32]),
                entry,
            }),
        )
    }

    #[test]
    fn interleaved_packs_make_one_run_each_and_gaps_or_size_cut_them() {
        let mut runs = Runs::new(0);
        let mut sent: Vec<Vec<u64>> = Vec::new();
        let mut send = |b: Vec<Item>| {
            sent.push(b.iter().map(|i| i.0).collect());
            true
        };
        // Two packs interleaved, each in order: one run per pack.
        for (disk, pack, off) in [
            (0, 1, 0),
            (10, 2, 0),
            (20, 1, 100),
            (30, 2, 100),
            (40, 1, 200),
        ] {
            assert!(runs.push(chunk(disk, pack, off, 100), &mut send));
        }
        // A chunk far behind in pack 1 ends its run; a hole goes alone at once.
        assert!(runs.push(chunk(50, 1, 10_000_000, 100), &mut send));
        assert!(runs.push((60, Extent::Hole { len: 5 }, None), &mut send));
        assert!(runs.flush(&mut send));
        assert_eq!(
            sent,
            vec![vec![0, 20, 40], vec![60], vec![10, 30], vec![50]]
        );
        let batch: Vec<Item> = [0u64, 20, 40]
            .iter()
            .zip([0u64, 100, 200])
            .map(|(d, o)| chunk(*d, 1, o, 100))
            .collect();
        assert_eq!(span(&batch, 0), Some((PackId([1; 32]), 0, 300)));
        // Runs stop at MAX_RUN_BYTES.
        let mut runs = Runs::new(0);
        let mut n = 0;
        let mut count = |_b: Vec<Item>| {
            n += 1;
            true
        };
        for i in 0..100u64 {
            runs.push(chunk(i, 3, i * (1 << 20), 1 << 20), &mut count);
        }
        runs.flush(&mut count);
        assert_eq!(n, 25, "4 MiB runs of 1 MiB chunks");
    }
}
