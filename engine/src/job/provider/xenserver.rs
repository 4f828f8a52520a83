//! The `xenserver` provider: `xe vdi-snapshot`, the snapshot streamed by `xe vdi-export`
//! (`format=raw`, or `format=vhd` with `xenserver_export_format = "vhd"`: only allocated
//! blocks, read by [`crate::source::vhd_stream`]), `xe vdi-destroy` after.
//!
//! The VM is found by its name label. Its disks are the job file's VDI UUIDs, or else
//! every VBD of type Disk (labelled by its device, `xvda`), less `exclude_disks`. The
//! parameters of the VM, its VBDs, the VDIs backed up and its VIFs (`xe *-param-list`)
//! are kept as snapshot metadata: what recreating the VM on another pool needs.

use super::ProviderError;
use std::process::Command;

use super::{check_executable, output_of, release_all, Provider, ViewDisk};
use crate::backup::{MetaContent, MetaInput};
use crate::job::VmPlan;
use crate::source::detect::ImageFormat;

/// `xe ARGS`: stdout, or an error with the call and its stderr.
pub fn xe(args: &[&str]) -> Result<String, ProviderError> {
    output_of(
        Command::new("xe").args(args),
        &format!("xe {}", args.join(" ")),
    )
}

/// The values of a `--minimal` listing (comma-separated, empty when none).
fn minimal(out: &str) -> Vec<String> {
    out.trim()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The records of an `xe *-list params=…` listing: blocks of `key ( RO)    : value`
/// lines separated by blank lines.
fn records(out: &str) -> Vec<Vec<(String, String)>> {
    let mut all = Vec::new();
    let mut cur = Vec::new();
    for line in out.lines() {
        let Some((k, v)) = line.split_once(": ") else {
            if line.trim().is_empty() && !cur.is_empty() {
                all.push(std::mem::take(&mut cur));
            }
            continue;
        };
        let key = k.split('(').next().unwrap_or(k).trim().to_string();
        cur.push((key, v.trim().to_string()));
    }
    if !cur.is_empty() {
        all.push(cur);
    }
    all
}

fn field<'a>(rec: &'a [(String, String)], key: &str) -> Option<&'a str> {
    rec.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The names of every VM of the pool that is not dom0, a snapshot or a template.
/// Read as records, not `--minimal`: that joins names with commas, so a tenant's VM
/// named `a,b,c` became three VMs (issue 11).
pub fn vm_names() -> Result<Vec<String>, ProviderError> {
    let out = xe(&[
        "vm-list",
        "is-control-domain=false",
        "is-a-snapshot=false",
        "is-a-template=false",
        "params=name-label",
    ])?;
    Ok(records(&out)
        .iter()
        .filter_map(|r| field(r, "name-label").map(str::to_string))
        .collect())
}

pub struct XenServer {
    vm: VmPlan,
    /// Snapshot VDI UUIDs created.
    made: Vec<String>,
    /// `xe vdi-export` processes, with the read end of their stdout kept open: dedisk
    /// reads it through `/proc/self/fd/N`. An exporter that dies early closes its end, so
    /// the read sees the end of the stream rather than blocking (as a named pipe would).
    exports: Vec<(std::process::Child, std::process::ChildStdout)>,
    meta: Vec<MetaInput>,
}

impl XenServer {
    pub fn new(vm: &VmPlan) -> Self {
        XenServer {
            vm: vm.clone(),
            made: Vec::new(),
            exports: Vec::new(),
            meta: Vec::new(),
        }
    }

    /// `raw` or `vhd` (only allocated blocks cross the pipe).
    fn export_format(&self) -> &str {
        self.vm
            .settings
            .xenserver_export_format
            .as_deref()
            .unwrap_or("raw")
    }

    /// The VM's UUID, from its name label; exactly one VM must carry it.
    fn vm_uuid(&self) -> Result<String, ProviderError> {
        let found = minimal(&xe(&[
            "vm-list",
            &format!("name-label={}", self.vm.name),
            "is-a-snapshot=false",
            "is-a-template=false",
            "--minimal",
        ])?);
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(format!("no XenServer VM is named {:?}", self.vm.name).into()),
            many => Err(format!(
                "{} XenServer VMs are named {:?} ({}); name labels must be unique",
                many.len(),
                self.vm.name,
                many.join(", ")
            )
            .into()),
        }
    }

    /// (label, VDI UUID) of each disk: the job file's, or every Disk VBD's.
    fn disks(&self, vm: &str) -> Result<Vec<(String, String)>, ProviderError> {
        let excluded = self.vm.settings.exclude_disks.clone().unwrap_or_default();
        if !self.vm.disks.is_empty() {
            return Ok(self
                .vm
                .disks
                .iter()
                .map(|(l, p)| (l.clone(), p.display().to_string()))
                .collect());
        }
        let listing = xe(&[
            "vbd-list",
            &format!("vm-uuid={vm}"),
            "type=Disk",
            "params=device,vdi-uuid",
        ])?;
        let mut disks: Vec<(String, String)> = records(&listing)
            .iter()
            .filter_map(|r| {
                Some((
                    field(r, "device")?.to_string(),
                    field(r, "vdi-uuid")?.to_string(),
                ))
            })
            .filter(|(device, vdi)| !excluded.contains(device) && is_uuid(vdi))
            .collect();
        disks.sort();
        if disks.is_empty() {
            return Err(format!("XenServer VM {} has no disk to back up", self.vm.name).into());
        }
        Ok(disks)
    }

    /// `xe vm-param-list` and the VBD, VDI and VIF parameter lists, one metadata file
    /// each (records separated by blank lines).
    fn gather_meta(&mut self, vm: &str, vdis: &[String]) -> Result<(), ProviderError> {
        let list = |what: &str| -> Result<Vec<String>, ProviderError> {
            Ok(minimal(&xe(&[
                &format!("{what}-list"),
                &format!("vm-uuid={vm}"),
                "--minimal",
            ])?))
        };
        let params = |what: &str, uuids: &[String]| -> Result<Vec<u8>, ProviderError> {
            let mut text = String::new();
            for u in uuids {
                text.push_str(&xe(&[&format!("{what}-param-list"), &format!("uuid={u}")])?);
                text.push('\n');
            }
            Ok(text.into_bytes())
        };
        let files = [
            ("xenserver-vm.txt", params("vm", &[vm.to_string()])?),
            ("xenserver-vbds.txt", params("vbd", &list("vbd")?)?),
            ("xenserver-vdis.txt", params("vdi", vdis)?),
            ("xenserver-vifs.txt", params("vif", &list("vif")?)?),
        ];
        for (name, bytes) in files {
            self.meta.push(MetaInput {
                name: name.into(),
                content: MetaContent::Bytes {
                    origin: format!("xe (VM {vm})"),
                    bytes,
                },
            });
        }
        Ok(())
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

impl Provider for XenServer {
    fn name(&self) -> &'static str {
        "xenserver"
    }
    fn acquire(&mut self) -> Result<Vec<ViewDisk>, ProviderError> {
        use std::os::unix::io::AsRawFd;
        let vm = self.vm_uuid()?;
        let disks = self.disks(&vm)?;
        for (label, vdi) in &disks {
            if !is_uuid(vdi) {
                return Err(format!("disk {label}: {vdi:?} is not a VDI UUID").into());
            }
        }
        let vdis: Vec<String> = disks.iter().map(|(_, v)| v.clone()).collect();
        self.gather_meta(&vm, &vdis)?;
        let mut out = Vec::new();
        for (label, vdi) in &disks {
            let snap = xe(&["vdi-snapshot", &format!("uuid={vdi}")])?
                .trim()
                .to_string();
            if !is_uuid(&snap) {
                return Err(format!("xe vdi-snapshot printed {snap:?}, not a UUID").into());
            }
            self.made.push(snap.clone());
            let mut child = Command::new("xe")
                .args([
                    "vdi-export",
                    &format!("uuid={snap}"),
                    "filename=",
                    &format!("format={}", self.export_format()),
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| ProviderError::from(format!("xe vdi-export: {e}")))?;
            let stdout = child.stdout.take().ok_or("xe vdi-export: no stdout")?;
            let path = format!("/proc/self/fd/{}", stdout.as_raw_fd());
            self.exports.push((child, stdout));
            let mut disk = ViewDisk::new(label.clone(), path);
            if self.export_format() == "vhd" {
                disk.format = Some(ImageFormat::Vhd);
            }
            out.push(disk);
        }
        Ok(out)
    }

    fn take_meta(&mut self) -> Vec<MetaInput> {
        std::mem::take(&mut self.meta)
    }

    fn check_after(&mut self) -> Result<(), ProviderError> {
        // The stream ended; the export must also have succeeded (a VDI that vanished
        // mid-export ends the stream early with an error here, not a short disk).
        for (mut child, _stdout) in std::mem::take(&mut self.exports) {
            let status = child
                .wait()
                .map_err(|e| ProviderError::from(format!("xe vdi-export: {e}")))?;
            if !status.success() {
                return Err(
                    format!("xe vdi-export failed ({status}); the copy is incomplete").into(),
                );
            }
        }
        Ok(())
    }

    fn release(&mut self) -> Result<(), ProviderError> {
        for (mut child, stdout) in std::mem::take(&mut self.exports) {
            drop(stdout);
            let _ = child.kill();
            let _ = child.wait();
        }
        let made = std::mem::take(&mut self.made);
        release_all(
            made.into_iter()
                .map(|snap| super::tool("xe", &["vdi-destroy", &format!("uuid={snap}")])),
        )
    }

    fn preview(&self) -> Vec<String> {
        if let Some(p) = check_executable("xe") {
            return vec![p];
        }
        let mut problems = Vec::new();
        match self.vm_uuid().and_then(|vm| self.disks(&vm)) {
            Err(e) => problems.push(e.to_string()),
            Ok(disks) => {
                for (label, vdi) in disks {
                    if !is_uuid(&vdi) {
                        problems.push(format!("disk {label}: {vdi} is not a VDI UUID"));
                    }
                }
            }
        }
        problems
    }

    fn discovered_disks(&self) -> Option<Result<Vec<(String, String)>, ProviderError>> {
        if !self.vm.disks.is_empty() {
            return None;
        }
        Some(self.vm_uuid().and_then(|vm| self.disks(&vm)).map(|d| {
            d.into_iter()
                .map(|(label, vdi)| (label, format!("VDI {vdi}")))
                .collect()
        }))
    }

    fn describe(&self) -> String {
        format!(
            "xenserver vdi-snapshot, streamed with vdi-export format={}",
            self.export_format()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `xe vbd-list vm-uuid=… type=Disk params=device,vdi-uuid` prints it.
    const VBDS: &str = "device ( RO)    : xvda
    vdi-uuid ( RO): 6f1c2b9e-3d4a-4c5b-8e7f-0a1b2c3d4e5f


device ( RO)    : xvdb
    vdi-uuid ( RO): 1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d


device ( RO)    : xvdd
    vdi-uuid ( RO): <not in database>
";

    #[test]
    fn parses_xe_listings() {
        let r = records(VBDS);
        assert_eq!(r.len(), 3);
        assert_eq!(field(&r[1], "device"), Some("xvdb"));
        assert_eq!(
            field(&r[0], "vdi-uuid"),
            Some("6f1c2b9e-3d4a-4c5b-8e7f-0a1b2c3d4e5f")
        );
        assert!(!is_uuid(field(&r[2], "vdi-uuid").unwrap()));
        assert_eq!(minimal("a,b,c\n"), ["a", "b", "c"]);
        assert!(minimal("\n").is_empty());
    }
}
