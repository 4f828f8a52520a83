//! The one entry point that turns a disk argument into disk sources (see [`open`]).

use std::io::Read;
use std::path::Path;

use serde::Serialize;

use super::detect::{self, ImageFormat, SourceFormat};
use super::image::{self, Image};
use super::vhd_stream::VhdStream;
use super::xva::{self, XvaExport};
use super::{DiskSource, RawSource, SourceError, StreamSource};

/// How to open a disk argument.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// Read with O_DIRECT where possible.
    pub direct: bool,
    /// The format, or `None` to judge it from the content.
    pub format: Option<SourceFormat>,
    /// qcow2: read this internal snapshot instead of the active layer.
    pub qcow2_snapshot: Option<String>,
    /// NBD: also negotiate this dirty bitmap (`qemu:dirty-bitmap:NAME`) as the disk's
    /// change map.
    pub dirty_bitmap: Option<String>,
}

/// One disk an argument held.
pub struct OpenedDisk {
    pub label: String,
    pub source: Box<dyn DiskSource>,
}

/// A metadata file that came with the disks (an XVA's `ova.xml`).
pub struct OpenedMeta {
    pub name: String,
    /// Names where it came from, in messages: `export.xva ova.xml`.
    pub origin: String,
    pub bytes: Vec<u8>,
}

/// What one disk argument turned out to hold.
pub struct Opened {
    pub disks: Vec<OpenedDisk>,
    pub meta: Vec<OpenedMeta>,
}

impl Opened {
    fn one(label: String, source: Box<dyn DiskSource>) -> Self {
        Opened {
            disks: vec![OpenedDisk { label, source }],
            meta: Vec::new(),
        }
    }

    /// An XVA's disks keep their device labels (`xvda`...), and `ova.xml` comes along;
    /// with a label given they become `LABEL-xvda`, `LABEL-ova.xml`.
    fn xva(export: XvaExport, label: Option<&str>, origin: &str) -> Self {
        let prefix = label.map(|l| format!("{l}-")).unwrap_or_default();
        Opened {
            disks: export
                .disks
                .into_iter()
                .map(|d| OpenedDisk {
                    label: format!("{prefix}{}", d.label),
                    source: d.source,
                })
                .collect(),
            meta: vec![OpenedMeta {
                name: format!("{prefix}ova.xml"),
                origin: format!("{origin} ova.xml"),
                bytes: export.ova_xml,
            }],
        }
    }
}

/// The label a disk gets when none is given: its file name, or `stdin`.
pub fn default_label(spec: &str) -> String {
    if spec == "-" {
        return "stdin".into();
    }
    if super::nbd::is_nbd_uri(spec) {
        // The export name is the disk (`vda`), whatever the socket is called.
        return super::nbd::parse_uri(spec)
            .ok()
            .map(|u| u.export)
            .filter(|e| repo_format::names::check_label(e).is_ok())
            .unwrap_or_else(|| "nbd".into());
    }
    Path::new(spec)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string())
}

/// Opens a path, a device, a named pipe or `-` (standard input) as the disks it holds.
///
/// Files are judged by content unless `opts.format` says what they are: a raw file or
/// block device, an image (qcow2, VHD, VHDX, VMDK, VDI, read through [`image`] so the
/// backup sees the virtual disk), or an XVA export (several disks plus `ova.xml`).
/// Standard input and named pipes are streams: raw, a dynamic VHD written front to back
/// (`xe vdi-export format=vhd`, when the format says VHD) or an XVA (detected from its
/// first bytes, or said); other image formats need seeking and cannot come from a pipe.
///
/// `label` names the disk (default: [`default_label`]); an XVA's disks get it as a
/// prefix.
pub fn open(spec: &str, label: Option<&str>, opts: &SourceOptions) -> Result<Opened, SourceError> {
    let disk_label = || label.map_or_else(|| default_label(spec), str::to_string);
    if spec == "-" {
        return open_stdin(disk_label(), label, opts);
    }
    if super::nbd::is_nbd_uri(spec) {
        let source = super::nbd::NbdSource::open(spec, opts.dirty_bitmap.as_deref())?;
        return Ok(Opened::one(disk_label(), Box::new(source)));
    }
    let path = Path::new(spec);
    if is_fifo(path) {
        let pipe = std::fs::File::open(path).map_err(io(path))?;
        return open_stream(Box::new(pipe), spec, disk_label(), label, opts, false);
    }
    let format = match opts.format {
        Some(f) => f,
        None => detect_file(path)?,
    };
    match format {
        SourceFormat::Xva => {
            let file = std::fs::File::open(path).map_err(io(path))?;
            let reader = std::io::BufReader::with_capacity(1 << 20, file);
            Ok(Opened::xva(
                xva::open_xva(Box::new(reader), spec)?,
                label,
                spec,
            ))
        }
        SourceFormat::Image(ImageFormat::Raw) if opts.qcow2_snapshot.is_none() => Ok(Opened::one(
            disk_label(),
            Box::new(RawSource::open(path, opts.direct)?),
        )),
        SourceFormat::Image(_) => Ok(Opened::one(disk_label(), Box::new(open_image(path, opts)?))),
    }
}

/// Standard input, whose first bytes tell an XVA from a raw stream.
fn open_stdin(
    disk_label: String,
    label: Option<&str>,
    opts: &SourceOptions,
) -> Result<Opened, SourceError> {
    let mut head = vec![0u8; 512];
    let mut stdin = std::io::stdin();
    let n = super::read_full(&mut stdin, &mut head).map_err(io(Path::new("stdin")))?;
    head.truncate(n);
    let sniffed = detect::detect_head(&head) == Some(SourceFormat::Xva);
    let reader = std::io::Cursor::new(head).chain(stdin);
    open_stream(Box::new(reader), "stdin", disk_label, label, opts, sniffed)
}

/// A stream: raw, a dynamic VHD, or an XVA.
fn open_stream(
    reader: Box<dyn Read + Send>,
    name: &str,
    disk_label: String,
    label: Option<&str>,
    opts: &SourceOptions,
    looks_xva: bool,
) -> Result<Opened, SourceError> {
    match opts.format {
        None if looks_xva => Ok(Opened::xva(xva::open_xva(reader, name)?, label, name)),
        Some(SourceFormat::Xva) => Ok(Opened::xva(xva::open_xva(reader, name)?, label, name)),
        None | Some(SourceFormat::Image(ImageFormat::Raw)) => Ok(Opened::one(
            disk_label,
            Box::new(StreamSource::new(reader, name.into())),
        )),
        Some(SourceFormat::Image(ImageFormat::Vhd)) => {
            let reader = std::io::BufReader::with_capacity(1 << 20, reader);
            Ok(Opened::one(disk_label, Box::new(VhdStream::open(reader, name)?)))
        }
        Some(f) => Err(SourceError::Io {
            path: name.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a {f} image cannot be read from a pipe (only raw, dynamic vhd and xva); give its path"
                ),
            ),
        }),
    }
}

fn open_image(path: &Path, opts: &SourceOptions) -> Result<Image, SourceError> {
    Ok(image::open_image(path, &image_options(opts))?)
}

/// The image reader's options for `opts`. The format is passed on only when the user
/// gave it: left unset when probed, it confines the backing chain (see
/// [`image::open_image`]).
fn image_options(opts: &SourceOptions) -> image::OpenOptions {
    image::OpenOptions {
        direct: opts.direct,
        format: match opts.format {
            Some(SourceFormat::Image(f)) => Some(f),
            _ => None,
        },
        qcow2_snapshot: opts.qcow2_snapshot.clone(),
    }
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.into(),
        source,
    }
}

/// The format of a regular file judged by content; anything else is raw.
fn detect_file(path: &Path) -> Result<SourceFormat, SourceError> {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(SourceFormat::Image(ImageFormat::Raw));
    }
    let file = std::fs::File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    detect::detect(&file, len).map_err(io(path))
}

/// One disk of an inspected XVA export.
#[derive(Debug, Serialize)]
pub struct XvaDiskInfo {
    pub label: String,
    pub name: String,
    pub virtual_size: u64,
    pub allocated_bytes: u64,
    pub extents: Vec<(u64, u64)>,
}

/// What `dedisk inspect` shows of a disk argument.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Inspected {
    /// An image and its backing chain: metadata walks only.
    Image(image::Inspection),
    /// An XVA export: a stream, so inspecting it reads it all, checking every block's
    /// checksum.
    Xva {
        format: &'static str,
        path: String,
        disks: Vec<XvaDiskInfo>,
    },
}

/// Inspects the image or export at `path` (format judged by content unless given).
pub fn inspect(path: &Path, opts: &SourceOptions) -> Result<Inspected, SourceError> {
    let format = match opts.format {
        Some(f) => f,
        None => detect_file(path)?,
    };
    let spec = path.to_string_lossy();
    if format == SourceFormat::Xva {
        let file = std::fs::File::open(path).map_err(io(path))?;
        let reader = std::io::BufReader::with_capacity(1 << 20, file);
        let export = xva::open_xva(Box::new(reader), &spec)?;
        let mut disks = Vec::new();
        for mut d in export.disks {
            let extents = super::data_extents(|pos| d.source.next_data(pos))?;
            disks.push(XvaDiskInfo {
                label: d.label,
                name: d.name,
                virtual_size: d.size_bytes,
                allocated_bytes: extents.iter().map(|(s, e)| e - s).sum(),
                extents,
            });
        }
        return Ok(Inspected::Xva {
            format: "xva",
            path: spec.into_owned(),
            disks,
        });
    }
    Ok(Inspected::Image(image::info::inspect(
        path,
        &image_options(opts),
    )?))
}
