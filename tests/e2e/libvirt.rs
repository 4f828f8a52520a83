//! The `libvirt` snapshot provider against a real KVM domain (UEFI firmware idling, no
//! guest OS), driven by the real libvirtd and virsh: external disk-only snapshot, backup
//! of the frozen base images while the "guest" writes, blockcommit and pivot, and the
//! cleanups after failures.
//!
//! Guest writes are made by QEMU itself (`qemu-io` through the HMP monitor) at exactly
//! the moment that matters: a `virsh` wrapper first on PATH passes every call to the real
//! virsh and, right after a successful `snapshot-create-as`, makes the guest write, so
//! the write lands after the snapshot and before dedisk reads a byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::*;

/// libvirtd answers as root. Under CI it must (`.ci/run` installs and starts it).
fn libvirt_ready() -> bool {
    if !(is_root() && have("virsh") && have("qemu-img") && have("qemu-io")) {
        assert!(
            std::env::var_os("CI").is_none() || !is_root(),
            "libvirt is tested as root under CI"
        );
        return false;
    }
    let answers = Command::new("virsh")
        .args(["-c", "qemu:///system", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !answers {
        assert!(
            std::env::var_os("CI").is_none(),
            "libvirtd must run under CI (.ci/run starts it)"
        );
        eprintln!("SKIPPED: libvirtd does not answer");
    }
    answers
}

fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A persistent domain, destroyed and undefined (with its NVRAM and its checkpoints'
/// metadata, which pull mode leaves: without it libvirt refuses to undefine) when dropped.
struct Domain {
    name: String,
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = Command::new("virsh").args(["destroy", &self.name]).output();
        let _ = Command::new("virsh")
            .args(["undefine", "--nvram", "--checkpoints-metadata", &self.name])
            .output();
    }
}

/// The domain's disk sources, target by target (`virsh domblklist`).
fn sources(dom: &str) -> Vec<(String, String)> {
    virsh(&["domblklist", dom])
        .lines()
        .skip(2)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The backing chain of `image`, top first (`qemu-img info --backing-chain`).
fn chain(image: &Path) -> Vec<String> {
    let info = sh(&format!(
        "qemu-img info -U --backing-chain --output=json '{}'",
        image.display()
    ));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["filename"].as_str().unwrap().to_string())
        .collect()
}

/// The files in `dir` whose names carry `.dedisk-` (overlays).
fn overlays_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".dedisk-"))
        .collect()
}

/// A shell command making the guest write: qemu-io run inside the running QEMU on the
/// disk with this device alias, then a flush (as a guest's fsync would), so the write is
/// in the image files, not only in QEMU's caches.
fn guest_write(dom: &str, alias: &str, pattern: u8, offset: u64, len: u64) -> String {
    let io = |cmd: &str| {
        format!(
            "virsh qemu-monitor-command --hmp {dom} 'qemu-io -d /machine/peripheral/{alias}/virtio-backend \"{cmd}\"'"
        )
    };
    format!(
        "{} && {}",
        io(&format!("write -P {pattern:#x} {offset} {len}")),
        io("flush")
    )
}

/// Reads `len` bytes at `offset` of an image (any format, shared with a running QEMU)
/// and says whether they all equal `pattern`.
fn holds(image: &Path, fmt: &str, pattern: u8, offset: u64, len: u64) -> bool {
    let out = Command::new("qemu-io")
        .args(["-U", "-r", "-f", fmt, "-c"])
        .arg(format!("read -P {pattern:#x} {offset} {len}"))
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !text.contains("Pattern verification failed")
}

/// A `virsh` wrapper that passes everything to the real one and runs `after_snapshot`
/// right after a successful `snapshot-create-as`.
fn virsh_wrapper(bin: &Path, after_snapshot: &str) {
    virsh_wrapper_after(bin, "snapshot-create-as", after_snapshot);
}

/// A `virsh` wrapper that runs `script` right after a successful `virsh COMMAND`.
fn virsh_wrapper_after(bin: &Path, command: &str, after_snapshot: &str) {
    std::fs::create_dir_all(bin).unwrap();
    let real = sh("command -v virsh").trim().to_string();
    let path = bin.join("virsh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nPATH=\"$(dirname \"{real}\"):$PATH\"\n\"{real}\" \"$@\"\nrc=$?\nif [ $rc = 0 ] && [ \"$1\" = {command} ]; then\n{after_snapshot}\nfi\nexit $rc\n"
        ),
    )
    .unwrap();
    sh(&format!("chmod +x '{}'", path.display()));
}

fn run_job(bin: &Path, job: &Path) -> std::process::Output {
    run_with_bin_first(bin, &["run", p(job)])
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fields drop in order: the domain goes before its directory.
struct Fixture {
    dom: Domain,
    _dir: tempfile::TempDir,
    d: PathBuf,
    images: PathBuf,
    repo: PathBuf,
    vda: PathBuf,
    vdb: PathBuf,
    nvram: PathBuf,
    template: PathBuf,
    template_sha: String,
}

/// A running domain with a qcow2 `vda` and a raw `vdb`, both holding random data, and a
/// read-only CD-ROM (never backed up). With `uefi`, OVMF firmware and an NVRAM file,
/// under TCG: OVMF's early 32-bit code hits a KVM emulation failure on this nested
/// host, and SeaBIOS under KVM (the other case) is the real KVM domain.
fn fixture(test: &str, uefi: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let images = d.join("images");
    std::fs::create_dir_all(&images).unwrap();
    // QEMU runs as libvirt-qemu and must reach the images.
    sh(&format!(
        "chmod 755 '{}' '{}'",
        d.display(),
        images.display()
    ));
    // vda is a qcow2 over a raw template, as cloned VMs are: the merge must go into
    // vda.qcow2 and leave the template alone.
    let template = random_image(&images, "template.raw", 12 << 20, 64 << 20);
    let vda = images.join("vda.qcow2");
    sh(&format!(
        "qemu-img create -q -f qcow2 -b '{t}' -F raw '{v}' && qemu-io -f qcow2 -c 'write -P 0x42 20M 3M' '{v}' >/dev/null",
        t = template.display(),
        v = vda.display()
    ));
    let template_sha = sha256(&template);
    let vdb = random_image(&images, "vdb.raw", 6 << 20, 32 << 20);
    let iso = images.join("cd.iso");
    std::fs::write(&iso, vec![0u8; 1 << 20]).unwrap();
    let nvram = images.join("VARS.fd");
    let name = format!("dedisk-e2e-{}-{test}", std::process::id());
    let kind = if Path::new("/dev/kvm").exists() && !uefi {
        "kvm"
    } else {
        "qemu"
    };
    let os = if uefi {
        format!(
            "<type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>{}</nvram>",
            nvram.display()
        )
    } else {
        "<type arch='x86_64' machine='pc'>hvm</type>".into()
    };
    let xml = format!(
        r#"<domain type='{kind}'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    {os}
  </os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{vda}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{vdb}'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{iso}'/>
      <target dev='sda' bus='scsi'/>
      <readonly/>
    </disk>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>"#,
        vda = vda.display(),
        vdb = vdb.display(),
        iso = iso.display(),
    );
    let xml_path = d.join("domain.xml");
    std::fs::write(&xml_path, xml).unwrap();
    virsh(&["define", p(&xml_path)]);
    let dom = Domain { name };
    virsh(&["start", &dom.name]);
    let repo = new_repo(&d, &[]);
    Fixture {
        dom,
        _dir: dir,
        d,
        images,
        repo,
        vda,
        vdb,
        nvram,
        template,
        template_sha,
    }
}

impl Fixture {
    fn job(&self, file: &str, extra: &str) -> PathBuf {
        let job = self.d.join(file);
        std::fs::write(
            &job,
            format!(
                "repository = \"{}\"\n[[vm]]\nname = \"{}\"\nsnapshot = \"libvirt\"\n{}{extra}",
                self.repo.display(),
                self.dom.name,
                // These tests are about the overlay mode unless they say otherwise.
                if extra.contains("libvirt_mode") {
                    ""
                } else {
                    "libvirt_mode = \"snapshot\"\n"
                }
            ),
        )
        .unwrap();
        job
    }

    fn restore(&self, label: &str) -> PathBuf {
        let got = self.d.join(format!("got-{label}"));
        let _ = std::fs::remove_file(&got);
        ok(&[
            "--repo",
            p(&self.repo),
            "restore",
            "-q",
            &format!("{}@latest:{label}", self.dom.name),
            p(&got),
        ]);
        got
    }

    /// The domain runs on its own images again: vda.qcow2 over the untouched template,
    /// vdb.raw alone, and no overlay is left in the image directory or the definition.
    fn back_to_one_file(&self) {
        let s = sources(&self.dom.name);
        assert_eq!(s[0], ("vda".into(), self.vda.display().to_string()));
        assert_eq!(s[1], ("vdb".into(), self.vdb.display().to_string()));
        let persistent = virsh(&["dumpxml", "--inactive", &self.dom.name]);
        assert!(!persistent.contains(".dedisk-"), "{persistent}");
        assert_eq!(
            chain(&self.vda),
            [
                self.vda.display().to_string(),
                self.template.display().to_string()
            ]
        );
        assert_eq!(
            sha256(&self.template),
            self.template_sha,
            "template untouched"
        );
        assert!(
            overlays_in(&self.images).is_empty(),
            "{:?}",
            overlays_in(&self.images)
        );
    }
}

#[test]
fn libvirt_provider_backs_up_the_frozen_base_while_the_guest_writes() {
    if !libvirt_ready() {
        return;
    }
    let f = fixture("frozen", false);
    let dom = f.dom.name.clone();
    // The disks at the instant of the snapshot: nothing writes before the job runs.
    let want_vda = f.d.join("want-vda.raw");
    sh(&format!(
        "qemu-img convert -U -f qcow2 -O raw '{}' '{}'",
        f.vda.display(),
        want_vda.display()
    ));
    let want_vdb = sha256(&f.vdb);

    let bin = f.d.join("bin");
    virsh_wrapper(
        &bin,
        &format!(
            "{}\n{}",
            guest_write(&dom, "virtio-disk0", 0xab, 0, 1 << 20),
            guest_write(&dom, "virtio-disk1", 0xcd, 4 << 20, 1 << 20)
        ),
    );
    // Picked from the hypervisor's list by an anchored pattern (the other test's domain
    // is in that list too).
    let job = f.d.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "repository = \"{}\"\n[defaults]\nlibvirt_mode = \"snapshot\"\n[select]\nfrom = \"libvirt\"\ninclude = [\"dedisk-e2e-{}-fro.*\"]\n",
            f.repo.display(),
            std::process::id()
        ),
    )
    .unwrap();
    let preview = ok(&["run", "--preview", p(&job)]);
    assert!(
        preview.contains(&format!("vm {dom}: snapshot libvirt"))
            && preview.contains("1 VM(s), 0 problem(s)")
            && preview.contains(&format!("disk vda: {} (qcow2)", f.vda.display()))
            && preview.contains(&format!("disk vdb: {} (raw)", f.vdb.display()))
            && !preview.contains("disk sda"),
        "{preview}"
    );
    let out = run_job(&bin, &job);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The restored disks are the base images at snapshot time, without the guest's
    // writes made during the backup.
    assert_eq!(sha256(&f.restore("vda")), sha256(&want_vda));
    assert_eq!(sha256(&f.restore("vdb")), want_vdb);
    // Those writes were merged back into the domain's own images.
    assert!(holds(&f.vda, "qcow2", 0xab, 0, 1 << 20));
    assert!(holds(&f.vdb, "raw", 0xcd, 4 << 20, 1 << 20));
    f.back_to_one_file();
    assert_eq!(
        virsh(&["domstate", &dom]).trim(),
        "running",
        "the guest kept running: {}",
        virsh(&["domstate", "--reason", &dom])
    );

    // Metadata: the definition to `virsh define`, naming the base images.
    let xml = std::fs::read_to_string(f.restore("domain.xml")).unwrap();
    assert!(
        xml.contains(&format!("<name>{dom}</name>"))
            && xml.contains(&f.vda.display().to_string())
            && !xml.contains(".dedisk-"),
        "{xml}"
    );
    let snap = &snapshot_files(&f.repo)[0];
    let labels: Vec<&str> = snap["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["vda", "vdb"], "the CD-ROM is not backed up");

    // A shut-off domain is read as it is.
    virsh(&["destroy", &dom]);
    sh(&format!(
        "qemu-io -f raw -c 'write -P 0x5a 0 64k' '{}'",
        f.vdb.display()
    ));
    let out = run_job(&bin, &job);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sha256(&f.restore("vdb")), sha256(&f.vdb));
}

#[test]
fn libvirt_provider_merges_the_overlay_after_failures_and_leftovers() {
    if !libvirt_ready() {
        return;
    }
    let f = fixture("cleanup", true);
    let dom = f.dom.name.clone();
    let bin = f.d.join("bin");
    virsh_wrapper(&bin, &guest_write(&dom, "virtio-disk0", 0xab, 0, 1 << 20));

    // The backup fails after the snapshot exists (a metadata file that is not there):
    // the overlay is still merged and deleted, the guest's write kept.
    let failing = f.job(
        "failing.toml",
        &format!("meta = [\"{}/nope.xml\"]\n", f.d.display()),
    );
    let out = run_job(&bin, &failing);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nope.xml"), "{}", text(&out));
    assert!(holds(&f.vda, "qcow2", 0xab, 0, 1 << 20));
    f.back_to_one_file();
    assert!(snapshot_files(&f.repo).is_empty());

    // The snapshot itself fails (its overlay directory is missing): nothing changes.
    let no_dir = f.job(
        "nodir.toml",
        &format!("libvirt_overlay_dir = \"{}/missing\"\n", f.d.display()),
    );
    let out = run_job(&bin, &no_dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("snapshot-create-as"), "{}", text(&out));
    f.back_to_one_file();

    // Quiescing is required but the guest has no agent: no snapshot is taken.
    let out = run_job(
        &bin,
        &f.job("quiesce.toml", "libvirt_quiesce = \"always\"\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("guest agent"), "{}", text(&out));
    f.back_to_one_file();

    // SIGTERM (a service manager stopping the job) right after the snapshot: the backup
    // stops, and the overlay is still merged, the guest's write kept.
    let term = f.d.join("term-bin");
    virsh_wrapper(
        &term,
        &format!(
            "{}\nkill -TERM $PPID",
            guest_write(&dom, "virtio-disk0", 0x77, 2 << 20, 1 << 20)
        ),
    );
    let out = run_job(&term, &f.job("term.toml", ""));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("interrupted"), "{}", text(&out));
    assert!(holds(&f.vda, "qcow2", 0x77, 2 << 20, 1 << 20));
    f.back_to_one_file();
    assert!(snapshot_files(&f.repo).is_empty());

    // --preview: an overlay directory too small for what the guest may write.
    let small = f.d.join("small");
    std::fs::create_dir_all(&small).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=1m tmpfs '{}'",
        small.display()
    ));
    let cramped = f.job(
        "cramped.toml",
        &format!("libvirt_overlay_dir = \"{}\"\n", small.display()),
    );
    let out = run(&["run", "--preview", p(&cramped)]);
    sh(&format!("umount '{}'", small.display()));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "libvirt overlays: 1 MiB free in {}, 10 MiB wanted",
            small.display()
        )),
        "{}",
        text(&out)
    );

    // A run killed before its merge leaves the domain on an overlay; the next run
    // merges it first, so the guest's writes into it are in this backup.
    let left = f.images.join("vda.qcow2.dedisk-1-1.qcow2");
    virsh(&[
        "snapshot-create-as",
        &dom,
        "--disk-only",
        "--atomic",
        "--no-metadata",
        "--diskspec",
        &format!("vda,snapshot=external,file={}", left.display()),
        "--diskspec",
        "vdb,snapshot=no",
        "--diskspec",
        "sda,snapshot=no",
    ]);
    sh(&guest_write(&dom, "virtio-disk0", 0xee, 8 << 20, 1 << 20));
    let job = f.job("job.toml", "exclude_disks = [\"vdb\"]\n");
    let out = run_job(Path::new("/nonexistent"), &job);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    f.back_to_one_file();
    let got = f.restore("vda");
    assert!(holds(&got, "raw", 0xee, 8 << 20, 1 << 20));
    assert!(holds(&got, "raw", 0xab, 0, 1 << 20));
    let snaps = snapshot_files(&f.repo);
    assert_eq!(
        snaps[0]["disks"].as_array().unwrap().len(),
        1,
        "vdb excluded"
    );
    // A UEFI domain's variable store is kept beside its definition. The firmware of a
    // running domain may rewrite it at any time (OVMF does while it boots), so its copy
    // is compared exactly once the domain is off.
    let vars = std::fs::read(f.restore("VARS.fd")).unwrap();
    assert_eq!(
        vars.len() as u64,
        std::fs::metadata(&f.nvram).unwrap().len()
    );
    assert_eq!(&vars[40..44], b"_FVH", "a UEFI firmware volume");
    virsh(&["destroy", &dom]);
    let out = run_job(Path::new("/nonexistent"), &job);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sha256(&f.restore("VARS.fd")), sha256(&f.nvram));
}

/// The disk as the guest sees it now (the domain idle, its writes flushed), as raw.
fn disk_now(f: &Fixture, label: &str, image: &Path, fmt: &str) -> String {
    let out = f.d.join(format!("now-{label}.raw"));
    sh(&format!(
        "qemu-img convert -U -f {fmt} -O raw '{}' '{}'",
        image.display(),
        out.display()
    ));
    let h = sha256(&out);
    std::fs::remove_file(out).unwrap();
    h
}

/// The latest snapshot's record (`snapshots --full`), disk by label.
fn latest_disk(f: &Fixture, label: &str) -> serde_json::Value {
    let all = ok_json(&["--repo", p(&f.repo), "snapshots", "--full"]);
    let last = all["snapshots"].as_array().unwrap().last().unwrap().clone();
    last["record"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["label"] == label)
        .unwrap()
        .clone()
}

/// The checkpoints dedisk made on the domain.
fn our_checkpoints(dom: &str) -> Vec<String> {
    virsh(&["checkpoint-list", "--domain", dom, "--name"])
        .lines()
        .filter(|l| l.starts_with("dedisk-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn libvirt_pull_mode_reads_only_what_the_guest_wrote_each_night() {
    if !libvirt_ready() {
        return;
    }
    let f = fixture("pull", false);
    let dom = f.dom.name.clone();
    let scratch = f.d.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let job = f.job(
        "pull.toml",
        &format!(
            "libvirt_mode = \"pull\"\nlibvirt_scratch_dir = \"{}\"\n",
            scratch.display()
        ),
    );
    let preview = ok(&["run", "--preview", p(&job)]);
    assert!(
        preview.contains("(qcow2, changed blocks when running)")
            && preview.contains("(raw, read in full: holds no dirty bitmap)"),
        "{preview}"
    );
    // Night 0: everything.
    let out = run_job(Path::new("/nonexistent"), &job);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        sha256(&f.restore("vda")),
        disk_now(&f, "vda", &f.vda, "qcow2")
    );
    assert_eq!(our_checkpoints(&dom).len(), 1);
    let restored = ok(&[
        "--repo",
        p(&f.repo),
        "restore",
        "-q",
        &format!("{dom}@latest:libvirt-checkpoint.xml"),
        p(&f.d.join("ck.xml")),
    ]);
    let _ = restored;
    assert!(std::fs::read_to_string(f.d.join("ck.xml"))
        .unwrap()
        .contains(&our_checkpoints(&dom)[0]));

    // Three nights of guest writes through QEMU.
    let nights: [&[(u8, u64, u64)]; 3] = [
        &[(0x11, 0, 256 << 10), (0x12, 30 << 20, 1 << 20)],
        &[(0x21, 5 << 20, 64 << 10)],
        &[
            (0x31, 40 << 20, 2 << 20),
            (0x32, 63 << 20, 512 << 10),
            (0x33, 1 << 20, 4096),
        ],
    ];
    for (n, writes) in nights.iter().enumerate() {
        for &(pat, off, len) in *writes {
            sh(&guest_write(&dom, "virtio-disk0", pat, off, len));
        }
        sh(&guest_write(
            &dom,
            "virtio-disk1",
            0x40 + n as u8,
            (n as u64) << 20,
            64 << 10,
        ));
        let want_vda = disk_now(&f, "vda", &f.vda, "qcow2");
        let want_vdb = sha256(&f.vdb);
        let out = run_job(Path::new("/nonexistent"), &job);
        assert_eq!(out.status.code(), Some(0), "night {n}: {}", text(&out));
        assert!(
            text(&out).contains("vda: incremental from"),
            "night {n}: {}",
            text(&out)
        );
        assert!(
            text(&out).contains("vdb: read in full: a raw disk holds no dirty bitmap"),
            "night {n}: {}",
            text(&out)
        );
        let d = latest_disk(&f, "vda");
        let dirty: u64 = writes.iter().map(|w| w.2).sum();
        let changed = d["changes"]["changed_bytes"].as_u64().unwrap();
        assert!(
            changed >= dirty && changed <= dirty + writes.len() as u64 * (128 << 10),
            "night {n}: {d}"
        );
        let read = d["stats"]["read_bytes"].as_u64().unwrap()
            - d["changes"]["verified_bytes"].as_u64().unwrap();
        assert!(
            read <= 4 * changed.max(1 << 20),
            "night {n}: read {read} for {changed} changed"
        );
        assert_eq!(sha256(&f.restore("vda")), want_vda, "night {n}");
        assert_eq!(sha256(&f.restore("vdb")), want_vdb, "night {n}");
        // Only the newest checkpoint is kept; the scratch directory is empty again.
        assert_eq!(our_checkpoints(&dom).len(), 1, "night {n}");
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "night {n}");
    }
    assert_eq!(virsh(&["domstate", &dom]).trim(), "running");
}

#[test]
fn libvirt_pull_mode_recovers_from_a_kill_and_from_lost_checkpoints() {
    if !libvirt_ready() {
        return;
    }
    let f = fixture("pullkill", false);
    let dom = f.dom.name.clone();
    let scratch = f.d.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let job = f.job(
        "pull.toml",
        &format!(
            "libvirt_mode = \"pull\"\nlibvirt_scratch_dir = \"{}\"\nexclude_disks = [\"vdb\"]\n",
            scratch.display()
        ),
    );
    let out = run_job(Path::new("/nonexistent"), &job);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let base_ck = our_checkpoints(&dom);

    // Killed outright right after backup-begin: the job and its checkpoint stay behind,
    // and the guest goes on writing.
    let bin = f.d.join("kill-bin");
    virsh_wrapper_after(&bin, "backup-begin", "kill -KILL $PPID");
    let out = run_job(&bin, &job);
    assert_eq!(out.status.code(), None, "killed: {}", text(&out));
    assert!(virsh(&["backup-dumpxml", "--domain", &dom]).contains("dedisk-pull-"));
    assert_eq!(our_checkpoints(&dom).len(), 2);
    sh(&guest_write(&dom, "virtio-disk0", 0x5a, 9 << 20, 1 << 20));
    // The next night ends that job, deletes that checkpoint (its bitmap merges into the
    // base's), and still sees every write since the base.
    let want = disk_now(&f, "vda", &f.vda, "qcow2");
    let out = run_job(Path::new("/nonexistent"), &job);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("vda: incremental from"),
        "{}",
        text(&out)
    );
    assert_eq!(sha256(&f.restore("vda")), want);
    let now = our_checkpoints(&dom);
    assert_eq!(now.len(), 1);
    assert_ne!(now, base_ck);
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);

    // libvirt forgot the checkpoint but the bitmap is still in the image: it is
    // redefined from the snapshot's copy, and the night stays incremental.
    virsh(&[
        "checkpoint-delete",
        "--domain",
        &dom,
        "--checkpointname",
        &now[0],
        "--metadata",
    ]);
    sh(&guest_write(&dom, "virtio-disk0", 0x6b, 12 << 20, 64 << 10));
    let want = disk_now(&f, "vda", &f.vda, "qcow2");
    let out = run_job(Path::new("/nonexistent"), &job);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("vda: incremental from"),
        "{}",
        text(&out)
    );
    assert_eq!(sha256(&f.restore("vda")), want);

    // The checkpoint and its bitmap deleted behind dedisk's back: a full read, saying why.
    let ck = our_checkpoints(&dom);
    virsh(&[
        "checkpoint-delete",
        "--domain",
        &dom,
        "--checkpointname",
        &ck[0],
    ]);
    sh(&guest_write(&dom, "virtio-disk0", 0x7c, 14 << 20, 64 << 10));
    let want = disk_now(&f, "vda", &f.vda, "qcow2");
    let out = run_job(Path::new("/nonexistent"), &job);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("vda: read in full: checkpoint")
            && text(&out).contains("could not be redefined"),
        "{}",
        text(&out)
    );
    assert_eq!(sha256(&f.restore("vda")), want);

    // The disk grew between nights: a full read, saying why.
    virsh(&[
        "blockresize",
        "--domain",
        &dom,
        "--path",
        "vda",
        "--size",
        "80M",
    ]);
    let want = disk_now(&f, "vda", &f.vda, "qcow2");
    let out = run_job(Path::new("/nonexistent"), &job);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("the base's was"), "{}", text(&out));
    assert_eq!(sha256(&f.restore("vda")), want);
}
