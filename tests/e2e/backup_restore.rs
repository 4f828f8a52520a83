//! The core promise: every night is an incremental, every snapshot restores byte-identical.

use crate::helpers::*;

#[test]
fn ext4_disks_changed_in_place_restore_identical_every_night() {
    if !have_image_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let (gpt, gpt_part) = make_disk(dir, "vda", "gpt", 1);
    let (mbr, _) = make_disk(dir, "vdb", "dos", 2);
    let xml = dir.join("vm1.xml");
    std::fs::write(&xml, "<domain type='kvm'><name>vm1</name></domain>\n").unwrap();

    // Night 1: two disks and the domain XML.
    let vda = format!("vda={}", p(&gpt));
    let vdb = format!("vdb={}", p(&mbr));
    let night1 = ok_json(&[
        "backup",
        "--repo",
        p(&repo),
        "--name",
        "vm1",
        &vda,
        &vdb,
        "--meta",
        p(&xml),
    ]);
    let mut expected = vec![(
        night1["snapshot"].as_str().unwrap().to_string(),
        sha256(&gpt),
        sha256(&mbr),
    )];
    let d0 = &night1["disks"][0];
    assert_eq!(d0["size_bytes"], 64 * 1024 * 1024 + 12345);
    assert!(
        d0["stats"]["hole_bytes"].as_u64().unwrap() > 10 << 20,
        "zeros must become holes: {d0}"
    );

    // Nights 2 and 3: the filesystem changes in place; the second disk does not change.
    for round in 2..=3 {
        change_fs(dir, &gpt_part, round);
        write_partition(&gpt, &gpt_part);
        let night = ok_json(&[
            "backup",
            "--repo",
            p(&repo),
            "--name",
            "vm1",
            "--tag",
            "nightly",
            &vda,
            &vdb,
        ]);
        let disks = night["disks"].as_array().unwrap();
        let (changed, unchanged) = (&disks[0]["stats"], &disks[1]["stats"]);
        assert_eq!(
            unchanged["new_chunks"], 0,
            "an unchanged disk stores nothing: {unchanged}"
        );
        let new = changed["new_bytes"].as_u64().unwrap();
        let data = changed["data_bytes"].as_u64().unwrap();
        assert!(
            new > 0 && new < data / 3,
            "incremental stored {new} of {data} bytes"
        );
        expected.push((
            night["snapshot"].as_str().unwrap().to_string(),
            sha256(&gpt),
            sha256(&mbr),
        ));
    }

    // Every night restores byte-identical, sparse, and the metadata comes back too.
    for (i, (snap, vda_hash, vdb_hash)) in expected.iter().enumerate() {
        let out = dir.join(format!("restore{i}"));
        restore(&repo, &snap[..12], &out);
        assert_eq!(
            &sha256(&out.join("vda.raw")),
            vda_hash,
            "night {} vda",
            i + 1
        );
        assert_eq!(
            &sha256(&out.join("vdb.raw")),
            vdb_hash,
            "night {} vdb",
            i + 1
        );
        assert!(
            allocated(&out.join("vda.raw")) < 50 << 20,
            "restored disk must stay sparse"
        );
        if i == 0 {
            assert_eq!(
                std::fs::read(out.join("vm1.xml")).unwrap(),
                std::fs::read(&xml).unwrap()
            );
        }
    }
    // One disk by label, to a file.
    let one = dir.join("one.raw");
    restore(&repo, "vm1@latest:vda", &one);
    assert_eq!(sha256(&one), expected[2].1);

    // The listing shows all three, with tags.
    let list = ok_json(&["snapshots", "--repo", p(&repo), "--name", "vm1"]);
    let snaps = list["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 3);
    assert_eq!(snaps[2]["tags"][0], "nightly");
    let stats = ok_json(&["stats", "--repo", p(&repo)]);
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 2.0, "{stats}");
}

#[test]
fn stdin_stream_and_file_give_the_same_chunks_whatever_the_threads() {
    if !have_image_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &[]);
    let (disk, _) = make_disk(dir, "vda", "gpt", 7);
    let vda = format!("vda={}", p(&disk));
    backup(&repo, "a", &["--workers", "1", &vda]);
    backup(&repo, "b", &["--workers", "4", "--no-direct", &vda]);
    let piped = dedisk()
        .args([
            "backup",
            "--repo",
            p(&repo),
            "--name",
            "c",
            "--json",
            "vda=-",
        ])
        .stdin(std::fs::File::open(&disk).unwrap())
        .output()
        .unwrap();
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    // Progress lines come first; the summary is the last line.
    let summary: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&piped.stdout)
            .lines()
            .last()
            .expect("a summary"),
    )
    .unwrap();
    assert_eq!(summary["disks"][0]["stats"]["new_chunks"], 0);

    let roots: Vec<_> = snapshot_files(&repo)
        .iter()
        .map(|s| {
            s["disks"][0]["manifest"]["root"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(roots.len(), 3);
    assert!(
        roots.iter().all(|r| *r == roots[0]),
        "same disk, same chunk list: {roots:?}"
    );
    let out = dir.join("out.raw");
    restore(&repo, "c@latest", &out);
    assert_eq!(sha256(&out), sha256(&disk));
}

#[test]
fn qemu_made_image_round_trips_and_qemu_agrees() {
    if !(have("qemu-img") && have("qemu-io")) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo = new_repo(dir, &["--chunker", "fastcdc"]);
    let img = dir.join("vm.raw");
    sh(&format!(
        "set -e; qemu-img create -q -f raw '{i}' 100M
         qemu-io -f raw -c 'write -P 0xab 1M 3M' -c 'write -P 0x00 8M 1M' -c 'write -P 0x11 99M 1M' -c 'write -z 40M 4M' '{i}' >/dev/null",
        i = img.display()
    ));
    backup(&repo, "q", &[p(&img)]);
    let out = dir.join("restored.raw");
    restore(&repo, "latest", &out);
    sh(&format!(
        "qemu-img compare -q -f raw -F raw '{}' '{}'",
        img.display(),
        out.display()
    ));
    // qemu sees the restored image's holes as holes.
    let map = sh(&format!(
        "qemu-img map --output=json -f raw '{}'",
        out.display()
    ));
    assert!(map.contains("\"data\": false"), "{map}");
}

#[test]
fn a_missing_index_is_rebuilt_from_the_packs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // Unencrypted: an encrypted repository's index lives in the host's cache, whose
    // loss is routine and not warned about (reliability.rs covers that one).
    let repo = new_repo(dir, &["--encryption", "none"]);
    let img = random_image(dir, "d.raw", 3_000_000, 9 << 20);
    backup(&repo, "x", &[p(&img)]);
    for f in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        let _ = std::fs::remove_file(repo.join(f));
    }
    // Exit code 3: it worked, with a warning that the index was rebuilt.
    let out = run(&["snapshots", "--repo", p(&repo)]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("rebuilt"));
    let restored = dir.join("r.raw");
    restore(&repo, "latest", &restored);
    assert_eq!(sha256(&restored), sha256(&img));
    ok(&["repair", "--repo", p(&repo), "index"]);
    let again = ok_json(&["backup", "--repo", p(&repo), "--name", "x", p(&img)]);
    assert_eq!(
        again["disks"][0]["stats"]["new_chunks"], 0,
        "the rebuilt index still dedups"
    );
}

/// A format-version-1 repository made by `tests/fixtures/make-repo-v1.sh` and frozen:
/// every later dedisk must open it (without its index, which is a cache) and restore both
/// snapshots to the very bytes they held.
#[test]
fn frozen_v1_repository_still_opens_and_restores() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    sh(&format!(
        "cp -r '{}/../tests/fixtures/repo-v1' '{}'",
        env!("CARGO_MANIFEST_DIR"),
        repo.display()
    ));
    let expected = [
        (
            "b3d30523",
            "5698aa2f612d3f7354b56695a22459f7693a6ec7b0c7ca3331fa8215884446c6",
        ),
        (
            "4c29b6ea",
            "e1f16e7d089af6c911b32422aef76a57bad231da640a6e343e7061762229ff4d",
        ),
    ];
    for (snap, hash) in expected {
        let out = t.path().join(format!("{snap}.raw"));
        let r = run(&["restore", "--repo", p(&repo), snap, p(&out)]);
        // Code 3 the first time: the index is rebuilt from the packs.
        assert!(
            matches!(r.status.code(), Some(0 | 3)),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(sha256(&out), hash, "snapshot {snap}");
    }
    let list = ok_json(&["snapshots", "--repo", p(&repo)]);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2);
}
