//! `dedisk verify` proves a repository restores, and names the damage when it does not.

use std::os::unix::fs::FileExt;

use crate::helpers::*;

/// A repository with two snapshots over 1 MiB packs, and its packs.
fn two_nights(dir: &std::path::Path) -> std::path::PathBuf {
    let repo = new_repo(dir, &["--pack-size", "1"]);
    let img = random_image(dir, "d.raw", 3_000_000, 5 << 20);
    backup(&repo, "vm", &[&format!("sda={}", p(&img))]);
    sh(&format!(
        "head -c 500000 /dev/urandom | dd of='{}' bs=1 seek=4200000 conv=notrunc status=none",
        img.display()
    ));
    backup(&repo, "vm", &[&format!("sda={}", p(&img))]);
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
    // The middle of the largest pack: inside a chunk, however the writer spread them.
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 1], at).unwrap();
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

/// Nights share most of their manifest trees, and verify walks a shared subtree once
/// (issue 19): what it counts and names must still be what every night references.
#[test]
fn damage_under_a_subtree_nights_share_is_named_in_every_night() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // 8 KiB chunks: 40 MiB of data is 5,120 chunk references, several manifest leaves.
    let repo = new_repo(
        dir,
        &[
            "--chunker",
            "fixed",
            "--chunk-min",
            "4",
            "--chunk-avg",
            "8",
            "--chunk-max",
            "16",
            "--pack-size",
            "1",
        ],
    );
    let img = random_image(dir, "d.raw", 40 << 20, 48 << 20);
    let disk = format!("sda={}", p(&img));
    let first = backup_id(&repo, "vm", &[&disk]);
    let second = backup_id(&repo, "vm", &[&disk]); // the same tree, root and all
    sh(&format!(
        "head -c 1048576 /dev/urandom | dd of='{}' bs=1M seek=39 conv=notrunc status=none",
        img.display()
    ));
    let third = backup_id(&repo, "vm", &[&disk]); // the same tree but its last leaves

    let clean = ok_json(&["verify", "--repo", p(&repo)]);
    assert_eq!(clean["report"]["chunk_refs"], 3 * 5120, "{clean}");
    assert_eq!(clean["report"]["problem_count"], 0, "{clean}");

    // A lost pack of night 1's data: its chunks are missing in every night that
    // references them. Packs are named by their random content; some also hold
    // manifest nodes (losing one makes whole manifests unreadable: another test's
    // matter) or only night 3's new chunks, so the packs are tried in turn until one
    // holds night 1's data only.
    let night_one_data = |v: &serde_json::Value| {
        v["report"]["chunk_refs"] == 3 * 5120
            && v["report"]["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["snapshot"] == first.as_str())
    };
    let verify_without = |pack: &std::path::Path| -> serde_json::Value {
        let aside = dir.join("pack.aside"); // outside the repository
        std::fs::rename(pack, &aside).unwrap();
        let out = run(&["--json", "verify", "--repo", p(&repo)]);
        assert_eq!(out.status.code(), Some(1));
        // The report, then the error line.
        let text = String::from_utf8_lossy(&out.stdout);
        let report = text.lines().find(|l| l.starts_with("{\"report\"")).unwrap();
        let v: serde_json::Value = serde_json::from_str(report).unwrap();
        if !night_one_data(&v) {
            std::fs::rename(&aside, pack).unwrap();
        }
        v
    };
    let v = pack_files(&repo)
        .iter()
        .map(|pack| verify_without(pack))
        .find(|v| night_one_data(v))
        .expect("a pack holding night 1's data only");
    let r = &v["report"];
    assert_eq!(r["chunk_refs"], 3 * 5120, "{r}");
    let ranges = |snap: &str, below: u64| -> Vec<(u64, u64)> {
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["snapshot"] == snap && p["what"] == "chunk missing from the repository")
            .map(|p| {
                (
                    p["range"][0].as_u64().unwrap(),
                    p["range"][1].as_u64().unwrap(),
                )
            })
            .filter(|(a, _)| *a < below)
            .collect()
    };
    let all = ranges(&first, u64::MAX);
    assert!(!all.is_empty(), "{r}");
    assert_eq!(ranges(&second, u64::MAX), all, "{r}");
    assert_eq!(ranges(&third, 39 << 20), ranges(&first, 39 << 20), "{r}");
    assert_eq!(
        r["problem_count"].as_u64().unwrap(),
        r["problems"].as_array().unwrap().len() as u64
    );
}

#[test]
fn forget_applies_the_policy_per_vm_and_dry_run_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let img = random_image(dir, "d.raw", 100_000, 1 << 20);
    for vm in ["a", "a", "a", "b", "b"] {
        backup(&repo, vm, &[p(&img)]);
    }
    let tagged = ok_json(&[
        "backup",
        "--repo",
        p(&repo),
        "--name",
        "a",
        "--tag",
        "golden",
        p(&img),
    ]);
    backup(&repo, "a", &[p(&img)]);
    fails(&["forget", "--repo", p(&repo)], 1, "no keep rule");
    fails(
        &["forget", "--repo", p(&repo), "--keep-within", "7x"],
        1,
        "invalid duration",
    );

    let plan = ok_json(&[
        "forget",
        "--repo",
        p(&repo),
        "--keep-last",
        "1",
        "--keep-tag",
        "golden",
        "--dry-run",
    ]);
    let decisions = plan["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 7);
    let kept: Vec<_> = decisions.iter().filter(|d| d["keep"] == true).collect();
    assert_eq!(kept.len(), 3, "a: newest + golden, b: newest: {plan}");
    assert!(kept
        .iter()
        .any(|d| d["id"] == tagged["snapshot"] && d["reasons"][0] == "tag golden"));
    assert_eq!(snapshot_files(&repo).len(), 7, "a dry run deletes nothing");

    let text = ok(&[
        "forget",
        "--repo",
        p(&repo),
        "--keep-last",
        "1",
        "--keep-tag",
        "golden",
    ]);
    assert!(text.contains("forgot 4 of 7"), "{text}");
    assert_eq!(snapshot_files(&repo).len(), 3);
    // What is left still verifies and restores.
    ok(&["verify", "--repo", p(&repo), "--read-data"]);
    let out = dir.join("b.raw");
    restore(&repo, "b@latest", &out);
    assert_eq!(sha256(&out), sha256(&img));
}
