//! The `btrfs` provider: a read-only snapshot of the subvolume holding the images, deleted
//! after.

use super::ProviderError;
use std::path::PathBuf;

use super::{
    check_executable, disks_bytes, missing_sources, space_problem, tool, Provider, ViewDisk,
    SNAPSHOT_SPACE_FRACTION,
};
use crate::job::VmPlan;

pub struct Btrfs {
    vm: VmPlan,
    snapshot: Option<PathBuf>,
}

impl Btrfs {
    pub fn new(vm: &VmPlan) -> Self {
        Btrfs {
            vm: vm.clone(),
            snapshot: None,
        }
    }

    fn subvolume(&self) -> PathBuf {
        self.vm.settings.btrfs_subvolume.clone().unwrap_or_default()
    }
}

impl Provider for Btrfs {
    fn name(&self) -> &'static str {
        "btrfs"
    }
    fn acquire(&mut self) -> Result<Vec<ViewDisk>, ProviderError> {
        let subvol = self
            .subvolume()
            .canonicalize()
            .map_err(|e| ProviderError::from(format!("{}: {e}", self.subvolume().display())))?;
        let mut rel = Vec::new();
        for (label, source) in &self.vm.disks {
            let real = source.canonicalize().map_err(|e| {
                ProviderError::from(format!("disk {label}: {}: {e}", source.display()))
            })?;
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
        tool(
            "btrfs",
            &[
                "subvolume".as_ref(),
                "snapshot".as_ref(),
                "-r".as_ref(),
                subvol.as_os_str(),
                snap.as_os_str(),
            ],
        )?;
        self.snapshot = Some(snap.clone());
        Ok(rel
            .into_iter()
            .map(|(l, r)| ViewDisk::new(l, snap.join(r).display().to_string()))
            .collect())
    }
    fn release(&mut self) -> Result<(), ProviderError> {
        match self.snapshot.take() {
            Some(s) => tool(
                "btrfs",
                &["subvolume".as_ref(), "delete".as_ref(), s.as_os_str()],
            )
            .map(drop),
            None => Ok(()),
        }
    }
    fn preview(&self) -> Vec<String> {
        let mut problems = missing_sources(&self.vm);
        if let Some(p) = check_executable("btrfs") {
            problems.push(p);
        } else if let Err(e) = tool(
            "btrfs",
            &[
                "subvolume".as_ref(),
                "show".as_ref(),
                self.subvolume().as_os_str(),
            ],
        ) {
            problems.push(format!(
                "{} is not a btrfs subvolume: {e}",
                self.subvolume().display()
            ));
        } else {
            // Overwrites of images a snapshot shares take new extents.
            let needed = disks_bytes(&self.vm) / SNAPSHOT_SPACE_FRACTION;
            problems.extend(space_problem(&self.subvolume(), needed, "btrfs snapshot"));
        }
        problems
    }
    fn describe(&self) -> String {
        format!("btrfs read-only snapshot of {}", self.subvolume().display())
    }
}
