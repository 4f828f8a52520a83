//! Reading old snapshots in place, without restoring them: the NBD server, the FUSE
//! mount, and the partition tables both show. Everything here reads through
//! [`crate::read::DiskReader`] and never writes the repository.

pub mod boot;
pub mod fsck;
pub mod mount;
pub mod nbd;
pub mod partitions;
