//! An arbitrary zstd payload with an arbitrary claimed length: bounded, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use repo_format::blob::{decode_blob, BlobOrigin, Compression};
use repo_format::{BlobId, PackId};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let raw_len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) % (32 << 20);
    let origin = BlobOrigin {
        pack: PackId([0; 32]),
        offset: 0,
    };
    let _ = decode_blob(
        BlobId([0; 32]),
        Compression::Zstd,
        raw_len,
        &data[4..],
        origin,
    );
});
