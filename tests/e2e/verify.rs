//! `dedisk verify` proves a repository restores, and names the damage when it does not.

use std::os::unix::fs::FileExt;

use crate::helpers::*;

/// A repository with two snapshots over 1 MiB packs, and its packs.
fn two_nights(dir: &std::path::Path) -> std::path::PathBuf {
    let repo = new_repo(dir, &["--pack-size", "1"]);
    let img = random_image(dir, "d.raw", 3_000_000, 5 << 20);
    ok(&[
        "backup",
        "--repo",
        p(&repo),
        "--name",
        "vm",
        &format!("sda={}", p(&img)),
    ]);
    sh(&format!(
        "head -c 500000 /dev/urandom | dd of='{}' bs=1 seek=4200000 conv=notrunc status=none",
        img.display()
    ));
    ok(&[
        "backup",
        "--repo",
        p(&repo),
        "--name",
        "vm",
        &format!("sda={}", p(&img)),
    ]);
    repo
}

#[test]
fn a_clean_repository_verifies_and_subsets_cover_every_pack() {
    let t = tempfile::tempdir().unwrap();
    let repo = two_nights(t.path());
    let full = ok_json(&["verify", "--repo", p(&repo), "--read-data"]);
    let r = &full["report"];
    assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["snapshots"], 2);
    assert_eq!(r["packs_read"], r["packs"]);
    assert!(r["packs"].as_u64().unwrap() >= 3);
    let slices: u64 = (1..=3)
        .map(|k| {
            let s = ok_json(&[
                "verify",
                "--repo",
                p(&repo),
                "--read-data",
                "--subset",
                &format!("{k}/3"),
            ]);
            s["report"]["packs_read"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(
        slices,
        r["packs"].as_u64().unwrap(),
        "slices 1/3..3/3 read every pack once"
    );
    fails(
        &[
            "verify",
            "--repo",
            p(&repo),
            "--read-data",
            "--subset",
            "0/3",
        ],
        1,
        "invalid subset",
    );
}

#[test]
fn flipped_bytes_and_lost_packs_are_named_by_snapshot_disk_and_range() {
    let t = tempfile::tempdir().unwrap();
    let repo = two_nights(t.path());
    let packs = pack_files(&repo);
    let target = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, 300_000).unwrap();
    f.write_all_at(&[b[0] ^ 1], 300_000).unwrap();
    drop(f);

    // Structure alone does not read chunk data: the flip is invisible to it.
    ok(&["verify", "--repo", p(&repo)]);
    let err = fails(&["verify", "--repo", p(&repo), "--read-data"], 1, "damaged");
    let out = run(&["verify", "--repo", p(&repo), "--read-data"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("disk sda bytes ") && text.contains("damaged chunk data"),
        "{text}{err}"
    );
    assert!(text.contains("does not match its name"), "{text}");
    // Both snapshots share the damaged chunk unless it changed on night 2; at least one is named.
    assert!(text.matches("damaged: snapshot").count() >= 1, "{text}");

    // A deleted pack: its chunks are missing from every snapshot that used them.
    std::fs::remove_file(target).unwrap();
    let out = run(&["verify", "--repo", p(&repo)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("chunk missing from the repository"), "{text}");
}
