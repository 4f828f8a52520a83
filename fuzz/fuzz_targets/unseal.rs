//! Arbitrary bytes as a sealed object of every kind, and as a key file: an error, never
//! a panic, and never plaintext out of bytes that were not sealed with the key (issue 14).
#![no_main]
use libfuzzer_sys::fuzz_target;
use repo_format::crypto::{KeyFile, MasterKey, SealedKind};

fuzz_target!(|data: &[u8]| {
    let sealer = MasterKey::from_bytes([3; 32]).sealer();
    for kind in [
        SealedKind::DataBlob,
        SealedKind::NodeBlob,
        SealedKind::PackToc,
        SealedKind::Snapshot,
        SealedKind::Config,
    ] {
        assert!(sealer.open(kind, &[0; 32], data, "fuzz").is_err());
        assert!(sealer.open_padded(kind, &[0; 32], data, "fuzz").is_err());
    }
    // As a sealed blob's stored bytes, of either kind: the decoder opens, unpads,
    // decompresses (bounded by raw_len) and checks the keyed id; all fail.
    let codec = repo_format::blob::BlobCodec::sealed(std::sync::Arc::new(
        repo_format::crypto::RepoKeys::new(MasterKey::from_bytes([3; 32])),
    ));
    let mut decoder = repo_format::blob::BlobDecoder::new(codec).expect("decoder");
    let origin = repo_format::blob::BlobOrigin {
        pack: repo_format::PackId([0; 32]),
        offset: 0,
    };
    for kind in [repo_format::BlobKind::Data, repo_format::BlobKind::ManifestNode] {
        for compression in [repo_format::Compression::None, repo_format::Compression::Zstd] {
            let id = repo_format::BlobId([1; 32]);
            assert!(decoder
                .decode(id, kind, compression, 1 << 16, data.to_vec(), origin)
                .is_err());
        }
    }
    // The paper form of a master key, typed back in: an error or a key, never a panic.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = repo_format::crypto::parse_paper_key(text);
    }
    // A key file whose cost parameters are out of bounds is refused before argon2 runs;
    // only files asking for the minimum are tried, to keep each run fast.
    if let Ok(kf) = KeyFile::parse(data, "fuzz") {
        if kf.params.m_kib == 8 * 1024 && kf.params.t == 1 && kf.params.p == 1 {
            let _ = kf.unwrap_key(b"password", b"repo", "fuzz");
        } else {
            let _ = kf.params.check();
        }
    }
});
