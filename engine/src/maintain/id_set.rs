//! A set of blob ids in bounded memory whatever its size (issue 19): the ids a prune
//! found referenced, the chunks a verify's manifests reference, the damaged blobs it
//! found. Ids are gathered in a buffer of [`RUN_IDS`]; each full buffer is sorted and
//! written to a scratch file as a run; every 64 runs of a size are merged into one of the
//! next (so few files are open however many ids come), and at the end the runs are
//! merged into one sorted file of distinct ids. Membership is a binary
//! search of one block of that file, found through a fence (the first id of every
//! block) kept in memory. A set that never filled the buffer stays in memory, sorted.
//!
//! Memory: the buffer (8 MiB), one read buffer per run while merging (32 KiB each), and
//! the fences, 32 bytes per [`BLOCK_IDS`] ids (0.5 MiB per TiB of unique data at 64 KiB
//! chunks). Disk: 32 bytes per id, twice while merging, in unlinked files of the
//! repository's scratch folder (they vanish with the process, even killed).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use repo_format::BlobId;

use crate::error::{Error, Result};

/// Ids held in memory before a run is written: 8 MiB.
pub const RUN_IDS: usize = 1 << 18;
/// Ids per block of the merged file, each with a fence in memory (32 KiB blocks).
pub const BLOCK_IDS: usize = 1024;
const ID: usize = 32;

/// Gathers ids; [`IdSetBuilder::finish`] makes the set.
pub struct IdSetBuilder {
    dir: PathBuf,
    buf: Vec<BlobId>,
    limit: usize,
    /// Sorted runs of distinct ids and their level: a run of level L+1 is FAN_IN runs of
    /// level L merged. Levels never increase towards the end.
    runs: Vec<(u32, File)>,
}

/// Runs merged at once: when FAN_IN runs of one level are held they become one run of
/// the next level (a size-tiered cascade), so however many ids come in, at most
/// FAN_IN - 1 runs per level are held open (a few hundred files for billions of ids,
/// under the usual limit of 1,024 descriptors) and each id is rewritten once a level.
const FAN_IN: usize = 64;

impl IdSetBuilder {
    /// A builder whose runs go to unlinked files in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self::with_run_ids(dir, RUN_IDS)
    }

    /// As [`IdSetBuilder::new`] with runs of `limit` ids (tests make many runs).
    pub fn with_run_ids(dir: &Path, limit: usize) -> Self {
        IdSetBuilder {
            dir: dir.into(),
            buf: Vec::new(),
            limit: limit.max(1),
            runs: Vec::new(),
        }
    }

    pub fn insert(&mut self, id: BlobId) -> Result<()> {
        self.buf.push(id);
        if self.buf.len() >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::Repo(repo_format::Error::io(&self.dir, e))
    }

    /// A private scratch file that no name reaches (O_TMPFILE, mode 0600).
    fn scratch(&self) -> Result<File> {
        tempfile::tempfile_in(&self.dir).map_err(|e| self.io(e))
    }

    fn spill(&mut self) -> Result<()> {
        self.buf.sort_unstable();
        self.buf.dedup();
        let mut file = self.scratch()?;
        let mut out = BufWriter::with_capacity(1 << 20, &mut file);
        for id in &self.buf {
            out.write_all(&id.0).map_err(|e| self.io(e))?;
        }
        out.flush().map_err(|e| self.io(e))?;
        drop(out);
        file.rewind().map_err(|e| self.io(e))?;
        self.buf.clear();
        self.runs.push((0, file));
        // The cascade: FAN_IN runs of the last level become one of the next.
        loop {
            let level = self.runs.last().expect("just pushed").0;
            let same = self
                .runs
                .iter()
                .rev()
                .take_while(|(l, _)| *l == level)
                .count();
            if same < FAN_IN {
                return Ok(());
            }
            let group: Vec<File> = self
                .runs
                .split_off(self.runs.len() - same)
                .into_iter()
                .map(|(_, f)| f)
                .collect();
            let mut merged = self.scratch()?;
            let mut out = BufWriter::with_capacity(1 << 20, &mut merged);
            self.merge(&group, |id| out.write_all(&id.0))?;
            out.flush().map_err(|e| self.io(e))?;
            drop(out);
            merged.rewind().map_err(|e| self.io(e))?;
            self.runs.push((level + 1, merged));
        }
    }

    /// Merges sorted runs, giving `emit` each distinct id once, in ascending order.
    fn merge(
        &self,
        runs: &[File],
        mut emit: impl FnMut(BlobId) -> std::io::Result<()>,
    ) -> Result<()> {
        let mut readers: Vec<BufReader<&File>> = runs
            .iter()
            .map(|f| BufReader::with_capacity(32 << 10, f))
            .collect();
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(id) = next_id(r).map_err(|e| self.io(e))? {
                heap.push(Reverse((id, i)));
            }
        }
        let mut last: Option<BlobId> = None;
        while let Some(Reverse((id, i))) = heap.pop() {
            if let Some(next) = next_id(&mut readers[i]).map_err(|e| self.io(e))? {
                heap.push(Reverse((next, i)));
            }
            if last != Some(id) {
                emit(id).map_err(|e| self.io(e))?;
                last = Some(id);
            }
        }
        Ok(())
    }

    /// The set of every id inserted. Without a run written it stays in memory (it is
    /// smaller than one run); otherwise the runs are merged into one file.
    pub fn finish(mut self) -> Result<IdSet> {
        if self.runs.is_empty() {
            self.buf.sort_unstable();
            self.buf.dedup();
            return Ok(IdSet {
                len: self.buf.len() as u64,
                store: Store::Memory(std::mem::take(&mut self.buf)),
            });
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        self.buf = Vec::new(); // the merge needs no more than its read buffers
        let runs: Vec<File> = std::mem::take(&mut self.runs)
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        let mut merged = self.scratch()?;
        let mut out = BufWriter::with_capacity(1 << 20, &mut merged);
        let mut fences = Vec::new();
        let mut len = 0u64;
        self.merge(&runs, |id| {
            if len.is_multiple_of(BLOCK_IDS as u64) {
                fences.push(id);
            }
            len += 1;
            out.write_all(&id.0)
        })?;
        out.flush().map_err(|e| self.io(e))?;
        drop(out);
        drop(runs);
        Ok(IdSet {
            len,
            store: Store::File {
                file: merged,
                fences,
                dir: self.dir.clone(),
            },
        })
    }

    #[cfg(test)]
    fn runs_held(&self) -> usize {
        self.runs.len()
    }
}

fn next_id(r: &mut impl Read) -> std::io::Result<Option<BlobId>> {
    let mut id = [0u8; ID];
    match r.read_exact(&mut id) {
        Ok(()) => Ok(Some(BlobId(id))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

enum Store {
    Memory(Vec<BlobId>),
    File {
        file: File,
        fences: Vec<BlobId>,
        dir: PathBuf,
    },
}

/// A sorted set of distinct blob ids.
pub struct IdSet {
    len: u64,
    store: Store,
}

impl IdSet {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        match &self.store {
            Store::Memory(ids) => Ok(ids.binary_search(id).is_ok()),
            Store::File { file, fences, dir } => {
                let block = fences.partition_point(|f| f <= id);
                if block == 0 {
                    return Ok(false);
                }
                let first = (block - 1) as u64 * BLOCK_IDS as u64;
                let count = (self.len - first).min(BLOCK_IDS as u64) as usize;
                let mut bytes = vec![0u8; count * ID];
                file.read_exact_at(&mut bytes, first * ID as u64)
                    .map_err(|e| Error::Repo(repo_format::Error::io(dir, e)))?;
                let (mut lo, mut hi) = (0, count);
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    match bytes[mid * ID..(mid + 1) * ID].cmp(&id.0[..]) {
                        std::cmp::Ordering::Less => lo = mid + 1,
                        std::cmp::Ordering::Greater => hi = mid,
                        std::cmp::Ordering::Equal => return Ok(true),
                    }
                }
                Ok(false)
            }
        }
    }

    /// Every id, in ascending order.
    pub fn iter(&self) -> IdIter<'_> {
        IdIter {
            set: self,
            at: 0,
            block: Vec::new(),
            in_block: 0,
        }
    }
}

/// Reads a [`IdSet`] in order, a block at a time.
pub struct IdIter<'a> {
    set: &'a IdSet,
    at: u64,
    block: Vec<BlobId>,
    in_block: usize,
}

impl Iterator for IdIter<'_> {
    type Item = Result<BlobId>;

    fn next(&mut self) -> Option<Result<BlobId>> {
        if self.at >= self.set.len {
            return None;
        }
        let id = match &self.set.store {
            Store::Memory(ids) => ids[self.at as usize],
            Store::File { file, dir, .. } => {
                if self.in_block == self.block.len() {
                    // 32 blocks a read: 1 MiB.
                    let count = (self.set.len - self.at).min(32 * BLOCK_IDS as u64) as usize;
                    let mut bytes = vec![0u8; count * ID];
                    if let Err(e) = file.read_exact_at(&mut bytes, self.at * ID as u64) {
                        self.at = self.set.len;
                        return Some(Err(Error::Repo(repo_format::Error::io(dir, e))));
                    }
                    self.block = bytes
                        .chunks_exact(ID)
                        .map(|c| BlobId(c.try_into().expect("32-byte chunks")))
                        .collect();
                    self.in_block = 0;
                }
                self.in_block += 1;
                self.block[self.in_block - 1]
            }
        };
        self.at += 1;
        Some(Ok(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64, salt: u8) -> Vec<BlobId> {
        (0..n)
            .map(|i| BlobId::of(&[&[salt][..], &i.to_le_bytes()].concat()))
            .collect()
    }

    #[test]
    fn runs_on_disk_merge_into_the_sorted_distinct_set() {
        let dir = tempfile::tempdir().unwrap();
        // 10,000 runs of one id cascade two levels (64 and 4,096 runs).
        for (limit, n) in [(7, 5_000u64), (1_000_000, 5_000), (3, 10), (1, 5_000)] {
            let mut b = IdSetBuilder::with_run_ids(dir.path(), limit);
            let all = ids(n, 1);
            // Every id twice, the second time in reverse, across runs.
            let mut most = 0;
            for id in all.iter().chain(all.iter().rev()) {
                b.insert(*id).unwrap();
                most = most.max(b.runs_held());
            }
            assert!(most < 3 * FAN_IN, "{most} runs held at once");
            let set = b.finish().unwrap();
            assert_eq!(set.len(), n);
            let mut want = all.clone();
            want.sort();
            let got: Vec<BlobId> = set.iter().map(|r| r.unwrap()).collect();
            assert_eq!(got, want, "limit {limit}");
            for id in &all {
                assert!(set.contains(id).unwrap());
            }
            for id in ids(n, 2) {
                assert!(!set.contains(&id).unwrap());
            }
            // Ids below the first and above the last.
            assert!(!set.contains(&BlobId([0; 32])).unwrap());
            assert!(!set.contains(&BlobId([0xff; 32])).unwrap());
        }
        // No scratch file has a name.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_empty_set_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let set = IdSetBuilder::new(dir.path()).finish().unwrap();
        assert!(set.is_empty());
        assert!(!set.contains(&BlobId([7; 32])).unwrap());
        assert_eq!(set.iter().count(), 0);
    }
}
