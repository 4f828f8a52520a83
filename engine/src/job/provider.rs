//! Snapshot providers: make a point-in-time view of a VM's disks, hand dedisk the paths to
//! read, and release the view afterwards, whatever happened in between.
//!
//! - `none`: the disks as they are (already a snapshot, or a stopped VM).
//! - `command`: `snapshot_create` prints the path to read for each disk;
//!   `snapshot_release` undoes it.
//! - `btrfs`: a read-only snapshot of the subvolume holding the images, deleted after.
//! - `lvm`: `lvcreate --snapshot` per logical volume; after the backup the snapshot's fill
//!   state is checked (an overflowed or invalid snapshot means an inconsistent copy, and
//!   the backup fails), then `lvremove`.
//! - `zfs`: `zfs snapshot` of each zvol and a temporary clone of it (a clone's device
//!   appears whatever the `snapdev` property says), read at `/dev/zvol/...`, both
//!   destroyed after.
//! - `xenserver`: disks name VDI UUIDs; `xe vdi-snapshot`, then `xe vdi-export
//!   filename= format=raw` of the snapshot to a pipe dedisk reads as a stream, and
//!   `xe vdi-destroy` of the snapshot after.
//!
//! A provider records what it created as it goes, so `release` undoes exactly that even
//! when `acquire` failed halfway.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Settings, VmPlan};

/// Problems with a VM's snapshot settings, found at load time.
pub fn check_settings(method: &str, s: &Settings) -> Result<(), String> {
    match method {
        "none" => Ok(()),
        "command" if s.snapshot_create.is_none() => {
            Err("snapshot = \"command\" needs snapshot_create".into())
        }
        "command" => Ok(()),
        "btrfs" if s.btrfs_subvolume.is_none() => {
            Err("snapshot = \"btrfs\" needs btrfs_subvolume".into())
        }
        "btrfs" => Ok(()),
        "lvm" => match &s.lvm_snapshot_size {
            Some(size) if !is_lvm_size(size) => {
                Err(format!("lvm_snapshot_size {size:?} is not a size like 10G"))
            }
            _ => Ok(()),
        },
        "zfs" | "xenserver" => Ok(()),
        "libvirt" => Err(format!(
            "snapshot method {method:?} is not implemented yet (use command)"
        )),
        other => Err(format!(
            "unknown snapshot method {other:?} (none, command, btrfs, lvm, zfs, xenserver)"
        )),
    }
}

/// `10G`, `512M`, `1.5T`: digits (and a point) and one unit letter, as lvcreate takes.
fn is_lvm_size(size: &str) -> bool {
    let digits = size.trim_end_matches(|c: char| "kKmMgGtT".contains(c));
    size.len() - digits.len() <= 1
        && !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Runs `sh -c cmd` with `env`; returns stdout, or an error with stderr.
pub fn shell(cmd: &str, env: &[(&str, String)]) -> Result<String, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .map_err(|e| format!("`{cmd}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs every release command, even after one fails (each undoes a different thing);
/// returns the first failure.
fn release_all(
    cmds: impl IntoIterator<Item = (String, Vec<(&'static str, String)>)>,
) -> Result<(), String> {
    let mut first_err = None;
    for (cmd, env) in cmds {
        if let Err(e) = shell(&cmd, &env) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// A point-in-time view of one VM's disks.
pub trait Provider {
    /// Creates the view; returns (label, path to read) per disk.
    fn acquire(&mut self) -> Result<Vec<(String, String)>, String>;
    /// After a backup, before `release`: is the copy still consistent? (An LVM snapshot
    /// that overflowed during the backup is not.)
    fn check_after(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Undoes everything `acquire` created (also after it failed halfway).
    fn release(&mut self) -> Result<(), String>;
    /// What `--preview` can check without changing anything.
    fn preview(&self) -> Vec<String>;
    /// One line for the plan.
    fn describe(&self) -> String;
}

pub fn for_vm(vm: &VmPlan) -> Box<dyn Provider> {
    match vm.settings.snapshot.as_deref().unwrap_or("none") {
        "command" => Box::new(CommandProvider {
            vm: vm.clone(),
            made: Vec::new(),
        }),
        "btrfs" => Box::new(Btrfs {
            vm: vm.clone(),
            snapshot: None,
        }),
        "zfs" => Box::new(Zfs {
            vm: vm.clone(),
            made: Vec::new(),
        }),
        "xenserver" => Box::new(XenServer {
            vm: vm.clone(),
            made: Vec::new(),
            exports: Vec::new(),
        }),
        "lvm" => Box::new(Lvm {
            vm: vm.clone(),
            made: Vec::new(),
        }),
        _ => Box::new(NoSnapshot { vm: vm.clone() }),
    }
}

fn missing_sources(vm: &VmPlan) -> Vec<String> {
    vm.disks
        .iter()
        .filter(|(_, p)| !p.exists())
        .map(|(l, p)| format!("disk {l}: {} does not exist", p.display()))
        .collect()
}

struct NoSnapshot {
    vm: VmPlan,
}

impl Provider for NoSnapshot {
    fn acquire(&mut self) -> Result<Vec<(String, String)>, String> {
        Ok(self
            .vm
            .disks
            .iter()
            .map(|(l, p)| (l.clone(), p.display().to_string()))
            .collect())
    }
    fn release(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn preview(&self) -> Vec<String> {
        missing_sources(&self.vm)
    }
    fn describe(&self) -> String {
        "none (read as they are)".into()
    }
}

struct CommandProvider {
    vm: VmPlan,
    /// (label, source, path printed by the create command).
    made: Vec<(String, PathBuf, String)>,
}

impl CommandProvider {
    fn env(&self, label: &str, source: &Path) -> Vec<(&'static str, String)> {
        vec![
            ("DEDISK_VM", self.vm.name.clone()),
            ("DEDISK_DISK", label.to_string()),
            ("DEDISK_SOURCE", source.display().to_string()),
        ]
    }
}

impl Provider for CommandProvider {
    fn acquire(&mut self) -> Result<Vec<(String, String)>, String> {
        let create = self.vm.settings.snapshot_create.clone().unwrap_or_default();
        let mut out = Vec::new();
        for (label, source) in self.vm.disks.clone() {
            let printed = shell(&create, &self.env(&label, &source))?;
            let path = printed.lines().next().unwrap_or("").trim().to_string();
            if path.is_empty() {
                return Err(format!("`{create}` printed no path for disk {label}"));
            }
            self.made.push((label.clone(), source, path.clone()));
            out.push((label, path));
        }
        Ok(out)
    }
    fn release(&mut self) -> Result<(), String> {
        let Some(release) = self.vm.settings.snapshot_release.clone() else {
            self.made.clear();
            return Ok(());
        };
        let made = std::mem::take(&mut self.made);
        release_all(made.into_iter().map(|(label, source, path)| {
            let mut env = self.env(&label, &source);
            env.push(("DEDISK_SNAPSHOT_PATH", path));
            (release.clone(), env)
        }))
    }
    fn preview(&self) -> Vec<String> {
        let mut problems = missing_sources(&self.vm);
        for cmd in [
            &self.vm.settings.snapshot_create,
            &self.vm.settings.snapshot_release,
        ]
        .into_iter()
        .flatten()
        {
            problems.extend(check_executable(cmd));
        }
        problems
    }
    fn describe(&self) -> String {
        format!(
            "command `{}`",
            self.vm.settings.snapshot_create.as_deref().unwrap_or("")
        )
    }
}

/// The program a shell command would run, if it can be found and executed.
pub fn check_executable(cmd: &str) -> Option<String> {
    let prog = cmd.split_whitespace().next()?;
    let found = if prog.contains('/') {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(prog).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    } else {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {prog}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    (!found).then(|| format!("`{prog}` is not an executable program"))
}

struct Btrfs {
    vm: VmPlan,
    snapshot: Option<PathBuf>,
}

impl Btrfs {
    fn subvolume(&self) -> PathBuf {
        self.vm.settings.btrfs_subvolume.clone().unwrap_or_default()
    }
}

impl Provider for Btrfs {
    fn acquire(&mut self) -> Result<Vec<(String, String)>, String> {
        let subvol = self
            .subvolume()
            .canonicalize()
            .map_err(|e| format!("{}: {e}", self.subvolume().display()))?;
        let mut rel = Vec::new();
        for (label, source) in &self.vm.disks {
            let real = source
                .canonicalize()
                .map_err(|e| format!("disk {label}: {}: {e}", source.display()))?;
            let r = real.strip_prefix(&subvol).map_err(|_| {
                format!(
                    "disk {label}: {} is not inside the subvolume {}",
                    real.display(),
                    subvol.display()
                )
            })?;
            rel.push((label.clone(), r.to_path_buf()));
        }
        let snap = subvol.join(format!(
            ".dedisk-snapshot-{}-{}",
            self.vm.name,
            std::process::id()
        ));
        shell(
            &format!(
                "btrfs subvolume snapshot -r '{}' '{}'",
                subvol.display(),
                snap.display()
            ),
            &[],
        )?;
        self.snapshot = Some(snap.clone());
        Ok(rel
            .into_iter()
            .map(|(l, r)| (l, snap.join(r).display().to_string()))
            .collect())
    }
    fn release(&mut self) -> Result<(), String> {
        match self.snapshot.take() {
            Some(s) => shell(&format!("btrfs subvolume delete '{}'", s.display()), &[]).map(drop),
            None => Ok(()),
        }
    }
    fn preview(&self) -> Vec<String> {
        let mut problems = missing_sources(&self.vm);
        if let Some(p) = check_executable("btrfs") {
            problems.push(p);
        } else if let Err(e) = shell(
            &format!("btrfs subvolume show '{}'", self.subvolume().display()),
            &[],
        ) {
            problems.push(format!(
                "{} is not a btrfs subvolume: {e}",
                self.subvolume().display()
            ));
        }
        problems
    }
    fn describe(&self) -> String {
        format!("btrfs read-only snapshot of {}", self.subvolume().display())
    }
}

struct Lvm {
    vm: VmPlan,
    /// `VG/NAME` of each snapshot created.
    made: Vec<String>,
}

/// The single non-empty output line of an `lvs --noheadings` call, trimmed.
fn lvs(args: &str) -> Result<String, String> {
    let out = shell(&format!("lvs --noheadings {args}"), &[])?;
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("`lvs {args}` printed nothing"))
}

impl Provider for Lvm {
    fn acquire(&mut self) -> Result<Vec<(String, String)>, String> {
        let size = self
            .vm
            .settings
            .lvm_snapshot_size
            .clone()
            .unwrap_or_else(|| "5G".into());
        let mut out = Vec::new();
        for (label, source) in &self.vm.disks {
            let id = lvs(&format!(
                "--separator , -o vg_name,lv_name '{}'",
                source.display()
            ))?;
            let Some((vg, lv)) = id.split_once(',') else {
                return Err(format!(
                    "disk {label}: {} is not a logical volume (lvs said {id:?})",
                    source.display()
                ));
            };
            let name = format!("{lv}-dedisk-{}", std::process::id());
            shell(
                &format!("lvcreate --snapshot --size {size} --name {name} {vg}/{lv}"),
                &[],
            )?;
            self.made.push(format!("{vg}/{name}"));
            let path = lvs(&format!("-o lv_path {vg}/{name}"))?;
            out.push((label.clone(), path));
        }
        Ok(out)
    }

    fn check_after(&mut self) -> Result<(), String> {
        for snap in &self.made {
            let state = lvs(&format!("--separator , -o snap_percent,lv_attr {snap}"))?;
            let (percent, attr) = state.split_once(',').unwrap_or((state.as_str(), ""));
            let full = percent.trim().parse::<f64>().is_ok_and(|p| p >= 100.0);
            // lv_attr's fifth character is the state: 'I' invalid snapshot, 'S' merging.
            let invalid = attr.chars().nth(4) == Some('I');
            if full || invalid {
                return Err(format!(
                    "LVM snapshot {snap} overflowed during the backup ({percent}% used, attributes {attr}); the copy is inconsistent: give it more space (lvm_snapshot_size)"
                ));
            }
        }
        Ok(())
    }

    fn release(&mut self) -> Result<(), String> {
        let made = std::mem::take(&mut self.made);
        release_all(
            made.into_iter()
                .map(|snap| (format!("lvremove --yes {snap}"), Vec::new())),
        )
    }

    fn preview(&self) -> Vec<String> {
        let mut problems = missing_sources(&self.vm);
        for tool in ["lvs", "lvcreate", "lvremove"] {
            problems.extend(check_executable(tool));
        }
        problems
    }

    fn describe(&self) -> String {
        format!(
            "lvm snapshots of {} each",
            self.vm
                .settings
                .lvm_snapshot_size
                .as_deref()
                .unwrap_or("5G")
        )
    }
}

struct Zfs {
    vm: VmPlan,
    /// (snapshot `pool/vol@name`, clone `pool/vol-name` once made).
    made: Vec<(String, Option<String>)>,
}

impl Zfs {
    /// `/dev/zvol/pool/vol` -> `pool/vol`.
    fn dataset(source: &Path) -> Option<String> {
        let rel = source.strip_prefix("/dev/zvol").ok()?;
        let s = rel.to_str()?.trim_matches('/').to_string();
        (!s.is_empty() && !s.contains('@')).then_some(s)
    }
}

impl Provider for Zfs {
    fn acquire(&mut self) -> Result<Vec<(String, String)>, String> {
        let tag = format!("dedisk-{}", std::process::id());
        let mut out = Vec::new();
        for (label, source) in &self.vm.disks {
            let ds = Self::dataset(source).ok_or_else(|| {
                format!(
                    "disk {label}: {} is not a zvol device (/dev/zvol/POOL/VOLUME)",
                    source.display()
                )
            })?;
            let snap = format!("{ds}@{tag}");
            shell(&format!("zfs snapshot {snap}"), &[])?;
            self.made.push((snap.clone(), None));
            let clone = format!("{ds}-{tag}");
            shell(&format!("zfs clone -o readonly=on {snap} {clone}"), &[])?;
            if let Some(last) = self.made.last_mut() {
                last.1 = Some(clone.clone());
            }
            out.push((label.clone(), format!("/dev/zvol/{clone}")));
        }
        Ok(out)
    }

    fn release(&mut self) -> Result<(), String> {
        let mut first_err = None;
        // Clone first: a snapshot with a clone cannot be destroyed.
        for (snap, clone) in std::mem::take(&mut self.made) {
            if let Some(c) = clone {
                if let Err(e) = shell(&format!("zfs destroy {c}"), &[]) {
                    first_err.get_or_insert(e);
                    continue;
                }
            }
            if let Err(e) = shell(&format!("zfs destroy {snap}"), &[]) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn preview(&self) -> Vec<String> {
        let mut problems = missing_sources(&self.vm);
        problems.extend(check_executable("zfs"));
        for (label, source) in &self.vm.disks {
            if Self::dataset(source).is_none() {
                problems.push(format!(
                    "disk {label}: {} is not a zvol device",
                    source.display()
                ));
            }
        }
        problems
    }

    fn describe(&self) -> String {
        "zfs snapshot and temporary clone of each zvol".into()
    }
}

struct XenServer {
    vm: VmPlan,
    /// Snapshot VDI UUIDs created.
    made: Vec<String>,
    /// `xe vdi-export` processes, with the read end of their stdout kept open: dedisk
    /// reads it through `/proc/self/fd/N`. An exporter that dies early closes its end, so
    /// the read sees the end of the stream rather than blocking (as a named pipe would).
    exports: Vec<(std::process::Child, std::process::ChildStdout)>,
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

impl Provider for XenServer {
    fn acquire(&mut self) -> Result<Vec<(String, String)>, String> {
        use std::os::unix::io::AsRawFd;
        let mut out = Vec::new();
        for (label, vdi) in &self.vm.disks {
            let vdi = vdi.display().to_string();
            if !is_uuid(&vdi) {
                return Err(format!("disk {label}: {vdi:?} is not a VDI UUID"));
            }
            let snap = shell(&format!("xe vdi-snapshot uuid={vdi}"), &[])?
                .trim()
                .to_string();
            if !is_uuid(&snap) {
                return Err(format!("xe vdi-snapshot printed {snap:?}, not a UUID"));
            }
            self.made.push(snap.clone());
            let mut child = Command::new("xe")
                .args([
                    "vdi-export",
                    &format!("uuid={snap}"),
                    "filename=",
                    "format=raw",
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("xe vdi-export: {e}"))?;
            let stdout = child.stdout.take().ok_or("xe vdi-export: no stdout")?;
            let path = format!("/proc/self/fd/{}", stdout.as_raw_fd());
            self.exports.push((child, stdout));
            out.push((label.clone(), path));
        }
        Ok(out)
    }

    fn check_after(&mut self) -> Result<(), String> {
        // The stream ended; the export must also have succeeded (a VDI that vanished
        // mid-export ends the stream early with an error here, not a short disk).
        for (mut child, _stdout) in std::mem::take(&mut self.exports) {
            let status = child.wait().map_err(|e| format!("xe vdi-export: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "xe vdi-export failed ({status}); the copy is incomplete"
                ));
            }
        }
        Ok(())
    }

    fn release(&mut self) -> Result<(), String> {
        for (mut child, stdout) in std::mem::take(&mut self.exports) {
            drop(stdout);
            let _ = child.kill();
            let _ = child.wait();
        }
        let made = std::mem::take(&mut self.made);
        release_all(
            made.into_iter()
                .map(|snap| (format!("xe vdi-destroy uuid={snap}"), Vec::new())),
        )
    }

    fn preview(&self) -> Vec<String> {
        let mut problems: Vec<String> = check_executable("xe").into_iter().collect();
        for (label, vdi) in &self.vm.disks {
            if !is_uuid(&vdi.display().to_string()) {
                problems.push(format!("disk {label}: {} is not a VDI UUID", vdi.display()));
            }
        }
        problems
    }

    fn describe(&self) -> String {
        "xenserver vdi-snapshot, streamed with vdi-export format=raw".into()
    }
}
