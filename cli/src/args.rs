//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "dedisk",
    version,
    about = "Deduplicating block-level backup of virtual-machine disks",
    after_help = "Exit codes: 0 success, 1 error, 2 command-line usage error, 3 finished with warnings, 130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct Global {
    /// The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and
    /// endpoint from AWS_* variables or ~/.aws, as for the AWS CLI).
    #[arg(long, global = true, env = "DEDISK_REPO", value_name = "REPO")]
    pub repo: Option<String>,
    /// This host's cache (the index of an encrypted or S3 repository, temporary packs);
    /// default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR.
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print machine-readable JSON on stdout (no progress bar).
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Seconds to wait for a conflicting repository lock (a prune, or the backups a
    /// prune waits for) before giving up.
    #[arg(long, global = true, default_value_t = 600, value_name = "SECONDS")]
    pub lock_wait: u64,
    /// An encrypted repository's key file kept outside it (instead of REPO/keys/);
    /// with `init`, where to write the new key.
    #[arg(long, global = true, env = "DEDISK_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a new repository (encrypted unless --encryption none).
    Init(InitArgs),
    /// Manage an encrypted repository's keys: list, add, remove, passwd, export, import.
    Key {
        #[command(subcommand)]
        what: KeyWhat,
    },
    /// Back up one VM's disks into a new snapshot.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// Restore a snapshot's disk to a file or block device.
    Restore(RestoreArgs),
    /// Show repository size, deduplication and compression.
    Stats,
    /// Check the repository: structure, and with --read-data every chunk's bytes.
    Verify(VerifyArgs),
    /// Forget snapshots a retention policy does not keep (per VM).
    Forget(ForgetArgs),
    /// Run a nightly job file: snapshot, back up, release, retention, report.
    Run(RunArgs),
    /// Mount every snapshot read-only (FUSE): VM/TIME_ID/LABEL.raw, LABEL.pN partitions.
    Mount(MountArgs),
    /// Serve snapshot disks read-only over NBD (for qemu-img, qemu, nbd-client).
    ServeNbd(ServeNbdArgs),
    /// Show what dedisk sees in a disk image: format, size, backing chain, allocation.
    Inspect(InspectArgs),
    /// Delete unreferenced data: packs nothing uses, and repack mostly-unused ones.
    Prune(PruneArgs),
    /// Copy snapshots into another repository, sending only the chunks it lacks.
    Copy(CopyArgs),
    /// Remove the locks of processes that are provably gone (others are listed).
    Unlock {
        /// Also remove other hosts' locks and unreadable lock files (never a live
        /// process's lock on this host).
        #[arg(long)]
        force: bool,
    },
    /// Rebuild derived data from what the repository holds.
    Repair {
        #[command(subcommand)]
        what: RepairWhat,
    },
    /// Print the repository's Prometheus metrics (size, snapshots, each VM's newest).
    Metrics,
    /// A read-only web dashboard of the repository: VMs and their last backups, nights,
    /// growth, the last verify, prune and boot tests, each snapshot's disks.
    Ui(UiArgs),
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: ShellArg,
    },
    /// Write the man pages (dedisk.1 and one per command, dedisk-backup.1, ...) into DIR.
    Manpages {
        /// The folder to write them in (created if missing).
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ChunkerArg {
    AlignedCdc,
    Fastcdc,
    Fixed,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncryptionArg {
    /// Keyed BLAKE3 ids, AES-256-GCM sealing, Padmé padding (format version 2).
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    /// No encryption: a plaintext repository (format version 1), on purpose.
    None,
}

/// argon2id's cost for a new key file (defaults: RFC 9106's second option).
#[derive(Args, Clone, Copy)]
pub struct KdfArgs {
    /// Memory argon2id uses, in MiB (8..=4096).
    #[arg(long, default_value_t = 64, value_name = "MIB", value_parser = clap::value_parser!(u32).range(8..=4096))]
    pub kdf_memory: u32,
    /// argon2id passes (1..=64).
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub kdf_passes: u32,
    /// argon2id lanes (1..=64).
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub kdf_lanes: u32,
}

#[derive(Subcommand)]
pub enum KeyWhat {
    /// List the key files in REPO/keys/.
    List,
    /// Add a key file with a new password (DEDISK_NEW_PASSWORD(_FILE), or a prompt).
    Add {
        /// Who or what the key is for (an admin, a host).
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Remove a key file (never the last one).
    Remove {
        /// The key's id, as `key list` shows it.
        id: String,
    },
    /// Change the password of the key that opens the repository.
    Passwd {
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Write the master key out for safekeeping: to FILE, or as a paper form on stdout.
    Export {
        /// A new file to write the key to (private, never overwritten).
        #[arg(required_unless_present = "paper")]
        file: Option<PathBuf>,
        /// Print the key as a paper form (two lines of hex with check groups).
        #[arg(long)]
        paper: bool,
    },
    /// Add a key file from an exported master key (a file from `key export`, or the
    /// paper form typed back in on stdin), when every password is lost.
    Import {
        /// The file `key export` wrote; `-` reads the paper form from stdin.
        from: PathBuf,
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
}

#[derive(Args)]
pub struct InitArgs {
    /// Where to create the repository: a directory or s3://BUCKET/PREFIX (or --repo).
    pub path: Option<String>,
    /// Encryption of the new repository.
    #[arg(long, value_enum, default_value = "aes-256-gcm")]
    pub encryption: EncryptionArg,
    /// The first key's label (default: this host's name).
    #[arg(long)]
    pub key_label: Option<String>,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// Chunking algorithm (fixed for the repository's lifetime).
    #[arg(long, value_enum, default_value = "aligned-cdc")]
    pub chunker: ChunkerArg,
    /// Smallest chunk, in KiB.
    #[arg(long, value_name = "KIB")]
    pub chunk_min: Option<u32>,
    /// Target average chunk, in KiB.
    #[arg(long, value_name = "KIB")]
    pub chunk_avg: Option<u32>,
    /// Largest chunk, in KiB.
    #[arg(long, value_name = "KIB")]
    pub chunk_max: Option<u32>,
    /// aligned-cdc: also cut where a block follows at least this many zero bytes (the
    /// slack after a file's end), so the same files deduplicate in any layout; 0 turns it
    /// off [default: 256].
    #[arg(long, value_name = "BYTES")]
    pub file_start_tail: Option<u32>,
    /// zstd compression level for new chunks (1-19).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compression_level: i32,
    /// Target pack file size, in MiB.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub pack_size: u64,
}

#[derive(Args)]
pub struct BackupArgs {
    /// VM name the snapshot belongs to.
    #[arg(long)]
    pub name: String,
    /// Tag for the snapshot (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Disks: PATH, LABEL=PATH, or - for a raw stream on stdin.
    #[arg(required = true, value_name = "DISK")]
    pub disks: Vec<String>,
    /// Small file to keep with the snapshot (domain XML, .cfg, NVRAM); repeatable.
    #[arg(long = "meta", value_name = "FILE")]
    pub meta: Vec<PathBuf>,
    /// Keep a disk read from stdin or a pipe that gave no data (refused by default: an
    /// empty stream is usually a dead export).
    #[arg(long)]
    pub allow_empty: bool,
    /// Record this time (RFC 3339, e.g. 2026-11-30T01:00:00Z) instead of now: for
    /// images taken earlier, such as an old LVM-script archive being imported.
    #[arg(long, value_name = "TIME")]
    pub time: Option<jiff::Timestamp>,
    /// Hash/compress threads (default: one per core).
    #[arg(long, value_parser = parse_workers)]
    pub workers: Option<usize>,
    /// Read through the page cache instead of O_DIRECT.
    #[arg(long)]
    pub no_direct: bool,
    /// Image format of the disks: `auto` judges each file by its content (qcow2, VHD,
    /// VHDX, VMDK, VDI, XVA, else raw); `raw` stores any file byte for byte.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    /// qcow2: back up this internal snapshot (name or id) instead of the active layer.
    #[arg(long, value_name = "NAME")]
    pub qcow2_snapshot: Option<String>,
    /// Read only what changed since this snapshot (`latest`, `VM@latest`, an id
    /// prefix), which must be the VM's latest; the changes come from --dirty-bitmap or
    /// --changed-ranges. Anything untrustworthy reads the disk in full, and says why.
    #[arg(long, value_name = "SNAPSHOT")]
    pub base: Option<String>,
    /// NBD disks: the dirty bitmap holding the writes since --base
    /// (`qemu:dirty-bitmap:NAME` on the export).
    #[arg(long, value_name = "NAME", requires = "base")]
    pub dirty_bitmap: Option<String>,
    /// The changes since --base as a file of `OFFSET LENGTH` lines (README, "Changed
    /// ranges"); `LABEL=FILE` for one disk of several. Repeatable.
    #[arg(long, value_name = "[LABEL=]FILE", requires = "base")]
    pub changed_ranges: Vec<String>,
    /// Percent of the unchanged data read again each night and checked against the
    /// base, so every byte is re-read every 100/PCT nights; 0 trusts the map blindly.
    #[arg(long, value_name = "PCT", default_value = "3", value_parser = parse_pct)]
    pub verify_unchanged: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Auto,
    Raw,
    Qcow2,
    Vhd,
    Vhdx,
    Vmdk,
    Vdi,
    Xva,
}

impl FormatArg {
    /// The format to open with, or `None` to detect it.
    pub fn source_format(self) -> Option<engine::source::SourceFormat> {
        use engine::source::{ImageFormat as F, SourceFormat as S};
        Some(match self {
            FormatArg::Auto => return None,
            FormatArg::Raw => S::Image(F::Raw),
            FormatArg::Qcow2 => S::Image(F::Qcow2),
            FormatArg::Vhd => S::Image(F::Vhd),
            FormatArg::Vhdx => S::Image(F::Vhdx),
            FormatArg::Vmdk => S::Image(F::Vmdk),
            FormatArg::Vdi => S::Image(F::Vdi),
            FormatArg::Xva => S::Xva,
        })
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// The job file (TOML).
    pub jobfile: PathBuf,
    /// Print the plan and check everything checkable; change nothing.
    #[arg(long)]
    pub preview: bool,
    /// Only these VMs of the job (repeatable).
    #[arg(long, value_name = "VM")]
    pub only: Vec<String>,
}

#[derive(Args)]
pub struct CopyArgs {
    /// The target repository (a directory or s3://BUCKET/PREFIX). Its password comes
    /// from DEDISK_TO_PASSWORD, DEDISK_TO_PASSWORD_FILE or DEDISK_TO_PASSWORD_COMMAND,
    /// else a prompt.
    #[arg(long, value_name = "REPO")]
    pub to: String,
    /// The target's key file, when it is kept outside the target (DEDISK_TO_KEY_FILE).
    #[arg(long, value_name = "FILE", env = "DEDISK_TO_KEY_FILE")]
    pub to_key_file: Option<PathBuf>,
    /// Only this VM's snapshots (repeat for several VMs).
    #[arg(long)]
    pub name: Vec<String>,
    /// Show what would be copied and sent, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Snapshots to copy (ids or unique prefixes); every one (of --name) when none.
    pub snapshots: Vec<String>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Repack a pack when more than this percentage of it is unreferenced.
    #[arg(long, default_value_t = 10.0, value_name = "PCT", value_parser = parse_pct)]
    pub max_unused: f64,
    /// Show what would be deleted and repacked, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long the store may take to list an object after it was written (for stores
    /// whose listings lag; AWS S3, Garage, MinIO, Ceph and directories need 0). Prune
    /// waits up to three times this long (FORMAT.md, section 15).
    #[arg(long, default_value = "0s", value_name = "DURATION", value_parser = parse_lag)]
    pub listing_lag: std::time::Duration,
}

fn parse_lag(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?} is not a duration like 30s, 5m or 1h")),
    };
    if secs > 24 * 3600 {
        return Err(format!("{s:?} is longer than a day"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

fn parse_pct(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 100"))
    }
}

#[derive(Args)]
pub struct MountArgs {
    /// An empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Only this VM's snapshots.
    #[arg(long)]
    pub name: Option<String>,
    /// Only this snapshot (id prefix, `latest` or `VM@latest`).
    #[arg(long)]
    pub snapshot: Option<String>,
}

#[derive(Args)]
pub struct UiArgs {
    /// Address to serve on. Any address but loopback needs --token-file.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// A file holding the access token (at least 16 characters; readable by its owner
    /// only). Browsers open http://ADDR/?token=TOKEN once; scripts send
    /// `Authorization: Bearer TOKEN`.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A job's report file (`report =` in the job file; JOB.report.json beside it by
    /// default), whose last run is shown (repeatable).
    #[arg(long = "report", value_name = "FILE")]
    pub reports: Vec<PathBuf>,
    /// A VM whose newest snapshot is older than this is shown in red.
    #[arg(long, default_value = "26h", value_name = "DURATION", value_parser = parse_age)]
    pub stale_after: std::time::Duration,
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration like 26h, 90m or 2d");
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(bad()),
    };
    if secs == 0 || secs > 366 * 86400 {
        return Err(format!("{s:?} is not between a minute and a year"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

#[derive(Args)]
pub struct ServeNbdArgs {
    /// SNAPSHOT[:LABEL] to export (repeatable).
    #[arg(value_name = "SNAPSHOT[:LABEL]")]
    pub exports: Vec<String>,
    /// Export every disk of every snapshot (to anyone who can reach the socket).
    #[arg(long, conflicts_with = "exports")]
    pub all: bool,
    /// TCP address to listen on (NBD has no authentication: keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:10809", value_name = "ADDR")]
    pub listen: String,
    /// Listen on this Unix socket instead of TCP.
    #[arg(long, value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// Permission bits of the Unix socket, in octal (who may connect).
    #[arg(long, default_value = "0600", value_parser = parse_mode, requires = "unix")]
    pub socket_mode: u32,
    /// Owner of the Unix socket: UID or UID:GID (numeric).
    #[arg(long, value_name = "UID[:GID]", requires = "unix")]
    pub socket_owner: Option<String>,
    /// Clients served at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub max_clients: u16,
    /// Seconds a client may send nothing before it is disconnected.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
    pub idle_timeout: u32,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Image file (qcow2, VHD, VHDX, VMDK, VDI, XVA or raw).
    pub image: PathBuf,
    /// Read it as this format instead of judging by content.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    /// qcow2: inspect this internal snapshot instead of the active layer.
    #[arg(long, value_name = "NAME")]
    pub qcow2_snapshot: Option<String>,
    /// List every allocated extent (human output shows the first 20).
    #[arg(long)]
    pub extents: bool,
}

#[derive(Args)]
pub struct SnapshotsArgs {
    /// Only this VM's snapshots.
    #[arg(long)]
    pub name: Option<String>,
    /// With --json: each snapshot's whole record as stored (an encrypted repository's
    /// snapshot files cannot be read without the key).
    #[arg(long)]
    pub full: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// SNAPSHOT[:LABEL]: an id prefix, `latest` or `VM@latest`; LABEL picks a disk or metadata file.
    pub snapshot: String,
    /// File or block device to write; a directory when the snapshot has several disks and no LABEL is given.
    pub target: PathBuf,
    /// Overwrite an existing target file (and write through a symlink named as TARGET).
    #[arg(long)]
    pub force: bool,
    /// Permission bits of restored files, in octal (restored disks hold a guest's data).
    #[arg(long, default_value = "0600", value_parser = parse_mode)]
    pub mode: u32,
    /// Write disks as raw (a sparse file or a device) or as a sparse qcow2 file.
    #[arg(long, value_enum, default_value = "raw")]
    pub format: RestoreFormatArg,
    /// Restore threads (default: one per core).
    #[arg(long, value_parser = parse_workers)]
    pub workers: Option<usize>,
    /// Write over the existing TARGET (a file of the disk's size or a block device) in
    /// place, only where it differs: it is read and hashed at the snapshot's chunk
    /// boundaries. Refused while it is mounted or in use. (--force then only means:
    /// write through a symlink named as TARGET that another user could have made.)
    #[arg(long, conflicts_with = "format")]
    pub differential: bool,
    /// With --differential: TARGET holds exactly this snapshot's disk (your word; an id
    /// prefix, `latest` or `VM@latest`), so the manifests are compared and nothing is read.
    #[arg(long, value_name = "SNAPSHOT", requires = "differential")]
    pub since: Option<String>,
    /// With --differential: read TARGET back afterwards and compare it with the snapshot.
    #[arg(long, requires = "differential")]
    pub check: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestoreFormatArg {
    Raw,
    Qcow2,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Also read, decompress and BLAKE3-check every chunk (and every pack file).
    #[arg(long)]
    pub read_data: bool,
    /// With --read-data: only a deterministic share of the packs, `N%` or slice `K/N`.
    #[arg(long, requires = "read_data", value_name = "N%|K/N")]
    pub subset: Option<String>,
    /// Only this VM's snapshots.
    #[arg(long)]
    pub name: Option<String>,
    /// Only this snapshot (id prefix, `latest` or `VM@latest`).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Threads checking the data of packs read ahead (default: one per core, plus one).
    #[arg(long, value_parser = parse_workers)]
    pub workers: Option<usize>,
    /// Instead: check the guest filesystems of SNAPSHOT read-only through the mount
    /// (e2fsck -fn, xfs_repair -n, btrfs check --readonly, fsck.vfat -n).
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["read_data", "boot", "name", "snapshot"])]
    pub fsck: Option<String>,
    /// Instead: boot SNAPSHOT in a throwaway QEMU guest on copy-on-write overlays of its
    /// NBD export (nothing is written anywhere) and wait for a sign that it booted.
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["read_data", "name", "snapshot"])]
    pub boot: Option<String>,
    /// With --boot: the sign is a serial-console line matching this regular expression.
    #[arg(
        long,
        value_name = "REGEX",
        requires = "boot",
        conflicts_with = "boot_agent"
    )]
    pub boot_serial: Option<String>,
    /// With --boot: the sign is the QEMU guest agent answering guest-ping.
    #[arg(long, requires = "boot")]
    pub boot_agent: bool,
    /// With --boot (the default sign): the console screen unchanged for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 20, requires = "boot")]
    pub boot_screen: u64,
    /// With --boot: give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300, requires = "boot")]
    pub boot_timeout: u64,
    /// With --boot: kvm, tcg, or auto (KVM where it works, else TCG, saying so).
    #[arg(long, value_enum, default_value = "auto", requires = "boot")]
    pub accel: AccelArg,
    /// With --boot: the most memory the guest gets, in MiB (its domain XML's, capped).
    #[arg(long, value_name = "MIB", default_value_t = 2048, requires = "boot")]
    pub boot_memory: u64,
    /// With --boot: a new folder for the evidence (screenshot, serial and firmware logs,
    /// report.json); default ./dedisk-boot-ID-TIME.
    #[arg(long, value_name = "DIR", requires = "boot")]
    pub evidence: Option<PathBuf>,
    /// With --fsck: seconds each checker may take.
    #[arg(long, value_name = "SECS", default_value_t = 3600, requires = "fsck")]
    pub fsck_timeout: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Args)]
pub struct ForgetArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep everything newer than the VM's newest snapshot minus this (7d, 2w, 6m, 1y6m, 36h).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
    /// Prune right after forgetting (see `dedisk prune`; repacks above 10% unused).
    #[arg(long)]
    pub prune: bool,
    /// Only this VM's snapshots.
    #[arg(long)]
    pub name: Option<String>,
    /// List every snapshot with keep/remove and the rule that keeps it; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand)]
pub enum RepairWhat {
    /// Rebuild the SQLite index from the pack files.
    Index,
    /// Rewrite snapshots that reference lost data: what is readable stays restorable,
    /// lost ranges become recorded holes that every restore reports.
    Snapshots {
        /// Also read every chunk (finds corrupt data, not only missing data).
        #[arg(long)]
        read_data: bool,
        /// Only report what would be rewritten.
        #[arg(long)]
        dry_run: bool,
    },
}

use engine::MAX_WORKERS;

fn parse_workers(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number of threads from 1 to {MAX_WORKERS}"
        )),
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err("expected octal permission bits such as 0600 or 640".into()),
    }
}
