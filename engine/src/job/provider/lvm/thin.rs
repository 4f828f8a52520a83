//! Thin logical volumes: a thin snapshot per night, kept until the next night's, and the
//! blocks that differ between the two from the pool's metadata (`thin_delta`), so a night
//! reads only what changed ([`crate::backup::changes`]).
//!
//! 1. `lvcreate --snapshot --setactivationskip n --name LV-dedisk-TIME VG/LV` (a thin
//!    snapshot: no size, nothing to overflow).
//! 2. The base's snapshot is named in the base snapshot's `lvm-thin.txt` (`LABEL
//!    VG/NAME` lines). If it still exists: the pool's metadata snapshot is reserved
//!    (`dmsetup message VG-POOL-tpool 0 reserve_metadata_snap`), `thin_delta
//!    --metadata-snap --snap1 BASE_ID --snap2 NEW_ID /dev/mapper/VG-POOL_tmeta` lists
//!    the differing blocks, and the metadata snapshot is released, whatever happened.
//! 3. After a good backup the base's snapshot is removed and tonight's kept; after a
//!    failed one tonight's is removed and the base's kept.

use super::super::{tool, ProviderError, ViewChanges};
use crate::backup::changes::parse_thin_delta;

/// The metadata file that names each disk's kept thin snapshot.
pub const THIN_META: &str = "lvm-thin.txt";

/// `VG/NAME` of a snapshot dedisk made of `lv` (`LV-dedisk-DIGITS`): nothing else read
/// from a snapshot is handed to LVM.
pub fn is_our_snapshot(spec: &str, vg: &str, lv: &str) -> bool {
    spec.strip_prefix(vg)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_prefix(lv))
        .and_then(|r| r.strip_prefix("-dedisk-"))
        .is_some_and(|t| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit()))
}

/// The kept snapshot of disk `label` in a base's `lvm-thin.txt`.
pub fn base_snapshot_of(meta: &[u8], label: &str) -> Option<String> {
    std::str::from_utf8(meta).ok()?.lines().find_map(|l| {
        let (l_label, spec) = l.split_once(' ')?;
        (l_label == label).then(|| spec.trim().to_string())
    })
}

/// device-mapper's name for `VG/LV` (a `-` inside a name is doubled).
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// Tonight's changes of a thin volume against the base's kept snapshot `base` (VG/NAME),
/// as `thin_delta` reports them; `Unusable` with the reason when they cannot be had.
pub fn changes_since(vg: &str, lv: &str, base: &str, new: &str) -> ViewChanges {
    match delta(vg, lv, base, new) {
        Ok(r) => ViewChanges::Ranges(format!("thin_delta since {base}"), r),
        Err(e) => ViewChanges::Unusable(format!("thin_delta between {base} and {new}: {e}")),
    }
}

fn delta(vg: &str, lv: &str, base: &str, new: &str) -> Result<Vec<(u64, u64)>, ProviderError> {
    let pool = super::lvs(&["-o", "pool_lv", &format!("{vg}/{lv}")])?;
    let id = |spec: &str| -> Result<String, ProviderError> {
        let id = super::lvs(&["-o", "thin_id", spec])?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("lvs printed thin id {id:?} for {spec}").into());
        }
        Ok(id)
    };
    let (a, b) = (id(base)?, id(new)?);
    let tpool = format!("{}-tpool", dm_name(vg, &pool));
    let tmeta = format!("/dev/mapper/{}_tmeta", dm_name(vg, &pool));
    tool(
        "dmsetup",
        &["message", &tpool, "0", "reserve_metadata_snap"],
    )?;
    let out = tool(
        "thin_delta",
        &["--metadata-snap", "--snap1", &a, "--snap2", &b, &tmeta],
    );
    // Released whatever thin_delta did: a reserved metadata snapshot left behind blocks
    // the next reservation (and costs pool metadata space).
    let released = tool(
        "dmsetup",
        &["message", &tpool, "0", "release_metadata_snap"],
    );
    let ranges = parse_thin_delta(&out?).map_err(ProviderError::from)?;
    released?;
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_snapshots_are_trusted_from_a_base() {
        assert!(is_our_snapshot(
            "vg0/web01-dedisk-1796607004",
            "vg0",
            "web01"
        ));
        assert!(!is_our_snapshot("vg0/web01", "vg0", "web01"));
        assert!(!is_our_snapshot("vg0/other-dedisk-1", "vg0", "web01"));
        assert!(!is_our_snapshot("vg0/web01-dedisk-1;rm", "vg0", "web01"));
        assert_eq!(
            base_snapshot_of(b"vda vg0/a-dedisk-1\nvdb vg0/b-dedisk-1\n", "vdb").as_deref(),
            Some("vg0/b-dedisk-1")
        );
        assert_eq!(dm_name("vg-0", "pool"), "vg--0-pool");
    }
}
