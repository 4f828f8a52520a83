//! One module per command family; each parses what the user gave, calls the engine and
//! prints. They share [`crate::context`] and import nothing from each other.

pub mod access;
pub mod backup;
pub mod docs;
pub mod guest;
pub mod init;
pub mod inspect;
pub mod job;
pub mod key;
pub mod listing;
pub mod maintain;
pub mod restore;
pub mod ui;
