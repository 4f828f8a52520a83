//! The write side of a repository: [`BlobStore`] takes encoded blobs, fills packs, makes
//! them durable and indexes them. Backup, repair and prune's repack all write through it,
//! so there is one place that knows the write order of FORMAT.md ("Write order"): a pack
//! is durable in `packs/` before the index names it, and nothing names a pack that is not.

use std::collections::HashSet;

use repo_format::blob::BlobKind;
use repo_format::{BlobEncoder, BlobId, EncodedBlob, Index, Node, PackWriter, Repository};

use crate::error::Result;

/// The writer side of the repository during one backup: the open pack, the ids it holds,
/// and the index connection that records finished packs. Used from one thread.
pub struct BlobStore<'r> {
    repo: &'r Repository,
    index: Index,
    pack: Option<PackWriter>,
    in_pack: HashSet<BlobId>,
    node_encoder: BlobEncoder,
}

impl<'r> BlobStore<'r> {
    pub fn new(repo: &'r Repository) -> Result<Self> {
        Ok(BlobStore {
            repo,
            index: repo.index()?,
            pack: None,
            in_pack: HashSet::new(),
            node_encoder: BlobEncoder::new(repo.config().compression.level)?,
        })
    }

    /// Stores `blob` unless the repository already has it. Returns the bytes it took in
    /// the pack (header included) when it was stored.
    pub fn put(&mut self, blob: &EncodedBlob) -> Result<Option<u64>> {
        if self.in_pack.contains(&blob.id) || self.index.contains(&blob.id)? {
            return Ok(None);
        }
        if self.pack.is_none() {
            self.pack = Some(PackWriter::create(&self.repo.tmp_dir())?);
        }
        let pack = self.pack.as_mut().expect("created above");
        pack.add(blob)?;
        self.in_pack.insert(blob.id);
        let stored = blob.payload.len() as u64 + repo_format::pack::BLOB_HEADER_LEN;
        if pack.len_bytes() >= self.repo.config().pack_target_bytes {
            self.finish_pack()?;
        }
        Ok(Some(stored))
    }

    /// Encodes and stores a manifest node; returns its id. Most nodes of a nightly
    /// backup already exist (node boundaries are content-defined), so the id is checked
    /// before anything is compressed.
    pub fn put_node(&mut self, node: &Node) -> Result<BlobId> {
        let bytes = node.encode();
        let id = BlobId::of(&bytes);
        if self.in_pack.contains(&id) || self.index.contains(&id)? {
            return Ok(id);
        }
        let blob = self
            .node_encoder
            .encode_with_id(id, BlobKind::ManifestNode, &bytes)?;
        self.put(&blob)?;
        Ok(id)
    }

    /// Makes the open pack durable and records it in the index.
    pub fn finish_pack(&mut self) -> Result<()> {
        if let Some(pack) = self.pack.take() {
            let finished = pack.finish(&self.repo.packs_dir())?;
            self.index
                .add_pack(&finished.id, finished.len_bytes, &finished.entries)?;
            self.in_pack.clear();
        }
        Ok(())
    }
}

impl Drop for BlobStore<'_> {
    fn drop(&mut self) {
        // A backup that fails leaves no temporary pack behind.
        if let Some(pack) = self.pack.take() {
            pack.abandon();
        }
    }
}

