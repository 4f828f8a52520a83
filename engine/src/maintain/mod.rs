//! Keeping a repository healthy: `verify` (checks without changing anything), `forget`
//! (which snapshots a retention policy keeps), `prune` (deleting what no snapshot uses,
//! repacking what is partly used) and `repair` (rewriting what damage left behind).
//!
//! Writers here go through [`crate::store`] and take an exclusive lock guard by type;
//! verify takes a shared one.

pub mod forget;
pub mod prune;
pub mod repair;
pub mod verify;
