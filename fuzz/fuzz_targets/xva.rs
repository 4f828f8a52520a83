//! An XVA export from arbitrary bytes: parse the tar and ova.xml, read every disk.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let reader = Box::new(std::io::Cursor::new(data.to_vec()));
    let Ok(export) = engine::source::xva::open_xva(reader, "fuzz.xva") else {
        return;
    };
    let mut buf = vec![0u8; 1 << 20];
    for mut disk in export.disks {
        let mut pos = 0;
        while let Ok(Some((s, e))) = disk.source.next_data(pos) {
            assert!(s >= pos && e > s, "next_data went backwards");
            let n = (e - s).min(buf.len() as u64) as usize;
            if disk.source.read_at(s, &mut buf[..n]).is_err() {
                break;
            }
            pos = s + n as u64;
        }
    }
});
