//! A dynamic VHD read as a stream from arbitrary bytes: tables, then every block in order.
#![no_main]
use engine::source::DiskSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let reader = std::io::Cursor::new(data.to_vec());
    let Ok(mut disk) = engine::source::vhd_stream::VhdStream::open(reader, "fuzz.vhd") else {
        return;
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while let Ok(Some((s, e))) = disk.next_data(pos) {
        assert!(s >= pos && e > s, "next_data went backwards");
        let n = (e - s).min(buf.len() as u64) as usize;
        if disk.read_at(s, &mut buf[..n]).is_err() {
            break;
        }
        pos = s + n as u64;
    }
});
