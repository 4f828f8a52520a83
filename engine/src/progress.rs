//! How long-running work reports progress. The engine never draws on a terminal; the
//! CLI implements this trait with a progress bar or JSON lines.

/// Receives progress from any thread.
pub trait Progress: Sync {
    /// A disk starts; `size_bytes` is `None` for streams.
    fn start(&self, _label: &str, _size_bytes: Option<u64>) {}
    /// `bytes` more of the current disk are done (read and chunked, or restored).
    fn advance(&self, _bytes: u64) {}
    /// The current disk is done.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}
