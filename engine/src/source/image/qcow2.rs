//! qcow2 (versions 2 and 3), read as qemu's `docs/interop/qcow2.txt` specifies.
//! (Past 800 lines only with its unit tests: the reader is one format, one file.)
//!
//! Supported: any cluster size qemu allows (512 B to 2 MiB), L1/L2 tables, zero clusters,
//! compressed clusters (deflate and zstd), extended L2 entries with subclusters, external
//! data files, backing files of any format dedisk reads, and internal snapshots.
//! Encrypted images are refused: dedisk would need the key, and would then hold the
//! plaintext in a repository the admin may have meant to keep encrypted.

use std::path::Path;
use std::sync::Arc;

use super::bytes::{be16, be32, be64};
use super::{Blame, Chain, Codec, Compressed, HostFile, Image, ImageError, ImageInfo, Layout, Run};
use crate::source::detect::ImageFormat;

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Bits 9..=55 of L1 and standard L2 entries: a host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1 entry bits that must be zero (bits 0-8 and 56-62).
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Standard L2 entry bits that must be zero (bits 1-8 and 56-61).
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_COPIED: u64 = 1 << 63;
const L2_ZERO: u64 = 1;
/// qemu's QCOW_MAX_L1_SIZE: a larger L1 table is refused before it is read.
const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's QCOW_MAX_SNAPSHOTS.
const MAX_SNAPSHOTS: u32 = 65536;
const MAX_SNAPSHOT_EXTRA: u32 = 1024;
/// Cached L2 tables per reader, bounded in bytes (at least one table).
const L2_CACHE_BYTES: usize = 4 << 20;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The parsed header: what a reader needs, in host-independent form.
#[derive(Debug)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub crypt_method: u32,
    pub l1_entries: u32,
    pub l1_offset: u64,
    pub snapshot_count: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub autoclear: u64,
    pub extended_l2: bool,
    pub codec: Codec,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    /// Names of incompatible features from the feature-name table, by bit.
    pub feature_names: Vec<(u8, String)>,
}

/// One internal snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub l1_offset: u64,
    pub l1_entries: u32,
    pub virtual_size: Option<u64>,
}

/// Parses the header and its extensions from the first cluster of an image.
pub fn parse_header(host: &HostFile, blame: &Blame) -> Result<Header, ImageError> {
    let mut h = [0u8; 112];
    let n = host.len_bytes().min(h.len() as u64) as usize;
    if n < 72 {
        return Err(blame.malformed(
            "header",
            0,
            format!("file is only {} bytes", host.len_bytes()),
        ));
    }
    host.read_exact_at(&mut h[..n], 0, || "header".into())?;
    if &h[..4] != MAGIC {
        return Err(blame.malformed("header", 0, "no qcow2 magic"));
    }
    let version = be32(&h, 4);
    if version != 2 && version != 3 {
        return Err(blame.unsupported(format!("qcow2 version {version} (dedisk reads 2 and 3)")));
    }
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(blame.malformed(
            "header cluster_bits",
            20,
            format!("{cluster_bits} is outside 9..=21"),
        ));
    }
    let cluster = 1u64 << cluster_bits;
    let (incompatible, autoclear, header_len) = if version == 3 {
        if n < 104 {
            return Err(blame.malformed("version 3 header", 0, "shorter than 104 bytes"));
        }
        let len = be32(&h, 100);
        if len < 104 || u64::from(len) > cluster || !len.is_multiple_of(8) && len != 104 {
            return Err(blame.malformed(
                "header_length",
                100,
                format!("{len} is not a valid header length"),
            ));
        }
        (be64(&h, 72), be64(&h, 88), len)
    } else {
        (0, 0, 72)
    };
    let codec = if version == 3 && header_len > 104 && n > 104 {
        match h[104] {
            0 => Codec::Deflate,
            1 => Codec::Zstd,
            t => return Err(blame.unsupported(format!("compression type {t}"))),
        }
    } else {
        Codec::Deflate
    };
    let mut header = Header {
        version,
        cluster_bits,
        virtual_size: be64(&h, 24),
        crypt_method: be32(&h, 32),
        l1_entries: be32(&h, 36),
        l1_offset: be64(&h, 40),
        snapshot_count: be32(&h, 60),
        snapshots_offset: be64(&h, 64),
        incompatible,
        autoclear,
        extended_l2: incompatible & INCOMPAT_EXTL2 != 0,
        codec,
        backing_file: None,
        backing_format: None,
        data_file: None,
        feature_names: Vec::new(),
    };
    if header.extended_l2 && cluster_bits < 14 {
        return Err(blame.malformed(
            "header",
            72,
            "extended L2 entries need clusters of at least 16 KiB",
        ));
    }
    read_extensions(host, blame, &mut header, u64::from(header_len), cluster)?;
    let backing_offset = be64(&h, 8);
    let backing_len = be32(&h, 16);
    if backing_offset != 0 {
        if backing_len == 0 || backing_len > 1023 {
            return Err(blame.malformed(
                "backing file name",
                16,
                format!("length {backing_len} is outside 1..=1023"),
            ));
        }
        let mut name = vec![0u8; backing_len as usize];
        host.read_exact_at(&mut name, backing_offset, || "backing file name".into())?;
        let name = String::from_utf8(name)
            .map_err(|_| blame.malformed("backing file name", backing_offset, "not UTF-8"))?;
        header.backing_file = Some(name);
    }
    Ok(header)
}

fn read_extensions(
    host: &HostFile,
    blame: &Blame,
    header: &mut Header,
    start: u64,
    cluster: u64,
) -> Result<(), ImageError> {
    // Extensions live in the first cluster; read what the file has of it.
    let end = cluster.min(host.len_bytes());
    if start >= end {
        return Ok(());
    }
    let mut buf = vec![0u8; (end - start) as usize];
    host.read_exact_at(&mut buf, start, || "header extensions".into())?;
    let mut at = 0usize;
    while at + 8 <= buf.len() {
        let kind = be32(&buf, at);
        let len = be32(&buf, at + 4) as usize;
        let data_at = at + 8;
        let offset = start + at as u64;
        if kind == EXT_END {
            return Ok(());
        }
        if len > buf.len() - data_at {
            return Err(blame.malformed(
                format!("header extension 0x{kind:08x}"),
                offset,
                format!("length {len} runs past the first cluster"),
            ));
        }
        let data = &buf[data_at..data_at + len];
        let text = |what: &str| {
            String::from_utf8(data.to_vec())
                .map_err(|_| blame.malformed(what.to_string(), offset, "not UTF-8"))
        };
        match kind {
            EXT_BACKING_FORMAT => header.backing_format = Some(text("backing format extension")?),
            EXT_DATA_FILE => header.data_file = Some(text("external data file extension")?),
            EXT_CRYPTO => {}
            EXT_FEATURE_NAMES => {
                for entry in data.chunks_exact(48) {
                    if entry[0] == 0 {
                        let name = String::from_utf8_lossy(&entry[2..]);
                        header
                            .feature_names
                            .push((entry[1], name.trim_end_matches('\0').to_string()));
                    }
                }
            }
            _ => {}
        }
        at = data_at + len.div_ceil(8) * 8;
    }
    Ok(())
}

/// Parses the internal snapshot table.
pub fn read_snapshots(
    host: &HostFile,
    blame: &Blame,
    h: &Header,
) -> Result<Vec<Snapshot>, ImageError> {
    if h.snapshot_count > MAX_SNAPSHOTS {
        return Err(blame.malformed(
            "snapshot count",
            60,
            format!("{} exceeds {MAX_SNAPSHOTS}", h.snapshot_count),
        ));
    }
    let mut out = Vec::new();
    let mut at = h.snapshots_offset;
    for i in 0..h.snapshot_count {
        let what = || format!("snapshot table entry {i}");
        let mut e = [0u8; 40];
        host.read_exact_at(&mut e, at, what)?;
        let l1_offset = be64(&e, 0);
        let l1_entries = be32(&e, 8);
        let id_len = u64::from(be16(&e, 12));
        let name_len = u64::from(be16(&e, 14));
        let extra_len = be32(&e, 36);
        if extra_len > MAX_SNAPSHOT_EXTRA {
            return Err(blame.malformed(what(), at, format!("extra data of {extra_len} bytes")));
        }
        let var_len = u64::from(extra_len) + id_len + name_len;
        let var = host.read_table(at + 40, var_len, 3 << 16, what, blame)?;
        let extra = &var[..extra_len as usize];
        let virtual_size = (extra.len() >= 16).then(|| be64(extra, 8));
        let id =
            String::from_utf8_lossy(&var[extra_len as usize..][..id_len as usize]).into_owned();
        let name =
            String::from_utf8_lossy(&var[(u64::from(extra_len) + id_len) as usize..]).into_owned();
        out.push(Snapshot {
            id,
            name,
            l1_offset,
            l1_entries,
            virtual_size,
        });
        at = (at + 40 + var_len).div_ceil(8) * 8;
    }
    Ok(out)
}

/// Opens a qcow2 image (its active layer, or internal snapshot `snapshot`).
pub fn open(
    host: Arc<HostFile>,
    snapshot: Option<&str>,
    chain: &mut Chain,
) -> Result<Image, ImageError> {
    let blame = Blame::new(host.path(), ImageFormat::Qcow2);
    let h = parse_header(&host, &blame)?;
    if h.crypt_method != 0 {
        let kind = if h.crypt_method == 2 {
            "LUKS"
        } else {
            "legacy AES"
        };
        return Err(blame.unsupported(format!(
            "encrypted ({kind}) qcow2 images are not supported; decrypt a copy with `qemu-img convert --object secret,... -O qcow2` or back up the VM from inside"
        )));
    }
    let unknown = h.incompatible & !INCOMPAT_KNOWN;
    if unknown != 0 {
        let names: Vec<_> = h
            .feature_names
            .iter()
            .filter(|(bit, _)| *bit < 64 && unknown & (1 << bit) != 0)
            .map(|(_, n)| n.clone())
            .collect();
        return Err(blame.unsupported(format!(
            "unknown incompatible features 0x{unknown:x} {names:?}; a newer qemu made this image"
        )));
    }
    if h.incompatible & INCOMPAT_CORRUPT != 0 {
        log::warn!(
            "{}: qemu marked this image corrupt; reading it anyway (read-only)",
            host.path().display()
        );
    }
    let snapshots = read_snapshots(&host, &blame, &h)?;
    let (l1_offset, l1_entries, virtual_size) = match snapshot {
        None => (h.l1_offset, h.l1_entries, h.virtual_size),
        Some(want) => {
            let s = snapshots
                .iter()
                .find(|s| s.name == want)
                .or_else(|| snapshots.iter().find(|s| s.id == want))
                .ok_or_else(|| {
                    let have: Vec<_> = snapshots.iter().map(|s| s.name.as_str()).collect();
                    blame.unsupported(format!(
                        "no internal snapshot named {want:?} (it has: {have:?})"
                    ))
                })?;
            (
                s.l1_offset,
                s.l1_entries,
                s.virtual_size.unwrap_or(h.virtual_size),
            )
        }
    };
    let cluster = 1u64 << h.cluster_bits;
    let entry_bytes: u64 = if h.extended_l2 { 16 } else { 8 };
    let l2_bits = h.cluster_bits - entry_bytes.trailing_zeros();
    let span = 1u64 << (h.cluster_bits + l2_bits);
    let need = virtual_size.div_ceil(span);
    if virtual_size > i64::MAX as u64 || u64::from(l1_entries) < need {
        return Err(blame.malformed(
            "L1 table",
            l1_offset,
            format!("{l1_entries} entries cannot map a virtual size of {virtual_size} bytes (needs {need})"),
        ));
    }
    if l1_offset % cluster != 0 {
        return Err(blame.malformed(
            "L1 table offset",
            40,
            format!("{l1_offset} is not cluster-aligned"),
        ));
    }
    let raw = host.read_table(
        l1_offset,
        u64::from(l1_entries) * 8,
        MAX_L1_BYTES,
        || "L1 table".into(),
        &blame,
    )?;
    let l1: Vec<u64> = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();

    let external = h.incompatible & INCOMPAT_DATA_FILE != 0;
    let mut files = vec![host.clone()];
    let mut data_file_name = None;
    if external {
        let name = h.data_file.clone().ok_or_else(|| {
            blame.malformed(
                "header",
                72,
                "external data file bit set but no data file named",
            )
        })?;
        let path = data_file_path(host.path(), &name, &blame)?;
        files.push(Arc::new(HostFile::open(&path, chain.direct)?));
        data_file_name = Some(name);
    }
    let backing = match &h.backing_file {
        None => None,
        Some(name) => {
            let fmt = match h.backing_format.as_deref() {
                None => None,
                Some("raw") => Some(ImageFormat::Raw),
                Some("qcow2") => Some(ImageFormat::Qcow2),
                Some("vpc") => Some(ImageFormat::Vhd),
                Some("vhdx") => Some(ImageFormat::Vhdx),
                Some("vmdk") => Some(ImageFormat::Vmdk),
                Some("vdi") => Some(ImageFormat::Vdi),
                Some(other) => {
                    return Err(blame.unsupported(format!("backing file format {other:?}")));
                }
            };
            Some(chain.open_backing(&blame, name, fmt)?)
        }
    };

    let mut info = ImageInfo::new(host.path(), ImageFormat::Qcow2, virtual_size);
    info.cluster_bytes = Some(cluster);
    info.detail("version", h.version);
    info.detail(
        "compression",
        match h.codec {
            Codec::Zstd => "zstd",
            _ => "zlib",
        },
    );
    info.detail("extended_l2", h.extended_l2);
    if let Some(b) = &h.backing_file {
        info.detail("backing_file", b);
        info.detail(
            "backing_format",
            h.backing_format.as_deref().unwrap_or("(probed)"),
        );
    }
    if let Some(d) = &data_file_name {
        info.detail("data_file", d);
        info.detail("data_file_raw", h.autoclear & AUTOCLEAR_DATA_FILE_RAW != 0);
    }
    if h.incompatible & INCOMPAT_DIRTY != 0 {
        info.detail(
            "dirty",
            "true (not closed cleanly; refcounts may be stale, data is read as mapped)",
        );
    }
    if h.incompatible & INCOMPAT_CORRUPT != 0 {
        info.detail("corrupt", "true (qemu found an inconsistency)");
    }
    for s in &snapshots {
        info.detail("snapshot", format!("id {} name {:?}", s.id, s.name));
    }
    if let Some(s) = snapshot {
        info.detail("reading_snapshot", s);
    }

    let meta = Arc::new(Meta {
        blame,
        cluster_bits: h.cluster_bits,
        l2_bits,
        extended: h.extended_l2,
        l1,
        l1_offset,
        external,
        codec: h.codec,
    });
    let layout = Qcow2Layout {
        meta,
        host: host.clone(),
        cache: Vec::new(),
    };
    Ok(Image::new(info, Box::new(layout), files, backing))
}

/// Resolves an external data file name. It must lie in the image's own directory:
/// following an absolute name from an untrusted image could read any file on the host.
fn data_file_path(
    image: &Path,
    name: &str,
    blame: &Blame,
) -> Result<std::path::PathBuf, ImageError> {
    let dir = image
        .parent()
        .unwrap_or(Path::new("."))
        .canonicalize()
        .map_err(ImageError::io(image))?;
    let path = super::resolve_relative(image, name);
    let real = path.canonicalize().map_err(|e| {
        blame.unsupported(format!(
            "external data file {} cannot be opened: {e}",
            path.display()
        ))
    })?;
    if real.parent() != Some(dir.as_path()) {
        return Err(blame.unsupported(format!(
            "external data file {name:?} is outside the image's directory {}; dedisk only follows data files beside the image",
            dir.display()
        )));
    }
    Ok(real)
}

struct Meta {
    blame: Blame,
    cluster_bits: u32,
    /// log2 of entries per L2 table.
    l2_bits: u32,
    extended: bool,
    l1: Vec<u64>,
    l1_offset: u64,
    external: bool,
    codec: Codec,
}

/// What one subcluster (or whole cluster without extended L2) holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Zero,
    Backing,
    Data(u64),
    Compressed { host: u64, len: u64 },
}

struct Qcow2Layout {
    meta: Arc<Meta>,
    host: Arc<HostFile>,
    /// Recently used L2 tables, most recent last: (host offset, raw big-endian bytes).
    cache: Vec<(u64, Arc<Vec<u8>>)>,
}

impl Qcow2Layout {
    fn l2_table(&mut self, offset: u64, l1_index: usize) -> Result<Arc<Vec<u8>>, ImageError> {
        if let Some(i) = self.cache.iter().position(|(o, _)| *o == offset) {
            let hit = self.cache.remove(i);
            let table = hit.1.clone();
            self.cache.push(hit);
            return Ok(table);
        }
        let m = &self.meta;
        let len = 1u64 << m.cluster_bits;
        let what = || format!("L2 table of L1 entry {l1_index}");
        let table = Arc::new(self.host.read_table(offset, len, len, what, &m.blame)?);
        let max = (L2_CACHE_BYTES / len as usize).max(1);
        if self.cache.len() >= max {
            self.cache.remove(0);
        }
        self.cache.push((offset, table.clone()));
        Ok(table)
    }

    /// Decodes entry `ci` of an L2 table at subcluster `sub`.
    fn unit(&self, table: &[u8], table_at: u64, ci: usize, sub: u32) -> Result<Unit, ImageError> {
        let m = &self.meta;
        let eb = if m.extended { 16 } else { 8 };
        let e = be64(table, ci * eb);
        let at = table_at + (ci * eb) as u64;
        let what = || format!("L2 entry {ci} of the table");
        if e & L2_COMPRESSED != 0 {
            if m.external {
                return Err(m.blame.malformed(
                    what(),
                    at,
                    "compressed cluster in an image with an external data file",
                ));
            }
            let x = 62 - (m.cluster_bits - 8);
            let host = e & ((1u64 << x) - 1);
            let sectors = (e >> x) & ((1u64 << (m.cluster_bits - 8)) - 1);
            let len = (sectors + 1) * 512 - (host & 511);
            return Ok(Unit::Compressed { host, len });
        }
        if e & L2_RESERVED != 0 {
            return Err(m.blame.malformed(
                what(),
                at,
                format!("invalid cluster bits 0x{:x} set", e & L2_RESERVED),
            ));
        }
        let host = e & OFFSET_MASK;
        // Offset 0 means "unallocated", except in an external data file, where the copied
        // bit says it is the data file's first cluster.
        let allocated = host != 0 || (m.external && e & L2_COPIED != 0);
        if allocated && !host.is_multiple_of(1u64 << m.cluster_bits) {
            return Err(m.blame.malformed(
                what(),
                at,
                format!("host offset {host} is not cluster-aligned"),
            ));
        }
        if !m.extended {
            return Ok(if e & L2_ZERO != 0 {
                Unit::Zero
            } else if allocated {
                Unit::Data(host)
            } else {
                Unit::Backing
            });
        }
        let bitmap = be64(table, ci * eb + 8);
        let alloc = (bitmap >> sub) & 1 != 0;
        let zero = (bitmap >> (32 + sub)) & 1 != 0;
        let sub_bytes = 1u64 << (m.cluster_bits - 5);
        match (alloc, zero) {
            (true, true) => Err(m.blame.malformed(
                what(),
                at + 8,
                format!("subcluster {sub} is both allocated and zero"),
            )),
            (true, false) if !allocated => Err(m.blame.malformed(
                what(),
                at + 8,
                format!("subcluster {sub} is allocated in an unallocated cluster"),
            )),
            (true, false) => Ok(Unit::Data(host + u64::from(sub) * sub_bytes)),
            (false, true) => Ok(Unit::Zero),
            (false, false) => Ok(Unit::Backing),
        }
    }
}

impl Layout for Qcow2Layout {
    fn map(&mut self, offset: u64) -> Result<(Run, u64), ImageError> {
        let m = self.meta.clone();
        let cb = m.cluster_bits;
        let span_bits = cb + m.l2_bits;
        let l1_index = offset >> span_bits;
        let span_end = (l1_index + 1) << span_bits;
        let Some(&l1e) = m.l1.get(l1_index as usize) else {
            return Ok((Run::Backing, span_end - offset));
        };
        if l1e & L1_RESERVED != 0 {
            return Err(m.blame.malformed(
                format!("L1 entry {l1_index}"),
                m.l1_offset + l1_index * 8,
                format!("reserved bits 0x{:x} set", l1e & L1_RESERVED),
            ));
        }
        let l2_offset = l1e & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok((Run::Backing, span_end - offset));
        }
        if !l2_offset.is_multiple_of(1u64 << cb) {
            return Err(m.blame.malformed(
                format!("L1 entry {l1_index}"),
                m.l1_offset + l1_index * 8,
                format!("L2 table offset {l2_offset} is not cluster-aligned"),
            ));
        }
        let table = self.l2_table(l2_offset, l1_index as usize)?;
        // Walk subclusters (whole clusters without extended L2) while they continue the
        // first one's run: same kind, and for data, contiguous in the host file.
        let sub_bits = if m.extended { cb - 5 } else { cb };
        let subs_per_cluster = 1u32 << (cb - sub_bits);
        let sub_bytes = 1u64 << sub_bits;
        let in_span = offset & ((1u64 << span_bits) - 1);
        let first = in_span >> sub_bits;
        let total = 1u64 << (span_bits - sub_bits);
        let at = |u: u64| {
            (
                (u / u64::from(subs_per_cluster)) as usize,
                (u % u64::from(subs_per_cluster)) as u32,
            )
        };
        let (ci, sub) = at(first);
        let head = self.unit(&table, l2_offset, ci, sub)?;
        let into = in_span - (first << sub_bits);
        if let Unit::Compressed { host, len } = head {
            let unit_start = offset - (in_span & ((1u64 << cb) - 1));
            let run = Run::Compressed(Compressed {
                file: 0,
                host,
                len,
                codec: m.codec,
                unit_start,
                unit_len: 1u64 << cb,
            });
            return Ok((run, unit_start + (1u64 << cb) - offset));
        }
        // Bounded so a read of a few MiB does not decode a whole table each time.
        let max_units = (super::MAX_EXTENT_BYTES >> sub_bits).max(1);
        let mut n = 1u64;
        while first + n < total && n < max_units {
            let (ci, sub) = at(first + n);
            let next = self.unit(&table, l2_offset, ci, sub)?;
            let continues = match (head, next) {
                (Unit::Data(a), Unit::Data(b)) => b == a + n * sub_bytes,
                (a, b) => a == b && !matches!(a, Unit::Compressed { .. }),
            };
            if !continues {
                break;
            }
            n += 1;
        }
        let len = n * sub_bytes - into;
        let file = usize::from(m.external);
        let run = match head {
            Unit::Zero => Run::Zero,
            Unit::Backing => Run::Backing,
            Unit::Data(h) => Run::Data {
                file,
                host: h + into,
            },
            Unit::Compressed { .. } => unreachable!("returned above"),
        };
        Ok((run, len))
    }

    fn clone_layout(&self) -> Box<dyn Layout> {
        Box::new(Qcow2Layout {
            meta: self.meta.clone(),
            host: self.host.clone(),
            cache: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: usize = 1 << 16;

    /// A version-2 qcow2 of 1 MiB in 64 KiB clusters, made by hand from the spec: header,
    /// L1 (cluster 1), refcount table and block (clusters 2, 3), one L2 table (cluster 4)
    /// mapping guest cluster 0 to the data in cluster 5. `edit` changes the bytes first.
    fn image(dir: &Path, edit: impl FnOnce(&mut Vec<u8>)) -> (std::path::PathBuf, Vec<u8>) {
        let mut b = vec![0u8; 6 * CLUSTER];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&2u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        b[36..40].copy_from_slice(&1u32.to_be_bytes()); // l1_size
        b[40..48].copy_from_slice(&(CLUSTER as u64).to_be_bytes());
        b[48..56].copy_from_slice(&(2 * CLUSTER as u64).to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        let put =
            |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        put(&mut b, CLUSTER, (4 * CLUSTER) as u64 | L2_COPIED);
        put(&mut b, 2 * CLUSTER, (3 * CLUSTER) as u64);
        for c in 0..6 {
            b[3 * CLUSTER + 2 * c..3 * CLUSTER + 2 * c + 2].copy_from_slice(&1u16.to_be_bytes());
        }
        put(&mut b, 4 * CLUSTER, (5 * CLUSTER) as u64 | L2_COPIED);
        let data: Vec<u8> = (0..CLUSTER).map(|i| (i % 253) as u8).collect();
        b[5 * CLUSTER..].copy_from_slice(&data);
        edit(&mut b);
        let path = dir.join("t.qcow2");
        std::fs::write(&path, &b).unwrap();
        (path, data)
    }

    fn open(path: &Path) -> Result<Image, ImageError> {
        crate::source::image::open_as(path, ImageFormat::Qcow2)
    }

    fn err(path: &Path) -> String {
        open(path).err().expect("refused").to_string()
    }

    #[test]
    fn a_hand_made_image_reads_its_one_cluster_and_qemu_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let (path, data) = image(dir.path(), |_| {});
        let mut img = open(&path).unwrap();
        assert_eq!(img.virtual_size(), 1 << 20);
        assert_eq!(img.next_data(0).unwrap(), Some((0, CLUSTER as u64)));
        assert_eq!(img.next_data(CLUSTER as u64).unwrap(), None);
        let mut buf = vec![0u8; CLUSTER];
        assert_eq!(img.read_at(0, &mut buf).unwrap(), CLUSTER);
        assert_eq!(buf, data);
        buf.fill(1);
        img.read_at(CLUSTER as u64 * 3, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "unallocated reads as zeros");
        let mut want = data.clone();
        want.resize(1 << 20, 0);
        crate::source::image::assert_qemu_agrees(&path, "qcow2", &want);
    }

    #[test]
    fn malformed_headers_and_tables_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = image(dir.path(), |b| b[0] = b'X');
        assert!(err(&p).contains("no qcow2 magic"), "{}", err(&p));
        let (p, _) = image(dir.path(), |b| b[4..8].copy_from_slice(&4u32.to_be_bytes()));
        assert!(err(&p).contains("qcow2 version 4"), "{}", err(&p));
        let (p, _) = image(dir.path(), |b| {
            b[20..24].copy_from_slice(&30u32.to_be_bytes())
        });
        assert!(err(&p).contains("cluster_bits"), "{}", err(&p));
        let (p, _) = image(dir.path(), |b| {
            b[32..36].copy_from_slice(&2u32.to_be_bytes())
        });
        assert!(err(&p).contains("encrypted (LUKS)"), "{}", err(&p));
        // A virtual size the L1 table cannot map.
        let (p, _) = image(dir.path(), |b| {
            b[24..32].copy_from_slice(&(1u64 << 40).to_be_bytes())
        });
        assert!(err(&p).contains("cannot map a virtual size"), "{}", err(&p));
        // An L1 table beyond the end of the file.
        let (p, _) = image(dir.path(), |b| {
            b[40..48].copy_from_slice(&(64 * CLUSTER as u64).to_be_bytes())
        });
        assert!(err(&p).contains("past the end of the file"), "{}", err(&p));
        let (p, _) = image(dir.path(), |b| b.truncate(50));
        assert!(err(&p).contains("file is only 50 bytes"), "{}", err(&p));
    }

    #[test]
    fn a_table_entry_pointing_outside_the_file_fails_the_read_not_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = image(dir.path(), |b| {
            let at = 4 * CLUSTER;
            b[at..at + 8].copy_from_slice(&((1000 * CLUSTER) as u64 | L2_COPIED).to_be_bytes());
        });
        let mut img = open(&p).unwrap();
        let mut buf = vec![0u8; CLUSTER];
        let e = match img.next_data(0).and_then(|_| img.read_at(0, &mut buf)) {
            Err(e) => e.to_string(),
            Ok(n) => panic!("read {n} bytes from outside the file"),
        };
        assert!(e.contains("t.qcow2"), "{e}");
        // Reserved bits set in an L1 entry.
        let (p, _) = image(dir.path(), |b| b[CLUSTER + 7] |= 1);
        let mut img = open(&p).unwrap();
        assert!(img.next_data(0).is_err());
    }

    #[test]
    fn header_fields_parse_as_the_spec_places_them() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = image(dir.path(), |_| {});
        let host = HostFile::open(&p, false).unwrap();
        let h = parse_header(&host, &Blame::new(&p, ImageFormat::Qcow2)).unwrap();
        assert_eq!((h.version, h.cluster_bits), (2, 16));
        assert_eq!(
            (h.virtual_size, h.l1_entries, h.l1_offset),
            (1 << 20, 1, CLUSTER as u64)
        );
        assert_eq!((h.snapshot_count, h.crypt_method), (0, 0));
        assert!(h.backing_file.is_none() && !h.extended_l2);
    }
}
