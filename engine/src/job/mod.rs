//! The nightly job (`dedisk run JOBFILE`): a TOML file naming the repository, defaults,
//! and VMs with their disks, snapshot method, retention and hooks.
//!
//! ```toml
//! repository = "/srv/backup/repo"
//! password_file = "/etc/dedisk/repo.pass"  # or password_command = "...", for an
//!                                          # encrypted repository (else DEDISK_PASSWORD*)
//! key_file = "/etc/dedisk/repo.key"        # a key kept outside the repository
//! prune_on = ["Sun"]                      # weekdays to prune after the job
//! copy = { to = "s3://offsite/fleet", password_file = "/etc/dedisk/offsite.pass" }
//!                                          # after the backups, the job's VMs' snapshots
//!                                          # into a second repository (`dedisk copy`)
//! notify = "mail -s dedisk root"          # gets the summary on stdin
//! notify_email = ["root", "ops@example.org"]   # the summary as a mail, through the
//! notify_email_on = "problems"            # local sendmail: always (the default) or
//!                                          # only when the run was not a success
//! notify_email_from = "dedisk@backup01.example.org"   # else the MTA's default sender
//! sendmail = "/usr/sbin/sendmail"         # the default
//! metrics_file = "/var/lib/prometheus/node-exporter/dedisk.prom"
//!                                          # per-VM and repository metrics after each run
//!
//! [boot_test]                             # boot each VM's new snapshot on these days
//! on = ["Sat"]                            # (verify --boot); a VM that does not boot
//! serial = "login:"                       # makes the job partial (exit 3); or
//! timeout = 600                           # agent = true, or screen_seconds = 20
//! evidence_dir = "/var/lib/dedisk/boot"   # screenshot + logs per test
//!
//! [defaults]
//! snapshot = "none"                       # none|command|btrfs|lvm|zfs|xenserver|libvirt
//! keep_daily = 7
//! keep_weekly = 4
//! post_hook = "/usr/local/bin/after-vm"
//!
//! [select]
//! include = ["web.*", "db01"]             # anchored regular expressions
//! exclude = ["web-test"]                  # excludes win
//!
//! [[vm]]
//! name = "web01"
//! disks = { vda = "/var/lib/images/web01.raw" }
//! meta = ["/etc/libvirt/qemu/web01.xml"]
//! snapshot = "btrfs"
//! btrfs_subvolume = "/var/lib/images"
//! keep_daily = 14
//!
//! [[vm]]
//! name = "db01"                           # a libvirt domain: its disks are found in
//! snapshot = "libvirt"                    # its XML unless `disks` lists some
//! exclude_disks = ["vdb"]                 # (swap, scratch)
//! libvirt_mode = "pull"                   # pull (changed blocks, the default for a
//!                                         # running domain) or snapshot (overlays)
//! verify_unchanged = 3                    # % of unchanged data re-read each night
//! ```
//!
//! With `[select] from = "libvirt"` (or `"xenserver"`), every VM of the hypervisor that
//! the patterns pick is backed up with that snapshot method, whether or not a `[[vm]]`
//! names it.

pub mod email;
pub mod metrics;
pub mod provider;
pub mod run;
pub mod select;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::maintain::forget::Policy;

/// Settings a VM may set and the `[defaults]` table provides.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub snapshot: Option<String>,
    /// `command`: prints the path to read for one disk (env: DEDISK_VM, DEDISK_DISK,
    /// DEDISK_SOURCE); `snapshot_release` undoes it (env adds DEDISK_SNAPSHOT_PATH).
    pub snapshot_create: Option<String>,
    pub snapshot_release: Option<String>,
    /// `btrfs`: the subvolume holding the disk images.
    pub btrfs_subvolume: Option<PathBuf>,
    /// `lvm`: copy-on-write space of each snapshot (`lvcreate -L`), default `5G`.
    pub lvm_snapshot_size: Option<String>,
    /// `libvirt`: the connection (`virsh -c`), default virsh's own (qemu:///system for
    /// root).
    pub libvirt_uri: Option<String>,
    /// `libvirt`: the domain, default the VM's name.
    pub libvirt_domain: Option<String>,
    /// `libvirt`: freeze the guest's filesystems through its agent: `auto` (when the
    /// agent answers, the default), `always` (fail without it) or `never`.
    pub libvirt_quiesce: Option<String>,
    /// `libvirt`: where overlays go while the base images are read; default beside each
    /// image (needed for block-device disks).
    pub libvirt_overlay_dir: Option<PathBuf>,
    /// `libvirt`: `pull` (a backup job exporting the disks over NBD, with a checkpoint
    /// per backup so the next night reads only what changed), `snapshot` (overlays, full
    /// reads), or `auto` (the default: pull for a running domain).
    pub libvirt_mode: Option<String>,
    /// `libvirt` pull mode: where the NBD socket and the scratch files that hold what
    /// the guest overwrites during the backup go (default /var/tmp).
    pub libvirt_scratch_dir: Option<PathBuf>,
    /// Backups from a change map: percent of the unchanged data read again each night
    /// and checked against the base (default 3).
    pub verify_unchanged: Option<f64>,
    /// `xenserver`: `raw` (the default) or `vhd`, which carries only allocated blocks.
    pub xenserver_export_format: Option<String>,
    /// Disk labels (libvirt: targets such as `vdb`) not to back up.
    pub exclude_disks: Option<Vec<String>>,
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<String>,
    pub keep_tags: Option<Vec<String>>,
    pub pre_hook: Option<String>,
    pub post_hook: Option<String>,
    pub tags: Option<Vec<String>>,
    pub workers: Option<usize>,
}

impl Settings {
    /// `self` over `base`, field by field.
    fn over(&self, base: &Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: self.$f.clone().or_else(|| base.$f.clone()),)* } };
        }
        pick!(
            snapshot,
            snapshot_create,
            snapshot_release,
            btrfs_subvolume,
            lvm_snapshot_size,
            libvirt_uri,
            libvirt_domain,
            libvirt_quiesce,
            libvirt_overlay_dir,
            libvirt_mode,
            libvirt_scratch_dir,
            verify_unchanged,
            xenserver_export_format,
            exclude_disks,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within,
            keep_tags,
            pre_hook,
            post_hook,
            tags,
            workers
        )
    }

    pub fn policy(&self) -> Result<Policy> {
        Ok(Policy {
            last: self.keep_last.unwrap_or(0),
            hourly: self.keep_hourly.unwrap_or(0),
            daily: self.keep_daily.unwrap_or(0),
            weekly: self.keep_weekly.unwrap_or(0),
            monthly: self.keep_monthly.unwrap_or(0),
            yearly: self.keep_yearly.unwrap_or(0),
            within: self
                .keep_within
                .as_deref()
                .map(crate::maintain::forget::parse_within)
                .transpose()?,
            tags: self.keep_tags.clone().unwrap_or_default(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmEntry {
    name: String,
    /// Label -> path. A libvirt or xenserver VM may leave it out: its disks are found on
    /// the hypervisor.
    #[serde(default)]
    disks: BTreeMap<String, PathBuf>,
    #[serde(default)]
    meta: Vec<PathBuf>,
    #[serde(flatten)]
    settings: Settings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Select {
    /// `libvirt` or `xenserver`: every VM the hypervisor lists (`virsh list --all`, `xe
    /// vm-list` less dom0, snapshots and templates) that the include/exclude patterns
    /// pick and no `[[vm]]` names becomes a VM with the defaults and that snapshot method.
    from: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

/// A setting that takes one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobToml {
    /// A path (relative to the job file) or `s3://BUCKET/PREFIX`.
    repository: String,
    password_file: Option<PathBuf>,
    password_command: Option<String>,
    key_file: Option<PathBuf>,
    status_log: Option<PathBuf>,
    report: Option<PathBuf>,
    notify: Option<String>,
    /// One address or a list.
    notify_email: Option<OneOrMany>,
    notify_email_from: Option<String>,
    notify_email_on: Option<String>,
    sendmail: Option<PathBuf>,
    pre_hook: Option<String>,
    post_hook: Option<String>,
    #[serde(default)]
    prune_on: Vec<String>,
    copy: Option<CopyToml>,
    boot_test: Option<BootTestToml>,
    /// A Prometheus textfile-collector file written after each run.
    metrics_file: Option<PathBuf>,
    #[serde(default)]
    defaults: Settings,
    #[serde(default)]
    select: Select,
    #[serde(default)]
    vm: Vec<VmEntry>,
}

/// `[boot_test]`: on these weekdays, boot each VM's new snapshot (`verify --boot`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootTestToml {
    on: Vec<String>,
    /// The sign of a boot: a serial line matching this, the guest agent, or (neither)
    /// the screen unchanged for `screen_seconds`.
    serial: Option<String>,
    #[serde(default)]
    agent: bool,
    screen_seconds: Option<u64>,
    timeout: Option<u64>,
    /// auto (the default), kvm or tcg.
    accel: Option<String>,
    memory_mib: Option<u64>,
    /// Where each test's evidence folder goes (relative to the job file's folder);
    /// default `boot-evidence` beside the job file.
    evidence_dir: Option<PathBuf>,
}

/// A job's boot tests, checked when the job file is loaded.
#[derive(Clone, Debug)]
pub struct BootTest {
    pub on: Vec<jiff::civil::Weekday>,
    pub signal: crate::access::boot::Signal,
    pub timeout: std::time::Duration,
    pub accel: crate::access::boot::Accel,
    pub memory_mib: u64,
    pub evidence_dir: PathBuf,
}

/// `copy = { to = ..., password_file | password_command, key_file }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyToml {
    to: String,
    password_file: Option<PathBuf>,
    password_command: Option<String>,
    key_file: Option<PathBuf>,
}

/// Where the job copies its VMs' snapshots after the backups (`dedisk copy`).
#[derive(Clone, Debug)]
pub struct CopyTarget {
    pub to: repo_format::Location,
    /// The target's password source (`None`: the DEDISK_TO_PASSWORD variables).
    pub password: Option<crate::secret::PasswordFrom>,
    pub key_file: Option<PathBuf>,
}

impl CopyTarget {
    /// The target, unlocked with its own password source (nobody is asked).
    pub fn open(&self) -> Result<repo_format::Repository> {
        let access = crate::secret::KeyAccess {
            key_file: self.key_file.as_deref(),
            password: self
                .password
                .clone()
                .or_else(|| crate::secret::PasswordFrom::from_env_prefixed("DEDISK_TO_")),
            prompt: None,
        };
        crate::secret::open_repository(&self.to, &access)
    }
}

/// One VM as the job will back it up.
#[derive(Clone, Debug)]
pub struct VmPlan {
    pub name: String,
    pub disks: Vec<(String, PathBuf)>,
    pub meta: Vec<PathBuf>,
    pub settings: Settings,
}

/// A loaded, checked job file.
#[derive(Clone, Debug)]
pub struct Job {
    pub path: PathBuf,
    pub repository: repo_format::Location,
    /// Where an encrypted repository's password comes from (`None`: the
    /// DEDISK_PASSWORD variables); read once, at the start.
    pub password: Option<crate::secret::PasswordFrom>,
    pub key_file: Option<PathBuf>,
    pub status_log: PathBuf,
    pub report: PathBuf,
    pub notify: Option<String>,
    pub notify_email: Option<email::EmailNotify>,
    pub pre_hook: Option<String>,
    pub post_hook: Option<String>,
    pub prune_on: Vec<jiff::civil::Weekday>,
    pub copy: Option<CopyTarget>,
    pub boot_test: Option<BootTest>,
    /// Where the run's metrics go (node_exporter's textfile collector folder).
    pub metrics_file: Option<PathBuf>,
    pub vms: Vec<VmPlan>,
}

/// `notify_email` and the settings that go with it, checked.
fn notify_email(raw: &JobToml, path: &Path, text: &str) -> Result<Option<email::EmailNotify>> {
    let at = |needle: &str, what: String| {
        Error::Usage(format!(
            "{} line {}: {what}",
            path.display(),
            line_of(text, needle)
        ))
    };
    let Some(to) = &raw.notify_email else {
        for (set, name) in [
            (raw.notify_email_from.is_some(), "notify_email_from"),
            (raw.notify_email_on.is_some(), "notify_email_on"),
            (raw.sendmail.is_some(), "sendmail"),
        ] {
            if set {
                return Err(at(name, format!("{name} without notify_email")));
            }
        }
        return Ok(None);
    };
    let to = match to {
        OneOrMany::One(a) => vec![a.clone()],
        OneOrMany::Many(list) => list.clone(),
    };
    if to.is_empty() {
        return Err(at("notify_email", "notify_email lists no address".into()));
    }
    for a in to.iter().chain(&raw.notify_email_from) {
        email::check_address(a).map_err(|e| at(a, e))?;
    }
    let on = match raw.notify_email_on.as_deref() {
        None | Some("always") => email::SendOn::Always,
        Some("problems") => email::SendOn::Problems,
        Some(other) => {
            return Err(at(
                "notify_email_on",
                format!("notify_email_on {other:?} is not \"always\" or \"problems\""),
            ))
        }
    };
    let sendmail = raw
        .sendmail
        .clone()
        .unwrap_or_else(|| "/usr/sbin/sendmail".into());
    if !sendmail.is_absolute() {
        return Err(at(
            "sendmail",
            format!("sendmail {} is not an absolute path", sendmail.display()),
        ));
    }
    Ok(Some(email::EmailNotify {
        to,
        from: raw.notify_email_from.clone(),
        sendmail,
        on,
    }))
}

/// The 1-based line of the first occurrence of `needle` in `text`, for messages.
fn line_of(text: &str, needle: &str) -> usize {
    text.find(needle)
        .map_or(0, |at| text[..at].lines().count().max(1))
}

/// An anchored regular expression: `web.*` matches `web01`, not `myweb01`.
fn anchored(pattern: &str, path: &Path, text: &str) -> Result<regex::Regex> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        Error::Usage(format!(
            "{} line {}: invalid regular expression {pattern:?}: {e}",
            path.display(),
            line_of(text, pattern)
        ))
    })
}

/// Checks `[boot_test]`.
fn boot_test(b: BootTestToml, path: &Path, dir: &Path, text: &str) -> Result<BootTest> {
    use crate::access::boot::{Accel, Signal};
    let bad = |what: &str, why: String| {
        Error::Usage(format!(
            "{} line {}: boot_test {what}: {why}",
            path.display(),
            line_of(text, what)
        ))
    };
    let on =
        b.on.iter()
            .map(|d| weekday(d).ok_or_else(|| bad(d, "not a weekday".into())))
            .collect::<Result<_>>()?;
    let signal = match (&b.serial, b.agent) {
        (Some(re), _) => Signal::serial(re).map_err(|e| bad(re, e.to_string()))?,
        (None, true) => Signal::Agent,
        (None, false) => Signal::Screen(std::time::Duration::from_secs(
            b.screen_seconds.unwrap_or(20).max(2),
        )),
    };
    let accel = match b.accel.as_deref().unwrap_or("auto") {
        "auto" => Accel::Auto,
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        other => return Err(bad(other, "accel is auto, kvm or tcg".into())),
    };
    Ok(BootTest {
        on,
        signal,
        timeout: std::time::Duration::from_secs(b.timeout.unwrap_or(600)),
        accel,
        memory_mib: b.memory_mib.unwrap_or(2048),
        evidence_dir: dir.join(b.evidence_dir.unwrap_or_else(|| "boot-evidence".into())),
    })
}

fn weekday(s: &str) -> Option<jiff::civil::Weekday> {
    use jiff::civil::Weekday::*;
    Some(match s.get(..3)?.to_ascii_lowercase().as_str() {
        "mon" => Monday,
        "tue" => Tuesday,
        "wed" => Wednesday,
        "thu" => Thursday,
        "fri" => Friday,
        "sat" => Saturday,
        "sun" => Sunday,
        _ => return None,
    })
}

impl Job {
    /// Loads `path`, applies defaults, and keeps the VMs the selection (and `only`, when
    /// not empty) picks. Every problem is an error naming the file and, where it can, the
    /// line.
    pub fn load(path: &Path, only: &[String]) -> Result<Job> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
        let raw: JobToml = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map_or(0, |s| text[..s.start].lines().count().max(1));
            Error::Usage(format!("{} line {line}: {}", path.display(), e.message()))
        })?;
        let include: Vec<regex::Regex> = raw
            .select
            .include
            .iter()
            .map(|p| anchored(p, path, &text))
            .collect::<Result<_>>()?;
        let exclude: Vec<regex::Regex> = raw
            .select
            .exclude
            .iter()
            .map(|p| anchored(p, path, &text))
            .collect::<Result<_>>()?;
        let prune_on = raw
            .prune_on
            .iter()
            .map(|d| {
                weekday(d).ok_or_else(|| {
                    Error::Usage(format!(
                        "{} line {}: {d:?} is not a weekday",
                        path.display(),
                        line_of(&text, d)
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let notify_email = notify_email(&raw, path, &text)?;
        let boot_test = match raw.boot_test {
            None => None,
            Some(b) => Some(boot_test(b, path, dir, &text)?),
        };
        let stem = path
            .file_stem()
            .map_or("job".into(), |s| s.to_string_lossy().into_owned());
        let mut entries = raw.vm;
        let mut seen = std::collections::HashSet::new();
        for v in &entries {
            if !seen.insert(v.name.clone()) {
                return Err(Error::Usage(format!(
                    "{} line {}: VM {:?} is listed twice",
                    path.display(),
                    line_of(&text, &v.name),
                    v.name
                )));
            }
        }
        if let Some(from) = raw.select.from.as_deref() {
            let listed = match from {
                "libvirt" => provider::Virsh::new(raw.defaults.libvirt_uri.clone()).domains(),
                "xenserver" => provider::xenserver_vm_names(),
                other => {
                    return Err(Error::Usage(format!(
                        "{} line {}: select.from {other:?} is not a hypervisor dedisk lists (libvirt, xenserver)",
                        path.display(),
                        line_of(&text, other)
                    )))
                }
            };
            let names = listed.map_err(|e| {
                Error::Usage(format!(
                    "{} line {}: listing the VMs of {from}: {e}",
                    path.display(),
                    line_of(&text, from)
                ))
            })?;
            for name in names.into_iter().filter(|n| !seen.contains(n)) {
                entries.push(VmEntry {
                    name,
                    disks: BTreeMap::new(),
                    meta: Vec::new(),
                    settings: Settings {
                        snapshot: Some(from.into()),
                        ..Settings::default()
                    },
                });
            }
        }
        let mut vms = Vec::new();
        for v in entries {
            let picked = (include.is_empty() || include.iter().any(|r| r.is_match(&v.name)))
                && !exclude.iter().any(|r| r.is_match(&v.name))
                && (only.is_empty() || only.contains(&v.name));
            if !picked {
                continue;
            }
            let settings = v.settings.over(&raw.defaults);
            let method = settings.snapshot.as_deref().unwrap_or("none");
            provider::check_settings(method, &settings).map_err(|e| {
                Error::Usage(format!(
                    "{} line {}: VM {}: {e}",
                    path.display(),
                    line_of(&text, &v.name),
                    v.name
                ))
            })?;
            settings.policy()?;
            // libvirt and xenserver find a VM's disks themselves.
            if v.disks.is_empty() && method != "libvirt" && method != "xenserver" {
                return Err(Error::Usage(format!(
                    "{}: VM {} has no disks",
                    path.display(),
                    v.name
                )));
            }
            let excluded = settings.exclude_disks.clone().unwrap_or_default();
            let listed = v.disks.len();
            let disks: Vec<_> = v
                .disks
                .into_iter()
                .filter(|(label, _)| !excluded.contains(label))
                .collect();
            if listed > 0 && disks.is_empty() {
                return Err(Error::Usage(format!(
                    "{}: VM {}: exclude_disks leaves none of its disks",
                    path.display(),
                    v.name
                )));
            }
            vms.push(VmPlan {
                name: v.name,
                disks,
                meta: v.meta,
                settings,
            });
        }
        for o in only {
            if !vms.iter().any(|v| &v.name == o) {
                return Err(Error::Usage(format!(
                    "--only {o}: no such VM selected in {}",
                    path.display()
                )));
            }
        }
        let password = password_from(path, dir, raw.password_file, raw.password_command)?;
        let location = |text: &str| -> Result<repo_format::Location> {
            Ok(
                match repo_format::Location::parse(text)
                    .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?
                {
                    repo_format::Location::Local(p) => repo_format::Location::Local(dir.join(p)),
                    s3 => s3,
                },
            )
        };
        let copy = match raw.copy {
            Some(c) => Some(CopyTarget {
                to: location(&c.to)?,
                password: password_from(path, dir, c.password_file, c.password_command)?,
                key_file: c.key_file.map(|k| dir.join(k)),
            }),
            None => None,
        };
        Ok(Job {
            path: path.into(),
            repository: location(&raw.repository)?,
            password,
            key_file: raw.key_file.map(|k| dir.join(k)),
            status_log: raw
                .status_log
                .map_or_else(|| dir.join(format!("{stem}.status.log")), |p| dir.join(p)),
            report: raw
                .report
                .map_or_else(|| dir.join(format!("{stem}.report.json")), |p| dir.join(p)),
            notify: raw.notify,
            notify_email,
            pre_hook: raw.pre_hook,
            post_hook: raw.post_hook,
            prune_on,
            copy,
            boot_test,
            metrics_file: raw.metrics_file.map(|p| dir.join(p)),
            vms,
        })
    }
}

/// A password source from a job file's `password_file` (relative to the job file's
/// folder) or `password_command`; at most one.
fn password_from(
    path: &Path,
    dir: &Path,
    file: Option<PathBuf>,
    command: Option<String>,
) -> Result<Option<crate::secret::PasswordFrom>> {
    Ok(match (file, command) {
        (Some(_), Some(_)) => {
            return Err(Error::Usage(format!(
                "{}: password_file and password_command exclude each other",
                path.display()
            )))
        }
        (Some(f), None) => Some(crate::secret::PasswordFrom::File(dir.join(f))),
        (None, Some(c)) => Some(crate::secret::PasswordFrom::Command(c)),
        (None, None) => None,
    })
}
