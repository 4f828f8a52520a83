//! The `xenserver` provider: `xe vdi-snapshot`, the snapshot streamed by `xe vdi-export`, `xe
//! vdi-destroy` after.

use std::process::Command;

use super::{check_executable, release_all, shell, Provider, ViewDisk};
use crate::job::VmPlan;

pub struct XenServer {
    vm: VmPlan,
    /// Snapshot VDI UUIDs created.
    made: Vec<String>,
    /// `xe vdi-export` processes, with the read end of their stdout kept open: dedisk
    /// reads it through `/proc/self/fd/N`. An exporter that dies early closes its end, so
    /// the read sees the end of the stream rather than blocking (as a named pipe would).
    exports: Vec<(std::process::Child, std::process::ChildStdout)>,
}

impl XenServer {
    pub fn new(vm: &VmPlan) -> Self {
        XenServer {
            vm: vm.clone(),
            made: Vec::new(),
            exports: Vec::new(),
        }
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

impl Provider for XenServer {
    fn acquire(&mut self) -> Result<Vec<ViewDisk>, String> {
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
            out.push(ViewDisk::new(label.clone(), path));
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
