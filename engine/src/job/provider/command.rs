//! The `command` provider: user commands create the view (printing the path to read) and
//! release it.

use super::ProviderError;
use std::path::{Path, PathBuf};

use super::{check_executable, missing_sources, release_all, shell, Provider, ViewDisk};
use crate::job::VmPlan;

pub struct CommandProvider {
    vm: VmPlan,
    /// (label, source, path printed by the create command).
    made: Vec<(String, PathBuf, String)>,
}

impl CommandProvider {
    pub fn new(vm: &VmPlan) -> Self {
        CommandProvider {
            vm: vm.clone(),
            made: Vec::new(),
        }
    }
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
    fn name(&self) -> &'static str {
        "command"
    }
    fn acquire(&mut self) -> Result<Vec<ViewDisk>, ProviderError> {
        let create = self.vm.settings.snapshot_create.clone().unwrap_or_default();
        let mut out = Vec::new();
        for (label, source) in self.vm.disks.clone() {
            let printed = shell(&create, &self.env(&label, &source))?;
            let path = printed.lines().next().unwrap_or("").trim().to_string();
            if path.is_empty() {
                return Err(format!("`{create}` printed no path for disk {label}").into());
            }
            self.made.push((label.clone(), source, path.clone()));
            out.push(ViewDisk::new(label, path));
        }
        Ok(out)
    }
    fn release(&mut self) -> Result<(), ProviderError> {
        let Some(release) = self.vm.settings.snapshot_release.clone() else {
            self.made.clear();
            return Ok(());
        };
        let made = std::mem::take(&mut self.made);
        release_all(made.into_iter().map(|(label, source, path)| {
            let mut env = self.env(&label, &source);
            env.push(("DEDISK_SNAPSHOT_PATH", path));
            shell(&release, &env)
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
