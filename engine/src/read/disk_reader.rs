//! Random reads of a backed-up disk without restoring it: what `dedisk mount` and
//! `dedisk serve-nbd` read through.
//!
//! An offset is mapped to its extent by descending the manifest tree from the root (each
//! interior entry carries the bytes its subtree covers), so only the nodes on one path
//! are loaded: a few blob reads for the first byte of a 100 GiB disk. The current leaf
//! and recently used nodes stay cached. Decompressed chunks go to a bounded LRU cache;
//! when reads are sequential, the next chunks are fetched and decompressed ahead on
//! worker threads, so a streaming client is not limited to one core's zstd speed.
//! Every chunk is BLAKE3-checked as it is decoded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::{bounded, Sender, TrySendError};
use repo_format::{BlobId, BlobReader, Extent, ManifestRoot, Node, Repository};

use crate::error::{Error, Result};

/// Decompressed chunks kept by a cache (one per reader, or one shared by every client
/// of an NBD server: issue 11 measured 12 clients at 1.2 GB with one cache each).
const CHUNK_CACHE_BYTES: usize = 96 << 20;
/// Manifest nodes kept per reader (interior nodes, and recent leaves): a full leaf is
/// about 330 KiB decoded, so this bounds a reader's nodes at about 5 MiB (one reader per
/// NBD client or open mounted file).
const NODE_CACHE: usize = 16;
/// Chunks fetched ahead of a sequential reader, and the threads fetching them: two
/// keep up with a local disk (they decompress); an object store answers each ranged GET
/// after tens of milliseconds, so there 16 requests are kept in flight (FACTS: about
/// 45 ms a GET on loopback Garage; kopia's one-at-a-time reads restore at 5-6 MB/s).
const READ_AHEAD_CHUNKS: usize = 16;
const READ_AHEAD_WORKERS: usize = 2;
const REMOTE_READ_AHEAD_CHUNKS: usize = 32;
const REMOTE_READ_AHEAD_WORKERS: usize = 16;

/// A leaf of the manifest, with each extent's start offset.
struct Leaf {
    start: u64,
    end: u64,
    extents: Vec<(u64, Extent)>,
}

/// Chunks decoded by anyone (this reader or its read-ahead workers), LRU-bounded.
#[derive(Default)]
struct ChunkCache {
    chunks: HashMap<BlobId, Arc<Vec<u8>>>,
    order: VecDeque<BlobId>,
    bytes: usize,
    /// Chunks a worker is decoding right now.
    pending: HashSet<BlobId>,
}

impl ChunkCache {
    fn get(&mut self, id: &BlobId) -> Option<Arc<Vec<u8>>> {
        let hit = self.chunks.get(id).cloned()?;
        if let Some(i) = self.order.iter().rposition(|x| x == id) {
            self.order.remove(i);
        }
        self.order.push_back(*id);
        Some(hit)
    }

    fn put(&mut self, id: BlobId, data: Arc<Vec<u8>>) {
        self.pending.remove(&id);
        if self.chunks.contains_key(&id) {
            return;
        }
        self.bytes += data.len();
        self.chunks.insert(id, data);
        self.order.push_back(id);
        while self.bytes > CHUNK_CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(d) = self.chunks.remove(&old) {
                self.bytes -= d.len();
            }
        }
    }
}

type Shared = Arc<(Mutex<ChunkCache>, Condvar)>;

/// A chunk cache several readers can share: one memory bound for all of them.
#[derive(Clone, Default)]
pub struct SharedChunkCache(Shared);

/// Reads one disk (or metadata file) of a snapshot at any offset. One per client
/// thread; the read-ahead workers live as long as the reader.
pub struct DiskReader {
    blobs: BlobReader<Arc<Repository>>,
    root: ManifestRoot,
    nodes: HashMap<BlobId, Arc<Node>>,
    node_order: VecDeque<BlobId>,
    leaf: Option<Leaf>,
    cache: Shared,
    ahead: Option<Sender<BlobId>>,
    /// How many chunks past a sequential read are queued for the read-ahead threads.
    ahead_chunks: usize,
    /// The read-ahead threads, joined on drop.
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Where the last read ended, to recognise sequential access.
    last_end: u64,
}

impl DiskReader {
    /// A reader of the disk whose manifest is `root`. It shares the repository with the
    /// caller; its read-ahead threads are joined when it is dropped.
    pub fn new(repo: Arc<Repository>, root: ManifestRoot) -> Result<Self> {
        Self::with_cache(repo, root, SharedChunkCache::default())
    }

    /// A reader whose decoded chunks go to `cache`, shared with other readers.
    pub fn with_cache(
        repo: Arc<Repository>,
        root: ManifestRoot,
        cache: SharedChunkCache,
    ) -> Result<Self> {
        let cache: Shared = cache.0;
        let (ahead, threads) = if repo.local_root().is_some() {
            (READ_AHEAD_CHUNKS, READ_AHEAD_WORKERS)
        } else {
            (REMOTE_READ_AHEAD_CHUNKS, REMOTE_READ_AHEAD_WORKERS)
        };
        let (tx, rx) = bounded::<BlobId>(ahead * 2);
        let mut workers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let rx = rx.clone();
            let cache = cache.clone();
            let mut blobs = BlobReader::new(repo.clone())?;
            workers.push(std::thread::spawn(move || {
                for id in rx {
                    // A failure is left for the reader, which reads the chunk itself and
                    // reports the error with its offset.
                    let data = blobs.read(&id).ok().map(Arc::new);
                    let (lock, cv) = &*cache;
                    let mut c = lock.lock().expect("no panics while held");
                    match data {
                        Some(d) => c.put(id, d),
                        None => {
                            c.pending.remove(&id);
                        }
                    }
                    cv.notify_all();
                }
            }));
        }
        Ok(DiskReader {
            blobs: BlobReader::new(repo)?,
            root,
            nodes: HashMap::new(),
            node_order: VecDeque::new(),
            leaf: None,
            cache,
            ahead: Some(tx),
            ahead_chunks: ahead,
            workers,
            last_end: u64::MAX,
        })
    }

    pub fn len_bytes(&self) -> u64 {
        self.root.len_bytes
    }

    fn node(&mut self, id: &BlobId) -> Result<Arc<Node>> {
        if let Some(n) = self.nodes.get(id) {
            return Ok(n.clone());
        }
        let n = Arc::new(self.blobs.read_node(id)?);
        if self.nodes.len() >= NODE_CACHE {
            if let Some(old) = self.node_order.pop_front() {
                self.nodes.remove(&old);
            }
        }
        self.nodes.insert(*id, n.clone());
        self.node_order.push_back(*id);
        Ok(n)
    }

    /// Loads the leaf holding `offset` (below the disk size) by descending from the root.
    fn seek_leaf(&mut self, offset: u64) -> Result<()> {
        if self
            .leaf
            .as_ref()
            .is_some_and(|l| l.start <= offset && offset < l.end)
        {
            return Ok(());
        }
        let root_id = self.root.root;
        let corrupt = |reason: String| {
            Error::Repo(repo_format::Error::CorruptManifest {
                node: root_id,
                reason,
            })
        };
        let (mut id, mut start, mut len) = (self.root.root, 0u64, self.root.len_bytes);
        for _ in 0..=repo_format::manifest::MAX_LEVEL {
            let node = self.node(&id)?;
            match &*node {
                Node::Interior { children, .. } => {
                    let mut at = start;
                    let child = children.iter().find(|c| {
                        let hit = offset < at + c.len;
                        if !hit {
                            at += c.len;
                        }
                        hit
                    });
                    let Some(c) = child else {
                        return Err(corrupt(format!("no child covers offset {offset}")));
                    };
                    (id, start, len) = (c.id, at, c.len);
                }
                Node::Leaf(extents) => {
                    let mut at = start;
                    let extents: Vec<(u64, Extent)> = extents
                        .iter()
                        .map(|e| {
                            let here = at;
                            at += e.len();
                            (here, *e)
                        })
                        .collect();
                    if at != start + len {
                        return Err(corrupt(format!(
                            "leaf covers {} bytes, its parent says {len}",
                            at - start
                        )));
                    }
                    self.leaf = Some(Leaf {
                        start,
                        end: at,
                        extents,
                    });
                    return Ok(());
                }
            }
        }
        Err(corrupt("manifest deeper than its maximum level".into()))
    }

    /// The extent holding `offset`: its start and the extent.
    pub fn extent_at(&mut self, offset: u64) -> Result<Option<(u64, Extent)>> {
        if offset >= self.root.len_bytes {
            return Ok(None);
        }
        self.seek_leaf(offset)?;
        let leaf = self.leaf.as_ref().expect("loaded by seek_leaf");
        let i = leaf.extents.partition_point(|(s, _)| *s <= offset) - 1;
        Ok(Some(leaf.extents[i]))
    }

    /// The decoded bytes of chunk `id`, from the cache, a read-ahead worker, or the pack.
    fn chunk(&mut self, id: &BlobId) -> Result<Arc<Vec<u8>>> {
        {
            let (lock, cv) = &*self.cache;
            let mut c = lock.lock().expect("no panics while held");
            loop {
                if let Some(d) = c.get(id) {
                    return Ok(d);
                }
                if !c.pending.contains(id) {
                    break;
                }
                c = cv.wait(c).expect("no panics while held");
            }
        }
        let data = Arc::new(self.blobs.read(id)?);
        self.cache
            .0
            .lock()
            .expect("no panics while held")
            .put(*id, data.clone());
        Ok(data)
    }

    /// Queues the chunks after the leaf position of `offset` for the read-ahead workers.
    fn read_ahead(&mut self, offset: u64) {
        let Some(tx) = &self.ahead else { return };
        let Some(leaf) = &self.leaf else { return };
        let i = leaf.extents.partition_point(|(s, _)| *s <= offset);
        let (lock, _) = &*self.cache;
        let mut c = lock.lock().expect("no panics while held");
        for (_, e) in leaf.extents.iter().skip(i).take(self.ahead_chunks) {
            if let Extent::Chunk { id, .. } = e {
                if c.chunks.contains_key(id) || c.pending.contains(id) {
                    continue;
                }
                match tx.try_send(*id) {
                    Ok(()) => {
                        c.pending.insert(*id);
                    }
                    Err(TrySendError::Full(_)) => break,
                    Err(TrySendError::Disconnected(_)) => break,
                }
            }
        }
    }

    /// Fills `buf` from `offset`; returns the bytes read (short only at the end).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = self.root.len_bytes;
        if offset >= size {
            return Ok(0);
        }
        let want = buf.len().min((size - offset) as usize);
        let sequential = offset == self.last_end;
        let mut done = 0;
        while done < want {
            let pos = offset + done as u64;
            let (start, extent) = self.extent_at(pos)?.expect("pos below size");
            let skip = (pos - start) as usize;
            let n = ((extent.len() - skip as u64) as usize).min(want - done);
            match extent {
                Extent::Hole { .. } => buf[done..done + n].fill(0),
                Extent::Chunk { id, len } => {
                    let data = self.chunk(&id)?;
                    if data.len() != len as usize {
                        return Err(Error::Repo(repo_format::Error::CorruptManifest {
                            node: self.root.root,
                            reason: format!(
                                "chunk {} holds {} bytes, the manifest says {len}",
                                id.short(),
                                data.len()
                            ),
                        }));
                    }
                    buf[done..done + n].copy_from_slice(&data[skip..skip + n]);
                }
            }
            done += n;
        }
        self.last_end = offset + want as u64;
        if sequential {
            self.read_ahead(self.last_end);
        }
        Ok(want)
    }
}

impl Drop for DiskReader {
    fn drop(&mut self) {
        // Closing the queue ends the workers once they finish their current chunk.
        self.ahead.take();
        for w in self.workers.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = w.join();
        }
    }
}
