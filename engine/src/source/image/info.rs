//! What `dedisk inspect` reports about an image: one [`ImageInfo`] per layer of a chain.

use std::path::PathBuf;

use crate::source::detect::ImageFormat;

/// One image file as its reader understood it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageInfo {
    pub path: PathBuf,
    pub format: ImageFormat,
    /// Bytes the guest sees.
    pub virtual_size: u64,
    /// Allocation unit: qcow2 cluster, VHD/VHDX/VDI block, VMDK grain (absent for raw).
    pub cluster_bytes: Option<u64>,
    /// Format-specific facts worth showing an admin (version, subformat, compression,
    /// snapshots, extents...), in display order.
    pub details: Vec<(String, String)>,
}

impl ImageInfo {
    pub fn new(path: &std::path::Path, format: ImageFormat, virtual_size: u64) -> Self {
        ImageInfo {
            path: path.into(),
            format,
            virtual_size,
            cluster_bytes: None,
            details: Vec::new(),
        }
    }

    pub fn detail(&mut self, key: &str, value: impl ToString) {
        self.details.push((key.into(), value.to_string()));
    }
}

/// What `dedisk inspect` shows: the chain, and where the data is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Inspection {
    /// The image first, then its backing files in order.
    pub chain: Vec<ImageInfo>,
    pub virtual_size: u64,
    /// Bytes a backup would read: allocated anywhere in the chain and not known zero.
    pub allocated_bytes: u64,
    /// Those ranges as `[start, end)` byte offsets, merged where adjacent.
    pub extents: Vec<(u64, u64)>,
}

/// Opens `path`, checks its whole map (see [`super::Image::check_map`]) and lists where
/// the data is. Costs passes over the metadata, no data reads.
pub fn inspect(
    path: &std::path::Path,
    opts: &super::OpenOptions,
) -> Result<Inspection, super::ImageError> {
    let mut image = super::open_image(path, opts)?;
    image.check_map()?;
    let chain = image.chain().into_iter().cloned().collect();
    let extents = crate::source::data_extents(|pos| image.next_data(pos))?;
    Ok(Inspection {
        chain,
        virtual_size: image.virtual_size(),
        allocated_bytes: extents.iter().map(|(s, e)| e - s).sum(),
        extents,
    })
}
