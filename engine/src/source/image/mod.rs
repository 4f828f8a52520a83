//! Native readers for disk-image containers: qcow2, VHD, VHDX, VMDK, VDI (and raw, as a
//! backing file).
//!
//! Each format only parses its metadata and answers one question, [`Layout::map`]: "what
//! backs the guest byte at this offset, and for how many bytes does that stay true?" The
//! answer is a [`Run`]: zeros, the backing image, plain data in a host file, or part of a
//! compressed unit. [`Image`] does the rest the same way for every format: it reads
//! runs, decompresses units, falls through to backing images, and walks runs to tell the
//! backup pipeline where allocated data is, so unallocated and zero ranges are never read.
//!
//! Images are untrusted input. Every size and offset read from a header is checked
//! against the file before it drives an allocation or a loop, tables are held in memory
//! only after their size is bounded, and a malformed image gives an [`ImageError`] that
//! names the file, the structure and its offset.

pub mod info;
pub mod qcow2;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use super::host::HostFile;
pub use info::{inspect, ImageInfo, Inspection};

use crate::source::detect::ImageFormat;
use crate::source::{DiskSource, SourceError};

/// Backing chains longer than this are refused (qemu has no limit, but a chain this
/// deep is a mistake or a crafted file, and each layer costs file descriptors).
pub const MAX_CHAIN_DEPTH: usize = 32;

/// Largest compressed unit (qcow2 cluster, VMDK grain) decompressed into memory.
pub const MAX_UNIT_BYTES: u64 = 16 << 20;

/// Why an image cannot be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The image contradicts its format: a bad magic, checksum, size or pointer.
    #[error("{path}: malformed {format} image: {what} at byte {offset}: {problem}")]
    Malformed {
        path: PathBuf,
        format: ImageFormat,
        what: String,
        offset: u64,
        problem: String,
    },
    /// A structure points outside the file: the image is truncated or corrupt.
    #[error("{path}: {what} at byte {offset}: {len_bytes} bytes there run past the end of the file ({file_bytes} bytes); the image is truncated or corrupt")]
    PastEnd {
        path: PathBuf,
        what: String,
        offset: u64,
        len_bytes: u64,
        file_bytes: u64,
    },
    /// A valid image using something dedisk does not read (encryption, a missing parent).
    #[error("{path}: {format} image: {problem}")]
    Unsupported {
        path: PathBuf,
        format: ImageFormat,
        problem: String,
    },
}

impl ImageError {
    pub fn io(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
        move |source| ImageError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Builds [`ImageError::Malformed`] for one file and format.
#[derive(Clone)]
pub struct Blame {
    pub path: PathBuf,
    pub format: ImageFormat,
}

impl Blame {
    pub fn new(path: &Path, format: ImageFormat) -> Self {
        Blame {
            path: path.into(),
            format,
        }
    }

    pub fn malformed(
        &self,
        what: impl Into<String>,
        offset: u64,
        problem: impl Into<String>,
    ) -> ImageError {
        ImageError::Malformed {
            path: self.path.clone(),
            format: self.format,
            what: what.into(),
            offset,
            problem: problem.into(),
        }
    }

    pub fn unsupported(&self, problem: impl Into<String>) -> ImageError {
        ImageError::Unsupported {
            path: self.path.clone(),
            format: self.format,
            problem: problem.into(),
        }
    }
}

/// How a compressed unit is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Raw deflate, no header (qcow2's "zlib" clusters).
    Deflate,
    /// zlib-wrapped deflate (VMDK streamOptimized grains).
    Zlib,
    Zstd,
}

/// A compressed unit that holds `unit_len` guest bytes starting at `unit_start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compressed {
    pub file: usize,
    pub host: u64,
    /// Compressed bytes at `host` (may run past the end of the file, which is clipped).
    pub len: u64,
    pub codec: Codec,
    pub unit_start: u64,
    pub unit_len: u64,
}

/// What backs a range of guest bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// Reads as zeros (and need not be read).
    Zero,
    /// Not allocated in this layer: the backing image's bytes, or zeros without one.
    Backing,
    /// Stored as is in host file `file`, the run's first byte at `host`.
    Data {
        file: usize,
        host: u64,
    },
    Compressed(Compressed),
}

/// A format's map from guest offsets to runs.
pub trait Layout: Send {
    /// The run holding guest byte `offset` (below the virtual size) and how many bytes it
    /// covers from there (at least 1; [`Image`] clips it to the virtual size).
    fn map(&mut self, offset: u64) -> Result<(Run, u64), ImageError>;
    /// An independent copy for another reader thread (metadata shared, caches not).
    fn clone_layout(&self) -> Box<dyn Layout>;
}

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Read data with O_DIRECT where the run and buffer are aligned.
    pub direct: bool,
    /// The format, or `None` to detect it from the content.
    pub format: Option<ImageFormat>,
    /// qcow2: read this internal snapshot (name or id) instead of the active layer.
    pub qcow2_snapshot: Option<String>,
}

/// Where a format reader stands in a backing chain while it opens.
pub struct Chain {
    pub direct: bool,
    depth: usize,
    /// (device, inode) of every file already in the chain, to detect loops.
    seen: HashSet<(u64, u64)>,
    /// Set when the top image's format was detected rather than given: backing files must
    /// then lie in this directory (the top image's) or below it. See [`Chain::open_backing`].
    confine_to: Option<PathBuf>,
}

impl Chain {
    fn new(direct: bool, confine_to: Option<PathBuf>) -> Self {
        Chain {
            direct,
            depth: 0,
            seen: HashSet::new(),
            confine_to,
        }
    }

    /// Opens the backing file `name` of the image at `child`, as `format` (or detected).
    /// Relative names are resolved against the child's directory, as qemu does.
    pub fn open_backing(
        &mut self,
        child: &Blame,
        name: &str,
        format: Option<ImageFormat>,
    ) -> Result<Image, ImageError> {
        if name.starts_with("json:") || name.contains("://") {
            return Err(child.unsupported(format!(
                "backing file {name:?} is a protocol or json: specification; only local files are read"
            )));
        }
        if self.depth + 1 >= MAX_CHAIN_DEPTH {
            return Err(child.unsupported(format!(
                "backing chain deeper than {MAX_CHAIN_DEPTH} images"
            )));
        }
        let path = self.confined(child, name, "backing file")?;
        self.depth += 1;
        let image = open_in_chain(&path, format, None, self);
        self.depth -= 1;
        image
    }
}

impl Chain {
    /// The file `name` that the image `child` refers to (`what`: "backing file", "VMDK
    /// extent"), resolved against the image's directory.
    ///
    /// A guest can write a qcow2 header or a VMDK descriptor naming any host file into the
    /// first sector of its raw disk; a reader that probes formats would then back up that
    /// file (issue 11 read `/root/secret` through a VMDK extent). So with a probed format,
    /// only files beside the image or below its directory are followed.
    pub fn confined(&self, child: &Blame, name: &str, what: &str) -> Result<PathBuf, ImageError> {
        let path = resolve_relative(&child.path, name);
        if !path.exists() {
            return Err(child.unsupported(format!("{what} {} does not exist", path.display())));
        }
        if let Some(dir) = &self.confine_to {
            let real = path.canonicalize().map_err(ImageError::io(&path))?;
            if !real.starts_with(dir) {
                return Err(child.unsupported(format!(
                    "{what} {} is outside {}; with a detected format dedisk only follows files there (a guest could forge a header pointing anywhere); pass --format {} if this image is trusted",
                    real.display(),
                    dir.display(),
                    child.format
                )));
            }
        }
        Ok(path)
    }
}

/// `name` relative to the directory holding `image` (absolute names stay as they are).
pub fn resolve_relative(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.into()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Opens an image of any supported format (detected from its content unless given).
///
/// With `opts.format` unset the format is probed and backing files are confined to the
/// image's directory tree (see [`Chain::open_backing`]); giving the format trusts the chain.
pub fn open_image(path: &Path, opts: &OpenOptions) -> Result<Image, ImageError> {
    let confine_to = match opts.format {
        Some(_) => None,
        None => Some(
            path.canonicalize()
                .map_err(ImageError::io(path))?
                .parent()
                .unwrap_or(Path::new("/"))
                .to_path_buf(),
        ),
    };
    let mut chain = Chain::new(opts.direct, confine_to);
    open_in_chain(
        path,
        opts.format,
        opts.qcow2_snapshot.as_deref(),
        &mut chain,
    )
}

fn open_in_chain(
    path: &Path,
    format: Option<ImageFormat>,
    qcow2_snapshot: Option<&str>,
    chain: &mut Chain,
) -> Result<Image, ImageError> {
    let host = HostFile::open(path, chain.direct)?;
    if !chain.seen.insert(host.identity()) {
        return Err(ImageError::Unsupported {
            path: path.into(),
            format: format.unwrap_or(ImageFormat::Raw),
            problem: "backing chain loops back to this file".into(),
        });
    }
    let format = match format {
        Some(f) => f,
        None => crate::source::detect::detect_image(host.file(), host.len_bytes())
            .map_err(ImageError::io(path))?
            .ok_or_else(|| {
                ImageError::io(path)(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "an XVA export holds whole VMs; back it up as a disk source, not as a backing file or one image",
                ))
            })?,
    };
    if qcow2_snapshot.is_some() && format != ImageFormat::Qcow2 {
        return Err(ImageError::Unsupported {
            path: path.into(),
            format,
            problem: "--qcow2-snapshot only applies to qcow2 images".into(),
        });
    }
    let host = Arc::new(host);
    match format {
        ImageFormat::Raw => super::raw::open_layer(host),
        ImageFormat::Qcow2 => qcow2::open(host, qcow2_snapshot, chain),
        ImageFormat::Vhd => vhd::open(host, chain),
        ImageFormat::Vhdx => vhdx::open(host),
        ImageFormat::Vmdk => vmdk::open(host, chain),
        ImageFormat::Vdi => vdi::open(host),
    }
}

/// Runs longer than this are not merged into one extent by [`Image::next_data`], so the
/// walk ahead of the reader stays short.
pub(crate) const MAX_EXTENT_BYTES: u64 = 64 << 20;

/// An opened image: its layout, host files and backing image.
pub struct Image {
    info: Arc<ImageInfo>,
    layout: Box<dyn Layout>,
    files: Arc<Vec<Arc<HostFile>>>,
    backing: Option<Box<Image>>,
    /// The last decompressed unit: (guest start, bytes).
    unit: Option<(u64, Vec<u8>)>,
    compressed_buf: Vec<u8>,
}

impl Image {
    /// Assembles an image from a format's parts. `files[0]` is the image file itself.
    pub fn new(
        info: ImageInfo,
        layout: Box<dyn Layout>,
        files: Vec<Arc<HostFile>>,
        backing: Option<Image>,
    ) -> Self {
        Image {
            info: Arc::new(info),
            layout,
            files: Arc::new(files),
            backing: backing.map(Box::new),
            unit: None,
            compressed_buf: Vec::new(),
        }
    }

    pub fn info(&self) -> &ImageInfo {
        &self.info
    }

    /// The chain from this image down to its last backing file.
    pub fn chain(&self) -> Vec<&ImageInfo> {
        let mut out = vec![self.info()];
        let mut b = self.backing.as_deref();
        while let Some(img) = b {
            out.push(img.info());
            b = img.backing.as_deref();
        }
        out
    }

    pub fn virtual_size(&self) -> u64 {
        self.info.virtual_size
    }

    fn path(&self) -> &Path {
        &self.info.path
    }

    /// The run at `offset` (below the virtual size), clipped to the virtual size.
    fn run_at(&mut self, offset: u64) -> Result<(Run, u64), ImageError> {
        let (run, len) = self.layout.map(offset)?;
        if len == 0 {
            return Err(ImageError::Malformed {
                path: self.path().into(),
                format: self.info.format,
                what: "block map".into(),
                offset,
                problem: "maps an empty run (a reader bug or a corrupt table)".into(),
            });
        }
        Ok((run, len.min(self.virtual_size() - offset)))
    }

    /// The first `(skip, data)` split of the run at `pos` of `len` bytes: `skip` bytes
    /// that hold no data, then `data` bytes that may.
    fn split_run(&mut self, run: Run, pos: u64, len: u64) -> Result<(u64, u64), ImageError> {
        Ok(match run {
            Run::Zero => (len, 0),
            Run::Data { .. } | Run::Compressed(_) => (0, len),
            Run::Backing => {
                let Some(b) = self.backing.as_deref_mut() else {
                    return Ok((len, 0));
                };
                let hi = (pos + len).min(b.virtual_size());
                if pos >= hi {
                    return Ok((len, 0));
                }
                match b.next_data(pos)? {
                    Some((s, e)) if s < hi => {
                        let s = s.max(pos);
                        (s - pos, e.min(hi) - s)
                    }
                    _ => (len, 0),
                }
            }
        })
    }

    /// The next range `[start, end)` at or after `offset` that may hold data (allocated
    /// here or in a backing image, and not known to be zero), or `None`.
    pub fn next_data(&mut self, offset: u64) -> Result<Option<(u64, u64)>, ImageError> {
        let size = self.virtual_size();
        let mut pos = offset;
        let mut extent: Option<(u64, u64)> = None;
        while pos < size {
            let (run, len) = self.run_at(pos)?;
            let (skip, data) = self.split_run(run, pos, len)?;
            match extent {
                None => {
                    if data > 0 {
                        extent = Some((pos + skip, pos + skip + data));
                        if skip + data < len {
                            break;
                        }
                    }
                    pos += if data > 0 { skip + data } else { len };
                }
                Some((start, ref mut end)) => {
                    if skip > 0 || data == 0 {
                        break;
                    }
                    *end += data;
                    pos += data;
                    if data < len || *end - start >= MAX_EXTENT_BYTES {
                        break;
                    }
                }
            }
        }
        Ok(extent)
    }

    /// Fills `buf` with guest bytes from `offset`, up to the virtual size; returns how
    /// many bytes that is (0 at or past the end).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, ImageError> {
        let size = self.virtual_size();
        if offset >= size {
            return Ok(0);
        }
        let want = buf
            .len()
            .min((size - offset).min(usize::MAX as u64) as usize);
        let mut done = 0usize;
        while done < want {
            let pos = offset + done as u64;
            let (run, len) = self.run_at(pos)?;
            let n = len.min((want - done) as u64) as usize;
            let out = &mut buf[done..done + n];
            match run {
                Run::Zero => out.fill(0),
                Run::Backing => match self.backing.as_deref_mut() {
                    None => out.fill(0),
                    Some(b) => {
                        let k = b.virtual_size().saturating_sub(pos).min(n as u64) as usize;
                        if k > 0 {
                            let got = b.read_at(pos, &mut out[..k])?;
                            debug_assert_eq!(got, k);
                        }
                        out[k..].fill(0);
                    }
                },
                Run::Data { file, host } => {
                    let f = self.host_file(file, pos)?;
                    f.read_exact_at(out, host, || format!("data for guest offset {pos}"))?;
                }
                Run::Compressed(c) => {
                    let unit = self.load_unit(&c, pos)?;
                    let at = (pos - c.unit_start) as usize;
                    out.copy_from_slice(&unit[at..at + n]);
                }
            }
            done += n;
        }
        Ok(done)
    }

    fn host_file(&self, file: usize, pos: u64) -> Result<Arc<HostFile>, ImageError> {
        self.files
            .get(file)
            .cloned()
            .ok_or_else(|| ImageError::Malformed {
                path: self.path().into(),
                format: self.info.format,
                what: "block map".into(),
                offset: pos,
                problem: format!("refers to extent file {file}, which does not exist"),
            })
    }

    /// Decompresses the unit `c` (or reuses the last one) and returns its bytes.
    fn load_unit(&mut self, c: &Compressed, pos: u64) -> Result<&[u8], ImageError> {
        let blame = Blame::new(self.path(), self.info.format);
        let what = || format!("compressed unit for guest offset {pos}");
        let covers = c.unit_start <= pos && pos - c.unit_start < c.unit_len;
        if !covers || c.unit_len > MAX_UNIT_BYTES || c.len > MAX_UNIT_BYTES * 2 {
            return Err(blame.malformed(what(), c.host, "compressed unit size out of range"));
        }
        if !matches!(&self.unit, Some((start, _)) if *start == c.unit_start) {
            let file = self.host_file(c.file, pos)?;
            // Compressed lengths are rounded up to whole sectors and may run past the end.
            let avail = file.len_bytes().saturating_sub(c.host).min(c.len) as usize;
            if avail == 0 {
                return Err(blame.malformed(what(), c.host, "points past the end of the file"));
            }
            self.compressed_buf.resize(avail, 0);
            file.read_exact_at(&mut self.compressed_buf, c.host, what)?;
            let mut out = self.unit.take().map(|(_, v)| v).unwrap_or_default();
            out.clear();
            out.resize(c.unit_len as usize, 0);
            decompress(c.codec, &self.compressed_buf, &mut out)
                .map_err(|problem| blame.malformed(what(), c.host, problem))?;
            self.unit = Some((c.unit_start, out));
        }
        // The unit was stored just above if it was not there.
        Ok(&self.unit.as_ref().expect("unit loaded above").1)
    }

    /// Walks the whole block map of every layer and checks that each run it names lies
    /// in its file, without reading data: a truncated export fails here, not halfway
    /// through a backup. Costs one pass over the metadata.
    pub fn check_map(&mut self) -> Result<(), ImageError> {
        let size = self.virtual_size();
        let mut pos = 0;
        while pos < size {
            let (run, len) = self.run_at(pos)?;
            let (file, host, need) = match run {
                Run::Data { file, host } => (file, host, len),
                Run::Compressed(c) => (c.file, c.host, 1),
                Run::Zero | Run::Backing => {
                    pos += len;
                    continue;
                }
            };
            let f = self.host_file(file, pos)?;
            if host.checked_add(need).is_none_or(|end| end > f.len_bytes()) {
                return Err(ImageError::PastEnd {
                    path: f.path().into(),
                    what: format!("data for guest offset {pos}"),
                    offset: host,
                    len_bytes: need,
                    file_bytes: f.len_bytes(),
                });
            }
            pos += len;
        }
        match self.backing.as_deref_mut() {
            Some(b) => b.check_map(),
            None => Ok(()),
        }
    }

    /// Another reader on the same image for parallel reads.
    pub fn try_clone(&self) -> Image {
        Image {
            info: self.info.clone(),
            layout: self.layout.clone_layout(),
            files: self.files.clone(),
            backing: self.backing.as_ref().map(|b| Box::new(b.try_clone())),
            unit: None,
            compressed_buf: Vec::new(),
        }
    }
}

/// Decompresses `input` into exactly `out.len()` bytes.
fn decompress(codec: Codec, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    let got = match codec {
        Codec::Deflate | Codec::Zlib => {
            let mut d = flate2::Decompress::new(codec == Codec::Zlib);
            match d.decompress(input, out, flate2::FlushDecompress::Finish) {
                Ok(_) => d.total_out() as usize,
                Err(e) => return Err(format!("deflate data is corrupt: {e}")),
            }
        }
        Codec::Zstd => {
            // qemu's zstd clusters are one or more frames followed by sector padding.
            let mut dec = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| format!("zstd: {e}"))?
                .single_frame();
            let mut done = 0;
            while done < out.len() {
                match dec.read(&mut out[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => return Err(format!("zstd data is corrupt: {e}")),
                }
            }
            done
        }
    };
    if got != out.len() {
        return Err(format!(
            "decompresses to {got} bytes, expected {}",
            out.len()
        ));
    }
    Ok(())
}

impl DiskSource for Image {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn size_bytes(&self) -> Option<u64> {
        Some(self.virtual_size())
    }

    fn next_data(&mut self, offset: u64) -> Result<Option<(u64, u64)>, SourceError> {
        Ok(Image::next_data(self, offset)?)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        Ok(Image::read_at(self, offset, buf)?)
    }

    fn clone_reader(&self) -> Option<Box<dyn DiskSource>> {
        Some(Box::new(self.try_clone()))
    }

    fn check_unchanged(&self) -> Result<(), SourceError> {
        // Every file of the chain: the image, its data files and extents, its backings.
        for f in self.files.iter() {
            f.check_unchanged()?;
        }
        match &self.backing {
            Some(b) => b.check_unchanged(),
            None => Ok(()),
        }
    }
}

/// Big-endian and little-endian field readers over a header buffer whose length the
/// caller has checked.
pub mod bytes {
    pub fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
    }
    pub fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }
    pub fn be64(b: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }
    pub fn le16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
    }
    pub fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }
    pub fn le64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }
}

/// Test helper: qemu reads the image at `path` (qemu's `format` name) as the raw bytes
/// `want`. Without qemu-img it says so and checks nothing more.
#[cfg(test)]
pub(crate) fn assert_qemu_agrees(path: &Path, format: &str, want: &[u8]) {
    let raw = path.with_extension("want.raw");
    std::fs::write(&raw, want).unwrap();
    match std::process::Command::new("qemu-img")
        .args(["compare", "-f", format, "-F", "raw"])
        .arg(path)
        .arg(&raw)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "qemu-img compare: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("SKIPPED: qemu-img compare ({e})"),
    }
}

/// Test helper: opens `path` as `format`, given (not probed).
#[cfg(test)]
pub(crate) fn open_as(path: &Path, format: ImageFormat) -> Result<Image, ImageError> {
    open_image(
        path,
        &OpenOptions {
            format: Some(format),
            ..Default::default()
        },
    )
}
