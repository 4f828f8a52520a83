//! `dedisk serve-nbd` against real NBD clients (qemu-img, qemu-io) and a hand-driven
//! client that misbehaves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Child;

use crate::helpers::*;

/// A running server; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(repo: &Path, exports: &[&str]) -> Server {
    let mut args = vec![
        "--repo",
        p(repo),
        "--json",
        "serve-nbd",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(exports);
    let (child, v) = spawn_json(&args);
    let url = v["url"]
        .as_str()
        .unwrap()
        .trim_end_matches("/EXPORT")
        .to_string();
    Server { child, url }
}

/// NBD handshake by hand up to transmission with NBD_OPT_GO (simple replies).
fn handshake(addr: &str, export: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
    let mut opt = Vec::new();
    opt.extend(b"IHAVEOPT");
    opt.extend(7u32.to_be_bytes()); // NBD_OPT_GO
    opt.extend((4 + export.len() as u32 + 2).to_be_bytes());
    opt.extend((export.len() as u32).to_be_bytes());
    opt.extend(export.as_bytes());
    opt.extend(0u16.to_be_bytes());
    s.write_all(&opt).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).unwrap();
        if kind == 1 {
            return s; // ACK: transmission starts
        }
        assert_eq!(kind, 3, "NBD_REP_INFO expected");
    }
}

fn request(s: &mut TcpStream, kind: u16, offset: u64, len: u32) -> (u32, Vec<u8>) {
    let mut r = Vec::new();
    r.extend(0x2560_9513u32.to_be_bytes());
    r.extend(0u16.to_be_bytes());
    r.extend(kind.to_be_bytes());
    r.extend(42u64.to_be_bytes());
    r.extend(offset.to_be_bytes());
    r.extend(len.to_be_bytes());
    s.write_all(&r).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
    let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
    let mut data = vec![
        0u8;
        if err == 0 && kind == 0 {
            len as usize
        } else {
            0
        }
    ];
    s.read_exact(&mut data).unwrap();
    (err, data)
}

#[test]
fn qemu_img_reads_the_export_byte_for_byte_and_sees_holes() {
    if !(have_image_tools() && have("qemu-img") && have("qemu-io")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let (disk, _) = make_disk(d, "vm", "gpt", 1);
    backup(&repo, "web01", &[&format!("vda={}", disk.display())]);
    let server = serve(&repo, &["--all"]);
    let url = |name: &str| format!("{}/{name}", server.url);

    // Byte for byte, by a real client. qemu rounds an NBD export's size up to whole
    // sectors (this disk is 64 MiB + 12345 bytes) and reads the padding as zeros.
    let out = d.join("out.raw");
    let size = std::fs::metadata(&disk).unwrap().len();
    let same = |out: &Path| {
        sh(&format!(
            "qemu-img convert -f raw '{}' '{}'",
            url("web01@latest:vda"),
            out.display()
        ));
        assert_eq!(
            std::fs::metadata(out).unwrap().len(),
            size.next_multiple_of(512)
        );
        sh(&format!(
            "cmp -n {size} '{}' '{}'",
            out.display(),
            disk.display()
        ));
        sh(&format!(
            "tail -c +{} '{}' | tr -d '\\0' | wc -c | grep -qx 0",
            size + 1,
            out.display()
        ));
    };
    same(&out);

    // Several clients at once.
    let (a, b) = (d.join("a.raw"), d.join("b.raw"));
    sh(&format!(
        "qemu-img convert -f raw '{u}' '{}' & qemu-img convert -f raw '{u}' '{}' & wait",
        a.display(),
        b.display(),
        u = url("web01@latest:vda")
    ));
    assert_eq!(sha256(&a), sha256(&out));
    assert_eq!(sha256(&b), sha256(&out));

    // Unused space (the end of the filesystem and the unpartitioned 23 MiB after it) is
    // a hole to qemu-img map, through base:allocation.
    let map = sh(&format!(
        "qemu-img map -f raw --output=json '{}'",
        url("web01@latest:vda")
    ));
    let map: serde_json::Value = serde_json::from_str(&map).unwrap();
    let biggest_hole = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == false)
        .map(|e| e["length"].as_u64().unwrap())
        .max();
    assert!(biggest_hole.unwrap_or(0) >= 20 << 20, "{map}");

    // Instant recovery: a local qcow2 overlay on the export takes writes.
    let overlay = d.join("overlay.qcow2");
    sh(&format!(
        "qemu-img create -q -f qcow2 -b '{}' -F raw '{}'",
        url("web01@latest:vda"),
        overlay.display()
    ));
    sh(&format!(
        "qemu-io -f qcow2 -c 'write -P 0x77 0 64k' '{}' >/dev/null",
        overlay.display()
    ));
    let merged = d.join("merged.raw");
    sh(&format!(
        "qemu-img convert -O raw '{}' '{}'",
        overlay.display(),
        merged.display()
    ));
    sh(&format!(
        "cmp -n {} -i 65536 '{}' '{}'",
        size - 65536,
        merged.display(),
        disk.display()
    ));
    sh(&format!(
        "head -c 65536 '{}' | tr -d '\\167' | wc -c | grep -qx 0",
        merged.display()
    ));

    // Unknown exports are NBD errors; the server lives on.
    let err = run_sh(&format!("qemu-img info '{}'", url("nope@latest:vda")));
    assert!(err.contains("no export named"), "{err}");

    // A bad request gets an errno; a client that disconnects mid-transfer or sends
    // garbage only ends its own connection.
    let addr = server.url.trim_start_matches("nbd://");
    let mut c = handshake(addr, "web01@latest:vda");
    assert_eq!(
        request(&mut c, 0, size - 10, 100).0,
        22,
        "read past the end: EINVAL"
    );
    assert_eq!(request(&mut c, 1, 0, 0).0, 1, "write: EPERM");
    let (e, data) = request(&mut c, 0, 1 << 20, 4096);
    assert_eq!(e, 0);
    assert_eq!(data.len(), 4096);
    let mut half = Vec::new();
    half.extend(0x2560_9513u32.to_be_bytes());
    half.extend([0u8; 10]);
    c.write_all(&half).unwrap();
    drop(c); // half a request, then gone
    let mut g = handshake(addr, "web01@latest:vda");
    g.write_all(&[
        0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ])
    .unwrap();
    let mut rest = Vec::new();
    let _ = g.read_to_end(&mut rest); // the server closes this connection
    same(&d.join("out2.raw"));
}

#[test]
fn unix_socket_export_of_one_named_disk() {
    if !(have("qemu-img") && have("sha256sum")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let disk = random_image(d, "disk.raw", 3 << 20, 16 << 20);
    backup(&repo, "db", &[&format!("sda={}", disk.display())]);
    let sock = d.join("nbd.sock");
    let (mut child, v) = spawn_json(&[
        "--repo",
        p(&repo),
        "--json",
        "serve-nbd",
        "--unix",
        p(&sock),
        "db@latest:sda",
    ]);
    assert_eq!(v["exports"].as_array().unwrap().len(), 1, "{v}");
    let name = v["exports"][0]["name"].as_str().unwrap().to_string();
    let out = d.join("out.raw");
    // By its canonical name and by the name it was asked for.
    for export in [name.as_str(), "db@latest:sda"] {
        let _ = std::fs::remove_file(&out);
        sh(&format!(
            "qemu-img convert -f raw 'nbd+unix:///{export}?socket={}' '{}'",
            sock.display(),
            out.display()
        ));
        assert_eq!(sha256(&out), sha256(&disk));
    }
    // SIGTERM stops the server and removes its socket.
    // SAFETY: kill with a valid pid has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists());
}

/// Runs a shell command that is expected to fail; returns its stderr and stdout.
fn run_sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap();
    assert!(!out.status.success(), "`{cmd}` should fail");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}
