//! Arbitrary bytes as a disk's first sectors: the MBR/GPT partition table reader used by
//! the mount must return partitions inside the disk, never panic or loop (issue 11).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    // The disk may claim to be far larger than the bytes given: the rest reads as zeros.
    let extra = u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 44);
    let disk = &data[8..];
    let size = disk.len() as u64 + extra;
    let mut reads = 0u32;
    let mut read = |offset: u64, len: usize| -> Option<Vec<u8>> {
        reads += 1;
        assert!(reads < 100_000, "partition table reader keeps reading");
        assert!(len <= 16 << 20, "a read of {len} bytes");
        let mut out = vec![0u8; len];
        if offset < disk.len() as u64 {
            let from = &disk[offset as usize..];
            let n = from.len().min(len);
            out[..n].copy_from_slice(&from[..n]);
        }
        Some(out)
    };
    for p in engine::access::partitions::find(size, &mut read) {
        assert!(
            p.offset.checked_add(p.len).is_some_and(|end| end <= size),
            "{p:?} beyond {size}"
        );
    }
});
