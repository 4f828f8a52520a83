//! The read path, shared by restore, mount and NBD: from a manifest to the bytes of a
//! disk, every chunk BLAKE3-checked as it is decoded.
//!
//! - [`DiskReader`]: random reads at any offset (mount, NBD), descending the manifest
//!   tree to the one leaf needed, with a chunk cache and read-ahead.
//! - [`feed_extents`]: the whole disk in order (restore), each chunk located and its pack
//!   range prefetched ahead of the workers that read it ([`fetch_chunk`]).

mod disk_reader;
mod feed;

pub use disk_reader::{DiskReader, SharedChunkCache};
pub use feed::{feed_extents, fetch_chunk, read_whole, FetchError};
