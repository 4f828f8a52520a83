//! libvirt pull mode: `virsh backup-begin` freezes the chosen disks of a running domain
//! (copy-before-write into scratch files) and exports them read-only over NBD on a Unix
//! socket; a checkpoint made with each backup starts a dirty bitmap, so the next night
//! exports `qemu:dirty-bitmap:backup-<disk>`, the blocks written since, and reads only
//! those ([`crate::backup::changes`]).
//!
//! Checkpoints stay in step with snapshots:
//! - The checkpoint's XML is kept with the snapshot (`libvirt-checkpoint.xml`), so the
//!   next night knows which checkpoint its base is, and can `--redefine` it when libvirt
//!   lost it (a domain defined again, a migration).
//! - A backup that did not become a snapshot has its checkpoint deleted; libvirt then
//!   merges that checkpoint's bitmap into its parent's, so the next night's map still
//!   holds every write since the base. A run killed outright leaves its checkpoint and
//!   backup job; the next run ends both first.
//! - After a good night only the newest checkpoint is kept: each live bitmap costs the
//!   guest a little on every write, and only the newest is ever a base.
//!
//! Disks that cannot hold a bitmap (raw) are exported in full, as are all disks on a
//! night without a usable base checkpoint; the snapshot and the report say why.

use std::path::{Path, PathBuf};

use super::{Frozen, Libvirt};
use crate::backup::{MetaContent, MetaInput};
use crate::job::provider::{ProviderError, ViewChanges, ViewDisk};

/// The metadata file a pull-mode snapshot keeps its checkpoint in.
pub(super) const CHECKPOINT_META: &str = "libvirt-checkpoint.xml";
/// Prefix of the checkpoints dedisk makes (`dedisk-<unix time>-<pid>`).
const CHECKPOINT_PREFIX: &str = "dedisk-";
/// Prefix of a run's private directory in the scratch directory.
const RUN_DIR_PREFIX: &str = "dedisk-pull-";

/// What a pull-mode `acquire` made, for `release`.
#[derive(Debug)]
pub(super) struct Pull {
    /// The checkpoint this backup creates.
    pub checkpoint: String,
    /// Holds the NBD socket and the scratch files (owned by QEMU's user, mode 0700).
    pub run_dir: PathBuf,
    /// `backup-begin` succeeded: a job to end.
    pub began: bool,
}

/// A checkpoint's XML, as much as dedisk needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Checkpoint {
    pub name: String,
    pub creation_time: Option<u64>,
    /// Disks with a bitmap in it.
    pub bitmap_disks: Vec<String>,
    /// The bitmap of each such disk, in the same order.
    pub bitmaps: Vec<String>,
}

impl Checkpoint {
    /// The XML to `--redefine` it with, made from the checked fields only (never the
    /// stored text), and without its parent: only the newest checkpoint is kept, so a
    /// parent named there is gone.
    fn redefine_xml(&self) -> String {
        let mut x = format!(
            "<domaincheckpoint>\n  <name>{}</name>\n",
            xml_escape(&self.name)
        );
        if let Some(t) = self.creation_time {
            x.push_str(&format!("  <creationTime>{t}</creationTime>\n"));
        }
        x.push_str("  <disks>\n");
        for (d, b) in self.bitmap_disks.iter().zip(&self.bitmaps) {
            x.push_str(&format!(
                "    <disk name='{}' checkpoint='bitmap' bitmap='{}'/>\n",
                xml_escape(d),
                xml_escape(b)
            ));
        }
        x.push_str("  </disks>\n</domaincheckpoint>\n");
        x
    }
}

/// Names (disks, bitmaps) taken from a snapshot's checkpoint XML.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A checkpoint name dedisk made: nothing else is trusted from a snapshot (repository
/// content) or handed to virsh as one.
fn is_our_checkpoint(name: &str) -> bool {
    name.strip_prefix(CHECKPOINT_PREFIX).is_some_and(|rest| {
        let mut parts = rest.split('-');
        let ok = |p: Option<&str>| {
            p.is_some_and(|p| {
                !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit())
            })
        };
        ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
    })
}

/// The creation time embedded in one of our checkpoint names, for ordering.
fn checkpoint_time(name: &str) -> u64 {
    name.strip_prefix(CHECKPOINT_PREFIX)
        .and_then(|r| r.split('-').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// Parses `<domaincheckpoint>` XML (from `checkpoint-dumpxml`, or a snapshot).
pub(super) fn parse_checkpoint(xml: &[u8]) -> Result<Checkpoint, String> {
    let text = std::str::from_utf8(xml).map_err(|_| "checkpoint XML is not UTF-8".to_string())?;
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("checkpoint XML: {e}"))?;
    let root = doc.root_element();
    if !root.has_tag_name("domaincheckpoint") {
        return Err("not a <domaincheckpoint>".into());
    }
    let name = root
        .children()
        .find(|c| c.has_tag_name("name"))
        .and_then(|n| n.text())
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    if !is_our_checkpoint(&name) {
        return Err(format!(
            "checkpoint name {:?} is not one dedisk makes",
            repo_format::names::escape(&name)
        ));
    }
    let creation_time = root
        .children()
        .find(|c| c.has_tag_name("creationTime"))
        .and_then(|n| n.text())
        .and_then(|t| t.trim().parse().ok());
    let mut ck = Checkpoint {
        name,
        creation_time,
        bitmap_disks: Vec::new(),
        bitmaps: Vec::new(),
    };
    for d in root
        .children()
        .filter(|c| c.has_tag_name("disks"))
        .flat_map(|d| d.children())
        .filter(|d| d.has_tag_name("disk") && d.attribute("checkpoint") == Some("bitmap"))
    {
        let disk = d.attribute("name").unwrap_or_default();
        let bitmap = d.attribute("bitmap").unwrap_or(&ck.name).to_string();
        if !is_plain_name(disk) || !is_plain_name(&bitmap) {
            return Err("a disk or bitmap name that is not a plain name".into());
        }
        ck.bitmap_disks.push(disk.to_string());
        ck.bitmaps.push(bitmap);
    }
    Ok(ck)
}

/// Escapes text for an XML attribute or element.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// A running backup job's export names and bitmaps, disk by disk, and its socket.
#[derive(Debug, Default)]
struct Job {
    socket: Option<String>,
    /// (disk, export name, export bitmap)
    disks: Vec<(String, String, Option<String>)>,
}

fn parse_job(xml: &str) -> Result<Job, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("backup job XML: {e}"))?;
    let root = doc.root_element();
    let mut job = Job {
        socket: root
            .children()
            .find(|c| c.has_tag_name("server"))
            .and_then(|s| s.attribute("socket"))
            .map(str::to_string),
        ..Job::default()
    };
    for d in root
        .children()
        .filter(|c| c.has_tag_name("disks"))
        .flat_map(|d| d.children())
        .filter(|d| d.has_tag_name("disk") && d.attribute("backup") == Some("yes"))
    {
        let Some(name) = d.attribute("name") else {
            continue;
        };
        job.disks.push((
            name.to_string(),
            d.attribute("exportname").unwrap_or(name).to_string(),
            d.attribute("exportbitmap").map(str::to_string),
        ));
    }
    Ok(job)
}

impl Libvirt {
    pub(super) fn scratch_dir(&self) -> PathBuf {
        self.vm
            .settings
            .libvirt_scratch_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/tmp"))
    }

    /// The domain's checkpoints that dedisk made, oldest first.
    fn our_checkpoints(&self) -> Result<Vec<String>, ProviderError> {
        let mut names: Vec<String> = self
            .virsh
            .run(&["checkpoint-list", "--domain", &self.domain, "--name"])?
            .lines()
            .map(str::trim)
            .filter(|n| is_our_checkpoint(n))
            .map(str::to_string)
            .collect();
        names.sort_by_key(|n| (checkpoint_time(n), n.clone()));
        Ok(names)
    }

    fn delete_checkpoint(&self, name: &str) -> Result<String, ProviderError> {
        self.virsh.run(&[
            "checkpoint-delete",
            "--domain",
            &self.domain,
            "--checkpointname",
            name,
        ])
    }

    /// Ends what a run killed before its cleanup left: its backup job (recognized by
    /// its socket in our scratch directory) and its private directory.
    fn end_leftovers(&self, dac: Option<(u32, u32)>) -> Result<(), ProviderError> {
        if let Ok(xml) = self
            .virsh
            .run(&["backup-dumpxml", "--domain", &self.domain])
        {
            let job = parse_job(&xml).map_err(ProviderError::from)?;
            let ours = job.socket.as_deref().is_some_and(|s| {
                Path::new(s)
                    .parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|d| d.to_string_lossy().starts_with(RUN_DIR_PREFIX))
            });
            if !ours {
                return Err(format!(
                    "domain {} has a backup job dedisk did not start (socket {}); it is left alone",
                    self.domain,
                    job.socket.as_deref().unwrap_or("none")
                )
                .into());
            }
            log::warn!(
                "domain {}: ending the backup job an interrupted run left",
                self.domain
            );
            self.virsh.run(&["domjobabort", "--domain", &self.domain])?;
        }
        let dir = self.scratch_dir();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name
                    .strip_prefix(RUN_DIR_PREFIX)
                    .and_then(|r| r.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                // A directory of a run still going (another job), or one another user
                // made under that name, is not ours to take.
                use std::os::unix::fs::MetadataExt;
                let owner = std::fs::symlink_metadata(e.path()).map(|m| (m.is_dir(), m.uid()));
                let ours = owner
                    .is_ok_and(|(dir, uid)| dir && (uid == 0 || dac.is_some_and(|d| d.0 == uid)));
                if ours && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    /// Pull mode's `acquire` for a running domain: see the module doc.
    pub(super) fn pull(
        &mut self,
        chosen: &[super::DomainDisk],
        xml: &super::DomainXml,
    ) -> Result<Vec<ViewDisk>, ProviderError> {
        self.end_leftovers(xml.dac)?;
        let now = jiff::Timestamp::now().as_second();
        let run_dir = self
            .scratch_dir()
            .join(format!("{RUN_DIR_PREFIX}{}-{now}", std::process::id()));
        make_private_dir(&run_dir, xml.dac)?;
        let checkpoint = format!("{CHECKPOINT_PREFIX}{now}-{}", std::process::id());
        self.frozen = Frozen::Pull(Pull {
            checkpoint: checkpoint.clone(),
            run_dir: run_dir.clone(),
            began: false,
        });

        // The base's checkpoint: in the domain, or redefined from the snapshot.
        let existing = self.our_checkpoints()?;
        let base = match &self.base {
            None => Err(None),
            Some(b) => match b.meta.get(CHECKPOINT_META) {
                None => Err(Some(format!(
                    "the base {} was not a pull-mode backup (it has no checkpoint)",
                    b.id.short()
                ))),
                Some(x) => {
                    parse_checkpoint(x).map_err(|e| Some(format!("the base's checkpoint: {e}")))
                }
            },
        };
        let base = match base {
            Ok(ck) if !existing.contains(&ck.name) => {
                let file = run_dir.join("base-checkpoint.xml");
                std::fs::write(&file, ck.redefine_xml())
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                match self.virsh.run(&[
                    "checkpoint-create",
                    "--domain",
                    &self.domain,
                    "--xmlfile",
                    &file.display().to_string(),
                    "--redefine",
                    "--redefine-validate",
                ]) {
                    Ok(_) => Ok(ck),
                    Err(e) => Err(Some(format!(
                        "checkpoint {} of the base is gone from the domain and could not be redefined ({e})",
                        ck.name
                    ))),
                }
            }
            other => other,
        };
        // Checkpoints of runs that never became a snapshot (and, with no usable base,
        // every one of ours), newest first: each one's bitmap merges into its parent.
        let keep = base.as_ref().ok().map(|b| b.name.clone());
        for stale in self.our_checkpoints()?.iter().rev() {
            if Some(stale) != keep.as_ref()
                && keep
                    .as_ref()
                    .is_none_or(|k| checkpoint_time(stale) >= checkpoint_time(k))
            {
                log::info!(
                    "domain {}: deleting checkpoint {stale} of a backup that did not complete",
                    self.domain
                );
                self.delete_checkpoint(stale)?;
            }
        }

        // The backup and the checkpoint it starts.
        let socket = run_dir.join("nbd.sock");
        let bitmap_capable = |d: &super::DomainDisk| d.driver.as_deref() == Some("qcow2");
        let mut ck_xml = format!(
            "<domaincheckpoint>\n  <name>{}</name>\n  <disks>\n",
            xml_escape(&checkpoint)
        );
        let mut job_xml = String::from("<domainbackup mode='pull'>\n");
        if let Ok(b) = &base {
            job_xml.push_str(&format!(
                "  <incremental>{}</incremental>\n",
                xml_escape(&b.name)
            ));
        }
        job_xml.push_str(&format!(
            "  <server transport='unix' socket='{}'/>\n  <disks>\n",
            xml_escape(&socket.display().to_string())
        ));
        for d in &xml.disks {
            let t = xml_escape(&d.target);
            let is_chosen = chosen.iter().any(|c| c.target == d.target);
            let bitmap = is_chosen && bitmap_capable(d);
            ck_xml.push_str(&format!(
                "    <disk name='{t}' checkpoint='{}'/>\n",
                if bitmap { "bitmap" } else { "no" }
            ));
            if !is_chosen {
                job_xml.push_str(&format!("    <disk name='{t}' backup='no'/>\n"));
                continue;
            }
            let incremental = bitmap
                && base
                    .as_ref()
                    .is_ok_and(|b| b.bitmap_disks.contains(&d.target));
            job_xml.push_str(&format!(
                "    <disk name='{t}' backup='yes' type='file'{}><scratch file='{}'/></disk>\n",
                if incremental || base.is_err() {
                    ""
                } else {
                    " backupmode='full'"
                },
                xml_escape(
                    &run_dir
                        .join(format!("{}.scratch", d.target))
                        .display()
                        .to_string()
                )
            ));
        }
        ck_xml.push_str("  </disks>\n</domaincheckpoint>\n");
        job_xml.push_str("  </disks>\n</domainbackup>\n");
        let (job_file, ck_file) = (run_dir.join("backup.xml"), run_dir.join("checkpoint.xml"));
        for (f, x) in [(&job_file, &job_xml), (&ck_file, &ck_xml)] {
            std::fs::write(f, x).map_err(|e| format!("{}: {e}", f.display()))?;
        }
        self.virsh.run(&[
            "backup-begin",
            "--domain",
            &self.domain,
            "--backupxml",
            &job_file.display().to_string(),
            "--checkpointxml",
            &ck_file.display().to_string(),
        ])?;
        if let Frozen::Pull(p) = &mut self.frozen {
            p.began = true;
        }
        let job = parse_job(
            &self
                .virsh
                .run(&["backup-dumpxml", "--domain", &self.domain])?,
        )
        .map_err(ProviderError::from)?;
        let ck = self.virsh.run(&[
            "checkpoint-dumpxml",
            "--domain",
            &self.domain,
            "--checkpointname",
            &checkpoint,
            "--no-domain",
        ])?;
        self.meta.push(MetaInput {
            name: CHECKPOINT_META.into(),
            content: MetaContent::Bytes {
                origin: format!("virsh checkpoint-dumpxml {checkpoint}"),
                bytes: ck.into_bytes(),
            },
        });

        let mut views = Vec::new();
        for d in chosen {
            let (_, export, bitmap) = job
                .disks
                .iter()
                .find(|(n, _, _)| *n == d.target)
                .ok_or_else(|| format!("the backup job does not export disk {}", d.target))?;
            if !export
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!("export name {export:?} of disk {}", d.target).into());
            }
            let mut v = ViewDisk::new(
                d.target.clone(),
                format!("nbd+unix:///{export}?socket={}", socket.display()),
            );
            v.changes = match (&base, bitmap) {
                (Err(None), _) => None,
                (Err(Some(why)), _) => Some(ViewChanges::Unusable(why.clone())),
                (Ok(_), Some(b)) => Some(ViewChanges::Bitmap(b.clone())),
                (Ok(b), None) if !bitmap_capable(d) => Some(ViewChanges::Unusable(format!(
                    "a {} disk holds no dirty bitmap",
                    d.driver.as_deref().unwrap_or("raw")
                ))),
                (Ok(b), None) => Some(ViewChanges::Unusable(format!(
                    "disk {} has no bitmap in checkpoint {} (added since?)",
                    d.target, b.name
                ))),
            };
            views.push(v);
        }
        Ok(views)
    }

    /// Pull mode's `release`: ends the job, keeps the checkpoint of a committed backup
    /// (and only it), deletes the one of a failed backup, removes the private directory.
    pub(super) fn end_pull(&self, p: Pull) -> Result<(), ProviderError> {
        let mut first_err: Option<ProviderError> = None;
        if p.began {
            if let Err(e) = self.virsh.run(&["domjobabort", "--domain", &self.domain]) {
                // Already over (the domain stopped) is fine; anything else is said.
                if self
                    .virsh
                    .run(&["backup-dumpxml", "--domain", &self.domain])
                    .is_ok()
                {
                    first_err.get_or_insert(e);
                }
            }
        }
        let ours = self.our_checkpoints().unwrap_or_default();
        if self.committed {
            for old in ours.iter().filter(|n| **n != p.checkpoint) {
                if let Err(e) = self.delete_checkpoint(old) {
                    first_err
                        .get_or_insert(format!("deleting the old checkpoint {old}: {e}").into());
                }
            }
        } else if ours.contains(&p.checkpoint) {
            if let Err(e) = self.delete_checkpoint(&p.checkpoint) {
                first_err.get_or_insert(
                    format!(
                        "deleting checkpoint {} of the failed backup (the next run retries): {e}",
                        p.checkpoint
                    )
                    .into(),
                );
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&p.run_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                first_err.get_or_insert(format!("{}: {e}", p.run_dir.display()).into());
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// A fresh directory only QEMU's user (and root) can enter, for the socket and the
/// scratch files QEMU creates: other local users must not read the guest's disks.
fn make_private_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), ProviderError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| format!("{}: giving it to QEMU's user {uid}: {e}", dir.display()))?;
    }
    // A Unix socket path is at most 107 bytes.
    if dir.join("nbd.sock").as_os_str().len() > 100 {
        return Err(format!(
            "{}: too long a path for a socket; set libvirt_scratch_dir shorter",
            dir.display()
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_from_snapshots_are_checked() {
        let ok = parse_checkpoint(
            b"<domaincheckpoint><name>dedisk-1796607004-42</name><creationTime>1</creationTime>\
              <disks><disk name='vda' checkpoint='bitmap' bitmap='x'/><disk name='vdb' checkpoint='no'/></disks></domaincheckpoint>",
        )
        .unwrap();
        assert_eq!(ok.name, "dedisk-1796607004-42");
        assert_eq!(ok.bitmap_disks, ["vda"]);
        assert_eq!(ok.bitmaps, ["x"]);
        assert!(ok
            .redefine_xml()
            .contains("<disk name='vda' checkpoint='bitmap' bitmap='x'/>"));
        assert!(parse_checkpoint(b"<domaincheckpoint><name>dedisk-1-2</name><disks><disk name='v&apos;a' checkpoint='bitmap'/></disks></domaincheckpoint>").is_err());
        for bad in [
            &b"<domaincheckpoint><name>other</name></domaincheckpoint>"[..],
            b"<domaincheckpoint><name>dedisk-1-2'/><x a='</name></domaincheckpoint>",
            b"<domainsnapshot><name>dedisk-1-2</name></domainsnapshot>",
            b"\xff",
        ] {
            assert!(parse_checkpoint(bad).is_err());
        }
        assert!(
            is_our_checkpoint("dedisk-1-2")
                && !is_our_checkpoint("dedisk-1-2-3")
                && !is_our_checkpoint("dedisk--2")
        );
    }

    #[test]
    fn backup_job_xml_gives_exports_and_bitmaps() {
        let job = parse_job(
            "<domainbackup mode='pull'><incremental>c</incremental><server transport='unix' socket='/var/tmp/dedisk-pull-1-2/nbd.sock'/>\
             <disks><disk name='vda' backup='yes' exportname='vda' exportbitmap='backup-vda'/>\
             <disk name='vdb' backup='yes' backupmode='full' exportname='vdb'/><disk name='vdc' backup='no'/></disks></domainbackup>",
        )
        .unwrap();
        assert_eq!(
            job.socket.as_deref(),
            Some("/var/tmp/dedisk-pull-1-2/nbd.sock")
        );
        assert_eq!(
            job.disks,
            [
                (
                    "vda".to_string(),
                    "vda".to_string(),
                    Some("backup-vda".to_string())
                ),
                ("vdb".to_string(), "vdb".to_string(), None)
            ]
        );
    }
}
