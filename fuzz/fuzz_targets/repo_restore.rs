//! A whole forged repository read path (issue 11): chunks, manifest nodes and a snapshot
//! file built from the input, stored as a real pack in a real repository, then listed and
//! restored into a folder. Asserts that nothing is written outside the restore folder,
//! that no restored file is larger than the size its snapshot declares, and (through
//! libFuzzer's -rss_limit_mb and -timeout) that memory and time stay bounded.
//!
//! Input layout (every field read until the input runs out):
//! - chunks: count u8 % 6, then per chunk a u16 length % 20000 and that many bytes;
//! - nodes: count u8 % 6, per node a level u8 % 3, an entry count u8 % 24 and per entry
//!   a type u8, a length u64 and an index u8 (a chunk for leaves, an earlier node for
//!   interior nodes), an extents u64 for interior nodes; the header may lie about count;
//! - a snapshot: 1-2 disks and 0-1 metadata files, each a name (u8 length % 24, bytes),
//!   a size u64, a root node index u8, a length u64 and an extents u64.
#![no_main]
use std::path::Path;

use engine::restore::{RestoreRequest, RestoreTo, TargetDir, TargetFormat, TargetOptions};
use libfuzzer_sys::fuzz_target;
use repo_format::blob::BlobKind;
use repo_format::{
    BlobEncoder, BlobId, ChunkerParams, CompressionParams, PackWriter, RepoConfig, Repository,
};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.bytes(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(b)
    }
}

fn node_bytes(inp: &mut Input, chunks: &[BlobId], nodes: &[BlobId]) -> Vec<u8> {
    let level = inp.u8() % 3;
    let count = inp.u8() % 24;
    let claimed = if inp.u8() % 16 == 0 {
        count.wrapping_add(1)
    } else {
        count
    };
    let mut out = b"DDMN\x01".to_vec();
    out.push(level);
    out.extend([0, 0]);
    out.extend(u32::from(claimed).to_le_bytes());
    out.extend([0; 4]);
    for _ in 0..count {
        if level == 0 {
            let t = inp.u8() % 3;
            let len = inp.u64() % (1 << 26);
            let id = chunks
                .get(inp.u8() as usize % chunks.len().max(1))
                .map_or([0; 32], |c| c.0);
            out.push(t);
            out.extend(len.to_le_bytes());
            out.extend(if t == 2 { [0; 32] } else { id });
        } else {
            let id = nodes
                .get(inp.u8() as usize % nodes.len().max(1))
                .map_or([7; 32], |n| n.0);
            out.extend(id);
            out.extend(inp.u64().to_le_bytes());
            out.extend(inp.u64().to_le_bytes());
        }
    }
    out
}

fn entry(inp: &mut Input, nodes: &[BlobId], name_key: &str) -> serde_json::Value {
    let n = inp.u8() as usize % 24;
    let name = String::from_utf8_lossy(inp.bytes(n)).into_owned();
    let size = inp.u64() % (1 << 28);
    let root = nodes
        .get(inp.u8() as usize % nodes.len().max(1))
        .map_or([3; 32], |n| n.0);
    let len = if inp.u8() % 4 == 0 { inp.u64() } else { size };
    let extents = inp.u64() % 100_000;
    serde_json::json!({
        name_key: name, "source": "fuzz", "size_bytes": size,
        "manifest": {"root": hex::encode(root), "len_bytes": len, "extents": extents},
        "stats": {"read_bytes": 0, "hole_bytes": 0, "data_bytes": 0, "chunks": 0, "new_chunks": 0,
                  "new_bytes": 0, "new_stored_bytes": 0, "seconds": 0.0},
    })
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            files_under(&p, out);
        }
        out.push(p);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("repo");
    let config = RepoConfig::new(
        ChunkerParams::default(),
        CompressionParams::default(),
        8 << 20,
    )
    .unwrap();
    let repo = Repository::init(&root, config).unwrap();
    let lock = repo.lock_shared("fuzz").unwrap();
    let mut enc = BlobEncoder::new(1, repo_format::BlobCodec::plain()).unwrap();
    let mut pack = PackWriter::create(&repo.tmp_dir(), repo.codec()).unwrap();
    let mut chunks = Vec::new();
    for _ in 0..inp.u8() % 6 {
        let n = inp.u16() as usize % 20_000;
        let raw = inp.bytes(n).to_vec();
        let b = enc.encode(BlobKind::Data, &raw).unwrap();
        chunks.push(b.id);
        pack.add(&b).unwrap();
    }
    let mut nodes = Vec::new();
    for _ in 0..inp.u8() % 6 {
        let raw = node_bytes(&mut inp, &chunks, &nodes);
        let b = enc.encode(BlobKind::ManifestNode, &raw).unwrap();
        nodes.push(b.id);
        pack.add(&b).unwrap();
    }
    let finished = pack.finish(repo.backend()).unwrap();
    repo.index()
        .unwrap()
        .add_pack(&finished.id, finished.len_bytes, &finished.entries)
        .unwrap();
    let disks: Vec<_> = (0..1 + inp.u8() % 2)
        .map(|_| entry(&mut inp, &nodes, "label"))
        .collect();
    let meta: Vec<_> = (0..inp.u8() % 2)
        .map(|_| entry(&mut inp, &nodes, "name"))
        .collect();
    let snap = serde_json::json!({
        "snapshot_version": 1, "time": "2026-12-01T00:00:00Z", "name": "vm", "hostname": "h",
        "tags": [], "disks": disks, "meta": meta, "program_version": "fuzz",
    });
    let mut bytes = serde_json::to_vec_pretty(&snap).unwrap();
    bytes.push(b'\n');
    let id = blake3::hash(&bytes).to_hex();
    // A forged snapshot file, written where a local repository keeps them (FORMAT.md).
    let snapshots = repo.local_root().expect("a local repository").join("snapshots");
    std::fs::write(snapshots.join(format!("{id}.json")), &bytes).unwrap();

    let target = top.path().join("out");
    for r in repo.list_snapshots().unwrap() {
        let Ok((_, s)) = r else { continue };
        let dir = TargetDir::open_or_create(&target).unwrap();
        let items = s
            .disks
            .iter()
            .map(|d| (format!("{}.raw", d.label), d.manifest))
            .chain(s.meta.iter().map(|m| (m.name.clone(), m.manifest)));
        for (name, manifest) in items {
            let req = RestoreRequest {
                snapshot: &repo_format::SnapshotId([0; 32]),
                label: &name,
                manifest: &manifest,
                target: RestoreTo::InDir {
                    dir: &dir,
                    name: &name,
                },
                target_opts: TargetOptions {
                    force: true,
                    mode: 0o600,
                },
                format: TargetFormat::Raw,
                workers: 1,
                cancel: &Default::default(),
            };
            let _ = engine::restore::restore_disk(&repo, &lock, &req, &engine::progress::NoProgress);
            let written = std::fs::symlink_metadata(target.join(&name));
            if let Ok(m) = written {
                assert!(
                    m.len() <= manifest.len_bytes,
                    "{name}: {} > {}",
                    m.len(),
                    manifest.len_bytes
                );
            }
        }
    }
    let mut all = Vec::new();
    files_under(top.path(), &mut all);
    for p in all {
        assert!(
            p.starts_with(&root) || p.starts_with(&target),
            "wrote outside the restore folder: {}",
            p.display()
        );
    }
});
