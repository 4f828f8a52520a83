//! The `libvirt` provider: a running domain's disks frozen by an external disk-only
//! snapshot, the frozen base images read, then the overlay merged back.
//!
//! For a running (or paused) domain:
//! 1. `virsh snapshot-create-as --disk-only --atomic --no-metadata [--quiesce]` puts a
//!    fresh qcow2 overlay on top of every disk backed up (`--quiesce`, which freezes the
//!    guest's filesystems through the guest agent, when the agent answers or
//!    `libvirt_quiesce = "always"`). From then on the guest writes into the overlays and
//!    the base images stay as they were at that instant.
//! 2. dedisk reads the base images, in the format libvirt's `<driver type=…>` names.
//! 3. `virsh blockcommit --active --shallow --pivot --wait` merges each overlay into the
//!    image right under it and switches the domain back to that image; only then is the
//!    overlay file deleted.
//!
//! A shut-off domain's images are read as they are; if the domain starts meanwhile, the
//! copy is refused. The domain's XML (`dumpxml --inactive --security-info`, the
//! definition to `virsh define` on restore) and its UEFI NVRAM file are kept as snapshot
//! metadata.
//!
//! Nothing the guest wrote is ever deleted: an overlay is removed only when the domain
//! no longer uses it. When a merge cannot happen (the domain stopped, the block job
//! failed) the overlay stays, the domain keeps running on it, and the error says how to
//! merge it by hand. A run killed before its merge leaves such an overlay; the next run
//! finds it (its name carries `.dedisk-`) and merges it before taking a new snapshot.
//!
//! Pull mode (`libvirt_mode = "pull"`, the default for a running domain: [`pull`])
//! replaces steps 1 to 3 with "begin a backup job, read its NBD exports, end the job",
//! and keeps a checkpoint per backup so the next night reads only the changed blocks.
//! [`Libvirt::acquire`] chooses the disks, gathers metadata and then calls the one step
//! that makes the view (`freeze` or `pull`); `release` undoes exactly what that step
//! recorded.

use super::ProviderError;
use std::path::{Path, PathBuf};

use super::{
    check_executable, space_problem, BaseSnapshot, Provider, ViewDisk, SNAPSHOT_SPACE_FRACTION,
};
use crate::backup::{MetaContent, MetaInput, MAX_META_BYTES};
use crate::job::VmPlan;

mod pull;
mod virsh;
use virsh::format_of;
pub use virsh::{DomainDisk, DomainXml, Virsh};

/// Is this file an overlay a dedisk run made (`<image>.dedisk-<pid>-<time>.qcow2`)?
fn is_our_overlay(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains(".dedisk-") && n.ends_with(".qcow2"))
}

/// One disk frozen under an overlay.
#[derive(Clone, Debug)]
struct Overlay {
    target: String,
    base: PathBuf,
    overlay: PathBuf,
}

/// What `acquire` did, for `check_after` and `release`.
enum Frozen {
    Nothing,
    /// A shut-off domain read as it is; it must not start before the copy is done.
    Offline,
    /// Overlays asked for (recorded before the snapshot command runs, so a failure
    /// halfway is still cleaned up).
    Overlays(Vec<Overlay>),
    /// A pull-mode backup job (recorded before it begins).
    Pull(pull::Pull),
}

pub struct Libvirt {
    vm: VmPlan,
    virsh: Virsh,
    domain: String,
    frozen: Frozen,
    meta: Vec<MetaInput>,
    /// The VM's latest snapshot, whose checkpoint pull mode counts changes from.
    base: Option<BaseSnapshot>,
    /// The backup became a snapshot: pull mode keeps its checkpoint.
    committed: bool,
}

impl Libvirt {
    pub fn new(vm: &VmPlan) -> Self {
        Libvirt {
            vm: vm.clone(),
            virsh: Virsh::new(vm.settings.libvirt_uri.clone()),
            domain: vm
                .settings
                .libvirt_domain
                .clone()
                .unwrap_or_else(|| vm.name.clone()),
            frozen: Frozen::Nothing,
            meta: Vec::new(),
            base: None,
            committed: false,
        }
    }

    /// Pull mode for a running domain, unless the job file says `snapshot`.
    fn pulls(&self) -> bool {
        self.vm.settings.libvirt_mode.as_deref() != Some("snapshot")
    }

    /// The domain's disks this backup reads: every writable file or block disk, or those
    /// the job file lists (whose paths must match the domain's), less `exclude_disks`.
    fn choose(&self, xml: &DomainXml) -> Result<Vec<DomainDisk>, ProviderError> {
        let excluded = self.vm.settings.exclude_disks.clone().unwrap_or_default();
        for label in &excluded {
            if !xml.disks.iter().any(|d| &d.target == label) {
                return Err(format!(
                    "exclude_disks names {label}, which domain {} does not have",
                    self.domain
                )
                .into());
            }
        }
        let mut chosen = Vec::new();
        if self.vm.disks.is_empty() {
            for d in &xml.disks {
                if d.device != "disk" || d.readonly || excluded.contains(&d.target) {
                    continue;
                }
                chosen.push(d.clone());
            }
        } else {
            for (label, path) in &self.vm.disks {
                let d = xml
                    .disks
                    .iter()
                    .find(|d| &d.target == label)
                    .ok_or_else(|| {
                        ProviderError::from(format!("domain {} has no disk {label}", self.domain))
                    })?;
                if d.source.as_deref() != Some(path.as_path()) {
                    return Err(format!(
                        "disk {label}: the job file says {}, domain {} uses {}",
                        path.display(),
                        self.domain,
                        d.source
                            .as_deref()
                            .map_or("nothing".into(), |p| p.display().to_string())
                    )
                    .into());
                }
                chosen.push(d.clone());
            }
        }
        for d in &chosen {
            if d.kind != "file" && d.kind != "block" {
                return Err(format!(
                    "disk {}: a {} disk cannot be read by the libvirt provider (file and block disks can); exclude it with exclude_disks",
                    d.target, d.kind
                ).into());
            }
            if d.source.is_none() {
                return Err(format!("disk {}: it has no source", d.target).into());
            }
            format_of(d.driver.as_deref())
                .map_err(|e| ProviderError::from(format!("disk {}: {e}", d.target)))?;
        }
        if chosen.is_empty() {
            return Err(format!("domain {} has no disk to back up", self.domain).into());
        }
        Ok(chosen)
    }

    fn gather_meta(&mut self, xml: &DomainXml) -> Result<(), ProviderError> {
        let definition = self.virsh.run(&[
            "dumpxml",
            "--inactive",
            "--security-info",
            "--domain",
            &self.domain,
        ])?;
        self.meta.push(MetaInput {
            name: "domain.xml".into(),
            content: MetaContent::Bytes {
                origin: format!("virsh dumpxml {}", self.domain),
                bytes: definition.into_bytes(),
            },
        });
        if let Some(nvram) = &xml.nvram {
            // The NVRAM file appears at the first start; a domain never started has none.
            if let Ok(m) = std::fs::metadata(nvram) {
                if m.len() > MAX_META_BYTES {
                    return Err(format!("NVRAM {} is too large", nvram.display()).into());
                }
                let bytes = std::fs::read(nvram)
                    .map_err(|e| ProviderError::from(format!("NVRAM {}: {e}", nvram.display())))?;
                let name = nvram
                    .file_name()
                    .map_or("nvram".into(), |n| n.to_string_lossy().into_owned());
                self.meta.push(MetaInput {
                    name,
                    content: MetaContent::Bytes {
                        origin: nvram.display().to_string(),
                        bytes,
                    },
                });
            }
        }
        Ok(())
    }

    /// Merges overlays an earlier, interrupted run left on top of the domain's disks.
    fn merge_leftovers(&self, xml: &DomainXml) -> Result<bool, ProviderError> {
        let mut merged = false;
        for d in &xml.disks {
            let Some(src) = &d.source else { continue };
            if !is_our_overlay(src) {
                continue;
            }
            let Some(base) = d.backing.first() else {
                return Err(format!(
                    "disk {} runs on {}, named like a dedisk overlay but with no backing file; rename it or fix the domain",
                    d.target,
                    src.display()
                ).into());
            };
            self.merge(&d.target, src, base).map_err(|e| {
                format!(
                    "disk {} runs on {}, an overlay left by an interrupted dedisk run: {e}",
                    d.target,
                    src.display()
                )
            })?;
            merged = true;
        }
        Ok(merged)
    }

    /// Merges `overlay`, the top of `target`'s chain, into `base` right under it, and
    /// deletes it once the domain runs on `base` again. On any doubt the overlay stays
    /// and the error says how to merge it by hand.
    fn merge(&self, target: &str, overlay: &Path, base: &Path) -> Result<(), ProviderError> {
        let by_hand = format!(
            "disk {target} of {dom} stays on overlay {o} over {b} (nothing is lost); merge it with `virsh blockcommit {dom} {target} --active --shallow --pivot` while the domain runs, then delete the overlay",
            dom = self.domain,
            o = overlay.display(),
            b = base.display(),
        );
        let state = self.virsh.state(&self.domain)?;
        if !is_live(&state) {
            return Err(format!("the domain is {state}: {by_hand}").into());
        }
        // --shallow: into the image right under the overlay. Without it virsh flattens
        // the whole chain into its deepest file (a template under a qcow2, say), and
        // the domain would end up running on that.
        self.virsh
            .run(&[
                "blockcommit",
                "--domain",
                &self.domain,
                "--path",
                target,
                "--active",
                "--shallow",
                "--pivot",
                "--wait",
            ])
            .map_err(|e| {
                // A job that failed may linger; abort it so the disk is usable again.
                let _ = self.virsh.run(&[
                    "blockjob",
                    "--domain",
                    &self.domain,
                    "--path",
                    target,
                    "--abort",
                ]);
                format!("{e}: {by_hand}")
            })?;
        let after = self.virsh.live_xml(&self.domain)?;
        if after.source_of(target) != Some(base) || after.uses(overlay) {
            return Err(format!(
                "after the merge disk {target} of {} runs on {}, not on {} alone; overlay {} is kept: check the domain's disk chain",
                self.domain,
                after
                    .source_of(target)
                    .map_or("nothing".into(), |p| p.display().to_string()),
                base.display(),
                overlay.display()
            ).into());
        }
        std::fs::remove_file(overlay).map_err(|e| {
            ProviderError::from(format!("merged, but deleting {}: {e}", overlay.display()))
        })
    }

    /// Where `d`'s overlay goes: `libvirt_overlay_dir`, or beside a file image (a block
    /// device has no directory of its own to use).
    fn overlay_dir(&self, d: &DomainDisk) -> Result<PathBuf, ProviderError> {
        let src = d.source.clone().unwrap_or_default();
        match (&self.vm.settings.libvirt_overlay_dir, d.kind.as_str()) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, "file") => Ok(src.parent().unwrap_or(Path::new("/")).to_path_buf()),
            (None, _) => Err(format!(
                "disk {} is a block device {}: set libvirt_overlay_dir to a directory for its overlay",
                d.target,
                src.display()
            ).into()),
        }
    }

    /// Step 1: put an overlay on top of each chosen disk of the running domain.
    fn freeze(&mut self, chosen: &[DomainDisk], xml: &DomainXml) -> Result<(), ProviderError> {
        let quiesce = match self.vm.settings.libvirt_quiesce.as_deref() {
            Some("never") => false,
            Some("always") => {
                if !self.virsh.agent_answers(&self.domain) {
                    return Err(format!(
                        "libvirt_quiesce = \"always\" but the guest agent of {} does not answer",
                        self.domain
                    )
                    .into());
                }
                true
            }
            _ => self.virsh.agent_answers(&self.domain),
        };
        let tag = format!(
            "dedisk-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_second()
        );
        let mut overlays = Vec::new();
        for d in chosen {
            let base = d.source.clone().unwrap_or_default();
            let dir = self.overlay_dir(d)?;
            let name = base
                .file_name()
                .map_or("disk".into(), |n| n.to_string_lossy().into_owned());
            let overlay = dir.join(format!("{name}.{tag}.qcow2"));
            if overlay.exists() {
                return Err(format!("{} already exists", overlay.display()).into());
            }
            overlays.push(Overlay {
                target: d.target.clone(),
                base,
                overlay,
            });
        }
        let mut args: Vec<String> = [
            "snapshot-create-as",
            "--domain",
            &self.domain,
            "--name",
            &tag,
            "--description",
            "dedisk backup; merged back when the backup ends",
            "--disk-only",
            "--atomic",
            "--no-metadata",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if quiesce {
            args.push("--quiesce".into());
        }
        for d in &xml.disks {
            args.push("--diskspec".into());
            // Commas in a path are doubled in virsh's diskspec syntax.
            args.push(match overlays.iter().find(|o| o.target == d.target) {
                Some(o) => format!(
                    "{},snapshot=external,driver=qcow2,file={}",
                    d.target,
                    o.overlay.display().to_string().replace(',', ",,")
                ),
                None => format!("{},snapshot=no", d.target),
            });
        }
        self.frozen = Frozen::Overlays(overlays.clone());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.virsh.run(&argv)?;
        let now = self.virsh.live_xml(&self.domain)?;
        for o in &overlays {
            if now.source_of(&o.target) != Some(o.overlay.as_path()) {
                return Err(format!(
                    "after the snapshot, disk {} of {} is not on its overlay {}",
                    o.target,
                    self.domain,
                    o.overlay.display()
                )
                .into());
            }
        }
        Ok(())
    }

    /// Merges one overlay back, or says why it stays.
    fn unfreeze(&self, o: &Overlay) -> Result<(), ProviderError> {
        let now = self.virsh.live_xml(&self.domain).map_err(|e| {
            format!(
                "{e}; overlay {} over {} is kept",
                o.overlay.display(),
                o.base.display()
            )
        })?;
        if !now.uses(&o.overlay) {
            // Not in the domain's chains (the snapshot failed or was rolled back): a
            // file left there holds nothing of the guest's.
            return match std::fs::remove_file(&o.overlay) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(format!("deleting {}: {e}", o.overlay.display()).into())
                }
                _ => Ok(()),
            };
        }
        if now.source_of(&o.target) != Some(o.overlay.as_path()) {
            return Err(format!(
                "overlay {} is in the chain of {} but no longer on top of disk {}; it is kept, merge it by hand",
                o.overlay.display(),
                self.domain,
                o.target
            ).into());
        }
        self.merge(&o.target, &o.overlay, &o.base)
    }
}

fn is_live(state: &str) -> bool {
    state == "running" || state == "paused"
}

impl Provider for Libvirt {
    fn name(&self) -> &'static str {
        "libvirt"
    }
    fn acquire(&mut self) -> Result<Vec<ViewDisk>, ProviderError> {
        let state = self.virsh.state(&self.domain)?;
        let mut xml = self.virsh.live_xml(&self.domain)?;
        if is_live(&state) && self.merge_leftovers(&xml)? {
            xml = self.virsh.live_xml(&self.domain)?;
        }
        let chosen = self.choose(&xml)?;
        self.gather_meta(&xml)?;
        if is_live(&state) && self.pulls() {
            return self.pull(&chosen, &xml);
        } else if is_live(&state) {
            self.freeze(&chosen, &xml)?;
        } else if state == "shut off" || state == "crashed" {
            self.frozen = Frozen::Offline;
        } else {
            return Err(format!(
                "domain {} is {state}; it can be backed up running, paused or shut off",
                self.domain
            )
            .into());
        }
        chosen
            .iter()
            .map(|d| {
                let mut v = ViewDisk::new(
                    d.target.clone(),
                    d.source.clone().unwrap_or_default().display().to_string(),
                );
                v.format = Some(format_of(d.driver.as_deref())?);
                Ok(v)
            })
            .collect()
    }

    fn take_meta(&mut self) -> Vec<MetaInput> {
        std::mem::take(&mut self.meta)
    }

    fn check_after(&mut self) -> Result<(), ProviderError> {
        if let Frozen::Offline = self.frozen {
            let state = self.virsh.state(&self.domain)?;
            if is_live(&state) {
                return Err(format!(
                    "domain {} started during the backup of its disks; the copy may be inconsistent",
                    self.domain
                ).into());
            }
        }
        Ok(())
    }

    fn set_base(&mut self, base: Option<BaseSnapshot>) {
        self.base = base;
    }

    fn committed(&mut self, _id: repo_format::SnapshotId) {
        self.committed = true;
    }

    fn release(&mut self) -> Result<(), ProviderError> {
        let overlays = match std::mem::replace(&mut self.frozen, Frozen::Nothing) {
            Frozen::Overlays(o) => o,
            Frozen::Pull(p) => return self.end_pull(p),
            _ => return Ok(()),
        };
        let mut first_err = None;
        for o in &overlays {
            if let Err(e) = self.unfreeze(o) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn preview(&self) -> Vec<String> {
        if let Some(p) = check_executable("virsh") {
            return vec![p];
        }
        let mut problems = Vec::new();
        let checked = self
            .virsh
            .state(&self.domain)
            .and_then(|state| Ok((state, self.virsh.live_xml(&self.domain)?)));
        match checked {
            Err(e) => problems.push(e.to_string()),
            Ok((state, xml)) => match self.choose(&xml) {
                Err(e) => problems.push(e.to_string()),
                Ok(chosen) => {
                    for d in &chosen {
                        let src = d.source.clone().unwrap_or_default();
                        if !src.exists() {
                            problems.push(format!(
                                "disk {}: {} does not exist",
                                d.target,
                                src.display()
                            ));
                        }
                    }
                    if is_live(&state) {
                        problems.extend(self.overlay_space_problems(&chosen));
                    }
                }
            },
        }
        problems
    }

    fn discovered_disks(&self) -> Option<Result<Vec<(String, String)>, ProviderError>> {
        let found = self.virsh.live_xml(&self.domain).and_then(|xml| {
            Ok(self
                .choose(&xml)?
                .into_iter()
                .map(|d| {
                    let src = d.source.unwrap_or_default().display().to_string();
                    let driver = d.driver.as_deref().unwrap_or("raw");
                    // In pull mode only qcow2 disks hold the bitmap of what changed.
                    let how = match (self.pulls(), driver) {
                        (false, _) => "",
                        (true, "qcow2") => ", changed blocks when running",
                        (true, _) => ", read in full: holds no dirty bitmap",
                    };
                    (d.target, format!("{src} ({driver}{how})"))
                })
                .collect())
        });
        Some(found)
    }

    fn describe(&self) -> String {
        if self.pulls() {
            format!(
                "libvirt pull-mode backup of domain {} (checkpoints, changed blocks over NBD) when running",
                self.domain
            )
        } else {
            format!(
                "libvirt external disk-only snapshot of domain {}, merged back with blockcommit",
                self.domain
            )
        }
    }
}

impl Libvirt {
    /// Each overlay grows by what the guest writes during the backup; a full overlay
    /// directory pauses the guest. Its directory should hold a tenth of the disks.
    fn overlay_space_problems(&self, chosen: &[DomainDisk]) -> Vec<String> {
        let mut wanted: std::collections::BTreeMap<PathBuf, u64> = Default::default();
        let mut problems = Vec::new();
        for d in chosen {
            let src = d.source.clone().unwrap_or_default();
            // Pull mode keeps what the guest overwrites in scratch files instead.
            let dir = match if self.pulls() {
                Ok(self.scratch_dir())
            } else {
                self.overlay_dir(d)
            } {
                Ok(dir) => dir,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            // The virtual size: what the guest can write to, whatever the file holds now.
            let opts = crate::source::SourceOptions {
                format: format_of(d.driver.as_deref())
                    .ok()
                    .map(crate::source::SourceFormat::Image),
                ..Default::default()
            };
            let size = crate::source::open(&src.display().to_string(), None, &opts)
                .ok()
                .and_then(|o| o.disks.first().and_then(|d| d.source.size_bytes()))
                .unwrap_or(0);
            *wanted.entry(dir).or_default() += size / SNAPSHOT_SPACE_FRACTION;
        }
        for (dir, needed) in wanted {
            let what = if self.pulls() {
                "libvirt scratch files"
            } else {
                "libvirt overlays"
            };
            problems.extend(space_problem(&dir, needed, what));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::detect::ImageFormat;

    const XML: &str = r#"<domain type='kvm'>
  <name>web01</name>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/web01_VARS.fd</nvram>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/images/web01.qcow2' index='2'/>
      <backingStore type='file' index='3'>
        <format type='qcow2'/>
        <source file='/images/template.qcow2'/>
        <backingStore type='file' index='4'>
          <format type='raw'/>
          <source file='/images/base.raw'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/web01-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/img'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
  </devices>
</domain>"#;

    #[test]
    fn parses_disks_and_nvram() {
        let x = DomainXml::parse(XML).unwrap();
        assert_eq!(
            x.nvram.as_deref(),
            Some(Path::new("/var/lib/libvirt/qemu/nvram/web01_VARS.fd"))
        );
        let t: Vec<_> = x.disks.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(t, ["vda", "vdb", "sda", "vdc"]);
        assert_eq!(x.source_of("vda"), Some(Path::new("/images/web01.qcow2")));
        assert_eq!(x.source_of("vdb"), Some(Path::new("/dev/vg0/web01-data")));
        assert_eq!(
            x.disks[0].backing,
            [
                PathBuf::from("/images/template.qcow2"),
                PathBuf::from("/images/base.raw")
            ]
        );
        assert!(x.uses(Path::new("/images/base.raw")));
        assert!(!x.uses(Path::new("/images/other.raw")));
        assert_eq!(x.disks[1].kind, "block");
        assert!(x.disks[2].readonly && x.disks[2].source.is_none());
        assert_eq!(x.disks[3].kind, "network");
    }

    fn plan(disks: &[(&str, &str)], exclude: &[&str]) -> Libvirt {
        let settings = crate::job::Settings {
            exclude_disks: Some(exclude.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        Libvirt::new(&VmPlan {
            name: "web01".into(),
            disks: disks
                .iter()
                .map(|(l, p)| (l.to_string(), PathBuf::from(p)))
                .collect(),
            meta: Vec::new(),
            settings,
        })
    }

    #[test]
    fn chooses_writable_disks_and_refuses_what_it_cannot_read() {
        let x = DomainXml::parse(XML).unwrap();
        // All disks: the network disk is refused by name until excluded.
        let e = plan(&[], &[]).choose(&x).unwrap_err().to_string();
        assert!(e.contains("vdc") && e.contains("network"), "{e}");
        let chosen = plan(&[], &["vdc"]).choose(&x).unwrap();
        let t: Vec<_> = chosen.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(t, ["vda", "vdb"]);
        // Listed disks must match the domain's paths.
        let e = plan(&[("vda", "/images/other.qcow2")], &[])
            .choose(&x)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/images/web01.qcow2"), "{e}");
        assert_eq!(
            plan(&[("vda", "/images/web01.qcow2")], &[])
                .choose(&x)
                .unwrap()
                .len(),
            1
        );
        let e = plan(&[], &["vdz"]).choose(&x).unwrap_err().to_string();
        assert!(e.contains("vdz"), "{e}");
    }

    #[test]
    fn driver_types_map_to_formats() {
        assert_eq!(format_of(Some("vpc")).unwrap(), ImageFormat::Vhd);
        assert_eq!(format_of(None).unwrap(), ImageFormat::Raw);
        assert!(format_of(Some("qed")).is_err());
        assert!(is_our_overlay(Path::new(
            "/i/web01.qcow2.dedisk-12-1700000000.qcow2"
        )));
        assert!(!is_our_overlay(Path::new("/i/web01.qcow2")));
    }
}
