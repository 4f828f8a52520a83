//! The `lvm` provider: `lvcreate --snapshot` per logical volume, its fill state checked after
//! the backup, `lvremove` at the end.

use super::ProviderError;
use super::{
    check_executable, lvm_size_bytes, missing_sources, release_all, tool, Provider, ViewDisk,
};
use crate::job::VmPlan;

pub struct Lvm {
    vm: VmPlan,
    /// `VG/NAME` of each snapshot created.
    made: Vec<String>,
}

impl Lvm {
    pub fn new(vm: &VmPlan) -> Self {
        Lvm {
            vm: vm.clone(),
            made: Vec::new(),
        }
    }
}

/// The single non-empty output line of an `lvs --noheadings` call, trimmed.
fn lvs(args: &[&str]) -> Result<String, ProviderError> {
    let out = tool("lvs", &[&["--noheadings"], args].concat())?;
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ProviderError::from(format!("`lvs {}` printed nothing", args.join(" "))))
}

/// (volume group, logical volume) of the disk `label` at `source`.
fn volume(label: &str, source: &std::path::Path) -> Result<(String, String), ProviderError> {
    let path = source.to_string_lossy();
    let id = lvs(&["--separator", ",", "-o", "vg_name,lv_name", &path])
        .map_err(|e| ProviderError::from(format!("disk {label}: {e}")))?;
    match id.split_once(',') {
        Some((vg, lv)) => Ok((vg.to_string(), lv.to_string())),
        None => Err(format!(
            "disk {label}: {} is not a logical volume (lvs said {id:?})",
            source.display()
        )
        .into()),
    }
}

impl Lvm {
    fn snapshot_size(&self) -> String {
        self.vm
            .settings
            .lvm_snapshot_size
            .clone()
            .unwrap_or_else(|| "5G".into())
    }

    /// Each volume group must hold the snapshots of its volumes (`vgs` vg_free against
    /// lvm_snapshot_size times their number).
    fn space_problems(&self) -> Vec<String> {
        let each = lvm_size_bytes(&self.snapshot_size()).unwrap_or(0);
        let mut wanted: std::collections::BTreeMap<String, u64> = Default::default();
        let mut problems = Vec::new();
        for (label, source) in &self.vm.disks {
            match volume(label, source) {
                Ok((vg, _)) => *wanted.entry(vg).or_default() += each,
                Err(e) => problems.push(e.to_string()),
            }
        }
        for (vg, need) in wanted {
            let free = tool(
                "vgs",
                &[
                    "--noheadings",
                    "--units",
                    "b",
                    "--nosuffix",
                    "-o",
                    "vg_free",
                    &vg,
                ],
            )
            .and_then(|out| {
                out.trim().parse::<u64>().map_err(|_| {
                    ProviderError::from(format!("vgs printed {:?} for vg_free", out.trim()))
                })
            });
            match free {
                Ok(free) if free < need => problems.push(format!(
                    "volume group {vg} has {} MiB free, its snapshots need {} MiB (lvm_snapshot_size {} each)",
                    free >> 20,
                    need >> 20,
                    self.snapshot_size()
                )),
                Ok(_) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems
    }
}

impl Provider for Lvm {
    fn name(&self) -> &'static str {
        "lvm"
    }
    fn acquire(&mut self) -> Result<Vec<ViewDisk>, ProviderError> {
        let size = self.snapshot_size();
        let mut out = Vec::new();
        for (label, source) in &self.vm.disks {
            let (vg, lv) = volume(label, source)?;
            let name = format!("{lv}-dedisk-{}", std::process::id());
            let origin = format!("{vg}/{lv}");
            tool(
                "lvcreate",
                &["--snapshot", "--size", &size, "--name", &name, &origin],
            )?;
            self.made.push(format!("{vg}/{name}"));
            let path = lvs(&["-o", "lv_path", &format!("{vg}/{name}")])?;
            out.push(ViewDisk::new(label.clone(), path));
        }
        Ok(out)
    }

    fn check_after(&mut self) -> Result<(), ProviderError> {
        for snap in &self.made {
            let state = lvs(&["--separator", ",", "-o", "snap_percent,lv_attr", snap])?;
            let (percent, attr) = state.split_once(',').unwrap_or((state.as_str(), ""));
            let full = percent.trim().parse::<f64>().is_ok_and(|p| p >= 100.0);
            // lv_attr's fifth character is the state: 'I' invalid snapshot, 'S' merging.
            let invalid = attr.chars().nth(4) == Some('I');
            if full || invalid {
                return Err(format!(
                    "LVM snapshot {snap} overflowed during the backup ({percent}% used, attributes {attr}); the copy is inconsistent: give it more space (lvm_snapshot_size)"
                ).into());
            }
        }
        Ok(())
    }

    fn release(&mut self) -> Result<(), ProviderError> {
        let made = std::mem::take(&mut self.made);
        release_all(
            made.into_iter()
                .map(|snap| tool("lvremove", &["--yes", &snap])),
        )
    }

    fn preview(&self) -> Vec<String> {
        let mut problems = missing_sources(&self.vm);
        for tool in ["lvs", "lvcreate", "lvremove", "vgs"] {
            problems.extend(check_executable(tool));
        }
        if problems.is_empty() {
            problems.extend(self.space_problems());
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
