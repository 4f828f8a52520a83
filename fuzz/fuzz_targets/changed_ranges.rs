//! A `--changed-ranges` file of any bytes (offset lines, `thin_delta` XML, a XenServer CBT
//! bitmap): an error or ranges that fit the disk once checked, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ranges) = engine::backup::changes::parse_ranges(text) {
        let _ = engine::backup::changes::ChangeMap::new(ranges, 1 << 40);
    }
});
