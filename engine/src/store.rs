//! The write side of a repository: [`BlobStore`] takes encoded blobs, fills packs, makes
//! them durable and indexes them. Backup, repair and prune's repack all write through it,
//! so there is one place that knows the write order of FORMAT.md ("Write order"): a pack
//! is durable in the repository's backend before the index names it, and nothing names a
//! pack that is not. Packs go to [`Repository::backend`]: the seam an object store plugs
//! into.

use std::collections::HashSet;

use repo_format::blob::BlobKind;
use repo_format::lock::{PruneLock, SharedLock};
use repo_format::{BlobEncoder, BlobId, EncodedBlob, Index, Node, PackId, PackWriter, Repository};

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
        if self.holds(&blob.id) || (!self.repack && self.index.has_usable(&blob.id)?) {
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
            let (pack, _) = self.packs[slot].take().expect("open");
            self.finish_one(pack)?;
        }
        Ok(Some(stored))
    }

    /// Whether an open pack of this store holds blob `id`.
    fn holds(&self, id: &BlobId) -> bool {
        self.packs.iter().flatten().any(|(_, ids)| ids.contains(id))
    }

    /// Encodes and stores a manifest node; returns its id. Most nodes of a nightly
    /// backup already exist (node boundaries are content-defined), so the id is checked
    /// before anything is compressed.
    pub fn put_node(&mut self, node: &Node) -> Result<BlobId> {
        let bytes = node.encode();
        let id = self.repo.blob_id(&bytes);
        if self.holds(&id) || self.index.has_usable(&id)? {
            return Ok(id);
        }
        let blob = self
            .node_encoder
            .encode_with_id(id, BlobKind::ManifestNode, &bytes)?;
        self.put(&blob)?;
        Ok(id)
    }

    /// Makes the open packs durable and records them in the index.
    pub fn finish_pack(&mut self) -> Result<()> {
        for slot in 0..self.packs.len() {
            if let Some((pack, _)) = self.packs[slot].take() {
                self.finish_one(pack)?;
            }
        }
        Ok(())
    }

    fn finish_one(&mut self, pack: PackWriter) -> Result<()> {
        let finished = pack.finish(self.repo.backend())?;
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
