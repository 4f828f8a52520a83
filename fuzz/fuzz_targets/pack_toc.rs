//! A pack file of arbitrary bytes: reading its TOC and every blob it lists must return
//! errors, never panic, loop or allocate beyond the file's size.
#![no_main]
use std::io::Write;

use libfuzzer_sys::fuzz_target;
use repo_format::ids::PackId;
use repo_format::pack::{read_payload, read_toc};

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::tempfile().expect("tempfile");
    f.write_all(data).expect("write");
    if let Ok(entries) = read_toc(&f, data.len() as u64, "fuzz") {
        for e in entries.iter().take(64) {
            if let Ok(payload) = read_payload(&f, PackId([0; 32]), e) {
                let origin = repo_format::blob::BlobOrigin {
                    pack: PackId([0; 32]),
                    offset: e.offset,
                };
                let _ = repo_format::blob::decode_blob(
                    e.id,
                    e.compression,
                    e.raw_len,
                    &payload,
                    origin,
                );
            }
        }
    }
});
