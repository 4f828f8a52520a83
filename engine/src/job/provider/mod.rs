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
//! - `libvirt`: an external disk-only snapshot of a running domain, its base images
//!   read, the overlay merged back with `virsh blockcommit --active --pivot`.
//! - `xenserver`: disks name VDI UUIDs; `xe vdi-snapshot`, then `xe vdi-export
//!   filename= format=raw` of the snapshot to a pipe dedisk reads as a stream, and
//!   `xe vdi-destroy` of the snapshot after.
//!
//! A provider records what it created as it goes, so `release` undoes exactly that even
//! when `acquire` failed halfway.

mod btrfs;
mod command;
mod error;
mod libvirt;
mod lvm;
mod xenserver;
mod zfs;

use std::path::Path;
use std::process::Command;

use super::{Settings, VmPlan};
use crate::backup::MetaInput;
use crate::source::detect::ImageFormat;
use btrfs::Btrfs;
use command::CommandProvider;
pub use error::ProviderError;
use libvirt::Libvirt;
pub use libvirt::{DomainXml, Virsh};
use lvm::Lvm;
pub use xenserver::vm_names as xenserver_vm_names;
use xenserver::XenServer;
use zfs::Zfs;

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
            Some(size) if lvm_size_bytes(size).is_none() => {
                Err(format!("lvm_snapshot_size {size:?} is not a size like 10G"))
            }
            _ => Ok(()),
        },
        "zfs" => Ok(()),
        "xenserver" => match s.xenserver_export_format.as_deref() {
            None | Some("raw" | "vhd") => Ok(()),
            Some(f) => Err(format!("xenserver_export_format {f:?} is not raw or vhd")),
        },
        "libvirt" => match (s.libvirt_quiesce.as_deref(), s.libvirt_mode.as_deref()) {
            (Some(q), _) if !matches!(q, "auto" | "always" | "never") => Err(format!(
                "libvirt_quiesce {q:?} is not one of auto, always, never"
            )),
            (_, Some(m)) if !matches!(m, "auto" | "pull" | "snapshot") => Err(format!(
                "libvirt_mode {m:?} is not one of auto, pull, snapshot"
            )),
            _ => Ok(()),
        },
        other => Err(format!(
            "unknown snapshot method {other:?} (none, command, btrfs, lvm, zfs, xenserver, libvirt)"
        )),
    }
}

/// `10G`, `512M`, `1.5T` in bytes: digits (and a point) and at most one unit letter, as
/// `lvcreate -L` takes them (binary units; no letter means MiB).
pub fn lvm_size_bytes(size: &str) -> Option<u64> {
    let digits = size.trim_end_matches(|c: char| "kKmMgGtT".contains(c));
    if size.len() - digits.len() > 1
        || digits.is_empty()
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return None;
    }
    let unit: u64 = match size[digits.len()..].to_ascii_lowercase().as_str() {
        "k" => 1 << 10,
        "" | "m" => 1 << 20,
        "g" => 1 << 30,
        _ => 1 << 40,
    };
    let n: f64 = digits.parse().ok()?;
    Some((n * unit as f64) as u64)
}

/// While a snapshot is read, the guest keeps writing and every write lands in new space
/// (copy-on-write, or an overlay). A night's change is a few percent of a disk; a tenth
/// of the disks' size is the margin `--preview` asks for.
pub const SNAPSHOT_SPACE_FRACTION: u64 = 10;

/// A problem when `dir`'s filesystem has less than `needed` bytes free.
pub fn space_problem(dir: &Path, needed: u64, what: &str) -> Option<String> {
    match free_bytes(dir) {
        Ok(free) if free < needed => Some(format!(
            "{what}: {} MiB free in {}, {} MiB wanted (a tenth of the disks, for what the guest writes during the backup)",
            free >> 20,
            dir.display(),
            needed.div_ceil(1 << 20)
        )),
        Ok(_) => None,
        Err(e) => Some(format!("{what}: {}: {e}", dir.display())),
    }
}

/// The sizes of the job file's disks (files and block devices), summed.
pub fn disks_bytes(vm: &VmPlan) -> u64 {
    vm.disks
        .iter()
        .map(|(_, p)| crate::io::blockdev::path_len(p).unwrap_or(0))
        .sum()
}

/// Runs `cmd`; returns its stdout, or an error naming it as `shown` with its exit status
/// and stderr.
pub fn output_of(cmd: &mut Command, shown: &str) -> Result<String, ProviderError> {
    let out = cmd.output().map_err(|source| ProviderError::NotRun {
        provider: "",
        command: shown.into(),
        source,
    })?;
    if !out.status.success() {
        return Err(ProviderError::Failed {
            provider: "",
            command: shown.into(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `sh -c cmd` with `env`; returns stdout, or an error with stderr.
/// Runs `prog` with an argument vector: for every call whose words come from data (VM
/// names, paths, dataset names). No shell ever sees them (issue 11: a quote in a VM name
/// broke out of `sh -c '...'`).
pub fn tool<S: AsRef<std::ffi::OsStr>>(prog: &str, args: &[S]) -> Result<String, ProviderError> {
    let shown = std::iter::once(prog.to_string())
        .chain(
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned()),
        )
        .collect::<Vec<_>>()
        .join(" ");
    output_of(Command::new(prog).args(args), &shown)
}

/// Runs an admin's own shell command from the job file (a hook, a `command` provider's
/// create/release): data reaches it only through environment variables.
pub fn shell(cmd: &str, env: &[(&str, String)]) -> Result<String, ProviderError> {
    output_of(
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str()))),
        cmd,
    )
}

/// Runs every release command, even after one fails (each undoes a different thing);
/// returns the first failure.
fn release_all(
    calls: impl IntoIterator<Item = Result<String, ProviderError>>,
) -> Result<(), ProviderError> {
    let mut first_err = None;
    // Each call runs as the iterator is advanced: every one runs whatever failed before.
    for r in calls {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// One disk of a view: the label it is stored under, the path to read, and its format
/// when the provider knows it (libvirt's driver type is authoritative; detection by
/// content would let a guest that forged an image header in its raw disk choose it).
#[derive(Clone, Debug)]
pub struct ViewDisk {
    pub label: String,
    pub path: String,
    pub format: Option<ImageFormat>,
    /// What changed since the base the provider was given ([`Provider::set_base`]):
    /// `None` reads the disk in full with nothing to say (a first backup).
    pub changes: Option<ViewChanges>,
}

/// A disk's change map, as a provider offers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewChanges {
    /// The NBD export's dirty bitmap of this name holds the writes since the base.
    Bitmap(String),
    /// Changed byte ranges since the base (`thin_delta`, XenServer CBT), and what
    /// said so (`thin_delta since vg0/web01-dedisk-1796607004`).
    Ranges(String, Vec<(u64, u64)>),
    /// No map can be trusted tonight, for this reason: read in full, and say so.
    Unusable(String),
}

impl ViewDisk {
    pub fn new(label: impl Into<String>, path: impl Into<String>) -> Self {
        ViewDisk {
            label: label.into(),
            path: path.into(),
            format: None,
            changes: None,
        }
    }
}

/// The VM's latest snapshot, which a provider that tracks changes counts from.
pub struct BaseSnapshot {
    pub id: repo_format::SnapshotId,
    /// Its small metadata files (up to [`BASE_META_MAX`] bytes) by name: a libvirt
    /// checkpoint's XML, say. Repository content: check before use.
    pub meta: std::collections::BTreeMap<String, Vec<u8>>,
}

/// Largest metadata file of the base handed to a provider.
pub const BASE_META_MAX: u64 = 256 << 10;

/// A point-in-time view of one VM's disks.
pub trait Provider {
    /// The snapshot method, as the job file names it (`lvm`, `libvirt`...).
    fn name(&self) -> &'static str;
    /// Before `acquire`: the VM's latest snapshot, from which a provider that tracks
    /// changed blocks offers change maps (`None` for a VM's first backup).
    fn set_base(&mut self, _base: Option<BaseSnapshot>) {}
    /// After the backup wrote snapshot `id` and `check_after` passed: what `release`
    /// keeps (a libvirt checkpoint) instead of undoing.
    fn committed(&mut self, _id: repo_format::SnapshotId) {}
    /// Creates the view; returns the disks to read.
    fn acquire(&mut self) -> Result<Vec<ViewDisk>, ProviderError>;
    /// Metadata the provider gathered in `acquire` (a domain's XML, its NVRAM), kept in
    /// the snapshot beside the job file's `meta` files.
    fn take_meta(&mut self) -> Vec<MetaInput> {
        Vec::new()
    }
    /// After a backup, before `release`: is the copy still consistent? (An LVM snapshot
    /// that overflowed during the backup is not.)
    fn check_after(&mut self) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Undoes everything `acquire` created (also after it failed halfway).
    fn release(&mut self) -> Result<(), ProviderError>;
    /// For `--preview`: the (label, source) of each disk when the provider finds them
    /// itself (a libvirt domain's XML) rather than reading the job file's list.
    fn discovered_disks(&self) -> Option<Result<Vec<(String, String)>, ProviderError>> {
        None
    }
    /// What `--preview` can check without changing anything.
    fn preview(&self) -> Vec<String>;
    /// One line for the plan.
    fn describe(&self) -> String;
}

pub fn for_vm(vm: &VmPlan) -> Box<dyn Provider> {
    match vm.settings.snapshot.as_deref().unwrap_or("none") {
        "command" => Box::new(CommandProvider::new(vm)),
        "btrfs" => Box::new(Btrfs::new(vm)),
        "zfs" => Box::new(Zfs::new(vm)),
        "xenserver" => Box::new(XenServer::new(vm)),
        "lvm" => Box::new(Lvm::new(vm)),
        "libvirt" => Box::new(Libvirt::new(vm)),
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
    fn name(&self) -> &'static str {
        "none"
    }
    fn acquire(&mut self) -> Result<Vec<ViewDisk>, ProviderError> {
        Ok(self
            .vm
            .disks
            .iter()
            .map(|(l, p)| ViewDisk::new(l.clone(), p.display().to_string()))
            .collect())
    }
    fn release(&mut self) -> Result<(), ProviderError> {
        Ok(())
    }
    fn preview(&self) -> Vec<String> {
        missing_sources(&self.vm)
    }
    fn describe(&self) -> String {
        "none (read as they are)".into()
    }
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The program a shell command would run, if it can be found and executed.
pub fn check_executable(cmd: &str) -> Option<String> {
    let prog = cmd.split_whitespace().next()?;
    let found = if prog.contains('/') {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(prog).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    } else {
        // PATH looked up here, not by `sh -c "command -v ..."`: --preview changes and
        // runs nothing.
        use std::os::unix::fs::PermissionsExt;
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| {
                std::fs::metadata(dir.join(prog))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
    };
    (!found).then(|| format!("`{prog}` is not an executable program"))
}
