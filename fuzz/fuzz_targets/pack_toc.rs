//! A pack file of arbitrary bytes, as a version 1 pack and as a version 2 (sealed) one:
//! reading its TOC and every blob it lists must return errors, never panic, loop or
//! allocate beyond the file's size.
#![no_main]
use std::io::Write;

use libfuzzer_sys::fuzz_target;
use repo_format::blob::BlobCodec;
use repo_format::crypto::{MasterKey, RepoKeys};
use repo_format::ids::PackId;
use repo_format::pack::{read_payload, read_toc};

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::tempfile().expect("tempfile");
    f.write_all(data).expect("write");
    let sealed = BlobCodec::sealed(std::sync::Arc::new(RepoKeys::new(MasterKey::from_bytes(
        [5; 32],
    ))));
    for codec in [BlobCodec::plain(), sealed] {
        let Ok(entries) = read_toc(&f, data.len() as u64, "fuzz", &codec) else {
            continue;
        };
        let mut decoder = repo_format::blob::BlobDecoder::new(codec.clone()).expect("decoder");
        for e in entries.iter().take(64) {
            if let Ok(payload) = read_payload(&f, PackId([0; 32]), e, &codec) {
                let origin = repo_format::blob::BlobOrigin {
                    pack: PackId([0; 32]),
                    offset: e.offset,
                };
                let _ = decoder.decode(e.id, e.kind, e.compression, e.raw_len, payload, origin);
            }
        }
    }
});
