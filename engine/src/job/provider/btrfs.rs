//! The `btrfs` provider: a read-only snapshot of the subvolume holding the images, deleted
//! after.

use std::path::PathBuf;

use super::{
    check_executable, disks_bytes, missing_sources, shell, space_problem, Provider, ViewDisk,
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
    fn acquire(&mut self) -> Result<Vec<ViewDisk>, String> {
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
            .map(|(l, r)| ViewDisk::new(l, snap.join(r).display().to_string()))
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
