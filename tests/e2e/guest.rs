//! `verify --boot` and `verify --fsck`: a real guest booted (QEMU, TCG where this
//! machine's nested KVM fails) from a snapshot's NBD export, and the guest filesystems
//! checked by e2fsck and fsck.vfat through the FUSE mount.

use std::path::{Path, PathBuf};

use crate::helpers::*;

/// Tools a boot test needs; under CI every one is required.
fn can_boot() -> bool {
    let tools = [
        "qemu-system-x86_64",
        "qemu-img",
        "extlinux",
        "cpio",
        "sfdisk",
    ];
    let kernel = std::env::var_os("DEDISK_TEST_KERNEL_DIR")
        .map(|d| Path::new(&d).join("boot").is_dir())
        .unwrap_or(false)
        || std::fs::read_dir("/boot").is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("vmlinuz")))
        });
    let ok = is_root()
        && tools.iter().all(|t| have(t))
        && Path::new("/bin/busybox").exists()
        && Path::new("/usr/lib/syslinux/mbr/mbr.bin").exists()
        && kernel;
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "boot tests need root, QEMU, extlinux, busybox-static, cpio and a kernel under CI"
        );
        eprintln!(
            "SKIPPED: boot tests need root, QEMU, extlinux, busybox-static, cpio and a kernel"
        );
    }
    ok
}

/// A bootable disk (tests/boot/make-bootable-disk.sh); `marker` "hang" never signals.
fn bootable_disk(dir: &Path, name: &str, marker: &str) -> PathBuf {
    let out = dir.join(name);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/boot/make-bootable-disk.sh");
    sh(&format!(
        "'{}' '{}' '{marker}'",
        script.display(),
        out.display()
    ));
    out
}

/// QEMU processes of boot tests still running with their files under `scratch` (other
/// tests boot guests at the same time, under their own folders).
fn boot_guests(scratch: &Path) -> usize {
    let mine = scratch.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("dedisk-boot-test") && c.contains(&mine)
            })
        })
        .count()
}

/// `dedisk verify --boot` with TMPDIR pointed at `scratch`, so the test sees every
/// overlay and socket it makes.
fn boot(repo: &Path, scratch: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = dedisk();
    cmd.env("TMPDIR", scratch)
        .args(["--repo", p(repo), "--json", "verify"])
        .args(args);
    cmd.output().unwrap()
}

fn report(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("\"type\":\"boot\""))
        .unwrap_or_else(|| {
            panic!(
                "no boot report in {text} / {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str::<serde_json::Value>(line).unwrap()["report"].clone()
}

#[test]
fn a_bootable_snapshot_boots_a_zeroed_boot_sector_fails_a_hang_times_out() {
    if !can_boot() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let scratch = d.join("tmp");
    std::fs::create_dir(&scratch).unwrap();

    // A good disk, backed up with a domain XML (q35, the disk on SATA, a network the
    // test must leave out).
    let good = bootable_disk(d, "good.raw", "DEDISK-BOOT-OK");
    let xml = d.join("domain.xml");
    std::fs::write(
        &xml,
        "<domain type='kvm'><name>web01</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
         <disk type='file' device='disk'><target dev='vda' bus='sata'/><boot order='1'/></disk>\
         <interface type='network'><source network='default'/></interface></devices></domain>",
    )
    .unwrap();
    ok(&[
        "--repo",
        p(&repo),
        "backup",
        "-q",
        "--name",
        "web01",
        &format!("vda={}", p(&good)),
        "--meta",
        p(&xml),
    ]);
    let evidence = d.join("ev-good");
    let out = boot(
        &repo,
        &scratch,
        &[
            "--boot",
            "web01@latest",
            "--boot-serial",
            "^DEDISK-BOOT-O.$",
            "--evidence",
            p(&evidence),
        ],
    );
    let r = report(&out);
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["verdict"], "booted", "{r}");
    assert_eq!(r["machine"], "q35");
    assert!(r["boot_seconds"].as_f64().unwrap() > 0.0);
    // Where KVM fails the guest (this machine), the report says TCG ran it.
    if r["accel"] == "tcg" {
        assert!(r["kvm_failed"].is_string(), "{r}");
    }
    let serial = std::fs::read_to_string(evidence.join("serial.log")).unwrap();
    assert!(serial.contains("DEDISK-BOOT-OK"), "{serial}");
    assert!(evidence.join("report.json").exists());
    assert!(std::fs::read_to_string(evidence.join("firmware.log"))
        .unwrap()
        .contains("Booting from"));
    // The guest powered off after its marker, before a screenshot could be missed:
    // one was taken while it ran.
    let png = std::fs::read(evidence.join("console.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // The disk in the repository is what it was: the guest wrote to an overlay.
    let back = d.join("back.raw");
    restore(&repo, "web01@latest:vda", &back);
    assert_eq!(sha256(&back), sha256(&good));

    // The same disk with its boot sector zeroed: the firmware finds nothing to boot.
    let zeroed = d.join("zeroed.raw");
    std::fs::copy(&good, &zeroed).unwrap();
    sh(&format!(
        "dd if=/dev/zero of='{}' bs=512 count=1 conv=notrunc status=none",
        zeroed.display()
    ));
    backup(&repo, "zeroed", &[&format!("vda={}", p(&zeroed))]);
    let out = boot(
        &repo,
        &scratch,
        &[
            "--boot",
            "zeroed@latest",
            "--boot-serial",
            "DEDISK-BOOT-OK",
            "--evidence",
            p(&d.join("ev-zeroed")),
        ],
    );
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(r["verdict"], "failed");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("not a bootable disk"),
        "{r}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not boot"), "{err}");

    // A guest that never signals: timed out.
    let hang = bootable_disk(d, "hang.raw", "hang");
    backup(&repo, "hang", &[&format!("vda={}", p(&hang))]);
    let out = boot(
        &repo,
        &scratch,
        &[
            "--boot",
            "hang@latest",
            "--boot-serial",
            "DEDISK-BOOT-OK",
            "--boot-timeout",
            "15",
            "--accel",
            "tcg",
            "--evidence",
            p(&d.join("ev-hang")),
        ],
    );
    let r = report(&out);
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(r["verdict"], "timed_out", "{r}");
    assert_eq!(r["accel"], "tcg");
    assert!(r["kvm_failed"].is_null(), "TCG was asked for: {r}");

    // Nothing left behind: no QEMU, no overlay, no socket.
    assert_eq!(boot_guests(&scratch), 0);
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");

    // An evidence folder that exists is refused (never written through).
    fails(
        &[
            "--repo",
            p(&repo),
            "verify",
            "--boot",
            "hang@latest",
            "--evidence",
            p(&evidence),
        ],
        1,
        "already exists",
    );
}

#[test]
fn fsck_reports_a_clean_ext4_and_vfat_and_finds_a_corrupted_ext4() {
    if !have_image_tools() || !have("mkfs.vfat") || !have("fsck.vfat") || !have("blkid") {
        assert!(
            std::env::var_os("CI").is_none(),
            "fsck tools are required under CI"
        );
        eprintln!("SKIPPED: needs e2fsprogs, dosfstools, blkid");
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "/dev/fuse is required under CI"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    // Disk 1: an ext4 partition, and a FAT partition added after it.
    let (disk, _) = make_disk(d, "clean", "dos", 1);
    let fat = d.join("fat.img");
    sh(&format!(
        "set -e; truncate -s 16M '{f}'; mkfs.vfat -n EFI '{f}' >/dev/null
         truncate -s 100M '{d}'
         printf 'start=83968, size=32768, type=ef\\n' | sfdisk -q --append '{d}'
         dd if='{f}' of='{d}' bs=512 seek=83968 conv=notrunc status=none",
        f = fat.display(),
        d = disk.display()
    ));
    // Disk 2: ext4 whose file's inode debugfs cleared before the backup.
    let (bad, part) = make_disk(d, "bad", "dos", 2);
    sh(&format!(
        "debugfs -w -R 'clri /srv/random.bin' '{}' 2>/dev/null",
        part.display()
    ));
    write_partition(&bad, &part);
    let id = backup_id(
        &repo,
        "vm",
        &[&format!("vda={}", p(&disk)), &format!("vdb={}", p(&bad))],
    );

    let out = run(&["--repo", p(&repo), "--json", "verify", "--fsck", &id]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(
        text.lines()
            .find(|l| l.contains("\"type\":\"fsck\""))
            .expect("a report"),
    )
    .unwrap();
    let parts = v["partitions"].as_array().unwrap();
    let find = |name: &str| {
        parts
            .iter()
            .find(|p| p["partition"] == name)
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    assert_eq!(find("vda.p1")["filesystem"], "ext4");
    assert_eq!(find("vda.p1")["verdict"], "clean", "{v}");
    assert_eq!(find("vda.p2")["filesystem"], "vfat");
    assert_eq!(find("vda.p2")["verdict"], "clean", "{v}");
    assert_eq!(find("vdb.p1")["verdict"], "errors", "{v}");
    assert_eq!(find("vdb.p1")["exit_code"], 4);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 filesystem(s) with errors: vdb.p1 (ext4)"),
        "{err}"
    );

    // The clean disk alone passes; nothing is left mounted.
    let id2 = backup_id(&repo, "clean", &[&format!("vda={}", p(&disk))]);
    let text = ok(&["--repo", p(&repo), "verify", "--fsck", &id2]);
    assert!(text.contains("vda.p1 ext4: clean"), "{text}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("dedisk-fsck-"), "{mounts}");
}

#[test]
fn the_nightly_job_boot_tests_each_new_snapshot_and_marks_the_report() {
    if !can_boot() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let good = bootable_disk(d, "good.raw", "DEDISK-BOOT-OK");
    let bad = d.join("bad.raw");
    std::fs::copy(&good, &bad).unwrap();
    sh(&format!(
        "dd if=/dev/zero of='{}' bs=512 count=1 conv=notrunc status=none",
        bad.display()
    ));
    let job = d.join("nightly.toml");
    std::fs::write(
        &job,
        format!(
            "repository = '{}'\n\
             [boot_test]\n\
             on = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun']\n\
             serial = 'DEDISK-BOOT-OK'\n\
             timeout = 120\n\
             evidence_dir = 'evidence'\n\
             [[vm]]\nname = 'good'\ndisks = {{ vda = '{}' }}\n\
             [[vm]]\nname = 'bad'\ndisks = {{ vda = '{}' }}\n",
            p(&repo),
            p(&good),
            p(&bad)
        ),
    )
    .unwrap();
    let preview = ok(&["run", p(&job), "--preview"]);
    assert!(
        preview.contains("boot test of each new snapshot"),
        "{preview}"
    );
    let scratch = d.join("tmp");
    std::fs::create_dir(&scratch).unwrap();
    let out = dedisk()
        .env("TMPDIR", &scratch)
        .args(["run", p(&job)])
        .output()
        .unwrap();
    // One VM does not boot: the job is partial (exit 3), both VMs were backed up.
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("nightly.report.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "partial");
    let vm = |name: &str| {
        report["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(vm("good")["status"], "ok");
    assert_eq!(vm("good")["boot"]["verdict"], "booted", "{report}");
    assert_eq!(vm("bad")["status"], "ok");
    assert_eq!(vm("bad")["boot"]["verdict"], "failed", "{report}");
    assert!(
        vm("bad")["warnings"][0]
            .as_str()
            .unwrap()
            .contains("not a bootable disk"),
        "{report}"
    );
    let evidence = std::fs::read_dir(d.join("evidence")).unwrap().count();
    assert_eq!(evidence, 2);
    assert_eq!(boot_guests(&scratch), 0);
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
}
