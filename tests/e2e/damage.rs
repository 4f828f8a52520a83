//! Damage is found and named, never restored silently.

use std::os::unix::fs::FileExt;

use crate::helpers::*;

#[test]
fn a_flipped_pack_byte_is_reported_with_snapshot_disk_offset_chunk_and_pack() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let img = random_image(dir, "d.raw", 2_000_000, 2_000_000);
    let done = ok_json(&[
        "backup",
        "--repo",
        p(&repo),
        "--name",
        "vm",
        &format!("sda={}", p(&img)),
    ]);
    let snap = done["snapshot"].as_str().unwrap()[..8].to_string();

    let pack = pack_files(&repo)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let pack_name = pack.file_stem().unwrap().to_string_lossy()[..8].to_string();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, 1_000_000).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], 1_000_000).unwrap();
    drop(f);

    let target = dir.join("out.raw");
    let err = fails(
        &["restore", "--repo", p(&repo), "latest", p(&target)],
        1,
        "damaged",
    );
    for needle in [
        snap.as_str(),
        "disk sda",
        "bytes ",
        "chunk ",
        pack_name.as_str(),
    ] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
    assert!(
        !target.exists(),
        "a damaged restore must not appear under the requested name"
    );
}

#[test]
fn a_truncated_pack_is_reported_not_restored_silently() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // 1 MiB packs: the largest is a full pack of data chunks; the last, partial pack
    // holds the manifest nodes (whose loss would fail the restore as a whole).
    let repo = new_repo(dir, &["--pack-size", "1"]);
    let img = random_image(dir, "d.raw", 3_500_000, 4 << 20);
    ok(&["backup", "--repo", p(&repo), "--name", "vm", p(&img)]);
    assert!(pack_files(&repo).len() >= 3);
    let pack = pack_files(&repo)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = fails(
        &[
            "restore",
            "--repo",
            p(&repo),
            "latest",
            p(&dir.join("out.raw")),
        ],
        1,
        "damaged",
    );
    assert!(err.contains("truncated"), "{err}");
}
