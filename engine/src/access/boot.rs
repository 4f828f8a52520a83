//! `verify --boot`: proof that a backup boots, before the day it has to.
//!
//! A throwaway QEMU guest runs on copy-on-write overlays (qcow2, in a private scratch
//! folder) over this process's own NBD export of the snapshot's disks: the guest's writes
//! land in the overlays, which are deleted afterwards; nothing is written to the
//! repository or to any real disk. Where the snapshot kept its libvirt domain XML, that
//! is the template (machine type, BIOS or UEFI, memory, vCPUs, each disk's bus and boot
//! order); the network is left out, always.
//!
//! Success is a signal the admin chooses: a serial-console line matching a pattern, the
//! guest agent answering `guest-ping`, or (the default) a console screen that stops
//! changing. Failure is reported with its reason: the firmware found nothing to boot (its
//! debug console says so), QEMU died, KVM failed and TCG was not allowed, or no signal
//! came in time. A screenshot (QMP `screendump`, PNG) and the serial and firmware logs
//! are kept as evidence.
//!
//! KVM is used where it works. Under nested KVM a guest can die with an emulation
//! failure (QEMU's status turns `internal-error`): the boot is then started again under
//! TCG, and the report says so.
//!
//! Cleanup: QEMU runs with a parent-death signal (it dies with dedisk, even on SIGKILL),
//! is killed and reaped before this returns, and the scratch folder (overlays, sockets,
//! logs) is removed; the NBD server thread is stopped and joined.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use repo_format::{Repository, SnapshotId};

use crate::error::{Error, Result};

/// What counts as "it booted".
#[derive(Clone, Debug)]
pub enum Signal {
    /// A line on the first serial port matching this pattern.
    Serial(regex::Regex),
    /// The QEMU guest agent answering `guest-ping`.
    Agent,
    /// The console screen unchanged for this long (and not blank).
    Screen(Duration),
}

impl Signal {
    /// A serial-console pattern (a regular expression; a bad one is a usage error).
    pub fn serial(pattern: &str) -> Result<Signal> {
        regex::Regex::new(pattern)
            .map(Signal::Serial)
            .map_err(|e| Error::Usage(format!("--boot-serial {pattern:?}: {e}")))
    }

    fn describe(&self) -> String {
        match self {
            Signal::Serial(re) => format!("serial line matching {:?}", re.as_str()),
            Signal::Agent => "guest agent ping".into(),
            Signal::Screen(d) => format!("screen unchanged for {}s", d.as_secs()),
        }
    }
}

/// Which accelerator to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// KVM when /dev/kvm is usable, TCG when it is not or when KVM fails the guest.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Debug)]
pub struct BootOptions {
    pub signal: Signal,
    pub timeout: Duration,
    pub accel: Accel,
    /// The most memory to give the guest (the template's, capped to this).
    pub max_memory_mib: u64,
    /// A folder to create for the evidence (it must not exist).
    pub evidence: PathBuf,
    /// The QEMU binary.
    pub qemu: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BootVerdict {
    Booted,
    Failed,
    TimedOut,
}

/// One boot test's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BootReport {
    pub snapshot: SnapshotId,
    pub vm: String,
    pub verdict: BootVerdict,
    /// The signal waited for.
    pub signal: String,
    /// Why it failed, or what was seen.
    pub reason: String,
    /// `kvm` or `tcg`: what the final attempt ran under.
    pub accel: String,
    /// Set when KVM was tried and failed.
    pub kvm_failed: Option<String>,
    /// Seconds from the final start of the guest to the signal.
    pub boot_seconds: Option<f64>,
    pub seconds: f64,
    /// From the domain XML, or the defaults (`pc`, BIOS).
    pub machine: String,
    pub firmware: String,
    pub evidence: PathBuf,
    pub screenshot: Option<PathBuf>,
}

/// What the guest is built from: the domain XML's essentials, or defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub machine: String,
    pub uefi: bool,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// Per snapshot disk label: (bus, boot order).
    pub disks: Vec<(String, Bus, Option<u32>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bus {
    Virtio,
    Sata,
    Ide,
    Scsi,
}

/// The memory a guest gets when the snapshot has no domain XML.
const DEFAULT_MEMORY_MIB: u64 = 1024;
const MAX_VCPUS: u32 = 2;
/// A domain XML larger than this is not a domain XML.
const MAX_XML_BYTES: u64 = 1 << 20;

impl Template {
    /// Defaults for `labels` (virtio disks, the first boots).
    fn plain(labels: &[String]) -> Template {
        Template {
            machine: "pc".into(),
            uefi: false,
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            disks: labels
                .iter()
                .map(|l| (l.clone(), Bus::Virtio, None))
                .collect(),
        }
    }

    /// The essentials of a libvirt domain XML, for the disks `labels`. The XML came
    /// from a hypervisor a tenant may control: only values of known shapes are taken
    /// (they end up inside QEMU's comma-separated options), the rest is ignored.
    pub fn from_domain_xml(xml: &str, labels: &[String]) -> std::result::Result<Template, String> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| format!("domain XML: {e}"))?;
        let root = doc.root_element();
        if !root.has_tag_name("domain") {
            return Err("domain XML: the root element is not <domain>".into());
        }
        let mut t = Template::plain(labels);
        if let Some(os) = child(root, "os") {
            if let Some(m) = child(os, "type").and_then(|ty| ty.attribute("machine")) {
                let safe = !m.is_empty()
                    && m.len() <= 64
                    && m.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if safe {
                    t.machine = m.to_string();
                }
            }
            t.uefi = os.attribute("firmware") == Some("efi")
                || child(os, "loader").is_some_and(|l| {
                    l.attribute("type") == Some("pflash")
                        || l.text()
                            .is_some_and(|p| p.contains("OVMF") || p.contains("edk2"))
                });
        }
        if let Some(mem) = child(root, "memory") {
            let n: u64 = mem.text().unwrap_or("").trim().parse().unwrap_or(0);
            let mib = match mem.attribute("unit").unwrap_or("KiB") {
                "b" | "bytes" => n >> 20,
                "KiB" | "k" => n >> 10,
                "MiB" | "M" => n,
                "GiB" | "G" => n.saturating_mul(1024),
                _ => 0,
            };
            if mib >= 64 {
                t.memory_mib = mib;
            }
        }
        if let Some(v) = child(root, "vcpu").and_then(|v| v.text()?.trim().parse::<u32>().ok()) {
            t.vcpus = v.clamp(1, MAX_VCPUS);
        }
        if let Some(devices) = child(root, "devices") {
            for disk in devices.children().filter(|c| c.has_tag_name("disk")) {
                if disk.attribute("device").is_some_and(|d| d != "disk") {
                    continue;
                }
                let Some(target) = child(disk, "target") else {
                    continue;
                };
                let Some(dev) = target.attribute("dev") else {
                    continue;
                };
                let bus = match target.attribute("bus").unwrap_or("virtio") {
                    "sata" => Bus::Sata,
                    "ide" => Bus::Ide,
                    "scsi" => Bus::Scsi,
                    _ => Bus::Virtio,
                };
                let order = child(disk, "boot")
                    .and_then(|b| b.attribute("order")?.parse::<u32>().ok())
                    .filter(|o| (1..=64).contains(o));
                if let Some(d) = t.disks.iter_mut().find(|d| d.0 == dev) {
                    d.1 = bus;
                    d.2 = order;
                }
            }
        }
        Ok(t)
    }
}

/// The first child element of `n` named `name`.
fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

/// Boot-tests snapshot `id`.
pub fn boot_test(
    repo: Arc<Repository>,
    lock: repo_format::lock::SharedLock,
    id: SnapshotId,
    opts: &BootOptions,
    cancel: &crate::cancel::Cancel,
) -> Result<BootReport> {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    let snap = repo.load_snapshot(&id)?;
    if snap.disks.is_empty() {
        return Err(Error::Usage(format!(
            "snapshot {} has no disks to boot",
            id.short()
        )));
    }
    let labels: Vec<String> = snap.disks.iter().map(|d| d.label.clone()).collect();
    let template = match snap.meta.iter().find(|m| m.name == "domain.xml") {
        Some(m) => {
            let xml = crate::read::read_whole(&repo, m.manifest, MAX_XML_BYTES)?;
            Template::from_domain_xml(&String::from_utf8_lossy(&xml), &labels)
                .map_err(Error::Usage)?
        }
        None => Template::plain(&labels),
    };
    create_private_dir(&opts.evidence)?;
    let scratch = tempfile::Builder::new()
        .prefix("dedisk-boot-")
        .tempdir()
        .map_err(|e| Error::target(std::env::temp_dir(), e))?;
    let dir = scratch.path();

    // Our own NBD export of the disks, on a socket only we can reach (0700 folder).
    let sock = dir.join("nbd.sock");
    let listener =
        std::os::unix::net::UnixListener::bind(&sock).map_err(|e| Error::target(&sock, e))?;
    let exports: Vec<super::nbd::Export> = snap
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| super::nbd::Export {
            name: format!("d{i}"),
            aliases: Vec::new(),
            manifest: d.manifest,
        })
        .collect();
    let exports = Arc::new(super::nbd::Exports::new(repo.clone(), lock, exports));
    let stop = crate::cancel::Cancel::new();
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let limits = super::nbd::ServeLimits::default();
            if let Err(e) =
                super::nbd::serve(exports, super::nbd::Listener::Unix(listener), limits, &stop)
            {
                log::warn!("boot test NBD server: {e}");
            }
        })
    };
    let outcome = (|| {
        for (i, d) in snap.disks.iter().enumerate() {
            make_overlay(dir, i, &sock, d.manifest.len_bytes)?;
        }
        let mut report = BootReport {
            snapshot: id,
            vm: snap.name.clone(),
            verdict: BootVerdict::Failed,
            signal: opts.signal.describe(),
            reason: String::new(),
            accel: String::new(),
            kvm_failed: None,
            boot_seconds: None,
            seconds: 0.0,
            machine: template.machine.clone(),
            firmware: if template.uefi { "uefi" } else { "bios" }.into(),
            evidence: opts.evidence.clone(),
            screenshot: None,
        };
        let kvm_usable = Path::new("/dev/kvm").exists()
            && std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
        let mut accel = match opts.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
            Accel::Auto if kvm_usable => "kvm",
            Accel::Auto => {
                report.kvm_failed = Some("/dev/kvm is not usable here".into());
                "tcg"
            }
        };
        let deadline = started + opts.timeout;
        loop {
            report.accel = accel.into();
            let attempt = run_guest(dir, &template, opts, accel, deadline, cancel)?;
            match attempt {
                Attempt::KvmFailed(why) if opts.accel == Accel::Auto && accel == "kvm" => {
                    log::info!("KVM failed the guest ({why}); booting again under TCG");
                    report.kvm_failed = Some(why);
                    accel = "tcg";
                    // A fresh start: the overlays hold the first attempt's writes.
                    for (i, d) in snap.disks.iter().enumerate() {
                        make_overlay(dir, i, &sock, d.manifest.len_bytes)?;
                    }
                    continue;
                }
                Attempt::KvmFailed(why) => {
                    report.reason = format!("KVM failed the guest: {why}");
                }
                Attempt::Booted { after, what } => {
                    report.verdict = BootVerdict::Booted;
                    report.boot_seconds = Some(after.as_secs_f64());
                    report.reason = what;
                }
                Attempt::Failed(why) => report.reason = why,
                Attempt::TimedOut => {
                    report.verdict = BootVerdict::TimedOut;
                    report.reason = format!(
                        "no sign of a boot within {}s (waited for: {})",
                        opts.timeout.as_secs(),
                        opts.signal.describe()
                    );
                }
            }
            break;
        }
        // Evidence: what the run left in the scratch folder.
        for (from, to) in [
            ("console.png", "console.png"),
            ("serial.log", "serial.log"),
            ("firmware.log", "firmware.log"),
            ("qemu.log", "qemu.log"),
        ] {
            let src = dir.join(from);
            if src.exists() {
                copy_private(&src, &opts.evidence.join(to))?;
                if from == "console.png" {
                    report.screenshot = Some(opts.evidence.join(to));
                }
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        let json = serde_json::to_vec_pretty(&report).expect("plain data");
        write_private(&opts.evidence.join("report.json"), &json)?;
        Ok(report)
    })();
    stop.flag()
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    drop(scratch);
    match &outcome {
        // What the dashboard and the metrics show (this host's cache).
        Ok(r) => crate::maintain::last_runs::record_boot(&repo, r, started_at),
        // No test ran: leave no empty evidence folder behind (remove_dir keeps a
        // folder that holds anything).
        Err(_) => {
            let _ = std::fs::remove_dir(&opts.evidence);
        }
    }
    outcome
}

/// A fresh qcow2 overlay `d{i}.qcow2` over export `d{i}` (its size given, so qemu-img
/// does not open the export).
fn make_overlay(dir: &Path, i: usize, sock: &Path, size: u64) -> Result<()> {
    let overlay = dir.join(format!("d{i}.qcow2"));
    let _ = std::fs::remove_file(&overlay);
    let backing = format!("nbd+unix:///d{i}?socket={}", sock.display());
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b"])
        .arg(&backing)
        .arg(&overlay)
        .arg(size.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Usage(format!("qemu-img could not run: {e}")))?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "qemu-img create failed: {}",
            repo_format::names::escape(String::from_utf8_lossy(&out.stderr).trim())
        )));
    }
    Ok(())
}

enum Attempt {
    Booted { after: Duration, what: String },
    Failed(String),
    TimedOut,
    KvmFailed(String),
}

/// QEMU's option syntax: a comma inside a value is written twice.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The first OVMF code and variables files installed.
fn ovmf() -> Option<(PathBuf, PathBuf)> {
    [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ]
    .iter()
    .find(|(c, v)| Path::new(c).exists() && Path::new(v).exists())
    .map(|(c, v)| (c.into(), v.into()))
}

/// The QEMU argument vector for one attempt.
fn qemu_args(dir: &Path, t: &Template, opts: &BootOptions, accel: &str) -> Result<Vec<String>> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let mem = t.memory_mib.min(opts.max_memory_mib).max(128);
    push(&[
        "-name",
        "dedisk-boot-test",
        "-nodefaults",
        "-no-user-config",
    ]);
    push(&["-machine", &format!("{},accel={accel}", t.machine)]);
    push(&["-m", &mem.to_string(), "-smp", &t.vcpus.to_string()]);
    // A display device for the firmware and screendump; no window; no network.
    push(&["-vga", "std", "-display", "none", "-nic", "none"]);
    push(&[
        "-chardev",
        &format!("file,id=ser0,path={}", opt_path(&dir.join("serial.log"))),
        "-serial",
        "chardev:ser0",
    ]);
    push(&[
        "-chardev",
        &format!("file,id=fw,path={}", opt_path(&dir.join("firmware.log"))),
        "-device",
        "isa-debugcon,iobase=0x402,chardev=fw",
    ]);
    push(&[
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            opt_path(&dir.join("qmp.sock"))
        ),
    ]);
    if matches!(opts.signal, Signal::Agent) {
        push(&[
            "-chardev",
            &format!(
                "socket,id=qga0,path={},server=on,wait=off",
                opt_path(&dir.join("qga.sock"))
            ),
            "-device",
            "virtio-serial",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]);
    }
    if t.uefi {
        let Some((code, vars)) = ovmf() else {
            return Err(Error::Usage(
                "the domain boots with UEFI and no OVMF firmware is installed (Debian: ovmf)"
                    .into(),
            ));
        };
        let my_vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(&vars, &my_vars).map_err(|e| Error::target(&my_vars, e))?;
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={}", opt_path(&code)),
            "-drive",
            &format!("if=pflash,format=raw,file={}", opt_path(&my_vars)),
        ]);
    }
    // Boot order: the template's orders first, then the rest in disk order.
    let mut order: Vec<usize> = (0..t.disks.len()).collect();
    order.sort_by_key(|&i| (t.disks[i].2.unwrap_or(u32::MAX), i));
    let (mut ahci, mut scsi) = (false, false);
    for (i, (_, bus, _)) in t.disks.iter().enumerate() {
        let boot = order.iter().position(|&j| j == i).expect("every disk") + 1;
        push(&[
            "-drive",
            &format!(
                "file={},format=qcow2,if=none,id=d{i},cache=unsafe",
                opt_path(&dir.join(format!("d{i}.qcow2")))
            ),
        ]);
        let device = match bus {
            Bus::Virtio => format!("virtio-blk-pci,drive=d{i},bootindex={boot}"),
            Bus::Sata => {
                if !ahci {
                    push(&["-device", "ahci,id=ahci0"]);
                    ahci = true;
                }
                format!("ide-hd,drive=d{i},bus=ahci0.{i},bootindex={boot}")
            }
            Bus::Ide if t.machine.contains("q35") => {
                format!("ide-hd,drive=d{i},bus=ide.{i},bootindex={boot}")
            }
            Bus::Ide => format!(
                "ide-hd,drive=d{i},bus=ide.{},unit={},bootindex={boot}",
                i / 2,
                i % 2
            ),
            Bus::Scsi => {
                if !scsi {
                    push(&["-device", "virtio-scsi-pci,id=scsi0"]);
                    scsi = true;
                }
                format!("scsi-hd,drive=d{i},bus=scsi0.0,bootindex={boot}")
            }
        };
        push(&["-device", &device]);
    }
    Ok(a)
}

/// Starts QEMU and watches it until the signal, a failure, or the deadline.
fn run_guest(
    dir: &Path,
    t: &Template,
    opts: &BootOptions,
    accel: &str,
    deadline: Instant,
    cancel: &crate::cancel::Cancel,
) -> Result<Attempt> {
    for f in [
        "serial.log",
        "firmware.log",
        "qemu.log",
        "console.png",
        "qmp.sock",
        "qga.sock",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let args = qemu_args(dir, t, opts, accel)?;
    let log = std::fs::File::create(dir.join("qemu.log")).map_err(|e| Error::target(dir, e))?;
    let mut cmd = Command::new(&opts.qemu);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal,
    // so QEMU dies with dedisk however dedisk ends.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::Usage(format!("{} could not run: {e}", opts.qemu.display())))?;
    let mut guest = Guest { child, qmp: None };
    let started = Instant::now();
    let result = watch(&mut guest, dir, opts, started, deadline, cancel);
    // Evidence first, while the guest still shows its screen.
    if let Some(q) = guest.qmp.as_mut() {
        let png = dir.join("console.png");
        let _ = q.execute(
            "screendump",
            serde_json::json!({"filename": png.display().to_string(), "format": "png"}),
        );
        let _ = q.execute("quit", serde_json::json!({}));
    }
    guest.stop();
    result
}

/// A running QEMU and its monitor.
struct Guest {
    child: Child,
    qmp: Option<Qmp>,
}

impl Guest {
    fn stop(&mut self) {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail_text(path: &Path, max: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(max)..]).into_owned();
    text
}

/// The firmware's own verdict that nothing boots (SeaBIOS's debug console).
fn firmware_gave_up(dir: &Path) -> Option<String> {
    let log = tail_text(&dir.join("firmware.log"), 64 << 10);
    if !log.contains("No bootable device") {
        return None;
    }
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("Boot failed") || l.contains("No bootable device"))
        .collect();
    Some(repo_format::names::escape(&why.join("; ")))
}

fn watch(
    guest: &mut Guest,
    dir: &Path,
    opts: &BootOptions,
    started: Instant,
    deadline: Instant,
    cancel: &crate::cancel::Cancel,
) -> Result<Attempt> {
    let booted = |what: String| Attempt::Booted {
        after: started.elapsed(),
        what,
    };
    let serial = dir.join("serial.log");
    let serial_matches = |re: &regex::Regex| {
        let text = tail_text(&serial, 1 << 20);
        text.lines()
            .find(|l| re.is_match(l))
            .map(|l| format!("serial: {}", repo_format::names::escape(l.trim())))
    };
    let mut last_screen: Option<(Vec<u8>, Instant)> = None;
    let mut next_screen = Instant::now();
    let mut next_png = Instant::now();
    loop {
        cancel.check()?;
        if let Signal::Serial(re) = &opts.signal {
            if let Some(line) = serial_matches(re) {
                return Ok(booted(line));
            }
        }
        if let Ok(Some(status)) = guest.child.try_wait() {
            if let Signal::Serial(re) = &opts.signal {
                if let Some(line) = serial_matches(re) {
                    return Ok(booted(line));
                }
            }
            let err = tail_text(&dir.join("qemu.log"), 4096);
            if err.contains("KVM internal error") || err.contains("emulation failure") {
                return Ok(Attempt::KvmFailed(first_line_with(&err, "KVM")));
            }
            if let Some(why) = firmware_gave_up(dir) {
                return Ok(Attempt::Failed(format!("firmware: {why}")));
            }
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Ok(Attempt::Failed(if status.success() && last.is_empty() {
                "the guest powered off before the signal".into()
            } else {
                format!(
                    "QEMU ended ({status}) before the signal: {}",
                    repo_format::names::escape(last)
                )
            }));
        }
        if guest.qmp.is_none() {
            guest.qmp = Qmp::connect(&dir.join("qmp.sock")).ok();
        }
        if let Some(q) = guest.qmp.as_mut() {
            if let Ok(st) = q.execute("query-status", serde_json::json!({})) {
                if st["status"] == "internal-error" {
                    let err = tail_text(&dir.join("qemu.log"), 4096);
                    return Ok(Attempt::KvmFailed(first_line_with(&err, "KVM")));
                }
            }
        }
        if let Some(why) = firmware_gave_up(dir) {
            return Ok(Attempt::Failed(format!("firmware: {why}")));
        }
        // A screenshot every two seconds: the last one is the evidence even when the
        // guest powers off (no screen to dump then).
        if Instant::now() >= next_png {
            next_png = Instant::now() + Duration::from_secs(2);
            if let Some(q) = guest.qmp.as_mut() {
                let png = dir.join("console.png");
                let _ = q.execute(
                    "screendump",
                    serde_json::json!({"filename": png.display().to_string(), "format": "png"}),
                );
            }
        }
        match &opts.signal {
            Signal::Agent if agent_ping(&dir.join("qga.sock")) => {
                return Ok(booted("guest agent answered guest-ping".into()));
            }
            Signal::Screen(stable) if Instant::now() >= next_screen => {
                next_screen = Instant::now() + Duration::from_secs(2);
                if let Some(q) = guest.qmp.as_mut() {
                    let ppm = dir.join("screen.ppm");
                    let shot = q.execute(
                        "screendump",
                        serde_json::json!({"filename": ppm.display().to_string()}),
                    );
                    if let (Ok(_), Ok(bytes)) = (shot, std::fs::read(&ppm)) {
                        match &last_screen {
                            Some((prev, since)) if same_screen(prev, &bytes) => {
                                if since.elapsed() >= *stable && !blank(&bytes) {
                                    return Ok(booted(format!(
                                        "screen unchanged for {}s",
                                        since.elapsed().as_secs()
                                    )));
                                }
                            }
                            _ => last_screen = Some((bytes, Instant::now())),
                        }
                    }
                }
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Ok(Attempt::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn first_line_with(text: &str, needle: &str) -> String {
    repo_format::names::escape(
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or("status internal-error")
            .trim(),
    )
}

/// Whether two PPM screenshots show the same screen: a blinking text cursor changes a
/// few dozen pixels, so up to 1 in 200 may differ.
fn same_screen(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false; // the resolution changed
    }
    let differ = a.chunks(3).zip(b.chunks(3)).filter(|(x, y)| x != y).count();
    differ * 200 <= a.len() / 3
}

/// Whether a PPM screenshot is one colour (a blank or black screen proves nothing).
fn blank(ppm: &[u8]) -> bool {
    // The pixels follow the header's fourth whitespace-separated field.
    let mut fields = 0;
    let mut i = 0;
    while i < ppm.len() && fields < 4 {
        while i < ppm.len() && ppm[i].is_ascii_whitespace() {
            i += 1;
        }
        while i < ppm.len() && !ppm[i].is_ascii_whitespace() {
            i += 1;
        }
        fields += 1;
    }
    let pixels = ppm.get(i + 1..).unwrap_or(&[]);
    pixels
        .chunks(3)
        .all(|p| p == pixels.get(..3).unwrap_or(&[]))
}

/// A QMP connection (line-delimited JSON; events are skipped).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> std::io::Result<Qmp> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut q = Qmp {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        };
        let mut greeting = String::new();
        q.reader.read_line(&mut greeting)?;
        q.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(q)
    }

    fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> std::io::Result<serde_json::Value> {
        let msg = serde_json::json!({"execute": command, "arguments": arguments});
        let mut line = serde_json::to_vec(&msg).expect("plain data");
        line.push(b'\n');
        self.writer.write_all(&line)?;
        loop {
            let mut reply = String::new();
            if self.reader.read_line(&mut reply)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let v: serde_json::Value = serde_json::from_str(&reply)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(std::io::Error::other(e.to_string()));
            }
            // An event: wait for the reply.
        }
    }
}

/// Whether the guest agent answers `guest-ping` within a second.
fn agent_ping(path: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(path) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"{\"execute\":\"guest-ping\"}\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.contains(&b'\n') {
            break;
        }
    }
    String::from_utf8_lossy(&got).contains("\"return\"")
}

/// Creates the evidence folder, 0700; an existing one (or a symlink) is refused.
fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::TargetExists { path: path.into() },
            _ => Error::target(path, e),
        })
}

/// Writes a new evidence file, 0600, never through a symlink or over a file.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    crate::io::write_new_file(path, 0o600, data).map_err(|e| Error::target(path, e))
}

fn copy_private(from: &Path, to: &Path) -> Result<()> {
    let data = std::fs::read(from).map_err(|e| Error::target(from, e))?;
    write_private(to, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_xml_gives_machine_firmware_buses_and_only_safe_values() {
        let labels = vec!["vda".to_string(), "sdb".to_string()];
        let xml = r#"<domain type='kvm'><name>web01</name>
            <memory unit='KiB'>2097152</memory><vcpu>8</vcpu>
            <os firmware='efi'><type arch='x86_64' machine='pc-q35-10.0'>hvm</type></os>
            <devices>
              <disk type='file' device='disk'><target dev='vda' bus='virtio'/><boot order='2'/></disk>
              <disk type='file' device='disk'><target dev='sdb' bus='sata'/><boot order='1'/></disk>
              <disk type='file' device='cdrom'><target dev='sdc' bus='sata'/></disk>
              <interface type='network'><source network='default'/></interface>
            </devices></domain>"#;
        let t = Template::from_domain_xml(xml, &labels).unwrap();
        assert_eq!(t.machine, "pc-q35-10.0");
        assert!(t.uefi);
        assert_eq!(t.memory_mib, 2048);
        assert_eq!(t.vcpus, MAX_VCPUS);
        assert_eq!(
            t.disks,
            vec![
                ("vda".into(), Bus::Virtio, Some(2)),
                ("sdb".into(), Bus::Sata, Some(1))
            ]
        );
        // A machine type that would add QEMU options is ignored.
        let evil = r#"<domain><os><type machine='pc,accel=kvm,kernel=/etc/shadow'>hvm</type></os></domain>"#;
        let t = Template::from_domain_xml(evil, &labels).unwrap();
        assert_eq!(t.machine, "pc");
        assert!(Template::from_domain_xml("<notxml", &labels).is_err());
        assert!(Template::from_domain_xml("<vm/>", &labels).is_err());
    }

    #[test]
    fn option_paths_escape_commas_and_blank_screens_are_seen() {
        assert_eq!(opt_path(Path::new("/tmp/a,b")), "/tmp/a,,b");
        let mut ppm = b"P6\n4 2\n255\n".to_vec();
        ppm.extend(std::iter::repeat_n([0u8, 0, 0], 8).flatten());
        assert!(blank(&ppm));
        let n = ppm.len();
        ppm[n - 1] = 200;
        assert!(!blank(&ppm));
    }
}
