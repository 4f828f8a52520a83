//! Disk manifests: the ordered list of extents (chunk references and holes) that
//! rebuilds a disk, stored as a tree of manifest-node blobs so that neither backup nor
//! restore ever holds a whole multi-TiB disk's manifest in memory.
//!
//! Node boundaries are content-defined (a node closes after an entry whose id matches a
//! bit pattern), so a night that changes a few chunks rewrites only the nodes that hold
//! them: unchanged stretches of the disk produce the very same node blobs, which dedup.

use crate::blob::MAX_CHUNK_BYTES;
use crate::error::{Error, Result};
use crate::ids::BlobId;

pub const NODE_MAGIC: &[u8; 4] = b"DDMN";
pub const NODE_VERSION: u8 = 1;
pub const NODE_HEADER_LEN: usize = 16;
pub const LEAF_ENTRY_LEN: usize = 41;
pub const INTERIOR_ENTRY_LEN: usize = 48;
/// A node never holds fewer entries than this unless it is the last of its level.
pub const MIN_FANOUT: u32 = 64;
/// Expected entries per node: a node closes after an entry whose key has these low bits set.
pub const AVG_FANOUT: u32 = 1024;
/// A node is closed at this many entries whatever the keys.
pub const MAX_FANOUT: u32 = 8192;
/// Deepest tree a reader accepts (8192^8 chunks is far beyond any disk).
pub const MAX_LEVEL: u8 = 8;
/// The smallest average extent a manifest may have, in bytes: [`max_extents`].
pub const MIN_AVG_EXTENT_BYTES: u64 = 256;

/// The most extents a manifest covering `len_bytes` may hold. Honest manifests stay far
/// below it (sources report data and holes in 512-byte sectors at the finest, holes are
/// merged, chunks are cut at 4 KiB and more); a forged one cannot make a reader walk
/// billions of 1-byte extents out of a few deduplicated nodes (issue 11).
pub fn max_extents(len_bytes: u64) -> u64 {
    len_bytes / MIN_AVG_EXTENT_BYTES + 16
}

const LEAF_CHUNK: u8 = 1;
const LEAF_HOLE: u8 = 2;

/// One extent of a disk, in order from byte 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// `len` bytes stored as the data blob `id`.
    Chunk { id: BlobId, len: u32 },
    /// `len` bytes of zeros (unallocated or all-zero in the source), never stored.
    Hole { len: u64 },
}

impl Extent {
    pub fn len(&self) -> u64 {
        match *self {
            Extent::Chunk { len, .. } => len as u64,
            Extent::Hole { len } => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key(&self) -> u32 {
        match self {
            Extent::Chunk { id, .. } => u32::from_le_bytes(id.0[..4].try_into().expect("4 bytes")),
            Extent::Hole { len } => splitmix(*len) as u32,
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The root of a finished manifest tree: what a snapshot records per disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestRoot {
    /// The root node blob.
    pub root: BlobId,
    /// Bytes the manifest covers (the disk's virtual size).
    pub len_bytes: u64,
    /// Number of extents (leaf entries).
    pub extents: u64,
}

/// A child reference inside an interior node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildRef {
    pub id: BlobId,
    /// Disk bytes the child covers.
    pub len: u64,
    /// Leaf entries under the child.
    pub extents: u64,
}

/// A decoded manifest node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Leaf(Vec<Extent>),
    Interior { level: u8, children: Vec<ChildRef> },
}

impl Node {
    pub fn level(&self) -> u8 {
        match self {
            Node::Leaf(_) => 0,
            Node::Interior { level, .. } => *level,
        }
    }

    /// Disk bytes covered by the node. A decoded node is known not to overflow
    /// (`decode` refuses one whose sums do); a node built in memory saturates.
    pub fn len_bytes(&self) -> u64 {
        self.totals().map_or(u64::MAX, |t| t.0)
    }

    /// Leaf entries under the node (its own entries for a leaf).
    pub fn extents(&self) -> u64 {
        self.totals().map_or(u64::MAX, |t| t.1)
    }

    /// (bytes, leaf entries) covered, or `None` when a sum overflows.
    fn totals(&self) -> Option<(u64, u64)> {
        match self {
            Node::Leaf(e) => e
                .iter()
                .try_fold(0u64, |a, e| a.checked_add(e.len()))
                .map(|len| (len, e.len() as u64)),
            Node::Interior { children, .. } => {
                children.iter().try_fold((0u64, 0u64), |(len, n), c| {
                    Some((len.checked_add(c.len)?, n.checked_add(c.extents)?))
                })
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (level, count, entry_len) = match self {
            Node::Leaf(e) => (0u8, e.len(), LEAF_ENTRY_LEN),
            Node::Interior { level, children } => (*level, children.len(), INTERIOR_ENTRY_LEN),
        };
        let mut out = Vec::with_capacity(NODE_HEADER_LEN + count * entry_len);
        out.extend_from_slice(NODE_MAGIC);
        out.push(NODE_VERSION);
        out.push(level);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(count as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        match self {
            Node::Leaf(extents) => {
                for e in extents {
                    match *e {
                        Extent::Chunk { id, len } => {
                            out.push(LEAF_CHUNK);
                            out.extend_from_slice(&(len as u64).to_le_bytes());
                            out.extend_from_slice(&id.0);
                        }
                        Extent::Hole { len } => {
                            out.push(LEAF_HOLE);
                            out.extend_from_slice(&len.to_le_bytes());
                            out.extend_from_slice(&[0; 32]);
                        }
                    }
                }
            }
            Node::Interior { children, .. } => {
                for c in children {
                    out.extend_from_slice(&c.id.0);
                    out.extend_from_slice(&c.len.to_le_bytes());
                    out.extend_from_slice(&c.extents.to_le_bytes());
                }
            }
        }
        out
    }

    /// Parses a node blob. `id` is only used to name the node in errors.
    pub fn decode(id: BlobId, bytes: &[u8]) -> Result<Node> {
        let bad = |reason: String| Error::CorruptManifest { node: id, reason };
        if bytes.len() < NODE_HEADER_LEN {
            return Err(bad(format!(
                "{} bytes is shorter than a node header",
                bytes.len()
            )));
        }
        if &bytes[..4] != NODE_MAGIC {
            return Err(bad("not a manifest node (bad magic)".into()));
        }
        if bytes[4] != NODE_VERSION {
            return Err(bad(format!("unsupported node version {}", bytes[4])));
        }
        let level = bytes[5];
        if level > MAX_LEVEL {
            return Err(bad(format!("level {level} is deeper than {MAX_LEVEL}")));
        }
        let count = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        let entry_len = if level == 0 {
            LEAF_ENTRY_LEN
        } else {
            INTERIOR_ENTRY_LEN
        };
        let body = &bytes[NODE_HEADER_LEN..];
        if count > MAX_FANOUT as usize || body.len() != count * entry_len {
            return Err(bad(format!(
                "{count} entries do not match a body of {} bytes",
                body.len()
            )));
        }
        let u64_at =
            |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        if level == 0 {
            let mut extents = Vec::with_capacity(count);
            for (i, e) in body.chunks_exact(LEAF_ENTRY_LEN).enumerate() {
                let len = u64_at(e, 1);
                let id = BlobId::from_slice(&e[9..41]).expect("32 bytes");
                extents.push(match e[0] {
                    LEAF_CHUNK if len > 0 && len <= MAX_CHUNK_BYTES as u64 => Extent::Chunk {
                        id,
                        len: len as u32,
                    },
                    LEAF_HOLE if len > 0 => Extent::Hole { len },
                    t => return Err(bad(format!("entry {i}: invalid type {t} or length {len}"))),
                });
            }
            let node = Node::Leaf(extents);
            node.totals()
                .ok_or_else(|| bad("the extents' sizes overflow".into()))?;
            Ok(node)
        } else {
            let children: Vec<ChildRef> = body
                .chunks_exact(INTERIOR_ENTRY_LEN)
                .map(|e| ChildRef {
                    id: BlobId::from_slice(&e[..32]).expect("32 bytes"),
                    len: u64_at(e, 32),
                    extents: u64_at(e, 40),
                })
                .collect();
            for (i, c) in children.iter().enumerate() {
                if c.len == 0 || c.extents == 0 || c.extents > max_extents(c.len) {
                    return Err(bad(format!(
                        "entry {i}: a child of {} bytes cannot hold {} extents",
                        c.len, c.extents
                    )));
                }
            }
            let node = Node::Interior { level, children };
            node.totals()
                .ok_or_else(|| bad("the children's sizes overflow".into()))?;
            Ok(node)
        }
    }
}

/// One level of the tree under construction.
#[derive(Default)]
struct OpenLevel {
    leaf: Vec<Extent>,
    children: Vec<ChildRef>,
    len: u64,
    extents: u64,
}

/// Builds a manifest tree from extents in disk order, emitting each finished node to a
/// sink that stores it and returns its id. Holds at most one open node per level.
pub struct ManifestBuilder {
    levels: Vec<OpenLevel>,
    pending_hole: u64,
}

impl Default for ManifestBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ManifestBuilder {
    pub fn new() -> Self {
        ManifestBuilder {
            levels: vec![OpenLevel::default()],
            pending_hole: 0,
        }
    }

    /// Appends the next extent. Adjacent holes are merged into one.
    pub fn push<E>(
        &mut self,
        extent: Extent,
        sink: &mut impl FnMut(&Node) -> Result<BlobId, E>,
    ) -> Result<(), E> {
        match extent {
            Extent::Hole { len } => {
                self.pending_hole += len;
                Ok(())
            }
            Extent::Chunk { .. } => {
                self.flush_hole(sink)?;
                self.push_leaf(extent, sink)
            }
        }
    }

    fn flush_hole<E>(
        &mut self,
        sink: &mut impl FnMut(&Node) -> Result<BlobId, E>,
    ) -> Result<(), E> {
        if self.pending_hole > 0 {
            let len = std::mem::take(&mut self.pending_hole);
            self.push_leaf(Extent::Hole { len }, sink)?;
        }
        Ok(())
    }

    fn push_leaf<E>(
        &mut self,
        extent: Extent,
        sink: &mut impl FnMut(&Node) -> Result<BlobId, E>,
    ) -> Result<(), E> {
        let l = &mut self.levels[0];
        l.leaf.push(extent);
        l.len += extent.len();
        l.extents += 1;
        if closes(l.leaf.len(), extent.key()) {
            self.close(0, sink)?;
        }
        Ok(())
    }

    /// Closes the open node of `level` and pushes its reference one level up.
    fn close<E>(
        &mut self,
        level: usize,
        sink: &mut impl FnMut(&Node) -> Result<BlobId, E>,
    ) -> Result<(), E> {
        let open = std::mem::take(&mut self.levels[level]);
        let node = if level == 0 {
            Node::Leaf(open.leaf)
        } else {
            Node::Interior {
                level: level as u8,
                children: open.children,
            }
        };
        let id = sink(&node)?;
        if self.levels.len() == level + 1 {
            self.levels.push(OpenLevel::default());
        }
        let up = &mut self.levels[level + 1];
        up.children.push(ChildRef {
            id,
            len: open.len,
            extents: open.extents,
        });
        up.len += open.len;
        up.extents += open.extents;
        let key = u32::from_le_bytes(id.0[..4].try_into().expect("4 bytes"));
        if closes(up.children.len(), key) {
            self.close(level + 1, sink)?;
        }
        Ok(())
    }

    /// Closes every open node and returns the root.
    pub fn finish<E>(
        mut self,
        sink: &mut impl FnMut(&Node) -> Result<BlobId, E>,
    ) -> Result<ManifestRoot, E> {
        self.flush_hole(sink)?;
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            let l = &self.levels[level];
            let entries = if level == 0 {
                l.leaf.len()
            } else {
                l.children.len()
            };
            if top {
                // A top level with one child: that child is the root (no needless level).
                if level > 0 && entries == 1 {
                    let c = l.children[0];
                    return Ok(ManifestRoot {
                        root: c.id,
                        len_bytes: c.len,
                        extents: c.extents,
                    });
                }
                let (len_bytes, extents) = (l.len, l.extents);
                let node = if level == 0 {
                    Node::Leaf(std::mem::take(&mut self.levels[0].leaf))
                } else {
                    Node::Interior {
                        level: level as u8,
                        children: std::mem::take(&mut self.levels[level].children),
                    }
                };
                let root = sink(&node)?;
                return Ok(ManifestRoot {
                    root,
                    len_bytes,
                    extents,
                });
            }
            if entries > 0 {
                self.close(level, sink)?;
            }
            level += 1;
        }
    }
}

fn closes(entries: usize, key: u32) -> bool {
    let entries = entries as u32;
    entries >= MAX_FANOUT || (entries >= MIN_FANOUT && key & (AVG_FANOUT - 1) == AVG_FANOUT - 1)
}

/// Walks a manifest tree in disk order, holding one node per level.
///
/// `fetch` loads and decodes a node blob. Each child is checked against what its parent
/// claims (level and byte length), so a damaged tree is an error, never a wrong disk.
pub struct ManifestWalker<F> {
    fetch: F,
    /// (node id, node, next index)
    stack: Vec<(BlobId, Node, usize)>,
    offset: u64,
    root: ManifestRoot,
    started: bool,
}

/// One step of [`ManifestWalker::next_step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An extent and its disk offset.
    Extent(u64, Extent),
    /// The walk goes into the node `node.id`, at `level`: loaded, and its length and
    /// extent count are those of `node` (checked against its parent's claim).
    Enter { node: ChildRef, level: u8 },
    /// The walk has been through the whole subtree of node `id`.
    Leave(BlobId),
    /// The subtree under `child` (its root at `level`, `None` for the tree's root),
    /// starting at disk offset `offset`, was passed over because the caller chose to
    /// skip it: it was not loaded, and the walk goes on after it.
    Skipped {
        offset: u64,
        child: ChildRef,
        level: Option<u8>,
    },
}

impl<F: FnMut(&BlobId) -> Result<Node>> ManifestWalker<F> {
    pub fn new(root: ManifestRoot, fetch: F) -> Self {
        ManifestWalker {
            fetch,
            stack: Vec::new(),
            offset: 0,
            root,
            started: false,
        }
    }

    fn load(
        &mut self,
        id: &BlobId,
        expect_len: u64,
        expect_extents: u64,
        expect_level: Option<u8>,
    ) -> Result<Node> {
        let node = (self.fetch)(id)?;
        if let Some(level) = expect_level {
            if node.level() != level {
                return Err(Error::CorruptManifest {
                    node: *id,
                    reason: format!("level {} where {level} was expected", node.level()),
                });
            }
        }
        if node.len_bytes() != expect_len {
            return Err(Error::CorruptManifest {
                node: *id,
                reason: format!(
                    "covers {} bytes where its parent says {expect_len}",
                    node.len_bytes()
                ),
            });
        }
        if node.extents() != expect_extents {
            return Err(Error::CorruptManifest {
                node: *id,
                reason: format!(
                    "holds {} extents where its parent says {expect_extents}",
                    node.extents()
                ),
            });
        }
        Ok(node)
    }

    /// The next extent and its disk offset, or `None` at the end.
    pub fn next_extent(&mut self) -> Result<Option<(u64, Extent)>> {
        loop {
            match self.next_step(&mut |_, _| false)? {
                Some(Step::Extent(at, e)) => return Ok(Some((at, e))),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next step of the walk, or `None` at the end. Before it loads a node (the root
    /// included) it asks `skip` with what the parent claims of it and the level it must
    /// have; on `true` the whole subtree is passed over unread (a caller that already
    /// checked that node, say). What is passed over is neither loaded nor checked.
    pub fn next_step(
        &mut self,
        skip: &mut dyn FnMut(&ChildRef, Option<u8>) -> bool,
    ) -> Result<Option<Step>> {
        if !self.started {
            self.started = true;
            let root = self.root;
            if root.extents > max_extents(root.len_bytes) {
                return Err(Error::CorruptManifest {
                    node: root.root,
                    reason: format!(
                        "{} extents for {} bytes is more than a manifest may hold",
                        root.extents, root.len_bytes
                    ),
                });
            }
            let child = ChildRef {
                id: root.root,
                len: root.len_bytes,
                extents: root.extents,
            };
            if skip(&child, None) {
                self.offset = root.len_bytes;
                return Ok(Some(Step::Skipped {
                    offset: 0,
                    child,
                    level: None,
                }));
            }
            let node = self.load(&root.root, root.len_bytes, root.extents, None)?;
            let level = node.level();
            self.stack.push((root.root, node, 0));
            return Ok(Some(Step::Enter { node: child, level }));
        }
        let Some((id, node, idx)) = self.stack.last_mut() else {
            return Ok(None);
        };
        match node {
            Node::Leaf(extents) => {
                if let Some(e) = extents.get(*idx).copied() {
                    *idx += 1;
                    let at = self.offset;
                    // Cannot pass the root's length: every node's sums were checked
                    // against its parent's claim, and decode refuses overflowing sums.
                    self.offset = at.saturating_add(e.len()).min(self.root.len_bytes);
                    return Ok(Some(Step::Extent(at, e)));
                }
            }
            Node::Interior { level, children } => {
                if let Some(c) = children.get(*idx).copied() {
                    *idx += 1;
                    let child_level = *level - 1;
                    if skip(&c, Some(child_level)) {
                        let at = self.offset;
                        self.offset = at.saturating_add(c.len).min(self.root.len_bytes);
                        return Ok(Some(Step::Skipped {
                            offset: at,
                            child: c,
                            level: Some(child_level),
                        }));
                    }
                    let node = self.load(&c.id, c.len, c.extents, Some(child_level))?;
                    self.stack.push((c.id, node, 0));
                    return Ok(Some(Step::Enter {
                        node: c,
                        level: child_level,
                    }));
                }
            }
        }
        let id = *id;
        self.stack.pop();
        Ok(Some(Step::Leave(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn build(extents: &[Extent]) -> (ManifestRoot, HashMap<BlobId, Vec<u8>>) {
        let mut store = HashMap::new();
        let mut sink = |n: &Node| -> Result<BlobId, ()> {
            let bytes = n.encode();
            let id = BlobId::of(&bytes);
            store.insert(id, bytes);
            Ok(id)
        };
        let mut b = ManifestBuilder::new();
        for e in extents {
            b.push(*e, &mut sink).unwrap();
        }
        let root = b.finish(&mut sink).unwrap();
        (root, store)
    }

    fn walk(root: ManifestRoot, store: &HashMap<BlobId, Vec<u8>>) -> Result<Vec<(u64, Extent)>> {
        let mut w = ManifestWalker::new(root, |id: &BlobId| {
            Node::decode(*id, store.get(id).ok_or(Error::MissingBlob(*id))?)
        });
        let mut out = vec![];
        while let Some(x) = w.next_extent()? {
            out.push(x);
        }
        Ok(out)
    }

    fn chunk(i: u64) -> Extent {
        Extent::Chunk {
            id: BlobId::of(&i.to_le_bytes()),
            len: 4096 + (i % 7) as u32,
        }
    }

    #[test]
    fn empty_and_single_and_many_round_trip() {
        for n in [0u64, 1, 63, 1000, 30_000] {
            let extents: Vec<Extent> = (0..n)
                .flat_map(|i| {
                    if i % 10 == 3 {
                        vec![Extent::Hole { len: 100 }, Extent::Hole { len: 5 }, chunk(i)]
                    } else {
                        vec![chunk(i)]
                    }
                })
                .collect();
            let (root, store) = build(&extents);
            let got = walk(root, &store).unwrap();
            // Adjacent holes come back merged.
            let mut merged: Vec<Extent> = vec![];
            for e in &extents {
                match (merged.last_mut(), e) {
                    (Some(Extent::Hole { len: a }), Extent::Hole { len: b }) => *a += b,
                    _ => merged.push(*e),
                }
            }
            assert_eq!(got.iter().map(|x| x.1).collect::<Vec<_>>(), merged, "n={n}");
            assert_eq!(root.len_bytes, extents.iter().map(|e| e.len()).sum::<u64>());
            assert_eq!(root.extents as usize, merged.len());
            let mut at = 0;
            for (off, e) in got {
                assert_eq!(off, at);
                at += e.len();
            }
        }
    }

    #[test]
    fn a_local_change_rewrites_few_nodes() {
        let base: Vec<Extent> = (0..50_000).map(chunk).collect();
        let mut changed = base.clone();
        changed[25_000] = chunk(999_999);
        let (_, a) = build(&base);
        let (_, b) = build(&changed);
        let new_nodes = b.keys().filter(|k| !a.contains_key(k)).count();
        assert!(a.len() > 40, "expected a multi-node tree, got {}", a.len());
        assert!(
            new_nodes <= 3,
            "one changed chunk rewrote {new_nodes} nodes"
        );
    }

    /// A walk that skips subtrees passes over exactly their bytes: every extent after a
    /// skipped subtree comes at the offset of the full walk, and Enter/Leave pair up.
    #[test]
    fn skipped_subtrees_keep_the_offsets_of_a_full_walk() {
        let extents: Vec<Extent> = (0..30_000).map(chunk).collect();
        let (root, store) = build(&extents);
        let full = walk(root, &store).unwrap();
        let mut loads = 0;
        let mut w = ManifestWalker::new(root, |id: &BlobId| {
            loads += 1;
            Node::decode(*id, store.get(id).ok_or(Error::MissingBlob(*id))?)
        });
        // Skip every third leaf.
        let mut leaves = 0;
        let mut skip = |_: &ChildRef, level: Option<u8>| {
            if level == Some(0) {
                leaves += 1;
                leaves % 3 == 0
            } else {
                false
            }
        };
        let (mut got, mut skipped, mut open) = (vec![], 0u64, vec![]);
        while let Some(step) = w.next_step(&mut skip).unwrap() {
            match step {
                Step::Extent(at, e) => got.push((at, e)),
                Step::Enter { node, .. } => open.push(node.id),
                Step::Leave(id) => assert_eq!(open.pop(), Some(id)),
                Step::Skipped {
                    offset,
                    child,
                    level,
                } => {
                    assert_eq!(level, Some(0));
                    let before: u64 = full.iter().take_while(|(at, _)| *at < offset).count() as u64;
                    assert_eq!(
                        full[before as usize].0, offset,
                        "a subtree starts at an extent"
                    );
                    skipped += child.extents;
                }
            }
        }
        drop(w);
        assert!(loads < store.len(), "skipped leaves are not loaded");
        assert!(open.is_empty());
        assert!(skipped > 0);
        assert_eq!(got.len() as u64 + skipped, full.len() as u64);
        assert!(got.iter().all(|x| full.contains(x)));
        // Skipping the root passes over everything.
        let mut w = ManifestWalker::new(root, |_: &BlobId| -> Result<Node> {
            panic!("nothing is loaded")
        });
        let step = w.next_step(&mut |_, level| level.is_none()).unwrap();
        assert!(matches!(
            step,
            Some(Step::Skipped {
                offset: 0,
                level: None,
                ..
            })
        ));
        assert_eq!(w.next_step(&mut |_, _| false).unwrap(), None);
    }

    #[test]
    fn damaged_trees_are_errors() {
        let extents: Vec<Extent> = (0..20_000).map(chunk).collect();
        let (root, store) = build(&extents);
        // A parent that lies about its child's length.
        let mut lying = root;
        lying.len_bytes += 1;
        assert!(walk(lying, &store).is_err());
        // Garbage instead of a node.
        for bad in [
            &b""[..],
            b"DDMN",
            b"DDMN\x01\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00",
        ] {
            assert!(Node::decode(BlobId([0; 32]), bad).is_err());
        }
    }

    /// Issue 11: forged trees that would make a reader loop, wrap around or write past
    /// the declared size are refused before any extent comes out.
    #[test]
    fn forged_trees_are_bounded() {
        let mut store = HashMap::new();
        let mut put = |n: &Node| {
            let bytes = n.encode();
            let id = BlobId::of(&bytes);
            store.insert(id, bytes);
            id
        };
        // 8192 one-byte holes under one leaf, 8192 times over: far more extents than bytes.
        let leaf = Node::Leaf(vec![Extent::Hole { len: 1 }; MAX_FANOUT as usize]);
        let leaf_id = put(&leaf);
        let child = ChildRef {
            id: leaf_id,
            len: MAX_FANOUT as u64,
            extents: MAX_FANOUT as u64,
        };
        let top = Node::Interior {
            level: 1,
            children: vec![child; MAX_FANOUT as usize],
        };
        let top_bytes = top.encode();
        assert!(
            Node::decode(BlobId([0; 32]), &top_bytes).is_err(),
            "child claims too many extents"
        );
        let top_id = put(&top);
        let root = ManifestRoot {
            root: top_id,
            len_bytes: 1 << 26,
            extents: 1 << 26,
        };
        assert!(
            walk(root, &store).is_err(),
            "the root claims too many extents"
        );
        // A root that understates its extents is caught at the first node.
        let root = ManifestRoot {
            root: leaf_id,
            len_bytes: 8192,
            extents: 1,
        };
        assert!(walk(root, &store).is_err());
        // Sizes that wrap around u64.
        let huge = Node::Leaf(vec![
            Extent::Hole { len: u64::MAX },
            Extent::Hole { len: 2 },
        ]);
        assert!(Node::decode(BlobId([0; 32]), &huge.encode()).is_err());
        let big = ChildRef {
            id: leaf_id,
            len: u64::MAX / 2 + 1,
            extents: 1,
        };
        let wrap = Node::Interior {
            level: 1,
            children: vec![big, big],
        };
        assert!(Node::decode(BlobId([0; 32]), &wrap.encode()).is_err());
    }
}
