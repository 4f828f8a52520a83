//! `dedisk run JOBFILE`: providers, hooks, retention, status log, report, exit codes,
//! and a real btrfs snapshot on a loop device.

use std::path::Path;

use crate::helpers::*;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_job_backs_up_each_vm_runs_hooks_applies_retention_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let web = random_image(d, "web.raw", 1 << 20, 4 << 20);
    let db = random_image(d, "db.raw", 1 << 20, 4 << 20);
    let log = d.join("hooks.log");
    // The command provider copies the disk to a "snapshot" file and removes it after.
    write(
        &d.join("job.toml"),
        &format!(
            r#"repository = "repo"
notify = "cat > '{d}/notified.txt'"
pre_hook = "echo job-$DEDISK_PHASE >> '{log}'"
post_hook = "echo job-$DEDISK_PHASE-$DEDISK_STATUS >> '{log}'"

[defaults]
keep_last = 1
post_hook = "echo $DEDISK_VM-$DEDISK_PHASE-$DEDISK_STATUS-$DEDISK_SNAPSHOT >> '{log}'"

[select]
include = ["web.*", "db01", "broken"]
exclude = ["web-test"]

[[vm]]
name = "web01"
disks = {{ vda = "{web}" }}

[[vm]]
name = "web-test"
disks = {{ vda = "{web}" }}

[[vm]]
name = "db01"
disks = {{ sda = "{db}" }}
snapshot = "command"
snapshot_create = "cp \"$DEDISK_SOURCE\" \"{d}/snap-$DEDISK_DISK.raw\" && echo \"{d}/snap-$DEDISK_DISK.raw\""
snapshot_release = "rm \"$DEDISK_SNAPSHOT_PATH\" && echo released-$DEDISK_DISK >> '{log}'"
keep_last = 2

[[vm]]
name = "broken"
disks = {{ vda = "{d}/missing.raw" }}
pre_hook = "true"
"#,
            d = d.display(),
            log = log.display(),
            web = web.display(),
            db = db.display()
        ),
    );
    let job = d.join("job.toml");

    // Preview: the plan, and the one problem (a missing disk), without changing anything.
    let out = run(&["run", "--preview", p(&job)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("vm db01: snapshot command"), "{text}");
    assert!(text.contains("retention: 2 last"), "{text}");
    assert!(text.contains("missing.raw does not exist"), "{text}");
    assert!(!text.contains("web-test"), "excluded: {text}");
    assert!(snapshot_files(&repo).is_empty());

    // Two nights: "broken" fails (exit 3, partial), the others back up; retention keeps
    // one web01 and two db01 snapshots.
    for night in 0..2 {
        let out = run(&["run", p(&job)]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "night {night}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let snaps = snapshot_files(&repo);
    let count = |vm: &str| snaps.iter().filter(|s| s["name"] == vm).count();
    assert_eq!(
        (count("web01"), count("db01"), count("web-test")),
        (1, 2, 0)
    );
    assert!(
        !d.join("snap-sda.raw").exists(),
        "the command provider's snapshot was released"
    );

    let hooks = std::fs::read_to_string(&log).unwrap();
    assert!(hooks.contains("job-pre\n"), "{hooks}");
    assert!(hooks.contains("job-post-partial\n"), "{hooks}");
    assert!(hooks.contains("released-sda\n"), "{hooks}");
    assert!(
        hooks
            .lines()
            .any(|l| l.starts_with("web01-post-ok-") && l.len() > "web01-post-ok-".len()),
        "{hooks}"
    );
    assert!(
        hooks.contains("broken-post-failed-\n"),
        "post hooks run after failures too: {hooks}"
    );

    let status = std::fs::read_to_string(d.join("job.status.log")).unwrap();
    assert_eq!(status.lines().count(), 6, "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.contains(" broken failed ") && l.contains("missing.raw")),
        "{status}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("job.report.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "partial");
    assert_eq!(report["vms"].as_array().unwrap().len(), 3);
    let notified = std::fs::read_to_string(d.join("notified.txt")).unwrap();
    assert!(
        notified.contains(": partial") && notified.contains("broken failed"),
        "{notified}"
    );

    // --only one good VM: success, exit 0.
    ok(&["run", "--only", "web01", p(&job)]);
    // A failing pre hook skips the VM.
    let skip = d.join("skip.toml");
    write(&skip, &format!("repository = \"repo\"\n[[vm]]\nname = \"web01\"\ndisks = {{ vda = \"{}\" }}\npre_hook = \"exit 7\"\n", web.display()));
    let out = run(&["run", "--json", p(&skip)]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let v: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(v["report"]["vms"][0]["status"], "skipped");
    // With --json the failure itself is a JSON object on stdout too.
    let end: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        (end["type"].as_str(), end["exit_code"].as_i64()),
        (Some("error"), Some(1))
    );
}

#[test]
fn job_file_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let job = d.join("bad.toml");
    write(
        &job,
        "repository = \"repo\"\n\n[select]\ninclude = [\"web(\"]\n",
    );
    fails(
        &["run", p(&job)],
        1,
        "bad.toml line 4: invalid regular expression \"web(\"",
    );
    write(&job, "repository = \"repo\"\n[[vm]]\nname = \"a\"\ndisks = { vda = \"/x\" }\nsnapshot = \"lvm2\"\n");
    fails(&["run", p(&job)], 1, "unknown snapshot method \"lvm2\"");
    write(&job, "repository = \"repo\"\nkeep_daily = 3\n");
    fails(&["run", p(&job)], 1, "unknown field `keep_daily`");
    write(
        &job,
        "repository = \"repo\"\n[select]\nfrom = \"proxmox\"\n",
    );
    fails(
        &["run", p(&job)],
        1,
        "bad.toml line 3: select.from \"proxmox\" is not a hypervisor",
    );
    write(&job, "repository = \"repo\"\n[[vm]]\nname = \"a\"\nsnapshot = \"libvirt\"\nlibvirt_quiesce = \"sometimes\"\n");
    fails(
        &["run", p(&job)],
        1,
        "libvirt_quiesce \"sometimes\" is not one of",
    );
    write(&job, "repository = \"repo\"\n[[vm]]\nname = \"a\"\ndisks = { vda = \"/x\" }\nexclude_disks = [\"vda\"]\n");
    fails(
        &["run", p(&job)],
        1,
        "exclude_disks leaves none of its disks",
    );
    // Malformed TOML: still one line, naming the file and the line.
    write(&job, "repository = \"repo\"\n[[vm]\nname = 3\n");
    let err = fails(&["run", p(&job)], 1, "bad.toml line 2");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn btrfs_provider_snapshots_the_subvolume_and_always_deletes_it() {
    if !(is_root() && have("mkfs.btrfs") && have("btrfs") && have("losetup")) {
        assert!(
            std::env::var_os("CI").is_none() || !is_root(),
            "btrfs is tested as root under CI"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let fs_img = d.join("btrfs.img");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    sh(&format!(
        "set -e; truncate -s 300M '{i}'; mkfs.btrfs -q '{i}'; mount -o loop '{i}' '{m}'; btrfs subvolume create -q '{m}/images' >/dev/null 2>&1 || btrfs subvolume create '{m}/images' >/dev/null",
        i = fs_img.display(),
        m = mnt.display()
    ));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let images = mnt.join("images");
    let disk = random_image(&images, "vm1.raw", 2 << 20, 8 << 20);
    let want = sha256(&disk);
    // Issue 11: a quote in a VM name once broke out of `sh -c 'btrfs ... '` (the job
    // runs in `d`, where the injected command would leave its file).
    let pwned = d.join("pwned");
    let vm = "vm1'; touch pwned; '".to_string();
    let job = d.join("job.toml");
    write(
        &job,
        &format!(
            "repository = \"{}\"\n[[vm]]\nname = \"{vm}\"\ndisks = {{ vda = \"{}\" }}\nsnapshot = \"btrfs\"\nbtrfs_subvolume = \"{}\"\n",
            repo.display(),
            disk.display(),
            images.display()
        ),
    );
    ok(&["run", "--preview", p(&job)]);
    let out = dedisk()
        .current_dir(d)
        .args(["run", p(&job)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = d.join("got.raw");
    restore(&repo, &format!("{vm}@latest:vda"), &got);
    assert_eq!(sha256(&got), want);
    assert!(!pwned.exists(), "the VM name reached a shell");
    let subvols = sh(&format!("btrfs subvolume list '{}'", mnt.display()));
    assert!(
        !subvols.contains(".dedisk-snapshot"),
        "snapshot left behind: {subvols}"
    );
    let snap_source = &snapshot_files(&repo)[0]["disks"][0]["source"];
    assert!(
        snap_source
            .as_str()
            .unwrap()
            .contains(&format!(".dedisk-snapshot-{vm}-")),
        "read from the snapshot: {snap_source}"
    );

    // A failure after the snapshot exists (a metadata file that is not there) still
    // deletes it.
    let failing = d.join("failing.toml");
    write(
        &failing,
        &format!(
            "repository = \"{}\"\n[[vm]]\nname = \"vm1\"\ndisks = {{ vda = \"{}\" }}\nmeta = [\"{}/nope.xml\"]\nsnapshot = \"btrfs\"\nbtrfs_subvolume = \"{}\"\n",
            repo.display(),
            disk.display(),
            d.display(),
            images.display()
        ),
    );
    let out = run(&["run", p(&failing)]);
    assert_eq!(out.status.code(), Some(1));
    let subvols = sh(&format!("btrfs subvolume list '{}'", mnt.display()));
    assert!(
        !subvols.contains(".dedisk-snapshot"),
        "snapshot left behind after a failure: {subvols}"
    );
}

/// Installs `script` in `bin` as the executables `names` (stand-ins for tools this
/// machine lacks).
fn stand_in(bin: &Path, names: &[&str], script: &str) {
    std::fs::create_dir_all(bin).unwrap();
    for name in names {
        let path = bin.join(name);
        std::fs::write(&path, script).unwrap();
        sh(&format!("chmod +x '{}'", path.display()));
    }
}

/// `dedisk run job` with the stand-ins in `bin` first on PATH.
fn run_with_stand_ins(bin: &Path, job: &Path) -> std::process::Output {
    run_with_bin_first(bin, &["run", p(job)])
}

/// Restores `spec` to a scratch file in `dir` and checks it equals `want`.
fn restores_to(dir: &Path, repo: &Path, spec: &str, want: &Path) {
    let got = dir.join("got.raw");
    let _ = std::fs::remove_file(&got);
    restore(repo, spec, &got);
    assert_eq!(sha256(&got), sha256(want), "{spec}");
}

/// Word `n` of each line of a stand-in's call log: the calls, in order.
fn calls(log: &Path, n: usize) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(n).unwrap().to_string())
        .collect()
}

/// Stand-ins for lvs/lvcreate/lvremove/dmsetup/thin_delta (no device-mapper here): they
/// check the exact arguments dedisk passes, keep "logical volumes" as files under
/// `state/`, print what LVM and thin-provisioning-tools print, and fail the way they fail
/// when told to (`state/OVERFLOW`, `state/NOSPACE`, `state/DELTAFAIL`). With `state/THIN`
/// the volume is thin: snapshots get thin ids, and `thin_delta` compares two of them in
/// 64 KiB blocks (only while the pool's metadata snapshot is reserved, as the real one).
fn lvm_stand_ins(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("bin");
    let script = format!(
        r#"#!/bin/sh
state='{state}'
echo "$(basename "$0") $*" >> "$state/calls.log"
case "$(basename "$0") $*" in
  "lvs --noheadings --separator , -o vg_name,lv_name,segtype $state/vg0/web01")
     if [ -e "$state/THIN" ]; then echo "  vg0,web01,thin"; else echo "  vg0,web01,linear"; fi ;;
  "lvcreate --snapshot --setactivationskip n --name web01-dedisk-"*" vg0/web01")
     cp "$state/vg0/web01" "$state/vg0/$5"; n=$(($(cat "$state/next_id" 2>/dev/null || echo 1) + 1))
     echo $n > "$state/next_id"; echo $n > "$state/id.$5"; echo "  Logical volume \"$5\" created." ;;
  "lvs --noheadings -o lv_name vg0/web01-dedisk-"*)
     if [ -e "$state/vg0/${{4#vg0/}}" ]; then echo "  ${{4#vg0/}}"; else echo "  Failed to find logical volume \"$4\"" >&2; exit 5; fi ;;
  "lvs --noheadings -o lv_name vg0") ls "$state/vg0" | sed 's/^/  /' ;;
  "lvs --noheadings -o pool_lv vg0/web01") echo "  pool0" ;;
  "lvs --noheadings -o thin_id vg0/"*) echo "  $(cat "$state/id.${{4#vg0/}}")" ;;
  "dmsetup message vg0-pool0-tpool 0 reserve_metadata_snap")
     if [ -e "$state/RESERVED" ]; then echo "device-mapper: message ioctl on vg0-pool0-tpool  failed: Device or resource busy" >&2; exit 1; fi
     touch "$state/RESERVED" ;;
  "dmsetup message vg0-pool0-tpool 0 release_metadata_snap") rm "$state/RESERVED" ;;
  "thin_delta --metadata-snap --snap1 "*" --snap2 "*" /dev/mapper/vg0-pool0_tmeta")
     [ -e "$state/RESERVED" ] || {{ echo "no metadata snapshot" >&2; exit 1; }}
     [ -e "$state/DELTAFAIL" ] && {{ echo "bad checksum in metadata index block" >&2; exit 1; }}
     a=$(grep -lx "$3" "$state"/id.* | sed 's/.*id\.//'); b=$(grep -lx "$5" "$state"/id.* | sed 's/.*id\.//')
     echo '<superblock uuid="" time="2" transaction="4" data_block_size="128" nr_data_blocks="4096">'
     echo "  <diff left=\"$3\" right=\"$5\">"
     blocks=$(( $(stat -c %s "$state/vg0/$a") / 65536 )); i=0
     while [ $i -lt $blocks ]; do
       if ! cmp -s <(dd if="$state/vg0/$a" bs=64k skip=$i count=1 status=none) <(dd if="$state/vg0/$b" bs=64k skip=$i count=1 status=none); then
         echo "    <different begin=\"$i\" length=\"1\"/>"
       else
         echo "    <same begin=\"$i\" length=\"1\"/>"
       fi
       i=$((i + 1))
     done
     echo "  </diff>"; echo "</superblock>" ;;
  "lvs --noheadings -o lv_path vg0/"*) echo "  $state/vg0/${{4#vg0/}}" ;;
  "lvs --noheadings --separator , -o snap_percent,lv_attr vg0/"*)
     if [ -e "$state/OVERFLOW" ]; then echo "  100.00,swi-I-s---"; else echo "  12.50,swi-a-s---"; fi ;;
  "lvcreate --snapshot --size 2G --name web01-dedisk-"*" vg0/web01")
     if [ -e "$state/NOSPACE" ]; then echo '  Volume group "vg0" has insufficient free space (0 extents): 512 required.' >&2; exit 5; fi
     cp "$state/vg0/web01" "$state/vg0/$5"; echo "  Logical volume \"$5\" created." ;;
  "lvremove --yes vg0/web01-dedisk-"*) rm "$state/vg0/${{2#vg0/}}" && echo "  Logical volume \"${{2#vg0/}}\" successfully removed." ;;
  "vgs --noheadings --units b --nosuffix -o vg_free vg0")
     if [ -e "$state/NOSPACE" ]; then echo "  0"; else echo "  4294967296"; fi ;;
  *) echo "unexpected call: $(basename "$0") $*" >&2; exit 3 ;;
esac
"#,
        state = dir.join("state").display()
    );
    stand_in(
        &bin,
        &[
            "lvs",
            "lvcreate",
            "lvremove",
            "vgs",
            "dmsetup",
            "thin_delta",
        ],
        &script.replacen("#!/bin/sh", "#!/bin/bash", 1),
    );
    bin
}

#[test]
fn lvm_provider_snapshots_checks_overflow_and_always_removes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let state = d.join("state");
    std::fs::create_dir_all(state.join("vg0")).unwrap();
    let lv = random_image(&state.join("vg0"), "web01", 2 << 20, 6 << 20);
    let bin = lvm_stand_ins(d);
    let job = d.join("job.toml");
    write(
        &job,
        &format!(
            "repository = \"repo\"\n[[vm]]\nname = \"web01\"\ndisks = {{ vda = \"{}\" }}\nsnapshot = \"lvm\"\nlvm_snapshot_size = \"2G\"\n",
            lv.display()
        ),
    );
    let run_job = || run_with_stand_ins(&bin, &job);
    let leftovers = || {
        std::fs::read_dir(state.join("vg0"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "web01")
            .count()
    };

    let out = run_job();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restores_to(d, &repo, "web01@latest:vda", &lv);
    assert_eq!(leftovers(), 0, "snapshot removed");
    assert_eq!(
        calls(&state.join("calls.log"), 0),
        ["lvs", "lvcreate", "lvs", "lvs", "lvremove"]
    );

    // The snapshot overflows during the backup: the copy is dropped, the VM fails.
    std::fs::write(state.join("OVERFLOW"), "").unwrap();
    let out = run_job();
    assert_eq!(out.status.code(), Some(1));
    let report = std::fs::read_to_string(d.join("job.report.json")).unwrap();
    assert!(report.contains("overflowed during the backup"), "{report}");
    assert_eq!(
        snapshot_files(&repo).len(),
        1,
        "the inconsistent copy is not kept"
    );
    assert_eq!(leftovers(), 0, "snapshot removed after an overflow");

    // The volume group is full: --preview says so; lvcreate fails, nothing is left
    // behind.
    std::fs::remove_file(state.join("OVERFLOW")).unwrap();
    let preview = |bin: &Path| run_with_bin_first(bin, &["run", "--preview", p(&job)]);
    let out = preview(&bin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(state.join("NOSPACE"), "").unwrap();
    let out = preview(&bin);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("volume group vg0 has 0 MiB free, its snapshots need 2048 MiB"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run_job();
    assert_eq!(out.status.code(), Some(1));
    let report = std::fs::read_to_string(d.join("job.report.json")).unwrap();
    assert!(report.contains("insufficient free space"), "{report}");
    assert_eq!(leftovers(), 0);
}

/// A stand-in `zfs` (no ZFS module here) that checks dedisk's exact calls. The "zvol" is
/// a file under /dev/zvol/POOL (created for the test, as root), and a clone is a copy.
#[test]
fn zfs_provider_clones_a_snapshot_and_destroys_both() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the zfs stand-in test runs as root under CI"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let pool = format!("dedisktest{}", std::process::id());
    let zdir = Path::new("/dev/zvol").join(&pool);
    std::fs::create_dir_all(&zdir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_dir(Path::new("/dev/zvol")); // only if empty
        }
    }
    let _cleanup = Cleanup(zdir.clone());
    let vol = random_image(&zdir, "vm1", 1 << 20, 4 << 20);
    let bin = d.join("bin");
    let log = d.join("zfs.log");
    stand_in(
        &bin,
        &["zfs"],
        &format!(
            r#"#!/bin/sh
echo "zfs $*" >> '{log}'
case "$*" in
  "snapshot {pool}/vm1@dedisk-"*) ;;
  "clone -o readonly=on {pool}/vm1@dedisk-"*" {pool}/vm1-dedisk-"*) cp '{vol}' "/dev/zvol/$5" ;;
  "destroy {pool}/vm1-dedisk-"*) rm "/dev/zvol/$2" ;;
  "destroy {pool}/vm1@dedisk-"*) ;;
  *) echo "unexpected: zfs $*" >&2; exit 1 ;;
esac
"#,
            log = log.display(),
            pool = pool,
            vol = vol.display()
        ),
    );
    let job = d.join("job.toml");
    write(
        &job,
        &format!("repository = \"repo\"\n[[vm]]\nname = \"vm1\"\ndisks = {{ vda = \"{}\" }}\nsnapshot = \"zfs\"\n", vol.display()),
    );
    let out = run_with_stand_ins(&bin, &job);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restores_to(d, &repo, "vm1@latest:vda", &vol);
    assert_eq!(calls(&log, 1), ["snapshot", "clone", "destroy", "destroy"]);
    assert_eq!(
        std::fs::read_dir(&zdir).unwrap().count(),
        1,
        "the clone is gone"
    );
}

/// A stand-in `xe` (no XAPI here): vdi-snapshot prints a UUID, vdi-export writes the
/// VDI's bytes to stdout (or a part of them and fails, as when the VM disappears),
/// vdi-destroy is logged.
#[test]
fn xenserver_provider_streams_the_snapshot_and_destroys_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let vm = "8d1b6f2e-1c3a-4f0e-9b7d-2a4c6e8f0a1b";
    let vdi = "6f1c2b9e-3d4a-4c5b-8e7f-0a1b2c3d4e5f";
    let vdi2 = "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d";
    let snap = "0d9e8f7a-6b5c-4d3e-9f1a-2b3c4d5e6f70";
    let snap2 = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";
    let vbd = "3c2b1a0f-9e8d-4c7b-a6f5-e4d3c2b1a0f9";
    let vif = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d";
    let data = random_image(d, "vdi.raw", 3 << 20, 6 << 20);
    let data2 = random_image(d, "vdi2.raw", 1 << 20, 2 << 20);
    let bin = d.join("bin");
    let log = d.join("xe.log");
    // Outputs as XenServer 8's xe prints them (parameter lists shortened).
    stand_in(
        &bin,
        &["xe"],
        &format!(
            r#"#!/bin/sh
echo "xe $*" >> '{log}'
case "$*" in
  "vm-list name-label=xen1 is-a-snapshot=false is-a-template=false --minimal")
     [ -e '{d}/NOVM' ] || echo {vm} ;;
  "vm-list is-control-domain=false is-a-snapshot=false is-a-template=false params=name-label")
     printf 'name-label ( RW)    : xen1\n\n\nname-label ( RW)    : other,tenant\n\n\n' ;;
  "vm-param-list uuid={vm}")
     printf 'uuid ( RO)                  : {vm}\n            name-label ( RW): xen1\n           power-state ( RO): running\n     memory-static-max ( RW): 2147483648\n             VCPUs-max ( RW): 2\n\n\n' ;;
  "vbd-list vm-uuid={vm} --minimal") echo {vbd} ;;
  "vbd-param-list uuid={vbd}")
     printf 'uuid ( RO)             : {vbd}\n          vm-uuid ( RO): {vm}\n         vdi-uuid ( RO): {vdi}\n           device ( RO): xvda\n         bootable ( RW): true\n\n\n' ;;
  "vbd-list vm-uuid={vm} type=Disk params=device,vdi-uuid")
     printf 'device ( RO)    : xvda\n    vdi-uuid ( RO): {vdi}\n\n\ndevice ( RO)    : xvdb\n    vdi-uuid ( RO): {vdi2}\n\n\n' ;;
  "vdi-param-list uuid={vdi}")
     printf 'uuid ( RO)                : {vdi}\n          name-label ( RW): xen1 root\n        virtual-size ( RO): 6291456\n\n\n' ;;
  "vdi-param-list uuid={vdi2}")
     printf 'uuid ( RO)                : {vdi2}\n          name-label ( RW): xen1 data\n        virtual-size ( RO): 2097152\n\n\n' ;;
  "vif-list vm-uuid={vm} --minimal") echo {vif} ;;
  "vif-param-list uuid={vif}")
     printf 'uuid ( RO)                : {vif}\n              device ( RO): 0\n                 MAC ( RO): 8e:1f:3a:22:45:0b\n        network-uuid ( RO): 5b4a3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d\n\n\n' ;;
  "vdi-snapshot uuid={vdi}") echo {snap} ;;
  "vdi-snapshot uuid={vdi2}") echo {snap2} ;;
  "vdi-export uuid={snap} filename= format=raw")
     if [ -e '{d}/GONE' ]; then echo "The uuid you supplied was invalid." >&2; exit 1; fi
     if [ -e '{d}/VANISH' ]; then head -c 1000000 '{data}'; echo "The uuid you supplied was invalid." >&2; exit 1; fi
     cat '{data}' ;;
  "vdi-export uuid={snap2} filename= format=raw") cat '{data2}' ;;
  "vdi-export uuid={snap} filename= format=vhd") cat '{d}/vdi.vhd' ;;
  "vdi-destroy uuid={snap}"|"vdi-destroy uuid={snap2}") ;;
  *) echo "unexpected: xe $*" >&2; exit 1 ;;
esac
"#,
            log = log.display(),
            d = d.display(),
            data = data.display(),
            data2 = data2.display()
        ),
    );
    let job = d.join("job.toml");
    write(
        &job,
        &format!("repository = \"repo\"\n[[vm]]\nname = \"xen1\"\ndisks = {{ xvda = \"{vdi}\" }}\nsnapshot = \"xenserver\"\n"),
    );
    let run_job = || run_with_stand_ins(&bin, &job);

    let out = run_job();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restores_to(d, &repo, "xen1@latest:xvda", &data);
    assert_eq!(
        calls(&log, 1),
        [
            "vm-list",
            "vm-param-list",
            "vbd-list",
            "vbd-param-list",
            "vdi-param-list",
            "vif-list",
            "vif-param-list",
            "vdi-snapshot",
            "vdi-export",
            "vdi-destroy"
        ]
    );
    // The VM's, VBDs', VDIs' and VIFs' parameters are kept as metadata.
    let got = d.join("vifs.txt");
    restore(&repo, "xen1@latest:xenserver-vifs.txt", &got);
    assert!(std::fs::read_to_string(&got)
        .unwrap()
        .contains("MAC ( RO): 8e:1f:3a:22:45:0b"));
    let got = d.join("vm.txt");
    restore(&repo, "xen1@latest:xenserver-vm.txt", &got);
    assert!(std::fs::read_to_string(&got)
        .unwrap()
        .contains("VCPUs-max ( RW): 2"));
    for name in ["xenserver-vbds.txt", "xenserver-vdis.txt"] {
        ok(&[
            "--repo",
            p(&repo),
            "restore",
            "-q",
            &format!("xen1@latest:{name}"),
            p(&d.join(name)),
        ]);
    }
    assert!(std::fs::read_to_string(d.join("xenserver-vdis.txt"))
        .unwrap()
        .contains("xen1 root"));

    // Picked from the pool's VM list, disks found from its VBDs less the excluded one.
    let found = d.join("found.toml");
    write(
        &found,
        "repository = \"repo\"\n[defaults]\nexclude_disks = [\"xvdb\"]\n[select]\nfrom = \"xenserver\"\ninclude = [\"xen1\"]\n",
    );
    let out = run_with_stand_ins(&bin, &found);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot_files(&repo).len(), 2);
    restores_to(d, &repo, "xen1@latest:xvda", &data);
    let snaps = snapshot_files(&repo);
    assert!(
        snaps
            .iter()
            .all(|s| s["disks"].as_array().unwrap().len() == 1),
        "xvdb excluded"
    );
    // Without the exclusion both disks are backed up, labelled by device.
    write(
        &found,
        "repository = \"repo\"\n[select]\nfrom = \"xenserver\"\ninclude = [\"xen1\"]\n",
    );
    let out = run_with_stand_ins(&bin, &found);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restores_to(d, &repo, "xen1@latest:xvdb", &data2);
    let before = std::fs::read_to_string(&log).unwrap().lines().count();

    // The VM disappeared: the backup fails before any snapshot is made.
    std::fs::write(d.join("NOVM"), "").unwrap();
    let out = run_job();
    assert_eq!(out.status.code(), Some(1));
    let report = std::fs::read_to_string(d.join("job.report.json")).unwrap();
    assert!(
        report.contains("no XenServer VM is named \\\"xen1\\\""),
        "{report}"
    );
    let after: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .skip(before)
        .map(String::from)
        .collect();
    assert!(
        after.iter().all(|c| !c.contains("vdi-snapshot")),
        "{after:?}"
    );
    std::fs::remove_file(d.join("NOVM")).unwrap();
    let kept = snapshot_files(&repo).len();

    // The export fails halfway: the short copy is dropped and the snapshot destroyed.
    std::fs::write(d.join("VANISH"), "").unwrap();
    let out = run_job();
    assert_eq!(out.status.code(), Some(1));
    let report = std::fs::read_to_string(d.join("job.report.json")).unwrap();
    assert!(report.contains("xe vdi-export failed"), "{report}");
    assert_eq!(
        snapshot_files(&repo).len(),
        kept,
        "the incomplete copy is not kept"
    );
    let destroys = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .matches("vdi-destroy")
            .count()
    };
    assert_eq!(destroys(&log), 5);

    // The export fails before writing a byte: no hang, the same clean failure.
    std::fs::write(d.join("GONE"), "").unwrap();
    let out = run_job();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(snapshot_files(&repo).len(), kept);
    assert_eq!(destroys(&log), 6);

    // format=vhd: only the allocated blocks cross the pipe, read as a VHD stream.
    if have("qemu-img") {
        std::fs::remove_file(d.join("GONE")).unwrap();
        std::fs::remove_file(d.join("VANISH")).unwrap();
        sh(&format!(
            "qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on '{}' '{}/vdi.vhd'",
            data.display(),
            d.display()
        ));
        write(
            &job,
            &format!("repository = \"repo\"\n[[vm]]\nname = \"xen1\"\ndisks = {{ xvda = \"{vdi}\" }}\nsnapshot = \"xenserver\"\nxenserver_export_format = \"vhd\"\n"),
        );
        let out = run_job();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        restores_to(d, &repo, "xen1@latest:xvda", &data);
        assert!(std::fs::read_to_string(&log)
            .unwrap()
            .contains("format=vhd"));
    }
}

#[test]
fn ctrl_c_during_a_job_still_releases_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    new_repo(d, &[]);
    let disk = random_image(d, "big.raw", 300 << 20, 300 << 20);
    let job = d.join("job.toml");
    write(
        &job,
        &format!(
            r#"repository = "repo"
[[vm]]
name = "vm1"
disks = {{ vda = "{disk}" }}
snapshot = "command"
snapshot_create = "ln -s \"$DEDISK_SOURCE\" '{d}/snap.raw' && echo '{d}/snap.raw'"
snapshot_release = "rm '{d}/snap.raw' && touch '{d}/released'"
workers = 1
"#,
            disk = disk.display(),
            d = d.display()
        ),
    );
    let mut child = dedisk()
        .args(["run", p(&job)])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while d.join("repo/packs").read_dir().unwrap().next().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never started writing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before it could be interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: kill with a valid pid has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "an interrupted job failed");
    assert!(
        d.join("released").exists(),
        "the snapshot was released after Ctrl-C"
    );
    assert!(!d.join("snap.raw").exists());
    assert!(snapshot_files(&d.join("repo")).is_empty());
    let report = std::fs::read_to_string(d.join("job.report.json")).unwrap();
    assert!(report.contains("interrupted"), "{report}");
}

#[test]
fn lvm_thin_volumes_read_what_thin_delta_says_changed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = new_repo(d, &[]);
    let state = d.join("state");
    std::fs::create_dir_all(state.join("vg0")).unwrap();
    std::fs::write(state.join("THIN"), "").unwrap();
    let lv = random_image(&state.join("vg0"), "web01", 6 << 20, 8 << 20);
    let bin = lvm_stand_ins(d);
    let job = d.join("job.toml");
    let write_job = |extra: &str| {
        write(
            &job,
            &format!(
                "repository = \"repo\"\n[[vm]]\nname = \"web01\"\ndisks = {{ vda = \"{}\" }}\nsnapshot = \"lvm\"\n{extra}",
                lv.display()
            ),
        )
    };
    write_job("");
    let run_job = || run_with_stand_ins(&bin, &job);
    let snapshots = || {
        let mut s: Vec<String> = std::fs::read_dir(state.join("vg0"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "web01")
            .collect();
        s.sort();
        s
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // Night 0: the whole volume; its thin snapshot is kept for the next night.
    let out = run_job();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    restores_to(d, &repo, "web01@latest:vda", &lv);
    let first = snapshots();
    assert_eq!(first.len(), 1, "{first:?}");

    // Night 1: two writes; only their blocks (and around them) are read.
    sh(&format!(
        "head -c 70000 /dev/urandom | dd of='{0}' bs=1 seek=1000000 conv=notrunc status=none; \
         head -c 4096 /dev/urandom | dd of='{0}' bs=4096 seek=1500 conv=notrunc status=none",
        lv.display()
    ));
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new snapshot name
    let out = run_job();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("vda: incremental from")
            && text(&out).contains("thin_delta since vg0/web01-dedisk-"),
        "{}",
        text(&out)
    );
    restores_to(d, &repo, "web01@latest:vda", &lv);
    let second = snapshots();
    assert_eq!(second.len(), 1);
    assert_ne!(
        second, first,
        "the base's snapshot is dropped, tonight's kept"
    );
    assert!(
        !state.join("RESERVED").exists(),
        "the metadata snapshot is released"
    );
    let log = std::fs::read_to_string(state.join("calls.log")).unwrap();
    let order: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("dmsetup") || l.starts_with("thin_delta"))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(order, ["dmsetup", "thin_delta", "dmsetup"]);
    let snaps = ok_json(&["--repo", p(&repo), "snapshots", "--full"]);
    let last = &snaps["snapshots"].as_array().unwrap().last().unwrap()["record"]["disks"][0];
    let read = last["stats"]["read_bytes"].as_u64().unwrap()
        - last["changes"]["verified_bytes"].as_u64().unwrap();
    assert!(
        read < 2 << 20,
        "read {read} of an 8 MiB volume for 3 changed blocks: {last}"
    );

    // thin_delta fails: a full read that says why, and the metadata snapshot released.
    std::fs::write(state.join("DELTAFAIL"), "").unwrap();
    sh(&format!(
        "head -c 4096 /dev/urandom | dd of='{}' bs=4096 seek=100 conv=notrunc status=none",
        lv.display()
    ));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = run_job();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("vda: read in full: thin_delta between")
            && text(&out).contains("bad checksum"),
        "{}",
        text(&out)
    );
    assert!(!state.join("RESERVED").exists());
    restores_to(d, &repo, "web01@latest:vda", &lv);
    std::fs::remove_file(state.join("DELTAFAIL")).unwrap();

    // A failed backup: tonight's snapshot goes, the base's stays for the next night.
    let kept = snapshots();
    write_job(&format!("meta = [\"{}/nope.xml\"]\n", d.display()));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = run_job();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(snapshots(), kept);
    write_job("");
    let out = run_job();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("vda: incremental from"),
        "{}",
        text(&out)
    );
    restores_to(d, &repo, "web01@latest:vda", &lv);
}
