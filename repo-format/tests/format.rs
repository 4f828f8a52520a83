//! The bytes at rest, pinned: every structure FORMAT.md describes is encoded here from
//! known values and checked field by field against the spec's tables, then as a whole
//! against a frozen hex or text golden, so an encoding change cannot pass unnoticed.
//! Round trips (proptest) check that what is encoded decodes to the same value.

use std::fs::File;

use proptest::prelude::*;
use repo_format::blob::{BlobCodec, BlobKind, Compression};
use repo_format::manifest::{ChildRef, Extent, Node};
use repo_format::pack::{read_toc, PackWriter, BLOB_HEADER_LEN, TOC_ENTRY_LEN};
use repo_format::{BlobId, EncodedBlob, ManifestRoot, Snapshot, SnapshotDisk, SnapshotId};

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A pack of one uncompressed 5-byte blob (no zstd output in the golden, so it does not
/// move with the zstd version).
fn one_blob_pack() -> (tempfile::TempDir, Vec<u8>, BlobId) {
    let dir = tempfile::tempdir().unwrap();
    let raw = b"hello".to_vec();
    let id = BlobId::of(&raw);
    let mut w = PackWriter::create(dir.path(), &BlobCodec::plain()).unwrap();
    w.add(&EncodedBlob {
        id,
        kind: BlobKind::Data,
        compression: Compression::None,
        raw_len: 5,
        payload: raw,
    })
    .unwrap();
    let local = repo_format::backend::LocalDir::new(dir.path());
    let done = w.finish(&local).unwrap();
    let bytes =
        std::fs::read(local.path(repo_format::backend::ObjectKind::Pack, &done.id.to_hex()))
            .unwrap();
    (dir, bytes, id)
}

#[test]
fn pack_bytes_follow_format_section_4() {
    let (_dir, b, id) = one_blob_pack();
    // PackHeader
    assert_eq!(&b[0..8], b"DDSKPACK");
    assert_eq!(b[8], 1);
    assert_eq!(&b[9..16], &[0; 7]);
    // BlobHeader at 16
    let h = &b[16..16 + BLOB_HEADER_LEN as usize];
    assert_eq!(&h[0..32], id.0.as_slice());
    assert_eq!(h[32], 1, "kind: data");
    assert_eq!(h[33], 0, "compression: none");
    assert_eq!(&h[34..36], &[0, 0]);
    assert_eq!(le32(h, 36), 5, "stored_len");
    assert_eq!(le32(h, 40), 5, "raw_len");
    assert_eq!(&h[44..48], &blake3::hash(&h[..44]).as_bytes()[..4]);
    assert_eq!(&b[64..69], b"hello");
    // TOC at 69, one entry
    let toc_offset = 69usize;
    let e = &b[toc_offset..toc_offset + TOC_ENTRY_LEN as usize];
    assert_eq!(&e[0..32], id.0.as_slice());
    assert_eq!((e[32], e[33]), (1, 0));
    assert_eq!(&e[34..36], &[0, 0]);
    assert_eq!((le32(e, 36), le32(e, 40)), (5, 5));
    assert_eq!(le64(e, 44), 16, "offset of the blob header");
    assert_eq!(&e[52..56], &[0; 4]);
    // Footer
    let f = &b[b.len() - 56..];
    assert_eq!(le64(f, 0), toc_offset as u64);
    assert_eq!(le32(f, 8), 1);
    assert_eq!(&f[12..16], &[0; 4]);
    assert_eq!(&f[16..48], blake3::hash(e).as_bytes());
    assert_eq!(&f[48..56], b"DDSKEND1");
    assert_eq!(b.len(), toc_offset + 56 + 56);
    // The whole file, frozen.
    assert_eq!(hex::encode(&b), PACK_GOLDEN.trim());
    let path = _dir.path().join("golden.pack");
    std::fs::write(&path, &b).unwrap();
    let toc = read_toc(
        &File::open(&path).unwrap(),
        b.len() as u64,
        "golden",
        &BlobCodec::plain(),
    )
    .unwrap();
    assert_eq!(toc.len(), 1);
    assert_eq!(toc[0].offset, 16);
}

const PACK_GOLDEN: &str = include_str!("golden/pack.hex");

#[test]
fn leaf_and_interior_nodes_follow_format_section_5() {
    let id = BlobId::of(b"chunk");
    let leaf = Node::Leaf(vec![
        Extent::Chunk { id, len: 4096 },
        Extent::Hole { len: 1 << 20 },
    ]);
    let b = leaf.encode();
    assert_eq!(&b[0..4], b"DDMN");
    assert_eq!((b[4], b[5]), (1, 0), "version 1, level 0");
    assert_eq!(&b[6..8], &[0, 0]);
    assert_eq!(le32(&b, 8), 2);
    assert_eq!(&b[12..16], &[0; 4]);
    assert_eq!(b.len(), 16 + 2 * 41);
    assert_eq!(b[16], 1, "chunk entry");
    assert_eq!(le64(&b, 17), 4096);
    assert_eq!(&b[25..57], id.0.as_slice());
    assert_eq!(b[57], 2, "hole entry");
    assert_eq!(le64(&b, 58), 1 << 20);
    assert_eq!(&b[66..98], &[0; 32]);
    assert_eq!(hex::encode(&b), include_str!("golden/leaf.hex").trim());

    let interior = Node::Interior {
        level: 1,
        children: vec![ChildRef {
            id: BlobId::of(&b),
            len: 4096 + (1 << 20),
            extents: 2,
        }],
    };
    let i = interior.encode();
    assert_eq!((i[4], i[5]), (1, 1), "version 1, level 1");
    assert_eq!(le32(&i, 8), 1);
    assert_eq!(i.len(), 16 + 48);
    assert_eq!(&i[16..48], BlobId::of(&b).0.as_slice());
    assert_eq!(le64(&i, 48), 4096 + (1 << 20));
    assert_eq!(le64(&i, 56), 2);
    assert_eq!(hex::encode(&i), include_str!("golden/interior.hex").trim());
    assert_eq!(Node::decode(BlobId::of(&i), &i).unwrap(), interior);
}

fn snapshot_fixture() -> Snapshot {
    Snapshot {
        snapshot_version: 1,
        time: "2026-11-22T07:22:41Z".parse().unwrap(),
        name: "web01".into(),
        hostname: "kvm1".into(),
        tags: vec!["nightly".into()],
        disks: vec![SnapshotDisk {
            label: "vda".into(),
            source: "/var/lib/libvirt/images/web01.qcow2".into(),
            size_bytes: 1 << 20,
            manifest: ManifestRoot {
                root: BlobId::of(b"root"),
                len_bytes: 1 << 20,
                extents: 1,
            },
            stats: Default::default(),
            lost: vec![],
            changes: None,
        }],
        meta: vec![],
        program_version: "0.1.0".into(),
        previous: None,
    }
}

#[test]
fn snapshot_file_follows_format_section_6() {
    let s = snapshot_fixture();
    let (id, bytes) = s.encode();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert_eq!(text, include_str!("golden/snapshot.json"));
    // The file is named by the BLAKE3 of its bytes, and decoding checks that.
    assert_eq!(id, SnapshotId(*blake3::hash(&bytes).as_bytes()));
    let back = Snapshot::decode("x".as_ref(), id, &bytes).unwrap();
    assert_eq!(back, s);
    assert!(Snapshot::decode("x".as_ref(), SnapshotId([0; 32]), &bytes).is_err());
}

/// The default config with the repository id and time of the goldens.
fn golden_config() -> repo_format::RepoConfig {
    let mut config =
        repo_format::RepoConfig::new(Default::default(), Default::default(), 64 << 20).unwrap();
    config.repo_id = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
        .parse()
        .unwrap();
    config.created = "2026-11-22T07:22:41Z".parse().unwrap();
    config
}

#[test]
fn config_and_lock_files_keep_their_field_names() {
    let config = golden_config();
    let json = serde_json::to_string_pretty(&config).unwrap();
    assert_eq!(json, include_str!("golden/config.json").trim_end());
    let back = repo_format::RepoConfig::parse("config.json".as_ref(), json.as_bytes()).unwrap();
    assert_eq!(serde_json::to_string_pretty(&back).unwrap(), json);

    let lock = repo_format::lock::LockInfo {
        kind: repo_format::lock::LockKind::Shared,
        hostname: "kvm1".into(),
        pid: 4242,
        time: "2026-11-22T03:00:00Z".parse().unwrap(),
        command: "backup".into(),
        pid_start: Some(123456),
    };
    assert_eq!(
        serde_json::to_string(&lock).unwrap(),
        r#"{"kind":"shared","hostname":"kvm1","pid":4242,"time":"2026-11-22T03:00:00Z","command":"backup","pid_start":123456}"#
    );
    // Locks written before pid_start existed still read.
    let old: repo_format::lock::LockInfo = serde_json::from_str(
        r#"{"kind":"exclusive","hostname":"h","pid":1,"time":"2026-11-22T03:00:00Z","command":"prune"}"#,
    )
    .unwrap();
    assert_eq!(old.pid_start, None);
}

fn extent() -> impl Strategy<Value = Extent> {
    prop_oneof![
        (any::<[u8; 32]>(), 1u32..=(16 << 20)).prop_map(|(id, len)| Extent::Chunk {
            id: BlobId(id),
            len
        }),
        (1u64..=(1 << 40)).prop_map(|len| Extent::Hole { len }),
    ]
}

proptest! {
    #[test]
    fn leaf_nodes_round_trip(extents in prop::collection::vec(extent(), 1..200)) {
        let node = Node::Leaf(extents);
        let bytes = node.encode();
        prop_assert_eq!(Node::decode(BlobId::of(&bytes), &bytes).unwrap(), node);
    }

    #[test]
    fn interior_nodes_round_trip(
        level in 1u8..=8,
        children in prop::collection::vec((any::<[u8; 32]>(), 1u64..(1 << 40), any::<u64>()), 1..100),
    ) {
        // A child holds at most max_extents(len) extents (FORMAT.md section 5).
        let node = Node::Interior {
            level,
            children: children
                .into_iter()
                .map(|(id, len, n)| ChildRef {
                    id: BlobId(id),
                    len,
                    extents: 1 + n % repo_format::manifest::max_extents(len),
                })
                .collect(),
        };
        let bytes = node.encode();
        prop_assert_eq!(Node::decode(BlobId::of(&bytes), &bytes).unwrap(), node);
    }

    #[test]
    fn snapshots_round_trip(
        name in "[a-z][a-z0-9._-]{0,30}",
        tags in prop::collection::vec("[a-z0-9]{1,12}", 0..4),
        sizes in prop::collection::vec(1u64..(1 << 40), 1..6),
        secs in 0i64..4_000_000_000,
    ) {
        let mut s = snapshot_fixture();
        s.name = name;
        s.tags = tags;
        s.time = jiff::Timestamp::from_second(secs).unwrap();
        s.disks = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| SnapshotDisk {
                label: format!("disk{i}"),
                size_bytes: size,
                manifest: ManifestRoot { root: BlobId::of(&size.to_le_bytes()), len_bytes: size, extents: 1 },
                ..s.disks[0].clone()
            })
            .collect();
        let (id, bytes) = s.encode();
        prop_assert_eq!(Snapshot::decode("p".as_ref(), id, &bytes).unwrap(), s);
    }
}

#[test]
fn sealed_packs_configs_and_key_files_follow_format_section_10() {
    use repo_format::crypto::{KdfParams, KeyFile, MasterKey, RepoKeys, SealedKind};
    use std::sync::Arc;
    let master = MasterKey::from_bytes([7; 32]);
    let keys = Arc::new(RepoKeys::new(master.clone()));
    // Keyed ids: BLAKE3 keyed with the derived chunk-id key.
    let id_key = blake3::derive_key("dedisk repository v2 chunk id", &[7; 32]);
    assert_eq!(
        keys.blob_id(b"hello").0,
        *blake3::keyed_hash(&id_key, b"hello").as_bytes()
    );
    let codec = BlobCodec::sealed(keys.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut enc = repo_format::BlobEncoder::new(3, codec.clone()).unwrap();
    let blob = enc.encode(BlobKind::Data, b"hello").unwrap();
    // Sealed payload: salt 24 | AES-256-GCM(len u32 | bytes | zero padding) | tag 16.
    assert_eq!(blob.payload.len(), 24 + 4 + 5 + 16);
    let mut w = PackWriter::create(dir.path(), &codec).unwrap();
    w.add(&blob).unwrap();
    let local = repo_format::backend::LocalDir::new(dir.path());
    let done = w.finish(&local).unwrap();
    let path = local.path(repo_format::backend::ObjectKind::Pack, &done.id.to_hex());
    let b = std::fs::read(&path).unwrap();
    assert_eq!(&b[0..8], b"DDSKPACK");
    assert_eq!(b[8], 2, "pack version 2");
    assert_eq!(&b[9..16], &[0; 7]);
    // No clear blob header: the sealed payload starts at 16.
    assert_eq!(&b[16..16 + blob.payload.len()], blob.payload.as_slice());
    // Footer: toc_offset u64 | sealed TOC length u32 | reserved u32 | "DDSKEND2".
    let f = &b[b.len() - 24..];
    let toc_offset = le64(f, 0);
    assert_eq!(toc_offset, 16 + blob.payload.len() as u64);
    assert_eq!(le32(f, 8) as u64, b.len() as u64 - 24 - toc_offset);
    assert_eq!(le32(f, 12), 0);
    assert_eq!(&f[16..24], b"DDSKEND2");
    // The sealed TOC opens as count | reserved | 56-byte entries, bound to its place.
    let mut ad = b"DDSKPACK".to_vec();
    ad.push(2);
    ad.extend_from_slice(&toc_offset.to_le_bytes());
    let toc = keys
        .sealer()
        .open_padded(
            SealedKind::PackToc,
            &ad,
            &b[toc_offset as usize..b.len() - 24],
            "t",
        )
        .unwrap();
    assert_eq!(le32(&toc, 0), 1);
    assert_eq!(toc.len(), 8 + TOC_ENTRY_LEN as usize);
    assert_eq!(&toc[8..40], blob.id.0.as_slice());
    assert_eq!(le64(&toc, 8 + 44), 16, "offset: the payload itself");
    let entries = read_toc(&File::open(&path).unwrap(), b.len() as u64, "p", &codec).unwrap();
    assert_eq!(entries.len(), 1);
    assert!(read_toc(
        &File::open(&path).unwrap(),
        b.len() as u64,
        "p",
        &BlobCodec::plain()
    )
    .is_err());

    // config.json of version 2: the version-1 fields, `encryption` and `mac`.
    let mut config = golden_config();
    config.seal(&master);
    let json = serde_json::to_string_pretty(&config).unwrap();
    assert_eq!(json, include_str!("golden/config-v2.json").trim_end());
    config.check_mac("c".as_ref(), &master).unwrap();
    // The MAC: keyed BLAKE3 (derived key) of the compact JSON without `mac`.
    let mac_key = blake3::derive_key("dedisk repository v2 config mac", &[7; 32]);
    let mut without: serde_json::Value = serde_json::from_str(&json).unwrap();
    without.as_object_mut().unwrap().remove("mac");
    let input = serde_json::to_vec(&without).unwrap();
    assert_eq!(
        config.mac.as_deref().unwrap(),
        blake3::keyed_hash(&mac_key, &input).to_hex().as_str()
    );
    let mut changed = config.clone();
    changed.compression.level = 19;
    assert!(changed.check_mac("c".as_ref(), &master).is_err());
    // A config written before `file_start_tail_bytes` existed (the golden of then) still
    // checks under its MAC and cuts as it did; dropping the field from one that has it
    // (to turn cuts at file starts off behind the owner's back) is caught.
    let before = repo_format::RepoConfig::parse(
        "c".as_ref(),
        include_bytes!("golden/config-v2-no-file-starts.json"),
    )
    .unwrap();
    assert_eq!(before.chunker.file_start_tail_bytes, 0);
    before.check_mac("c".as_ref(), &master).unwrap();
    let mut stripped = config.clone();
    stripped.chunker.file_start_tail_bytes = 0;
    assert!(stripped.check_mac("c".as_ref(), &master).is_err());

    // Key files: every field but `wrapped` is associated data of the wrapped key.
    let quick = KdfParams {
        m_kib: 8192,
        t: 1,
        p: 1,
    };
    let kf = KeyFile::wrap(&master, b"pw", quick, &config.repo_id.0, "admin").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&kf.to_bytes()).unwrap();
    let fields: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    let mut want = vec![
        "version", "kdf", "params", "salt", "wrapped", "label", "created",
    ];
    want.sort();
    let mut fields = fields;
    fields.sort();
    assert_eq!(fields, want);
    assert_eq!(v["kdf"], "argon2id");
    assert_eq!(v["wrapped"].as_str().unwrap().len(), 2 * (24 + 32 + 16));
}
