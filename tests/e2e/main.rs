//! End-to-end tests: the real `dedisk` binary against real disk images made by
//! `sfdisk`, `mkfs.ext4 -d`, `debugfs` and `qemu-img`, as an admin would run it.
//!
//! Tools missing on a developer machine skip a test loudly; under CI (CI=true) a missing
//! tool fails it, so CI can never pass by skipping.

mod backup_restore;
mod cbt;
mod copy;
mod crash;
mod cross_fs;
mod damage;
mod differential;
mod docs;
mod encryption;
mod errors;
mod guest;
mod helpers;
mod hostile;
mod images;
mod job;
mod json;
mod libvirt;
mod metrics;
mod mount;
mod nbd;
mod notify;
mod packaging;
mod prune;
mod prune_beside;
mod reliability;
mod s3;
mod ui;
mod units;
mod verify;
mod xva;
