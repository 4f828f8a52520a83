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
    }
    // A key file whose cost parameters are out of bounds is refused before argon2 runs;
    // only files asking for the minimum are tried, to keep each run fast.
    if let Ok(kf) = serde_json::from_slice::<KeyFile>(data) {
        if kf.params.m_kib == 8 * 1024 && kf.params.t == 1 && kf.params.p == 1 {
            let _ = kf.unwrap_key(b"password", b"repo", "fuzz");
        } else {
            let _ = kf.params.check();
        }
    }
});
