//! A heap buffer aligned for O_DIRECT I/O.

/// Alignment that satisfies O_DIRECT on every Linux filesystem and block device.
pub const DIRECT_ALIGN: usize = 4096;

/// A zero-initialised buffer whose address and length are multiples of 4 KiB.
///
/// It is an anonymous mapping, not a heap allocation: the kernel hands out zero pages
/// only as they are first written, so a buffer sized for the largest chunk (16 MiB)
/// costs memory only for what is used. (The heap's aligned `alloc_zeroed` writes every
/// byte: four restore workers held 80 MiB of zeros that way.)
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its mapping exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Maps `len` bytes rounded up to the alignment. Panics on a zero length or when
    /// the kernel refuses the mapping (out of memory), like `Vec`.
    pub fn new(len: usize) -> Self {
        let len = len.max(1).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            raw != libc::MAP_FAILED,
            "mapping a {len}-byte buffer failed: {}",
            std::io::Error::last_os_error()
        );
        let ptr = std::ptr::NonNull::new(raw.cast::<u8>()).expect("mmap never returns null");
        AlignedBuf { ptr, len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zero-filled) bytes for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this very length, unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_writable() {
        let mut b = AlignedBuf::new(10_000);
        assert_eq!(b.len(), 12_288);
        assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[12_287] = 7;
        assert_eq!(b[12_287], 7);
    }
}
