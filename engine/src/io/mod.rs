//! Host I/O helpers shared by the floors that touch files and devices: aligned buffers
//! for O_DIRECT and block-device ioctls. Knows nothing of images or repositories.

mod aligned;
pub mod blockdev;
pub mod nbd_wire;

pub use aligned::{AlignedBuf, DIRECT_ALIGN};
