//! Shared body of the image-format targets: write the input to a file, open it as the
//! target's format, check its map, and read what it maps (bounded). Any error is fine;
//! a panic, a hang or a huge allocation is a bug.

use std::io::Write;

use engine::source::image::{open_image, OpenOptions};
use engine::source::detect::ImageFormat;

/// Guest bytes read per input, so a valid but huge image does not stall the fuzzer.
const READ_LIMIT: u64 = 16 << 20;

pub fn run(format: ImageFormat, data: &[u8]) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(data).expect("write");
    let opts = OpenOptions {
        direct: false,
        format: Some(format),
        qcow2_snapshot: None,
    };
    let Ok(mut image) = open_image(file.path(), &opts) else {
        return;
    };
    let _ = image.check_map();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    let mut budget = READ_LIMIT;
    while budget > 0 {
        let Ok(Some((s, e))) = image.next_data(pos) else {
            return;
        };
        assert!(
            s >= pos && e > s,
            "next_data went backwards: {pos} -> {s}..{e}"
        );
        let n = (e - s).min(buf.len() as u64).min(budget) as usize;
        if image.read_at(s, &mut buf[..n]).is_err() {
            return;
        }
        budget -= n as u64;
        pos = s + n as u64;
    }
}
