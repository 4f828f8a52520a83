//! Keeping a repository healthy: `verify` (checks without changing anything), `forget`
//! (which snapshots a retention policy keeps), `prune` (deleting what no snapshot uses,
//! repacking what is partly used, beside running backups), `repair` (rewriting what
//! damage left behind) and `copy` (snapshots into another repository).
//!
//! Writers here go through [`crate::store`] and take their lock guard by type: prune a
//! prune lock, repair an exclusive one, copy and verify shared ones.

pub mod copy;
pub mod forget;
pub mod id_set;
pub mod last_runs;
pub mod prune;
pub mod repair;
pub mod verify;
