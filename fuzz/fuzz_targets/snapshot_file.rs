//! Arbitrary bytes as a snapshot file (named by their own hash, so the content check passes).
#![no_main]
use libfuzzer_sys::fuzz_target;
use repo_format::{Snapshot, SnapshotId};

fuzz_target!(|data: &[u8]| {
    let id = SnapshotId(*blake3::hash(data).as_bytes());
    let _ = Snapshot::decode(std::path::Path::new("fuzz.json"), id, data);
});
