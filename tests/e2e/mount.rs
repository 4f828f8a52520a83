//! `dedisk mount`: the kernel reads our FUSE filesystem, loop-mounts a partition file,
//! and sees two nights of an ext4 disk side by side.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Child;

use crate::helpers::*;

/// A running `dedisk mount`; interrupted (like Ctrl-C) and waited for on drop.
pub struct Mounted {
    child: Option<Child>,
    at: PathBuf,
}

impl Mounted {
    pub fn start(repo: &Path, at: &Path) -> Mounted {
        std::fs::create_dir_all(at).unwrap();
        let (child, v) = spawn_json(&["--repo", p(repo), "--json", "mount", p(at)]);
        assert_eq!(v["type"], "mounted", "{v}");
        Mounted {
            child: Some(child),
            at: at.into(),
        }
    }

    /// SIGINT, as Ctrl-C sends: dedisk unmounts and exits 0.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill with a valid pid and signal has no memory effects.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let status = c.wait().unwrap();
            assert!(status.success(), "dedisk mount after SIGINT: {status}");
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(&self.at)
                .status();
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn is_mounted(at: &Path) -> bool {
    let real = at.canonicalize().unwrap();
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == real.to_str())
}

#[test]
fn two_nights_of_an_ext4_disk_mount_side_by_side_and_partitions_loop_mount() {
    if !(have_image_tools() && have("fusermount3")) {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "/dev/fuse is required under CI"
        );
        eprintln!("SKIPPED: no /dev/fuse");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let (disk, part) = make_disk(d, "vm", "gpt", 3);
    let night1 = d.join("night1.raw");
    std::fs::copy(&disk, &night1).unwrap();
    let part1 = d.join("night1-p1.img");
    std::fs::copy(&part, &part1).unwrap();
    let xml = d.join("web01.xml");
    std::fs::write(&xml, "<domain><name>web01</name></domain>\n").unwrap();
    backup(
        &repo,
        "web01",
        &["--meta", p(&xml), &format!("vda={}", disk.display())],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct directory names
    change_fs(d, &part, 2);
    write_partition(&disk, &part);
    backup(&repo, "web01", &[&format!("vda={}", disk.display())]);

    let mp = d.join("mnt");
    let mut m = Mounted::start(&repo, &mp);
    let vm = mp.join("web01");
    let mut dirs: Vec<String> = std::fs::read_dir(&vm)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "latest")
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert_eq!(
        std::fs::read_link(vm.join("latest")).unwrap(),
        PathBuf::from(&dirs[1])
    );
    let (old, new) = (vm.join(&dirs[0]), vm.join("latest"));

    // Whole disks, partitions and metadata, byte for byte, with the right sizes.
    assert_eq!(sha256(&old.join("vda.raw")), sha256(&night1));
    assert_eq!(sha256(&new.join("vda.raw")), sha256(&disk));
    assert_eq!(
        std::fs::metadata(old.join("vda.p1")).unwrap().len(),
        81920 * 512
    );
    assert_eq!(sha256(&old.join("vda.p1")), sha256(&part1));
    assert_eq!(sha256(&new.join("vda.p1")), sha256(&part));
    assert_eq!(
        std::fs::read_to_string(old.join("web01.xml")).unwrap(),
        std::fs::read_to_string(&xml).unwrap()
    );
    assert!(!old.join("vda.p2").exists());

    // Holes are visible to SEEK_HOLE / SEEK_DATA, so a sparse copy skips them.
    {
        use std::os::unix::io::AsRawFd;
        let f = std::fs::File::open(new.join("vda.raw")).unwrap();
        let size = f.metadata().unwrap().len() as i64;
        // SAFETY: lseek on an open descriptor has no memory effects.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
        assert!(hole > 0 && hole < size, "first hole at {hole} of {size}");
        // SAFETY: as above.
        let data = unsafe { libc::lseek(f.as_raw_fd(), hole, libc::SEEK_DATA) };
        assert!(data > hole, "data after the first hole at {data}");
        assert!(
            f.metadata().unwrap().blocks() * 512 < size as u64,
            "stat shows a sparse file"
        );
    }
    let copy = d.join("copy.raw");
    sh(&format!(
        "cp --sparse=always '{}' '{}'",
        new.join("vda.raw").display(),
        copy.display()
    ));
    assert_eq!(sha256(&copy), sha256(&disk));
    assert!(
        allocated(&copy) < std::fs::metadata(&disk).unwrap().len() - (16 << 20),
        "{} allocated",
        allocated(&copy)
    );

    // The kernel loop-mounts both nights' partition files; every file matches the
    // filesystem images they came from.
    if is_root() && have("losetup") {
        for (night, fs_img, file) in [
            ("1", &part1, old.join("vda.p1")),
            ("2", &part, new.join("vda.p1")),
        ] {
            let (a, b) = (d.join(format!("a{night}")), d.join(format!("b{night}")));
            std::fs::create_dir_all(&a).unwrap();
            std::fs::create_dir_all(&b).unwrap();
            sh(&format!(
                "mount -o loop,ro '{}' '{}'",
                file.display(),
                a.display()
            ));
            sh(&format!(
                "mount -o loop,ro '{}' '{}'",
                fs_img.display(),
                b.display()
            ));
            let diff = std::process::Command::new("diff")
                .arg("-r")
                .arg(&a)
                .arg(&b)
                .output()
                .unwrap();
            sh(&format!("umount '{}' '{}'", a.display(), b.display()));
            assert!(
                diff.status.success(),
                "night {night}: {}",
                String::from_utf8_lossy(&diff.stdout)
            );
        }
        // Night 2 has the file the change added; night 1 does not.
        sh(&format!(
            "debugfs -R 'stat /srv/new2.bin' '{}' 2>&1 | grep -q Inode",
            part.display()
        ));
    } else {
        assert!(
            std::env::var_os("CI").is_none() || !is_root(),
            "loop mounts are tested as root"
        );
        eprintln!("SKIPPED: loop-mounting partition files needs root");
    }

    // A backup that lands while mounted shows up.
    backup(&repo, "db02", &[&format!("vda={}", night1.display())]);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    assert!(mp.join("db02").join("latest").join("vda.raw").exists());

    // Writes are refused; Ctrl-C unmounts cleanly.
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(new.join("vda.raw"))
        .is_err());
    assert!(is_mounted(&mp));
    m.stop();
    assert!(!is_mounted(&mp));
}
