//! XenServer XVA exports: a tar (made here by GNU tar) of ova.xml and 1 MiB blocks with
//! SHA-1 or XXH64 checksums, read from a file and from a pipe.

use std::path::{Path, PathBuf};

use crate::helpers::*;

const MIB: usize = 1 << 20;

fn ova_xml() -> String {
    let obj = |class: &str, id: &str, fields: &str| {
        format!(
            "<value><struct><member><name>class</name><value>{class}</value></member>\
             <member><name>id</name><value>{id}</value></member>\
             <member><name>snapshot</name><value><struct>{fields}</struct></value></member></struct></value>\n"
        )
    };
    let f = |k: &str, v: &str| format!("<member><name>{k}</name><value>{v}</value></member>");
    format!(
        "<?xml version=\"1.0\" ?>\n<value><struct>\
         <member><name>version</name><value><struct>{}</struct></value></member>\
         <member><name>objects</name><value><array><data>\n{}{}{}{}{}</data></array></value></member></struct></value>\n",
        f("hostname", "xen1"),
        obj("VM", "Ref:1", &f("name_label", "web01")),
        obj("VBD", "Ref:3", &(f("VDI", "Ref:5") + &f("userdevice", "0"))),
        obj("VBD", "Ref:4", &(f("VDI", "Ref:7") + &f("userdevice", "1"))),
        obj("VDI", "Ref:5", &(f("name_label", "root") + &f("virtual_size", "8388608"))),
        obj("VDI", "Ref:7", &(f("name_label", "data") + "<member><name>virtual_size</name><value><string>3145728</string></value></member>")),
    )
}

/// Writes the export's members into `dir/tree`, the expected disks as `dir/xvda.want`
/// and `dir/xvdb.want`, and tars them in xapi's order. Returns the .xva path.
fn make_xva(dir: &Path, corrupt: bool) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("Ref:5")).unwrap();
    std::fs::create_dir_all(tree.join("Ref:7")).unwrap();
    std::fs::write(tree.join("ova.xml"), ova_xml()).unwrap();
    let mut members = vec!["ova.xml".to_string()];
    let mut want_a = vec![0u8; 8 * MIB];
    let mut want_b = vec![0u8; 3 * MIB];
    let mut block = |vdi: &str, n: usize, want: &mut [u8], xxhash: bool| {
        let data: Vec<u8> = (0..MIB)
            .map(|i| ((i * 7 + n * 13) % 251) as u8 ^ (i >> 12) as u8)
            .collect();
        want[n * MIB..(n + 1) * MIB].copy_from_slice(&data);
        let name = format!("{vdi}/{n:08}");
        std::fs::write(tree.join(&name), &data).unwrap();
        members.push(name.clone());
        let (suffix, mut sum) = if xxhash {
            (
                "xxhash",
                format!("{:016x}", xxhash_rust::xxh64::xxh64(&data, 0)),
            )
        } else {
            use sha1::Digest;
            ("checksum", hex::encode(sha1::Sha1::digest(&data)))
        };
        if corrupt && n == 3 {
            sum = sum.replace(|c: char| c != '0', "0");
        }
        std::fs::write(tree.join(format!("{name}.{suffix}")), sum).unwrap();
        members.push(format!("{name}.{suffix}"));
    };
    for n in [0, 3, 7] {
        block("Ref:5", n, &mut want_a, false);
    }
    block("Ref:7", 1, &mut want_b, true);
    std::fs::write(dir.join("xvda.want"), want_a).unwrap();
    std::fs::write(dir.join("xvdb.want"), want_b).unwrap();
    let xva = dir.join("vm.xva");
    sh(&format!(
        "cd '{}' && tar --format=ustar -cf '{}' {}",
        tree.display(),
        xva.display(),
        members.join(" ")
    ));
    xva
}

#[test]
fn xva_export_backs_up_from_a_file_and_a_pipe_with_every_vdi_and_ova_xml() {
    if !have("tar") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let xva = make_xva(d, false);

    let info = ok_json(&[
        "--repo",
        p(&repo),
        "backup",
        "--json",
        "-q",
        "--name",
        "web01",
        p(&xva),
    ]);
    let labels: Vec<_> = info["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(labels, ["xvda", "xvdb"]);
    // Only the three + one present blocks are read; the rest are holes.
    assert_eq!(info["disks"][0]["stats"]["read_bytes"], 3 * MIB as u64);
    let check = |tag: &str| {
        for label in ["xvda", "xvdb"] {
            let got = d.join(format!("{label}.{tag}.got"));
            restore(&repo, &format!("latest:{label}"), &got);
            assert_eq!(
                sha256(&got),
                sha256(&d.join(format!("{label}.want"))),
                "{tag} {label}"
            );
        }
        let xml = d.join(format!("ova.{tag}.xml"));
        restore(&repo, "latest:ova.xml", &xml);
        assert_eq!(std::fs::read_to_string(&xml).unwrap(), ova_xml());
    };
    check("file");
    let info = ok_json(&["inspect", "--json", p(&xva)]);
    assert_eq!(info["format"], "xva");
    assert_eq!(info["disks"][0]["allocated_bytes"], 3 * MIB as u64);
    assert_eq!(info["disks"][1]["virtual_size"], 3 * MIB as u64);

    // The same export through a pipe, as `xe vm-export filename= | dedisk backup -`.
    sh(&format!(
        "cat '{}' | '{}' --repo '{}' backup -q --name web01 -",
        xva.display(),
        env!("CARGO_BIN_EXE_dedisk"),
        repo.display()
    ));
    check("pipe");
    let snaps = snapshot_files(&repo);
    assert_eq!(snaps.len(), 2);
    assert_eq!(
        snaps[0]["disks"][0]["manifest"], snaps[1]["disks"][0]["manifest"],
        "file and pipe give the same disk"
    );
}

#[test]
fn corrupt_xva_block_is_refused_and_no_snapshot_is_written() {
    if !have("tar") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let xva = make_xva(d, true);
    fails(
        &[
            "--repo",
            p(&repo),
            "backup",
            "-q",
            "--name",
            "web01",
            p(&xva),
        ],
        1,
        "block 3: checksum",
    );
    assert!(snapshot_files(&repo).is_empty());
    fails(&["inspect", p(&xva)], 1, "block 3: checksum");
    // A tar without ova.xml first is not an XVA.
    let other = d.join("other.xva");
    sh(&format!(
        "cd '{}' && tar -cf '{}' Ref:5",
        d.join("tree").display(),
        other.display()
    ));
    fails(
        &[
            "--repo",
            p(&repo),
            "backup",
            "-q",
            "--name",
            "x",
            "--format",
            "xva",
            p(&other),
        ],
        1,
        "not ova.xml",
    );
}
