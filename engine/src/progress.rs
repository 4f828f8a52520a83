//! How long-running work reports progress. The engine never draws on a terminal; the
//! CLI implements this trait with a progress bar or JSON lines.

/// Receives progress from any thread.
pub trait Progress: Sync {
    /// A phase of the command begins (`"mark"`, `"read-data"`, ...); the disks and
    /// bytes reported after it belong to it. Commands of one phase need not call it.
    fn phase(&self, _name: &str) {}
    /// A disk (or, outside a disk, the phase's work) starts; `size_bytes` is `None`
    /// when the total is not known in advance.
    fn start(&self, _label: &str, _size_bytes: Option<u64>) {}
    /// `bytes` more of the current disk are done (read and chunked, or restored).
    fn advance(&self, _bytes: u64) {}
    /// The current disk is done.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Passes everything on, with the disk labels prefixed (`"web1/"` + `"sda"`), so a
/// job's lines say which VM a disk belongs to.
pub struct Prefixed<'a> {
    pub prefix: String,
    pub inner: &'a dyn Progress,
}

impl Progress for Prefixed<'_> {
    fn phase(&self, name: &str) {
        self.inner.phase(name)
    }
    fn start(&self, label: &str, size_bytes: Option<u64>) {
        self.inner
            .start(&format!("{}{label}", self.prefix), size_bytes)
    }
    fn advance(&self, bytes: u64) {
        self.inner.advance(bytes)
    }
    fn finish(&self) {
        self.inner.finish()
    }
}
