//! A second VM installed from the same files on another filesystem (issue 19): XFS
//! made by `mkfs.xfs` and filled through the kernel in another order, against ext4 made
//! by `mkfs.ext4 -d`. The files sit at other offsets and next to other neighbours, so
//! only cuts where files start let the second disk reuse the first one's chunks.

use std::path::Path;

use crate::helpers::*;

/// Files of 1 KiB to 160 KiB of distinct, incompressible bytes, as a userland holds.
fn make_files(dir: &Path) {
    sh(&format!(
        "set -e; mkdir -p '{d}'; for s in $(seq 1 260); do
           n=$(( (s * 7919 % 160) * 1024 + s * 13 % 1000 + 1024 ))
           head -c $n /dev/urandom > '{d}'/f$s.bin
         done",
        d = dir.display()
    ));
}

/// What backing up `second` adds to a repository holding `first`, over what it takes
/// alone, for a repository made with `init_flags`; checks the second disk restores.
fn adds_over_alone(dir: &Path, tag: &str, init_flags: &[&str], first: &Path, second: &Path) -> f64 {
    let stored = |repo: &Path, disk: &Path| {
        let v = ok_json(&[
            "--repo",
            p(repo),
            "backup",
            "--name",
            "vm2",
            &format!("vda={}", p(disk)),
        ]);
        v["disks"][0]["stats"]["new_stored_bytes"].as_u64().unwrap()
    };
    for sub in ["alone", "both"] {
        std::fs::create_dir_all(dir.join(format!("{tag}-{sub}"))).unwrap();
    }
    let alone_repo = new_repo(&dir.join(format!("{tag}-alone")), init_flags);
    let alone = stored(&alone_repo, second);
    let repo = new_repo(&dir.join(format!("{tag}-both")), init_flags);
    ok_json(&[
        "--repo",
        p(&repo),
        "backup",
        "--name",
        "vm1",
        &format!("vda={}", p(first)),
    ]);
    let adds = stored(&repo, second);
    let out = dir.join(format!("{tag}-restored.raw"));
    restore(&repo, "vm2@latest", &out);
    assert_eq!(sha256(&out), sha256(second), "{tag}: the XFS disk restores");
    std::fs::remove_file(out).unwrap();
    adds as f64 / alone as f64
}

#[test]
fn the_same_files_on_xfs_reuse_the_chunks_of_ext4() {
    // Under CI the tools are required (`have` fails the test without them).
    if !(is_root() && have_image_tools() && have("mkfs.xfs") && have("shuf")) {
        eprintln!("SKIPPED: needs root, mkfs.xfs and shuf");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let files = d.join("files");
    make_files(&files);
    let ext4 = d.join("ext4.raw");
    let xfs = d.join("xfs.raw");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // XFS's smallest filesystem is 300 MiB; the image stays sparse.
    sh(&format!(
        "set -e; truncate -s 48M '{e}'; mkfs.ext4 -q -F -b 4096 -d '{f}' '{e}'
         truncate -s 320M '{x}'; mkfs.xfs -q -f '{x}'; mount -o loop '{x}' '{m}'
         ls '{f}' | shuf | while read -r n; do cp '{f}'/\"$n\" '{m}'/; done
         umount '{m}'",
        e = ext4.display(),
        f = files.display(),
        x = xfs.display(),
        m = mnt.display()
    ));
    let with = adds_over_alone(d, "starts", &[], &ext4, &xfs);
    let without = adds_over_alone(d, "no-starts", &["--file-start-tail", "0"], &ext4, &xfs);
    eprintln!(
        "XFS adds {:.1} % with file starts, {:.1} % without",
        with * 100.0,
        without * 100.0
    );
    // Without file starts every chunk holding the end of one file and the start of the
    // next is new; with them, what remains is XFS's metadata and files whose slack is
    // shorter than 256 bytes.
    assert!(
        with < 0.12,
        "with file starts XFS adds {:.1} %",
        with * 100.0
    );
    assert!(
        without > 3.0 * with,
        "without file starts XFS adds {:.1} %",
        without * 100.0
    );
}

#[test]
fn init_refuses_cuts_at_file_starts_it_cannot_make() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let r = p(&repo);
    let e = fails(
        &[
            "init",
            "--encryption",
            "none",
            "--chunker",
            "fastcdc",
            "--file-start-tail",
            "256",
            r,
        ],
        1,
        "file_start_tail_bytes is for aligned-cdc, not fastcdc",
    );
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    fails(
        &[
            "init",
            "--encryption",
            "none",
            "--file-start-tail",
            "100",
            r,
        ],
        1,
        "must be 0 or a multiple of 8 in 8..=2048",
    );
    assert!(!repo.exists(), "nothing is created");
    // fastcdc without the flag makes a repository without the field.
    ok(&["init", "--encryption", "none", "--chunker", "fastcdc", r]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("config.json")).unwrap()).unwrap();
    assert!(
        config["chunker"].get("file_start_tail_bytes").is_none(),
        "{config}"
    );
}
