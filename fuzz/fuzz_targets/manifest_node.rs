//! Arbitrary bytes as a manifest node: decode, and re-encode what decodes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use repo_format::{BlobId, Node};

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = Node::decode(BlobId([0; 32]), data) {
        assert_eq!(
            node.encode(),
            data,
            "a decoded node re-encodes to the same bytes"
        );
    }
});
