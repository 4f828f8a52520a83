//! Image containers read natively: third-party fixtures, every qemu-img option, and
//! malformed images. The reference for "the right bytes" is always qemu: a restore must
//! equal `qemu-img convert -O raw` of the same image.

use std::path::{Path, PathBuf};

use crate::helpers::*;

/// Backs up `disks` (label, path, qemu's name for the format) as one snapshot with
/// `flags`, restores each, and checks it against qemu's reading of the image
/// (`reference`: more flags for qemu-img convert). qemu runs in `dir`, where it
/// resolves relative data-file names.
fn round_trip(
    dir: &Path,
    repo: &Path,
    disks: &[(&str, PathBuf, &str)],
    flags: &[&str],
    reference: &[&str],
) {
    let specs: Vec<String> = disks
        .iter()
        .map(|(l, p, _)| format!("{l}={}", p.display()))
        .collect();
    let mut args = vec!["--repo", p(repo), "backup", "--name", "img", "-q"];
    args.extend_from_slice(flags);
    args.extend(specs.iter().map(String::as_str));
    ok(&args);
    for (label, path, fmt) in disks {
        let want = dir.join(format!("{label}.want"));
        let got = dir.join(format!("{label}.got"));
        sh(&format!(
            "cd '{}' && qemu-img convert -f {fmt} {} -O raw '{}' '{}'",
            dir.display(),
            reference.join(" "),
            path.display(),
            want.display()
        ));
        let _ = std::fs::remove_file(&got);
        restore(repo, &format!("latest:{label}"), &got);
        assert_eq!(
            sha256(&got),
            sha256(&want),
            "{label}: restore differs from qemu-img convert"
        );
        std::fs::remove_file(&want).unwrap();
        std::fs::remove_file(&got).unwrap();
    }
}

/// A 64 MiB raw disk: random data at several offsets (some cluster-unaligned), an
/// explicitly written zero range, and holes.
fn base_image(dir: &Path) -> PathBuf {
    let base = dir.join("base.raw");
    sh(&format!(
        "set -e; truncate -s 64M '{b}'
         for spec in 0:1024 5120:3072 40964:513 65024:512; do
           off=${{spec%%:*}}; kib=${{spec##*:}}
           head -c $((kib*1024)) /dev/urandom | dd of='{b}' bs=1024 seek=$off conv=notrunc status=none
         done
         dd if=/dev/zero of='{b}' bs=1M seek=20 count=2 conv=notrunc status=none",
        b = base.display()
    ));
    base
}

/// Backup of `image` (format probed) fails with exit 1 mentioning `needle`.
fn refused_here(repo: &Path, image: &Path, needle: &str) {
    fails(
        &["--repo", p(repo), "backup", "-q", "--name", "x", p(image)],
        1,
        needle,
    );
}

fn have_qemu() -> bool {
    have("qemu-img") && have("qemu-io")
}

#[test]
fn every_format_qemu_img_writes_restores_as_qemu_reads_it() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let base = base_image(d);
    let b = base.display();
    let img = |name: &str| d.join(name);
    let convert = |name: &str, opts: &str| {
        sh(&format!(
            "qemu-img convert -q {opts} '{b}' '{}'",
            img(name).display()
        ));
        img(name)
    };
    let disks = vec![
        (
            "qcow2-v2",
            convert("v2.qcow2", "-O qcow2 -o compat=0.10"),
            "qcow2",
        ),
        (
            "qcow2-512",
            convert("c512.qcow2", "-O qcow2 -o cluster_size=512"),
            "qcow2",
        ),
        (
            "qcow2-2m",
            convert("c2m.qcow2", "-O qcow2 -o cluster_size=2M"),
            "qcow2",
        ),
        ("qcow2-zlib", convert("zlib.qcow2", "-c -O qcow2"), "qcow2"),
        (
            "qcow2-zstd",
            convert("zstd.qcow2", "-c -O qcow2 -o compression_type=zstd"),
            "qcow2",
        ),
        (
            "qcow2-extl2",
            convert(
                "extl2.qcow2",
                "-O qcow2 -o extended_l2=on,cluster_size=128k",
            ),
            "qcow2",
        ),
        ("vpc-dynamic", convert("dyn.vhd", "-O vpc"), "vpc"),
        (
            "vpc-fixed",
            convert("fixed.vhd", "-O vpc -o subformat=fixed"),
            "vpc",
        ),
        ("vhdx-dynamic", convert("dyn.vhdx", "-O vhdx"), "vhdx"),
        (
            "vhdx-fixed",
            convert("fixed.vhdx", "-O vhdx -o subformat=fixed"),
            "vhdx",
        ),
        ("vmdk-sparse", convert("sparse.vmdk", "-O vmdk"), "vmdk"),
        (
            "vmdk-stream",
            convert("stream.vmdk", "-O vmdk -o subformat=streamOptimized"),
            "vmdk",
        ),
        (
            "vmdk-flat",
            convert("flat.vmdk", "-O vmdk -o subformat=monolithicFlat"),
            "vmdk",
        ),
        (
            "vmdk-split",
            convert("split.vmdk", "-O vmdk -o subformat=twoGbMaxExtentSparse"),
            "vmdk",
        ),
        ("vdi-dynamic", convert("dyn.vdi", "-O vdi"), "vdi"),
        (
            "vdi-static",
            convert("static.vdi", "-O vdi -o static=on"),
            "vdi",
        ),
    ];
    round_trip(d, &repo, &disks, &[], &[]);
}

#[test]
fn qcow2_zero_clusters_subclusters_chains_data_files_and_snapshots() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let base = base_image(d);
    let io = |fmt: &str, path: &Path, cmds: &str| {
        sh(&format!(
            "cd '{}' && qemu-io -f {fmt} {cmds} '{}' >/dev/null",
            d.display(),
            path.display()
        ));
    };
    let path = |n: &str| d.join(n);

    // Zero clusters: over allocated data (zero flag with an offset) and over nothing.
    let zero = path("zero.qcow2");
    sh(&format!(
        "qemu-img convert -q -O qcow2 '{}' '{}'",
        base.display(),
        zero.display()
    ));
    io(
        "qcow2",
        &zero,
        "-c 'write -z 0 512k' -c 'write -z 30M 2M' -c 'write -z -u 5M 1M'",
    );

    // Subclusters: 4 KiB writes and zero writes inside 128 KiB clusters.
    let sub = path("sub.qcow2");
    sh(&format!(
        "qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k '{}' 64M",
        sub.display()
    ));
    io("qcow2", &sub, "-c 'write -P 0x5a 4k 4k' -c 'write -P 0x6b 132k 8k' -c 'write -z 136k 4k' -c 'write -P 0x11 1M 256k' -c 'write -z 1028k 4k'");

    // A three-deep chain with relative names, the top larger than its backing.
    sh(&format!(
        "set -e; cd '{d}'
         qemu-img convert -q -O qcow2 base.raw chain0.qcow2
         qemu-img create -q -f qcow2 -b chain0.qcow2 -F qcow2 chain1.qcow2
         qemu-img create -q -f qcow2 -b chain1.qcow2 -F qcow2 chain2.qcow2 80M",
        d = d.display()
    ));
    io(
        "qcow2",
        &path("chain1.qcow2"),
        "-c 'write -P 0x21 100k 200k' -c 'write -z 5M 64k'",
    );
    io(
        "qcow2",
        &path("chain2.qcow2"),
        "-c 'write -P 0x22 150k 10k' -c 'write -P 0x23 70M 1M'",
    );

    // A backing file outside the overlay's directory: refused when the format is probed
    // (a guest could forge the header), followed when the admin names the format.
    sh(&format!(
        "set -e; cd '{d}'; mkdir -p vm; qemu-img create -q -f qcow2 -b '{d}/chain0.qcow2' -F qcow2 vm/top.qcow2",
        d = d.display()
    ));
    let top = path("vm/top.qcow2");
    refused_here(&repo, &top, "is outside");
    backup(&repo, "t", &["--format", "qcow2", p(&top)]);

    // A qcow2 overlay on a raw base, with no backing format recorded (probed).
    sh(&format!(
        "cd '{}' && qemu-img create -q -f qcow2 -b base.raw -F raw over-raw.qcow2",
        d.display()
    ));
    io("qcow2", &path("over-raw.qcow2"), "-c 'write -P 0x31 2M 1M'");

    // External data files, raw and not.
    for (name, raw) in [("ext-raw", "on"), ("ext", "off")] {
        let q = path(&format!("{name}.qcow2"));
        sh(&format!(
            "cd '{}' && qemu-img create -q -f qcow2 -o data_file={name}.data,data_file_raw={raw} {name}.qcow2 64M",
            d.display()
        ));
        io(
            "qcow2",
            &q,
            "-c 'write -P 0x41 0 1M' -c 'write -P 0x42 9M 64k' -c 'write -z 0 64k'",
        );
    }

    let disks = vec![
        ("zero", zero, "qcow2"),
        ("sub", sub, "qcow2"),
        ("chain", path("chain2.qcow2"), "qcow2"),
        ("over-raw", path("over-raw.qcow2"), "qcow2"),
        ("ext-raw", path("ext-raw.qcow2"), "qcow2"),
        ("ext", path("ext.qcow2"), "qcow2"),
    ];
    round_trip(d, &repo, &disks, &[], &[]);

    // An internal snapshot, then more writes: the snapshot and the active layer differ.
    let snap = path("snap.qcow2");
    sh(&format!(
        "qemu-img convert -q -O qcow2 '{}' '{}'",
        base.display(),
        snap.display()
    ));
    sh(&format!("qemu-img snapshot -c before '{}'", snap.display()));
    io("qcow2", &snap, "-c 'write -P 0x51 0 4M'");
    round_trip(
        d,
        &repo,
        &[("snap", snap.clone(), "qcow2")],
        &["--qcow2-snapshot", "before"],
        &["-l", "snapshot.name=before"],
    );
    round_trip(d, &repo, &[("snap", snap.clone(), "qcow2")], &[], &[]);
    fails(
        &[
            "--repo",
            p(&repo),
            "backup",
            "--name",
            "x",
            "--qcow2-snapshot",
            "nope",
            p(&snap),
        ],
        1,
        "no internal snapshot named \"nope\"",
    );
}

#[test]
fn sparse_two_tib_qcow2_reads_only_its_data() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let big = d.join("big.qcow2");
    sh(&format!(
        "qemu-img create -q -f qcow2 '{}' 2T",
        big.display()
    ));
    sh(&format!(
        "qemu-io -f qcow2 -c 'write -P 0x61 0 4M' -c 'write -P 0x62 1T 4M' -c 'write -P 0x63 2047G 2M' '{}' >/dev/null",
        big.display()
    ));
    let info = ok_json(&["inspect", "--json", p(&big)]);
    assert_eq!(info["virtual_size"], 2u64 << 40);
    assert_eq!(info["allocated_bytes"], 10u64 << 20);
    assert_eq!(info["extents"].as_array().unwrap().len(), 3);
    backup(&repo, "big", &[p(&big)]);
    let snap = &snapshot_files(&repo)[0];
    let disk = &snap["disks"][0];
    assert_eq!(disk["size_bytes"], 2u64 << 40);
    let read = disk["stats"]["read_bytes"].as_u64().unwrap();
    assert_eq!(read, 10 << 20, "only allocated clusters are read");
}

/// Third-party images with the answers their EXPECTED.tsv gives (tests/fixtures/thirdparty).
#[test]
fn third_party_fixtures_read_or_are_refused_as_expected() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/thirdparty");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    // Unpack everything first: descriptors refer to their extents by name.
    for sub in std::fs::read_dir(&fixtures).unwrap() {
        let sub = sub.unwrap().path();
        if !sub.is_dir() {
            continue;
        }
        let out = d.join(sub.file_name().unwrap());
        std::fs::create_dir_all(&out).unwrap();
        for f in std::fs::read_dir(&sub).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_stem().unwrap();
            let bytes = zstd::decode_all(std::fs::File::open(&f).unwrap()).unwrap();
            std::fs::write(out.join(name), bytes).unwrap();
        }
    }
    let table = std::fs::read_to_string(fixtures.join("EXPECTED.tsv")).unwrap();
    let mut checked = 0;
    for row in table.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        let (file, format, expect, size, hash) = (cols[0], cols[2], cols[3], cols[4], cols[5]);
        let path = d.join(file);
        let out = run(&[
            "--repo",
            p(&repo),
            "backup",
            "--name",
            "fx",
            "-q",
            &format!("disk={}", path.display()),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "{file}: panicked: {stderr}");
        let read_ok = out.status.success();
        let check_bytes = || {
            let got = d.join("restored.raw");
            let _ = std::fs::remove_file(&got);
            restore(&repo, "latest:disk", &got);
            if size != "-" {
                assert_eq!(
                    std::fs::metadata(&got).unwrap().len().to_string(),
                    size,
                    "{file}: virtual size"
                );
            }
            assert_eq!(
                sha256(&got),
                hash,
                "{file}: bytes differ from qemu-img's reading"
            );
        };
        match expect {
            "read" => {
                assert!(read_ok, "{file} should be read: {stderr}");
                check_bytes();
            }
            "reject" if format == "unknown" => {
                // Not an image at all: read as the raw disk it is, never as a container.
                assert!(read_ok, "{file}: {stderr}");
                let info = ok_json(&["inspect", "--json", p(&path)]);
                assert_eq!(info["chain"][0]["format"], "raw", "{file}");
                fails(
                    &["inspect", "--format", "qcow2", p(&path)],
                    1,
                    "no qcow2 magic",
                );
            }
            "reject" => {
                assert_eq!(out.status.code(), Some(1), "{file} should be refused");
                assert!(
                    stderr.contains(file.rsplit('/').next().unwrap()),
                    "{file}: message names the file: {stderr}"
                );
            }
            "either" => {
                if read_ok {
                    check_bytes();
                } else {
                    assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
                }
            }
            "skip" => continue,
            other => panic!("EXPECTED.tsv: unknown expectation {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} fixtures checked");
}

fn read_be64(path: &Path, at: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 8];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    u64::from_be_bytes(b)
}

fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// Expects dedisk to refuse `image` with exit 1, naming the file and `needle`, both when
/// backing up and when inspecting (never a panic, a hang or a huge allocation).
fn refused(repo: &Path, image: &Path, extra: &[&str], needle: &str) {
    let mut args = vec!["--repo", p(repo), "backup", "--name", "bad", "-q"];
    args.extend_from_slice(extra);
    args.push(p(image));
    let err = fails(&args, 1, needle);
    assert!(
        err.contains(image.file_name().unwrap().to_str().unwrap()),
        "names the file: {err}"
    );
    let mut args = vec!["inspect"];
    args.extend_from_slice(extra);
    args.push(p(image));
    fails(&args, 1, needle);
}

#[test]
fn malformed_images_are_refused_with_the_structure_and_offset() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let base = base_image(d);
    let fresh = |name: &str, fmt: &str| {
        let out = d.join(name);
        sh(&format!(
            "qemu-img convert -q -O {fmt} '{}' '{}'",
            base.display(),
            out.display()
        ));
        out
    };
    let truncate = |path: &Path, len: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    };

    // Truncated at the header.
    let q = fresh("short.qcow2", "qcow2");
    truncate(&q, 50);
    refused(&repo, &q, &[], "header at byte 0: file is only 50 bytes");

    // Truncated inside the L1 table.
    let q = fresh("l1.qcow2", "qcow2");
    let l1 = read_be64(&q, 40);
    truncate(&q, l1 + 4);
    refused(&repo, &q, &[], "L1 table at byte");

    // Truncated inside the data: the header and tables are fine, a cluster is not.
    let q = fresh("data.qcow2", "qcow2");
    let len = std::fs::metadata(&q).unwrap().len();
    truncate(&q, len - 100_000);
    refused(&repo, &q, &[], "run past the end of the file");

    // An L2 entry pointing past the end of the file.
    let q = fresh("past.qcow2", "qcow2");
    let l2 = read_be64(&q, read_be64(&q, 40)) & 0x00ff_ffff_ffff_fe00;
    write_at(
        &q,
        l2,
        &(0x8000_0000_0000_0000u64 | (1u64 << 40)).to_be_bytes(),
    );
    refused(&repo, &q, &[], "run past the end of the file");

    // Invalid (reserved) bits in an L2 entry.
    let q = fresh("bits.qcow2", "qcow2");
    let l2 = read_be64(&q, read_be64(&q, 40)) & 0x00ff_ffff_ffff_fe00;
    let e = read_be64(&q, l2);
    write_at(&q, l2, &(e | 1 << 57).to_be_bytes());
    refused(&repo, &q, &[], "invalid cluster bits");

    // A header claiming a 2^63-byte disk.
    let q = fresh("huge.qcow2", "qcow2");
    write_at(&q, 24, &(1u64 << 63).to_be_bytes());
    refused(&repo, &q, &[], "cannot map a virtual size");

    // A backing loop: a -> b -> a.
    sh(&format!(
        "set -e; cd '{}'; qemu-img create -q -f qcow2 a.qcow2 64M
         qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2
         qemu-img rebase -q -u -b b.qcow2 -F qcow2 a.qcow2",
        d.display()
    ));
    refused(&repo, &d.join("b.qcow2"), &[], "loops back");

    // A VHD whose BAT is cut off, and one whose footer checksum is wrong.
    let v = fresh("bat.vhd", "vpc");
    truncate(&v, 1536 + 8);
    refused(&repo, &v, &[], "block allocation table at byte 1536");
    let v = fresh("sum.vhd", "vpc");
    let len = std::fs::metadata(&v).unwrap().len();
    write_at(&v, len - 512 + 48, b"\x7f");
    refused(&repo, &v, &["--format", "vhd"], "checksum");

    // VMDK, VDI, VHDX with their tables pointing past the end.
    let k = fresh("gd.vmdk", "vmdk");
    truncate(&k, 4096);
    refused(&repo, &k, &[], "run past the end of the file");
    let i = fresh("map.vdi", "vdi");
    truncate(&i, 0x1c8 + 4);
    refused(&repo, &i, &[], "block map at byte");
    let x = fresh("bat.vhdx", "vhdx");
    truncate(&x, 300 << 10);
    refused(&repo, &x, &[], "run past the end of the file");

    // Encrypted qcow2 (LUKS): refused, saying so.
    let enc = d.join("enc.qcow2");
    sh(&format!(
        "qemu-img create -q -f qcow2 --object secret,id=s0,data=pw -o encrypt.format=luks,encrypt.key-secret=s0 '{}' 64M",
        enc.display()
    ));
    refused(&repo, &enc, &[], "encrypted (LUKS)");

    // A VHDX whose log must be replayed: both headers name a log GUID (CRC-32C fixed up).
    let x = fresh("dirty.vhdx", "vhdx");
    for at in [64u64 << 10, 128 << 10] {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&x)
            .unwrap();
        let mut h = vec![0u8; 4096];
        f.read_exact_at(&mut h, at).unwrap();
        h[48..64].fill(0x42);
        h[4..8].fill(0);
        let crc = crc32c::crc32c(&h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&h, at).unwrap();
    }
    refused(&repo, &x, &[], "log is dirty");

    // Random bytes behind each magic, and with each format forced.
    let rnd = random_image(d, "random.img", 1 << 20, 1 << 20);
    for (magic, at) in [
        (&b"QFI\xfb\0\0\0\x03"[..], 0u64),
        (b"KDMV\x01\0\0\0", 0),
        (b"vhdxfile", 0),
        (b"conectix", 0),
    ] {
        write_at(&rnd, at, magic);
        let out = run(&["--repo", p(&repo), "backup", "--name", "rnd", "-q", p(&rnd)]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for fmt in ["qcow2", "vhd", "vhdx", "vmdk", "vdi"] {
        let out = run(&["inspect", "--format", fmt, p(&rnd)]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{fmt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn restore_as_qcow2_passes_qemu_img_check_and_compare() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    // Several L2 tables' worth of disk with data in each, an odd tail, and a qcow2 source.
    let disk = d.join("disk.raw");
    sh(&format!(
        "set -e; truncate -s $((3*1024*1024*1024 + 4096*3)) '{0}'
         for mib in 0 700 1536 3071; do head -c 3M /dev/urandom | dd of='{0}' bs=1M seek=$mib conv=notrunc status=none; done
         printf tail | dd of='{0}' bs=1 seek=$((3*1024*1024*1024 + 4096*3 - 4)) conv=notrunc status=none",
        disk.display()
    ));
    let src = d.join("src.qcow2");
    sh(&format!(
        "qemu-img convert -q -c -O qcow2 '{}' '{}'",
        base_image(d).display(),
        src.display()
    ));
    backup(
        &repo,
        "q",
        &[
            &format!("disk={}", disk.display()),
            &format!("src={}", src.display()),
        ],
    );
    let out = d.join("out");
    ok(&[
        "--repo",
        p(&repo),
        "restore",
        "-q",
        "--format",
        "qcow2",
        "latest",
        p(&out),
    ]);
    for (label, original, fmt) in [("disk", &disk, "raw"), ("src", &src, "qcow2")] {
        let q = out.join(format!("{label}.qcow2"));
        sh(&format!("qemu-img check -q '{}'", q.display()));
        sh(&format!(
            "qemu-img compare -q -f qcow2 -F {fmt} '{}' '{}'",
            q.display(),
            original.display()
        ));
        // Holes stay unallocated: the file holds about the data, not the disk.
        assert!(
            allocated(&q) < 16 << 20,
            "{label}: {} bytes allocated",
            allocated(&q)
        );
    }
    // A single disk to a file name; a block device cannot take qcow2.
    let one = d.join("one.qcow2");
    ok(&[
        "--repo",
        p(&repo),
        "restore",
        "-q",
        "--format",
        "qcow2",
        "latest:src",
        p(&one),
    ]);
    sh(&format!("qemu-img check -q '{}'", one.display()));
}

#[test]
fn a_dynamic_vhd_streams_from_a_pipe_block_by_block() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let base = base_image(d);
    let vhd = d.join("d.vhd");
    sh(&format!(
        "qemu-img convert -f raw -O vpc -o subformat=dynamic '{}' '{}'",
        base.display(),
        vhd.display()
    ));
    // `cat |`: a real pipe, as `xe vdi-export format=vhd` writes into.
    let piped = |image: &Path, name: &str| {
        std::process::Command::new("sh")
            .env("DEDISK_PASSWORD", PASSWORD)
            .env("DEDISK_CACHE_DIR", cache_dir())
            .arg("-c")
            .arg(format!(
                "cat '{}' | '{}' --repo '{}' backup --json --name {name} --format vhd vda=-",
                image.display(),
                env!("CARGO_BIN_EXE_dedisk"),
                repo.display()
            ))
            .output()
            .unwrap()
    };
    let out = piped(&vhd, "s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Progress lines come first; the summary is the last line.
    let summary: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("a summary"),
    )
    .unwrap();
    let stats = &summary["disks"][0]["stats"];
    // Only the allocated blocks (2 MiB each) were read, not the 64 MiB disk.
    assert!(stats["read_bytes"].as_u64().unwrap() < 20 << 20, "{stats}");
    let want = d.join("want.raw");
    sh(&format!(
        "qemu-img convert -f vpc -O raw '{}' '{}'",
        vhd.display(),
        want.display()
    ));
    let got = d.join("got.raw");
    restore(&repo, "s@latest:vda", &got);
    assert_eq!(sha256(&got), sha256(&want));

    // A later block of the disk stored first cannot be read in one pass: refused.
    let ooo = d.join("ooo.vhd");
    sh(&format!(
        "qemu-img create -q -f vpc '{o}' 64M && qemu-io -f vpc -c 'write -P 0x33 40M 1M' -c 'write -P 0x44 1M 1M' '{o}' >/dev/null",
        o = ooo.display()
    ));
    let out = piped(&ooo, "o");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("block 0 of the disk comes after block 20 in the stream"),
        "{err}"
    );
    // A truncated export: refused, nothing saved.
    let cut = d.join("cut.vhd");
    sh(&format!(
        "head -c 3000000 '{}' > '{}'",
        vhd.display(),
        cut.display()
    ));
    let out = piped(&cut, "c");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the export is truncated"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(snapshot_files(&repo).len(), 1);
}
