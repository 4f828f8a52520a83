//! Writing a restored disk as a sparse qcow2 (version 3, 64 KiB clusters, 16-bit
//! refcounts) that `qemu-img check` accepts.
//!
//! Data clusters are allocated on first write, in the order restore workers reach them,
//! from a counter under a mutex; the data itself is written outside the lock. Clusters
//! never written (holes, and chunks that are all zeros) stay unallocated, so the file
//! holds only the disk's data. The L1 table, L2 tables and refcount structures are
//! written once at the end, after the data: a restore that fails midway leaves a file
//! without a header, which the caller deletes.
//!
//! Memory: one 64 KiB L2 table per 512 MiB of the disk that holds data (128 MiB for a
//! fully written 1 TiB disk), since L2 tables can only be written once complete.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Entries per L2 table (8 bytes each).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// Refcounts are 16 bits (refcount_order 4), so one block covers this many clusters.
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
const COPIED: u64 = 1 << 63;
/// qemu refuses L1 tables beyond 32 MiB: 4 M entries of 512 MiB is 2 PiB.
const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;

struct State {
    /// Per 512 MiB span, the host offset of each guest cluster (0 = unallocated).
    l2: Vec<Option<Box<[u64]>>>,
    /// The next free host cluster (cluster 0 holds the header).
    next_cluster: u64,
}

/// A qcow2 file being written. `write_at` may be called from many threads.
pub struct Qcow2Writer {
    file: File,
    size: u64,
    state: Mutex<State>,
}

impl Qcow2Writer {
    /// Prepares `file` (empty, opened for writing) to receive a disk of `size` bytes.
    pub fn new(file: File, size: u64) -> std::io::Result<Self> {
        let spans = size.div_ceil(CLUSTER * L2_ENTRIES);
        if spans > MAX_L1_ENTRIES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "disk too large for a qcow2 with 64 KiB clusters",
            ));
        }
        file.set_len(0)?;
        Ok(Qcow2Writer {
            file,
            size,
            state: Mutex::new(State {
                l2: (0..spans).map(|_| None).collect(),
                next_cluster: 1,
            }),
        })
    }

    /// Writes `data` at guest offset `offset`. All-zero data is skipped (reads as zero).
    pub fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        if data.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        if end > self.size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "write past the end of the disk",
            ));
        }
        // Allocate (or find) every cluster the write touches, under one lock.
        let first = offset >> CLUSTER_BITS;
        let last = (end - 1) >> CLUSTER_BITS;
        let hosts: Vec<u64> = {
            let mut guard = self.state.lock().expect("no panics while held");
            let st = &mut *guard;
            (first..=last)
                .map(|c| {
                    let (span, i) = ((c / L2_ENTRIES) as usize, (c % L2_ENTRIES) as usize);
                    let table = st.l2[span]
                        .get_or_insert_with(|| vec![0u64; L2_ENTRIES as usize].into_boxed_slice());
                    if table[i] == 0 {
                        table[i] = st.next_cluster << CLUSTER_BITS;
                        st.next_cluster += 1;
                    }
                    st.l2[span].as_ref().expect("inserted above")[i]
                })
                .collect()
        };
        // Write runs of host-contiguous clusters with one pwrite each.
        let mut done = 0usize;
        let mut i = 0;
        while i < hosts.len() {
            let guest = offset + done as u64;
            let host = hosts[i] + (guest & (CLUSTER - 1));
            let mut j = i + 1;
            while j < hosts.len() && hosts[j] == hosts[j - 1] + CLUSTER {
                j += 1;
            }
            let run_end = ((first + j as u64) << CLUSTER_BITS).min(end);
            let n = (run_end - guest) as usize;
            self.file.write_all_at(&data[done..done + n], host)?;
            done += n;
            i = j;
        }
        Ok(())
    }

    /// Writes the tables, refcounts and header after the data, and syncs the file.
    pub fn finish(self) -> std::io::Result<File> {
        let st = self.state.into_inner().expect("no panics while held");
        let data_end = st.next_cluster;
        let l1_entries = st.l2.len() as u64;
        let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER).max(1);
        let l2_count = st.l2.iter().filter(|t| t.is_some()).count() as u64;
        // Layout after the data: L1, L2 tables, refcount table, refcount blocks. The
        // refcount structures count themselves, so iterate to a fixed point.
        let l1_at = data_end;
        let l2_at = l1_at + l1_clusters;
        let rt_at = l2_at + l2_count;
        let (mut rt_clusters, mut rb_count) = (1u64, 1u64);
        loop {
            let total = rt_at + rt_clusters + rb_count;
            let rb = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let rt = (rb * 8).div_ceil(CLUSTER);
            if rb == rb_count && rt == rt_clusters {
                break;
            }
            (rb_count, rt_clusters) = (rb, rt);
        }
        let rb_at = rt_at + rt_clusters;
        let total = rb_at + rb_count;

        // L2 tables, and the L1 table pointing at them.
        let mut l1 = vec![0u8; (l1_clusters * CLUSTER) as usize];
        let mut next_l2 = l2_at;
        for (span, table) in st.l2.iter().enumerate() {
            let Some(table) = table else { continue };
            let bytes: Vec<u8> = table
                .iter()
                .flat_map(|&h| if h == 0 { 0 } else { h | COPIED }.to_be_bytes())
                .collect();
            self.file.write_all_at(&bytes, next_l2 * CLUSTER)?;
            l1[span * 8..span * 8 + 8]
                .copy_from_slice(&((next_l2 * CLUSTER) | COPIED).to_be_bytes());
            next_l2 += 1;
        }
        self.file.write_all_at(&l1, l1_at * CLUSTER)?;

        // Every cluster up to `total` is in use exactly once: refcount 1 for all.
        let mut rt = vec![0u8; (rt_clusters * CLUSTER) as usize];
        for b in 0..rb_count {
            rt[(b * 8) as usize..(b * 8 + 8) as usize]
                .copy_from_slice(&((rb_at + b) * CLUSTER).to_be_bytes());
            let covered = (total - b * REFCOUNTS_PER_BLOCK).min(REFCOUNTS_PER_BLOCK);
            let mut block = vec![0u8; CLUSTER as usize];
            for i in 0..covered as usize {
                block[i * 2..i * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
            }
            self.file.write_all_at(&block, (rb_at + b) * CLUSTER)?;
        }
        self.file.write_all_at(&rt, rt_at * CLUSTER)?;

        // The header last: until it is written the file is not a qcow2 at all.
        let mut h = vec![0u8; CLUSTER as usize];
        h[0..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes());
        h[24..32].copy_from_slice(&self.size.to_be_bytes());
        h[36..40].copy_from_slice(&(l1_entries as u32).to_be_bytes());
        h[40..48].copy_from_slice(&(l1_at * CLUSTER).to_be_bytes());
        h[48..56].copy_from_slice(&(rt_at * CLUSTER).to_be_bytes());
        h[56..60].copy_from_slice(&(rt_clusters as u32).to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount_order: 16-bit
        h[100..104].copy_from_slice(&104u32.to_be_bytes()); // header_length
                                                            // Bytes 104..112 stay zero: the end-of-extensions marker.
        self.file.write_all_at(&h, 0)?;
        self.file.set_len(total * CLUSTER)?;
        self.file.sync_all()?;
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::image::{open_image, OpenOptions};

    #[test]
    fn written_qcow2_reads_back_through_our_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.qcow2");
        let size = (3 << 30) + 12345;
        let w = Qcow2Writer::new(File::create(&path).unwrap(), size).unwrap();
        let a: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 + 1).collect();
        w.write_at(&a, 70_000).unwrap();
        w.write_at(&a[..1000], size - 1000).unwrap();
        w.write_at(&[0u8; 4096], 1 << 30).unwrap(); // all zeros: not allocated
        w.write_at(&a[..5], (2 << 30) + 3).unwrap();
        w.finish().unwrap();
        let mut img = open_image(&path, &OpenOptions::default()).unwrap();
        assert_eq!(img.virtual_size(), size);
        let mut buf = vec![0u8; 200_000];
        img.read_at(70_000, &mut buf).unwrap();
        assert_eq!(buf, a);
        let mut tail = vec![0u8; 1000];
        img.read_at(size - 1000, &mut tail).unwrap();
        assert_eq!(tail, &a[..1000]);
        assert_eq!(img.next_data(400_000).unwrap().map(|e| e.0), Some(2 << 30));
        img.check_map().unwrap();
    }
}
