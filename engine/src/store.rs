//! The write side of a repository: [`BlobStore`] takes encoded blobs, fills packs, makes
//! them durable and indexes them. Backup, repair and prune's repack all write through it,
//! so there is one place that knows the write order of FORMAT.md ("Write order"): a pack
//! is durable in the repository's backend before the index names it, and nothing names a
//! pack that is not. Packs go to [`Repository::backend`]: the seam an object store plugs
//! into.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use repo_format::blob::BlobKind;
use repo_format::lock::{PruneLock, SharedLock};
use repo_format::{
    BlobEncoder, BlobId, EncodedBlob, FinishedPack, Index, Node, PackId, PackWriter, Repository,
    SealedPack,
};

use crate::error::Result;

/// The writer side of the repository during one backup, repair or repack: the open pack,
/// the ids it holds, and the index connection that records finished packs. Used from
/// one thread; a store dropped with a pack open removes that pack's temporary file.
pub struct BlobStore<'r> {
    repo: &'r Repository,
    index: Index,
    /// The open packs: one in a plaintext repository; [`SPREAD`] in an encrypted one,
    /// each new blob going to one of them at random (FORMAT.md, section 10.4), with the
    /// ids each holds.
    packs: Vec<Option<(PackWriter, HashSet<BlobId>)>>,
    node_encoder: BlobEncoder,
    /// Copying live blobs out of packs being repacked: the index already names them (in
    /// the old pack), so they are stored anyway, beside the rows of the old pack.
    repack: bool,
    /// Every pack finished so far, with its length.
    written: Vec<(PackId, u64)>,
    /// Picks the pack of the next blob (xorshift64*, seeded from the OS).
    rng: u64,
    /// Packs being stored in the background: uploads to an object store, or the fsync
    /// and rename of a local pack.
    uploads: Uploads,
}

/// Packs uploaded at once to an object store. A PUT of a 32 MiB pack takes a while on
/// any store; made one at a time, the backup's pipeline stood still meanwhile (a full
/// backup into loopback Garage took 4.2 times as long as into a directory). Each upload
/// holds its pack in memory, so this bounds the memory uploads take at 4 packs.
pub const UPLOADS: usize = 4;
/// Local packs made durable at once. The fsync of a 32 MiB pack took the writer thread
/// away from the pipeline too (issue 19: a full backup kept 1.6 of 2 cores busy);
/// in the background it overlaps the next pack's chunks.
pub const LOCAL_SYNCS: usize = 2;

/// The uploader threads and what they hold. A pack is indexed, and counts as written,
/// only once its upload completed; until then its blobs count as stored by this store
/// (they are not stored twice) and the snapshot waits ([`BlobStore::finish_pack`]).
struct Uploads {
    queue: Option<Sender<SealedPack>>,
    done: Receiver<(PackId, repo_format::Result<FinishedPack>)>,
    /// The blobs of each pack handed over and not yet indexed.
    in_flight: HashMap<PackId, HashSet<BlobId>>,
    /// Set when the store is dropped (a failed or cancelled backup): queued packs are
    /// discarded instead of uploaded.
    abandon: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Uploads {
    fn start(repo: &Repository) -> Uploads {
        // A rendezvous queue: sealing the next pack waits for a free uploader, so at
        // most UPLOADS packs are in memory, plus the one waiting.
        let (queue, rx) = crossbeam_channel::bounded::<SealedPack>(0);
        let (done_tx, done) = crossbeam_channel::unbounded();
        let abandon = Arc::new(AtomicBool::new(false));
        // A directory renames the temporary file into place: it must be durable first.
        let local = repo.local_root().is_some();
        let workers = (0..if local { LOCAL_SYNCS } else { UPLOADS })
            .map(|_| {
                let (rx, done_tx, abandon) = (rx.clone(), done_tx.clone(), abandon.clone());
                let backend = repo.backend_arc();
                std::thread::spawn(move || {
                    for pack in rx {
                        if abandon.load(Ordering::SeqCst) {
                            continue; // dropping it removes its temporary file
                        }
                        let id = pack.id;
                        let stored = if local { pack.sync() } else { Ok(()) }
                            .and_then(|()| pack.put(&*backend));
                        let _ = done_tx.send((id, stored));
                    }
                })
            })
            .collect();
        Uploads {
            queue: Some(queue),
            done,
            in_flight: HashMap::new(),
            abandon,
            workers,
        }
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.abandon.store(true, Ordering::SeqCst);
        self.queue.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Packs an encrypted repository's writer keeps open at once, so that which blobs
/// share a pack, and in what order, says little about where they were in the disk.
pub const SPREAD: usize = 3;

impl<'r> BlobStore<'r> {
    /// A store writing under `lock` (a shared lock is enough to add data; an exclusive
    /// one dereferences to it).
    pub fn new(repo: &'r Repository, _lock: &SharedLock) -> Result<Self> {
        Ok(BlobStore {
            repo,
            index: repo.index()?,
            packs: Vec::new(),
            node_encoder: repo.blob_encoder()?,
            repack: false,
            written: Vec::new(),
            uploads: Uploads::start(repo),
            rng: u64::from_le_bytes(
                repo_format::ids::random_bytes()?[..8]
                    .try_into()
                    .expect("8 bytes"),
            ) | 1,
        })
    }

    /// A store for prune's repack, under its lock: see [`BlobStore::put`].
    pub fn for_repack(repo: &'r Repository, lock: &PruneLock) -> Result<Self> {
        let mut store = BlobStore::new(repo, lock)?;
        store.repack = true;
        Ok(store)
    }

    /// The packs this store finished, with their lengths in bytes.
    pub fn written(&self) -> &[(PackId, u64)] {
        &self.written
    }

    /// Stores `blob` unless the repository already has it (for a repack store: unless
    /// this store has it). Returns the bytes it took in the pack (header included) when
    /// it was stored.
    pub fn put(&mut self, blob: &EncodedBlob) -> Result<Option<u64>> {
        if self.holds(&blob.id) || (!self.repack && self.has(&blob.id)?) {
            return Ok(None);
        }
        let spread = if self.repo.is_encrypted() { SPREAD } else { 1 };
        let slot = if spread == 1 {
            0
        } else {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng % spread as u64) as usize
        };
        if self.packs.len() < spread {
            self.packs.resize_with(spread, || None);
        }
        if self.packs[slot].is_none() {
            let pack = PackWriter::create(&self.repo.tmp_dir(), self.repo.codec())?;
            self.packs[slot] = Some((pack, HashSet::new()));
        }
        let (pack, ids) = self.packs[slot].as_mut().expect("created above");
        pack.add(blob)?;
        ids.insert(blob.id);
        let stored =
            blob.payload.len() as u64 + repo_format::pack::blob_overhead(self.repo.codec());
        if pack.len_bytes() >= self.repo.config().pack_target_bytes {
            let (pack, ids) = self.packs[slot].take().expect("open");
            self.finish_one(pack, ids)?;
        }
        Ok(Some(stored))
    }

    /// Whether the repository has blob `id` for a writer to rely on (in a pack no prune
    /// condemned), or this store holds it: a blob [`BlobStore::put`] would not store.
    pub fn has(&self, id: &BlobId) -> Result<bool> {
        Ok(self.holds(id) || self.index.has_usable(id)?)
    }

    /// Whether an open pack of this store, or one being uploaded, holds blob `id`.
    fn holds(&self, id: &BlobId) -> bool {
        self.packs.iter().flatten().any(|(_, ids)| ids.contains(id))
            || self.uploads.in_flight.values().any(|ids| ids.contains(id))
    }

    /// Encodes and stores a manifest node; returns its id. Most nodes of a nightly
    /// backup already exist (node boundaries are content-defined), so the id is checked
    /// before anything is compressed.
    pub fn put_node(&mut self, node: &Node) -> Result<BlobId> {
        let bytes = node.encode();
        let id = self.repo.blob_id(&bytes);
        if self.has(&id)? {
            return Ok(id);
        }
        let blob = self
            .node_encoder
            .encode_with_id(id, BlobKind::ManifestNode, &bytes)?;
        self.put(&blob)?;
        Ok(id)
    }

    /// Makes the open packs durable and records them in the index; returns once every
    /// upload has completed (what a snapshot written next refers to is stored).
    pub fn finish_pack(&mut self) -> Result<()> {
        for slot in 0..self.packs.len() {
            if let Some((pack, ids)) = self.packs[slot].take() {
                self.finish_one(pack, ids)?;
            }
        }
        self.collect_uploads(true)
    }

    fn finish_one(&mut self, pack: PackWriter, ids: HashSet<BlobId>) -> Result<()> {
        let up = &mut self.uploads;
        // Sealed here (the TOC written), made durable and stored by a worker.
        let sealed = pack.seal(false)?;
        up.in_flight.insert(sealed.id, ids);
        let queue = up.queue.as_ref().expect("open while the store lives");
        if queue.send(sealed).is_err() {
            // Only a panicked uploader closes the queue early.
            return Err(repo_format::Error::io(
                self.repo.describe(),
                std::io::Error::other("the pack uploaders stopped"),
            )
            .into());
        }
        self.collect_uploads(false)
    }

    /// Indexes the uploads that completed; with `all`, waits for every one. The first
    /// failed upload is the error (the packs it left are not indexed, and a later prune
    /// reclaims any that arrived).
    fn collect_uploads(&mut self, all: bool) -> Result<()> {
        loop {
            let up = &mut self.uploads;
            if up.in_flight.is_empty() {
                return Ok(());
            }
            let next = if all {
                up.done.recv().ok()
            } else {
                up.done.try_recv().ok()
            };
            let Some((id, put)) = next else {
                return Ok(());
            };
            up.in_flight.remove(&id);
            self.indexed(put?)?;
        }
    }

    /// Records a pack that is in the repository.
    fn indexed(&mut self, finished: FinishedPack) -> Result<()> {
        self.index
            .add_pack(&finished.id, finished.len_bytes, &finished.entries)?;
        self.written.push((finished.id, finished.len_bytes));
        Ok(())
    }
}

impl Drop for BlobStore<'_> {
    fn drop(&mut self) {
        // A backup that fails leaves no temporary pack behind.
        for (pack, _) in self.packs.drain(..).flatten() {
            pack.abandon();
        }
    }
}
