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
    // The middle of the largest pack: inside a chunk, however the writer spread them.
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
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
    backup(&repo, "vm", &[p(&img)]);
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

#[test]
fn repair_snapshots_keeps_what_is_readable_and_records_what_was_lost() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let repo = new_repo(d, &["--pack-size", "1"]);
    let disk = random_image(d, "disk.raw", 6 << 20, 8 << 20);
    backup(&repo, "vm", &[&format!("vda={}", disk.display())]);
    // Lose one pack, corrupt a byte of another: two of the first packs written, which
    // hold chunks only (the manifest nodes go into the last one).
    let mut packs = pack_files(&repo);
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    assert!(packs.len() >= 4, "{} packs", packs.len());
    std::fs::remove_file(&packs[0]).unwrap();
    let victim = &packs[1];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();
    let out = run(&["--repo", p(&repo), "verify", "--read-data"]);
    assert_eq!(out.status.code(), Some(1));

    // A dry run changes nothing; the real one rewrites the snapshot.
    let before = snapshot_files(&repo);
    ok(&[
        "--repo",
        p(&repo),
        "repair",
        "snapshots",
        "--read-data",
        "--dry-run",
    ]);
    assert_eq!(snapshot_files(&repo), before);
    let r = ok_json(&["--repo", p(&repo), "repair", "snapshots", "--read-data"]);
    let lost = r["report"]["repaired"][0]["lost"]
        .as_array()
        .unwrap()
        .clone();
    assert!(lost.len() >= 2, "a missing pack and a corrupt chunk: {r}");
    let snaps = snapshot_files(&repo);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["snapshot_version"], 2);
    assert!(snaps[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "repaired"));
    // The snapshot is whole again; the damaged pack still is not, until a prune drops
    // the chunk nothing references any more.
    ok(&["--repo", p(&repo), "verify"]);
    ok(&["--repo", p(&repo), "prune", "-q", "--max-unused", "0"]);
    ok(&["--repo", p(&repo), "verify", "--read-data"]);

    // The restore finishes with a warning per lost range (exit 3); everything else is
    // the original disk, and the lost ranges read as zeros.
    let got = d.join("got.raw");
    let out = run(&["--repo", p(&repo), "restore", "-q", "latest:vda", p(&got)]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lost to damage"), "{stderr}");
    let mut want = std::fs::read(&disk).unwrap();
    for l in &lost {
        let (off, len) = (
            l[1]["offset"].as_u64().unwrap() as usize,
            l[1]["len"].as_u64().unwrap() as usize,
        );
        want[off..off + len].fill(0);
    }
    assert!(
        std::fs::read(&got).unwrap() == want,
        "restored bytes differ outside the lost ranges"
    );
}
