//! The `zfs` provider: a snapshot and a temporary read-only clone of each zvol, both
//! destroyed after.

use super::ProviderError;
use std::path::Path;

use super::{check_executable, missing_sources, tool, Provider, ViewDisk};
use crate::job::VmPlan;

pub struct Zfs {
    vm: VmPlan,
    /// (snapshot `pool/vol@name`, clone `pool/vol-name` once made).
    made: Vec<(String, Option<String>)>,
}

impl Zfs {
    pub fn new(vm: &VmPlan) -> Self {
        Zfs {
            vm: vm.clone(),
            made: Vec::new(),
        }
    }

    /// `/dev/zvol/pool/vol` -> `pool/vol`.
    fn dataset(source: &Path) -> Option<String> {
        let rel = source.strip_prefix("/dev/zvol").ok()?;
        let s = rel.to_str()?.trim_matches('/').to_string();
        (!s.is_empty() && !s.contains('@')).then_some(s)
    }
}

impl Provider for Zfs {
    fn name(&self) -> &'static str {
        "zfs"
    }
    fn acquire(&mut self) -> Result<Vec<ViewDisk>, ProviderError> {
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
            tool("zfs", &["snapshot", &snap])?;
            self.made.push((snap.clone(), None));
            let clone = format!("{ds}-{tag}");
            tool("zfs", &["clone", "-o", "readonly=on", &snap, &clone])?;
            if let Some(last) = self.made.last_mut() {
                last.1 = Some(clone.clone());
            }
            out.push(ViewDisk::new(label.clone(), format!("/dev/zvol/{clone}")));
        }
        Ok(out)
    }

    fn release(&mut self) -> Result<(), ProviderError> {
        let mut first_err = None;
        // Clone first: a snapshot with a clone cannot be destroyed.
        for (snap, clone) in std::mem::take(&mut self.made) {
            if let Some(c) = clone {
                if let Err(e) = tool("zfs", &["destroy", &c]) {
                    first_err.get_or_insert(e);
                    continue;
                }
            }
            if let Err(e) = tool("zfs", &["destroy", &snap]) {
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
