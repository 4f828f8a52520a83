//! Backups from a change map (issue 16): QEMU dirty bitmaps exported by a real
//! `qemu-nbd`, writes made through `qemu-io`, and `--changed-ranges` files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::helpers::*;

/// A `qemu-nbd` exporting an image read-only on a Unix socket, with a dirty bitmap.
struct QemuNbd {
    child: Child,
    uri: String,
}

impl QemuNbd {
    fn start(image: &Path, format: &str, bitmap: Option<&str>) -> QemuNbd {
        let sock = image.with_extension("sock");
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-r", "-t", "-x", "vda", "-f", format, "-k", p(&sock)]);
        if let Some(b) = bitmap {
            cmd.args(["-B", b]);
        }
        let child = cmd.arg(image).spawn().expect("qemu-nbd starts");
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(sock.exists(), "qemu-nbd made no socket");
        QemuNbd {
            child,
            uri: format!("vda=nbd+unix:///vda?socket={}", sock.display()),
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_qemu() -> bool {
    have("qemu-nbd") && have("qemu-io") && have("qemu-img")
}

/// A 64 MiB qcow2 holding 40 MiB of random data, backed up in full as VM `vm`, with
/// bitmap `b0` started right after.
fn disk_with_bitmap(dir: &Path, repo: &Path) -> PathBuf {
    let raw = random_image(dir, "seed.raw", 40 << 20, 64 << 20);
    let img = dir.join("vda.qcow2");
    sh(&format!(
        "qemu-img convert -f raw -O qcow2 '{}' '{}'",
        raw.display(),
        img.display()
    ));
    std::fs::remove_file(raw).unwrap();
    backup(repo, "vm", &[&format!("vda={}", img.display())]);
    sh(&format!("qemu-img bitmap --add '{}' b0", img.display()));
    img
}

/// Guest-like writes through QEMU: `(offset, len, pattern)`.
fn qemu_write(img: &Path, writes: &[(u64, u64, u8)]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "qcow2"]);
    for (off, len, pat) in writes {
        cmd.args(["-c", &format!("write -P {pat} {off} {len}")]);
    }
    let out = cmd.arg(img).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image's virtual disk as raw bytes, by qemu.
fn qemu_raw(img: &Path) -> String {
    let raw = img.with_extension("check.raw");
    sh(&format!(
        "qemu-img convert -O raw '{}' '{}'",
        img.display(),
        raw.display()
    ));
    let h = sha256(&raw);
    std::fs::remove_file(raw).unwrap();
    h
}

/// Backs up through the export with `extra` flags; returns the summary's one disk.
fn night(repo: &Path, uri: &str, extra: &[&str]) -> serde_json::Value {
    night_of(repo, "vm", uri, extra)
}

/// [`night`] for VM `name`.
fn night_of(repo: &Path, name: &str, uri: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--repo", p(repo), "backup", "--name", name];
    args.extend_from_slice(extra);
    args.push(uri);
    let s = ok_json(&args);
    assert_eq!(s["type"], "summary", "{s}");
    let mut d = s["disks"][0].clone();
    d["snapshot"] = s["snapshot"].clone();
    d
}

fn restored_sha(dir: &Path, repo: &Path, snapshot: &str) -> String {
    let out = dir.join("restored.raw");
    let _ = std::fs::remove_file(&out);
    restore(repo, snapshot, &out);
    let h = sha256(&out);
    std::fs::remove_file(out).unwrap();
    h
}

/// The manifest root a snapshot records for its one disk.
fn manifest_root(repo: &Path, snapshot: &str) -> serde_json::Value {
    let all = ok_json(&["--repo", p(repo), "snapshots", "--full"]);
    let s = all["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_str().unwrap().starts_with(snapshot))
        .unwrap_or_else(|| panic!("no snapshot {snapshot}"));
    s["record"]["disks"][0]["manifest"].clone()
}

#[test]
fn dirty_bitmap_nights_read_what_changed_and_write_the_full_reads_manifest() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), &[]);
    let img = disk_with_bitmap(dir.path(), &repo);
    let nights: [&[(u64, u64, u8)]; 3] = [
        &[
            (1 << 20, 512 << 10, 1),
            (20 << 20, 1 << 20, 2),
            (50 << 20, 256 << 10, 3),
        ],
        &[(3 << 20, 4096, 4), (33 << 20, 2 << 20, 5)],
        &[
            (0, 64 << 10, 6),
            ((64 << 20) - (128 << 10), 128 << 10, 7),
            (10 << 20, 700 << 10, 8),
        ],
    ];
    for (n, writes) in nights.iter().enumerate() {
        qemu_write(&img, writes);
        let nbd = QemuNbd::start(&img, "qcow2", Some("b0"));
        let d = night(
            &repo,
            &nbd.uri,
            &["--base", "latest", "--dirty-bitmap", "b0"],
        );
        let c = &d["changes"];
        assert!(c["base"].is_string(), "night {n}: {d}");
        assert!(c.get("full_read").is_none(), "night {n}: {d}");
        let changed = c["changed_bytes"].as_u64().unwrap();
        let written: u64 = writes.iter().map(|w| w.1).sum();
        // The bitmap's grain is 64 KiB: it may round each write out to it.
        assert!(
            changed >= written && changed <= written + writes.len() as u64 * (128 << 10),
            "night {n}: {changed} changed for {written} written"
        );
        let read =
            d["stats"]["read_bytes"].as_u64().unwrap() - c["verified_bytes"].as_u64().unwrap();
        assert!(
            read <= 4 * changed,
            "night {n}: read {read} for {changed} changed"
        );
        // The same manifest a full read makes (kept under another name, so the next
        // night's base stays the incremental one), and the disk as QEMU sees it.
        let full = night_of(&repo, "full", &nbd.uri, &[]);
        assert_eq!(full["changes"], serde_json::Value::Null);
        drop(nbd);
        assert_eq!(
            manifest_root(&repo, d["snapshot"].as_str().unwrap()),
            manifest_root(&repo, full["snapshot"].as_str().unwrap()),
            "night {n}"
        );
        assert_eq!(
            restored_sha(dir.path(), &repo, d["snapshot"].as_str().unwrap()),
            qemu_raw(&img),
            "night {n}"
        );
        sh(&format!("qemu-img bitmap --clear '{}' b0", img.display()));
    }
}

#[test]
fn a_write_hidden_from_the_bitmap_is_caught_within_the_rotation() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), &[]);
    let img = disk_with_bitmap(dir.path(), &repo);
    // A write the bitmap does not see (as after a crash or a migration that lost it),
    // then one it does.
    sh(&format!("qemu-img bitmap --disable '{}' b0", img.display()));
    qemu_write(&img, &[(30 << 20, 8192, 9)]);
    sh(&format!("qemu-img bitmap --enable '{}' b0", img.display()));
    qemu_write(&img, &[(2 << 20, 65536, 10)]);
    let want = qemu_raw(&img);
    // Half the disk re-read each night: the lie is found within two nights.
    let mut caught = None;
    for n in 0..2 {
        let nbd = QemuNbd::start(&img, "qcow2", Some("b0"));
        let mut args = vec!["--json", "--repo", p(&repo), "backup", "--name", "vm"];
        args.extend_from_slice(&[
            "--base",
            "latest",
            "--dirty-bitmap",
            "b0",
            "--verify-unchanged",
            "50",
            &nbd.uri,
        ]);
        let out = run(&args);
        drop(nbd);
        sh(&format!("qemu-img bitmap --clear '{}' b0", img.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(3) {
            assert!(
                stderr.contains("missed") && stderr.contains("disk vda"),
                "{stderr}"
            );
            let summary = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|v| v["type"] == "summary")
                .unwrap();
            let c = &summary["disks"][0]["changes"];
            assert_eq!(c["map_lied"], true, "{c}");
            assert!(
                c["full_read"].as_str().unwrap().contains("missed a write"),
                "{c}"
            );
            assert_eq!(
                restored_sha(dir.path(), &repo, summary["snapshot"].as_str().unwrap()),
                want
            );
            caught = Some(n);
            break;
        }
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }
    assert!(caught.is_some(), "two nights at 50% re-read every byte");
}

#[test]
fn untrustworthy_maps_read_the_disk_in_full_and_say_why() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), &[]);
    let img = disk_with_bitmap(dir.path(), &repo);
    let first = ok_json(&["--repo", p(&repo), "snapshots"]);
    let first_id = first["snapshots"][0]["id"].as_str().map(str::to_string);
    qemu_write(&img, &[(5 << 20, 65536, 1)]);
    let incremental = |extra: &[&str], nbd: &QemuNbd| {
        let mut flags = vec!["--dirty-bitmap", "b0"];
        flags.extend_from_slice(extra);
        night(&repo, &nbd.uri, &flags)
    };
    let check_full = |d: &serde_json::Value, why: &str| {
        let c = &d["changes"];
        assert!(c.get("base").is_none(), "{d}");
        assert!(
            c["full_read"].as_str().unwrap().contains(why),
            "expected {why:?}: {c}"
        );
        assert_eq!(
            restored_sha(dir.path(), &repo, d["snapshot"].as_str().unwrap()),
            qemu_raw(&img)
        );
    };

    // The export has no such bitmap (deleted behind dedisk's back).
    let nbd = QemuNbd::start(&img, "qcow2", None);
    check_full(&incremental(&["--base", "latest"], &nbd), "no dirty bitmap");
    drop(nbd);

    // A base that is not the VM's latest: writes made since the latest are not in a
    // map that counts from it.
    if let Some(first) = &first_id {
        let nbd = QemuNbd::start(&img, "qcow2", Some("b0"));
        check_full(
            &incremental(&["--base", &first[..12]], &nbd),
            "not the VM's latest",
        );
        drop(nbd);
    }

    // The disk grew.
    sh(&format!("qemu-img resize -q '{}' 80M", img.display()));
    let nbd = QemuNbd::start(&img, "qcow2", Some("b0"));
    check_full(&incremental(&["--base", "latest"], &nbd), "the base's was");
    drop(nbd);

    // A source with no map at all (a plain file).
    let d = night(
        &repo,
        &format!("vda={}", img.display()),
        &["--base", "latest", "--dirty-bitmap", "b0"],
    );
    check_full(&d, "offers no change map");
}

#[test]
fn changed_ranges_files_drive_a_raw_disk_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), &[]);
    let img = random_image(dir.path(), "vda.raw", 24 << 20, 32 << 20);
    backup(&repo, "vm", &[&format!("vda={}", img.display())]);
    // In-place writes, as LVM thin or btrfs would list them.
    sh(&format!(
        "head -c 300000 /dev/urandom | dd of='{0}' bs=1 seek=5000000 conv=notrunc status=none; \
         head -c 8192 /dev/urandom | dd of='{0}' bs=4096 seek=7000 conv=notrunc status=none",
        img.display()
    ));
    let ranges = dir.path().join("night2.ranges");
    std::fs::write(&ranges, "# offset length\n5000000 300000\n0x1b58000 8192\n").unwrap();
    let disk = format!("vda={}", img.display());
    let d = night(
        &repo,
        &disk,
        &[
            "--base",
            "latest",
            "--changed-ranges",
            p(&ranges),
            "--verify-unchanged",
            "0",
        ],
    );
    assert!(d["changes"]["base"].is_string(), "{d}");
    assert_eq!(d["changes"]["changed_bytes"], 308192);
    assert!(d["stats"]["read_bytes"].as_u64().unwrap() < 4 << 20, "{d}");
    let full = night_of(&repo, "full", &disk, &[]);
    assert_eq!(
        manifest_root(&repo, d["snapshot"].as_str().unwrap()),
        manifest_root(&repo, full["snapshot"].as_str().unwrap())
    );

    // `xe vdi-list-changed-blocks` output as it is: a base64 bitmap, 64 KiB per bit.
    sh(&format!(
        "head -c 65536 /dev/urandom | dd of='{}' bs=65536 seek=100 conv=notrunc status=none",
        img.display()
    ));
    let mut bits = vec![0u8; (32 << 20) / 65536 / 8];
    bits[100 / 8] |= 0x80 >> (100 % 8);
    let cbt = dir.path().join("night3.cbt");
    std::fs::write(dir.path().join("bits"), &bits).unwrap();
    sh(&format!(
        "base64 -w0 '{}' > '{}'",
        dir.path().join("bits").display(),
        cbt.display()
    ));
    let d = night(
        &repo,
        &disk,
        &["--base", "latest", "--changed-ranges", p(&cbt)],
    );
    assert_eq!(d["changes"]["changed_bytes"], 65536, "{d}");
    assert!(d["changes"]["base"].is_string(), "{d}");
    assert_eq!(
        restored_sha(dir.path(), &repo, d["snapshot"].as_str().unwrap()),
        sha256(&img)
    );

    std::fs::write(&ranges, "0 4096\n4096 lots\n").unwrap();
    fails(
        &[
            "--repo",
            p(&repo),
            "backup",
            "--name",
            "vm",
            "--base",
            "latest",
            "--changed-ranges",
            p(&ranges),
            &disk,
        ],
        1,
        "line 2",
    );
    std::fs::write(&ranges, "0 999999999999\n").unwrap();
    let d = night(
        &repo,
        &disk,
        &["--base", "latest", "--changed-ranges", p(&ranges)],
    );
    assert!(
        d["changes"]["full_read"]
            .as_str()
            .unwrap()
            .contains("past the end"),
        "{d}"
    );
    fails(
        &[
            "--repo",
            p(&repo),
            "backup",
            "--name",
            "vm",
            "--base",
            "latest",
            &disk,
        ],
        1,
        "--base needs a change map",
    );
}

#[test]
fn nbd_sources_fail_in_one_line_naming_the_server() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path(), &[]);
    let sock = dir.path().join("nothing.sock");
    fails(
        &[
            "--repo",
            p(&repo),
            "backup",
            "--name",
            "vm",
            &format!("nbd+unix:///vda?socket={}", sock.display()),
        ],
        1,
        "nothing.sock",
    );
    fails(
        &[
            "--repo",
            p(&repo),
            "backup",
            "--name",
            "vm",
            "nbds://host/vda",
        ],
        1,
        "TLS",
    );
    let img = random_image(dir.path(), "d.raw", 1 << 20, 4 << 20);
    let nbd = QemuNbd::start(&img, "raw", None);
    let wrong = nbd.uri.replace("///vda", "///vdb").replace("vda=", "");
    fails(
        &["--repo", p(&repo), "backup", "--name", "vm", &wrong],
        1,
        "vdb",
    );
    // And the right one reads the disk, holes skipped.
    let d = night(&repo, &nbd.uri, &[]);
    assert_eq!(d["stats"]["read_bytes"], 1 << 20);
    drop(nbd);
    assert_eq!(
        restored_sha(dir.path(), &repo, d["snapshot"].as_str().unwrap()),
        sha256(&img)
    );
}
