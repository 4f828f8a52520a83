//! The `lvm` provider: `lvcreate --snapshot` per logical volume, its fill state checked after
//! the backup, `lvremove` at the end. Thin volumes get a thin snapshot instead, kept until
//! the next night, which reads only the blocks `thin_delta` says changed ([`thin`]).

mod thin;

use super::ProviderError;
use super::{
    check_executable, lvm_size_bytes, missing_sources, release_all, tool, BaseSnapshot, Provider,
    ViewChanges, ViewDisk,
};
use crate::backup::{MetaContent, MetaInput};
use crate::job::VmPlan;

pub struct Lvm {
    vm: VmPlan,
    /// `VG/NAME` of each classic snapshot created (removed at the end).
    made: Vec<String>,
    /// `(VG, LV, VG/NAME)` of each thin snapshot created tonight (kept when the backup
    /// becomes a snapshot, removed otherwise).
    thin_new: Vec<(String, String, String)>,
    base: Option<BaseSnapshot>,
    committed: bool,
    meta: Vec<MetaInput>,
}

impl Lvm {
    pub fn new(vm: &VmPlan) -> Self {
        Lvm {
            vm: vm.clone(),
            made: Vec::new(),
            thin_new: Vec::new(),
            base: None,
            committed: false,
            meta: Vec::new(),
        }
    }

    /// What a thin disk's night reads: changes since the base's kept snapshot.
    fn thin_changes(&self, label: &str, vg: &str, lv: &str, new: &str) -> Option<ViewChanges> {
        let base = self.base.as_ref()?;
        let Some(kept) = base
            .meta
            .get(thin::THIN_META)
            .and_then(|m| thin::base_snapshot_of(m, label))
        else {
            return Some(ViewChanges::Unusable(format!(
                "the base {} kept no thin snapshot of disk {label}",
                base.id.short()
            )));
        };
        if !thin::is_our_snapshot(&kept, vg, lv) {
            return Some(ViewChanges::Unusable(format!(
                "the base names {:?}, not a snapshot dedisk made of {vg}/{lv}",
                repo_format::names::escape(&kept)
            )));
        }
        if lvs(&["-o", "lv_name", &kept]).is_err() {
            return Some(ViewChanges::Unusable(format!(
                "the base's thin snapshot {kept} is gone"
            )));
        }
        Some(thin::changes_since(vg, lv, &kept, new))
    }

    /// After a good night: every thin snapshot of ours but tonight's (the base's, and any
    /// a killed run left).
    fn stale_thin_snapshots(&self) -> Vec<String> {
        let mut stale = Vec::new();
        for (vg, lv, keep) in &self.thin_new {
            let Ok(names) = tool("lvs", &["--noheadings", "-o", "lv_name", vg]) else {
                continue;
            };
            stale.extend(
                names
                    .lines()
                    .map(|n| format!("{vg}/{}", n.trim()))
                    .filter(|spec| spec != keep && thin::is_our_snapshot(spec, vg, lv)),
            );
        }
        stale
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

/// (volume group, logical volume, segment type) of the disk `label` at `source`.
fn volume(
    label: &str,
    source: &std::path::Path,
) -> Result<(String, String, String), ProviderError> {
    let path = source.to_string_lossy();
    let id = lvs(&["--separator", ",", "-o", "vg_name,lv_name,segtype", &path])
        .map_err(|e| ProviderError::from(format!("disk {label}: {e}")))?;
    match id.split(',').collect::<Vec<_>>().as_slice() {
        [vg, lv, seg] => Ok((vg.to_string(), lv.to_string(), seg.to_string())),
        _ => Err(format!(
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
                // A thin snapshot takes its space from the pool as the origin changes.
                Ok((_, _, seg)) if seg == "thin" => {
                    problems.extend(check_executable("thin_delta"));
                    problems.extend(check_executable("dmsetup"));
                }
                Ok((vg, _, _)) => *wanted.entry(vg).or_default() += each,
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
        let mut kept = String::new();
        for (label, source) in &self.vm.disks {
            let (vg, lv, seg) = volume(label, source)?;
            let origin = format!("{vg}/{lv}");
            if seg == "thin" {
                let name = format!("{lv}-dedisk-{}", jiff::Timestamp::now().as_second());
                let spec = format!("{vg}/{name}");
                tool(
                    "lvcreate",
                    &[
                        "--snapshot",
                        "--setactivationskip",
                        "n",
                        "--name",
                        &name,
                        &origin,
                    ],
                )?;
                self.thin_new.push((vg.clone(), lv.clone(), spec.clone()));
                let mut disk = ViewDisk::new(label.clone(), lvs(&["-o", "lv_path", &spec])?);
                disk.changes = self.thin_changes(label, &vg, &lv, &spec);
                kept.push_str(&format!("{label} {spec}\n"));
                out.push(disk);
                continue;
            }
            let name = format!("{lv}-dedisk-{}", std::process::id());
            tool(
                "lvcreate",
                &["--snapshot", "--size", &size, "--name", &name, &origin],
            )?;
            self.made.push(format!("{vg}/{name}"));
            let path = lvs(&["-o", "lv_path", &format!("{vg}/{name}")])?;
            out.push(ViewDisk::new(label.clone(), path));
        }
        if !kept.is_empty() {
            self.meta.push(MetaInput {
                name: thin::THIN_META.into(),
                content: MetaContent::Bytes {
                    origin: "lvm thin snapshots".into(),
                    bytes: kept.into_bytes(),
                },
            });
        }
        Ok(out)
    }

    fn take_meta(&mut self) -> Vec<MetaInput> {
        std::mem::take(&mut self.meta)
    }

    fn set_base(&mut self, base: Option<BaseSnapshot>) {
        self.base = base;
    }

    fn committed(&mut self, _id: repo_format::SnapshotId) {
        self.committed = true;
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
        let mut remove = std::mem::take(&mut self.made);
        // Thin: a good night keeps tonight's snapshot (the next night's base) and drops
        // the older ones; a failed night drops tonight's and keeps the base.
        if self.committed {
            remove.extend(self.stale_thin_snapshots());
        } else {
            remove.extend(self.thin_new.iter().map(|(_, _, s)| s.clone()));
        }
        self.thin_new.clear();
        release_all(
            remove
                .into_iter()
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
