//! Talking to libvirt: `virsh` run with an argument vector against one connection URI,
//! and the domain XML it prints, parsed into the disks the provider may back up.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::super::{output_of, ProviderError};
use crate::source::detect::ImageFormat;

/// Runs `virsh` against one connection URI.
#[derive(Clone, Debug)]
pub struct Virsh {
    uri: Option<String>,
}

impl Virsh {
    pub fn new(uri: Option<String>) -> Self {
        Virsh { uri }
    }

    /// `virsh [-c URI] ARGS`; stdout, or an error with the command and its stderr.
    /// Domain names always follow `--domain` (a domain named `--help` is a value then,
    /// never an option).
    pub fn run(&self, args: &[&str]) -> Result<String, ProviderError> {
        let mut cmd = Command::new("virsh");
        if let Some(uri) = &self.uri {
            cmd.args(["-c", uri]);
        }
        output_of(cmd.args(args), &format!("virsh {}", args.join(" ")))
    }

    /// Every domain's name, running or not.
    pub fn domains(&self) -> Result<Vec<String>, ProviderError> {
        Ok(self
            .run(&["list", "--all", "--name"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    pub(super) fn state(&self, domain: &str) -> Result<String, ProviderError> {
        Ok(self
            .run(&["domstate", "--domain", domain])?
            .trim()
            .to_string())
    }

    pub(super) fn live_xml(&self, domain: &str) -> Result<DomainXml, ProviderError> {
        DomainXml::parse(&self.run(&["dumpxml", "--domain", domain])?)
            .map_err(|e| ProviderError::from(format!("domain {domain}: {e}")))
    }

    /// Does the guest agent answer? (Only then can `--quiesce` freeze filesystems.)
    pub(super) fn agent_answers(&self, domain: &str) -> bool {
        self.run(&[
            "qemu-agent-command",
            "--domain",
            domain,
            "--timeout",
            "5",
            "--cmd",
            r#"{"execute":"guest-ping"}"#,
        ])
        .is_ok()
    }
}

/// One `<disk>` of a domain's XML.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainDisk {
    /// `<target dev=…>`: `vda`, `sdb`.
    pub target: String,
    /// `disk`, `cdrom`, `floppy`, `lun`.
    pub device: String,
    /// `file`, `block`, `network`, `volume`, …
    pub kind: String,
    /// The file or device, for `file` and `block` disks that have one.
    pub source: Option<PathBuf>,
    /// The backing files under `source`, nearest first (`<backingStore>` elements).
    pub backing: Vec<PathBuf>,
    /// `<driver type=…>`: `raw`, `qcow2`, …
    pub driver: Option<String>,
    pub readonly: bool,
}

/// What the provider needs of a domain's XML.
#[derive(Clone, Debug, Default)]
pub struct DomainXml {
    pub disks: Vec<DomainDisk>,
    /// `<os><nvram>PATH</nvram>`: the UEFI variable store.
    pub nvram: Option<PathBuf>,
    /// The user and group QEMU runs as (`<seclabel model='dac'><label>+UID:+GID`), in a
    /// running domain's XML: files QEMU must create go in a directory they own.
    pub dac: Option<(u32, u32)>,
}

/// The first child element of `n` named `name`.
fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

impl DomainXml {
    pub fn parse(xml: &str) -> Result<DomainXml, ProviderError> {
        let doc = roxmltree::Document::parse(xml)
            .map_err(|e| ProviderError::from(format!("domain XML: {e}")))?;
        let root = doc.root_element();
        let mut out = DomainXml::default();
        if let Some(os) = child(root, "os") {
            out.nvram = child(os, "nvram")
                .and_then(|n| n.text())
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(PathBuf::from);
        }
        out.dac = root
            .children()
            .filter(|c| c.has_tag_name("seclabel") && c.attribute("model") == Some("dac"))
            .find_map(|c| child(c, "label")?.text())
            .and_then(|l| {
                let (u, g) = l.trim().split_once(':')?;
                Some((
                    u.trim_start_matches('+').parse().ok()?,
                    g.trim_start_matches('+').parse().ok()?,
                ))
            });
        let Some(devices) = child(root, "devices") else {
            return Ok(out);
        };
        for disk in devices.children().filter(|c| c.has_tag_name("disk")) {
            let Some(target) = child(disk, "target").and_then(|t| t.attribute("dev")) else {
                continue;
            };
            let kind = disk.attribute("type").unwrap_or("file").to_string();
            let source_of = |n: roxmltree::Node<'_, '_>| {
                child(n, "source")
                    .and_then(|s| s.attribute("file").or_else(|| s.attribute("dev")))
                    .map(PathBuf::from)
            };
            let source = source_of(disk);
            let mut backing = Vec::new();
            let mut level = child(disk, "backingStore");
            while let Some(b) = level {
                match source_of(b) {
                    Some(p) => backing.push(p),
                    None => break,
                }
                level = child(b, "backingStore");
            }
            out.disks.push(DomainDisk {
                target: target.to_string(),
                device: disk.attribute("device").unwrap_or("disk").to_string(),
                kind,
                source,
                backing,
                driver: child(disk, "driver")
                    .and_then(|d| d.attribute("type"))
                    .map(str::to_string),
                readonly: child(disk, "readonly").is_some(),
            });
        }
        Ok(out)
    }

    pub(super) fn source_of(&self, target: &str) -> Option<&Path> {
        self.disks
            .iter()
            .find(|d| d.target == target)
            .and_then(|d| d.source.as_deref())
    }

    /// Is `file` anywhere in a disk's chain (its top or a backing file)?
    pub(super) fn uses(&self, file: &Path) -> bool {
        self.disks
            .iter()
            .any(|d| d.source.as_deref() == Some(file) || d.backing.iter().any(|b| b == file))
    }
}

/// libvirt's `<driver type>` as a format dedisk reads.
pub(super) fn format_of(driver: Option<&str>) -> Result<ImageFormat, ProviderError> {
    Ok(match driver.unwrap_or("raw") {
        "raw" => ImageFormat::Raw,
        "qcow2" => ImageFormat::Qcow2,
        "vpc" => ImageFormat::Vhd,
        "vhdx" => ImageFormat::Vhdx,
        "vmdk" => ImageFormat::Vmdk,
        "vdi" => ImageFormat::Vdi,
        other => return Err(format!("driver type {other:?} is not a format dedisk reads").into()),
    })
}
