//! XenServer / XCP-ng `.xva` exports (`xe vm-export`), read as one pass over a tar
//! stream, so they back up straight from a pipe:
//! `xe vm-export vm=X filename= | dedisk backup --name X -`.
//!
//! The tar holds `ova.xml` (the VM's metadata, XML-RPC style) first, then for each VDI
//! a directory `Ref:N/` of numbered 1 MiB blocks `00000000`, `00000001`, ... each
//! followed by `NNNNNNNN.checksum` (SHA-1, hex) or `NNNNNNNN.xxhash` (XXH64, hex).
//! All-zero blocks are left out: they are holes. Each VDI becomes one disk of the
//! snapshot, in the order `ova.xml` lists them (which is the order xapi writes them);
//! `ova.xml` is kept as metadata. Every block's checksum is verified as it is read.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::source::{DiskSource, SourceError};

const BLOCK_BYTES: u64 = 1 << 20;
const MAX_OVA_XML_BYTES: u64 = 64 << 20;
/// A VDI larger than this (the largest XenServer allows is 2 TiB; 16 TiB for GFS2) is
/// a corrupt ova.xml.
const MAX_VDI_BYTES: u64 = 64 << 40;

/// One VDI of an export.
pub struct XvaDisk {
    /// `xvda`, `xvdb`... from the VBD's device number, else `vdi0`, `vdi1`...
    pub label: String,
    /// The VDI's name in XenServer.
    pub name: String,
    pub size_bytes: u64,
    pub source: Box<dyn DiskSource>,
}

/// An opened export: its disks (read in this order) and its `ova.xml`.
pub struct XvaExport {
    pub disks: Vec<XvaDisk>,
    pub ova_xml: Vec<u8>,
}

fn bad(name: &str, problem: impl Into<String>) -> SourceError {
    SourceError::Io {
        path: PathBuf::from(name),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("malformed XVA export: {}", problem.into()),
        ),
    }
}

/// A tar member header: name, size, and kind.
struct Member {
    name: String,
    size: u64,
    regular: bool,
}

/// The shared tar stream all disks of one export read from, in turn.
struct Tar {
    name: String,
    reader: Box<dyn Read + Send>,
    /// Bytes consumed, for messages.
    at: u64,
    /// A header read ahead (to see whether the next block belongs to the current disk).
    peeked: Option<Option<Member>>,
    /// A GNU long name waiting for its member.
    long_name: Option<String>,
}

impl Tar {
    /// Reads a whole record: `false` at a clean end of input, an error inside one.
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<bool, SourceError> {
        let done =
            crate::source::read_full(&mut self.reader, buf).map_err(|source| SourceError::Io {
                path: PathBuf::from(&self.name),
                source,
            })?;
        if done == 0 && !buf.is_empty() {
            return Ok(false);
        }
        if done < buf.len() {
            return Err(bad(
                &self.name,
                format!(
                    "the stream ends inside a tar record at byte {}",
                    self.at + done as u64
                ),
            ));
        }
        self.at += done as u64;
        Ok(true)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), SourceError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            if !self.read_exact(&mut buf[..k])? {
                return Err(bad(&self.name, "the stream ends inside a member"));
            }
            n -= k as u64;
        }
        Ok(())
    }

    /// Reads a member's data (`size` bytes, at most `max`) and its padding.
    fn data(&mut self, size: u64, max: u64, buf: &mut Vec<u8>) -> Result<(), SourceError> {
        if size > max {
            return Err(bad(
                &self.name,
                format!(
                    "member of {size} bytes at byte {} (at most {max} expected)",
                    self.at
                ),
            ));
        }
        buf.resize(size as usize, 0);
        if size > 0 && !self.read_exact(buf)? {
            return Err(bad(&self.name, "the stream ends inside a member"));
        }
        self.skip(size.next_multiple_of(512) - size)
    }

    fn peek(&mut self) -> Result<Option<&Member>, SourceError> {
        if self.peeked.is_none() {
            let m = self.next_header()?;
            self.peeked = Some(m);
        }
        Ok(self.peeked.as_ref().expect("set above").as_ref())
    }

    fn take(&mut self) -> Result<Option<Member>, SourceError> {
        match self.peeked.take() {
            Some(m) => Ok(m),
            None => self.next_header(),
        }
    }

    fn next_header(&mut self) -> Result<Option<Member>, SourceError> {
        loop {
            let mut h = [0u8; 512];
            let at = self.at;
            if !self.read_exact(&mut h)? || h.iter().all(|&b| b == 0) {
                return Ok(None); // end of archive
            }
            let stored = parse_octal(&h[148..156]);
            let sum: u64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            if stored != Some(sum) {
                return Err(bad(
                    &self.name,
                    format!("tar header checksum mismatch at byte {at}"),
                ));
            }
            let size = if h[124] & 0x80 != 0 {
                h[125..136].iter().fold(0u64, |v, &b| {
                    v.saturating_mul(256).saturating_add(u64::from(b))
                })
            } else {
                parse_octal(&h[124..136])
                    .ok_or_else(|| bad(&self.name, format!("tar size field at byte {at}")))?
            };
            let cstr = |b: &[u8]| {
                String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())])
                    .into_owned()
            };
            let mut name = cstr(&h[..100]);
            if &h[257..262] == b"ustar" && h[345] != 0 {
                name = format!("{}/{name}", cstr(&h[345..500]));
            }
            match h[156] {
                b'L' => {
                    let mut buf = Vec::new();
                    self.data(size, 4096, &mut buf)?;
                    self.long_name = Some(cstr(&buf));
                    continue;
                }
                b'x' | b'g' => {
                    self.skip(size.next_multiple_of(512))?;
                    continue;
                }
                _ => {}
            }
            if let Some(long) = self.long_name.take() {
                name = long;
            }
            return Ok(Some(Member {
                name,
                size,
                regular: h[156] == b'0' || h[156] == 0,
            }));
        }
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// `Ref:12/00000042` -> ("Ref:12", 42, suffix "" | "checksum" | "xxhash").
fn block_name(name: &str) -> Option<(&str, u64, &str)> {
    let (dir, file) = name.rsplit_once('/')?;
    let (num, suffix) = file.split_once('.').unwrap_or((file, ""));
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((dir, num.parse().ok()?, suffix))
}

/// A `<struct>`'s members as name -> `<value>` node.
fn members<'a, 'i>(node: roxmltree::Node<'a, 'i>) -> BTreeMap<String, roxmltree::Node<'a, 'i>> {
    node.children()
        .filter(|m| m.has_tag_name("member"))
        .filter_map(|m| {
            let n = m
                .children()
                .find(|c| c.has_tag_name("name"))?
                .text()?
                .to_string();
            let v = m.children().find(|c| c.has_tag_name("value"))?;
            Some((n, v))
        })
        .collect()
}

/// The text of a `<value>`, bare or wrapped in a type element.
fn text_of(v: roxmltree::Node<'_, '_>) -> String {
    v.descendants()
        .filter(|d| d.is_text())
        .map(|d| d.text().unwrap_or(""))
        .collect::<String>()
        .trim()
        .to_string()
}

/// A VDI as `ova.xml` describes it.
struct VdiEntry {
    /// `Ref:N`, the directory of its blocks.
    id: String,
    name: String,
    size: u64,
    /// The VBD's userdevice (0 = xvda), when a VBD attaches it.
    device: Option<u32>,
}

/// The VDIs `ova.xml` describes, in document order.
fn parse_ova(name: &str, xml: &[u8]) -> Result<Vec<VdiEntry>, SourceError> {
    let text = std::str::from_utf8(xml).map_err(|_| bad(name, "ova.xml is not UTF-8"))?;
    let doc = roxmltree::Document::parse(text).map_err(|e| bad(name, format!("ova.xml: {e}")))?;
    let mut vdis = Vec::new();
    let mut devices: BTreeMap<String, u32> = BTreeMap::new();
    for s in doc.descendants().filter(|n| n.has_tag_name("struct")) {
        let m = members(s);
        let (Some(class), Some(id), Some(snap)) = (m.get("class"), m.get("id"), m.get("snapshot"))
        else {
            continue;
        };
        let Some(inner) = snap.children().find(|c| c.has_tag_name("struct")) else {
            continue;
        };
        let fields = members(inner);
        match text_of(*class).as_str() {
            "VDI" => {
                let size = fields
                    .get("virtual_size")
                    .map(|v| text_of(*v))
                    .unwrap_or_default();
                let size: u64 = size.parse().map_err(|_| {
                    bad(name, format!("VDI {}: virtual_size {size:?}", text_of(*id)))
                })?;
                if size > MAX_VDI_BYTES {
                    return Err(bad(
                        name,
                        format!(
                            "VDI {}: virtual_size {size} is implausibly large",
                            text_of(*id)
                        ),
                    ));
                }
                let label = fields
                    .get("name_label")
                    .map(|v| text_of(*v))
                    .unwrap_or_default();
                vdis.push((text_of(*id), label, size));
            }
            "VBD" => {
                if let (Some(vdi), Some(dev)) = (fields.get("VDI"), fields.get("userdevice")) {
                    if let Ok(d) = text_of(*dev).parse() {
                        devices.insert(text_of(*vdi), d);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(vdis
        .into_iter()
        .map(|(id, name, size)| VdiEntry {
            device: devices.get(&id).copied(),
            id,
            name,
            size,
        })
        .collect())
}

/// Opens an export from `reader` (a file or stdin), reading up to the end of `ova.xml`.
pub fn open_xva(reader: Box<dyn Read + Send>, name: &str) -> Result<XvaExport, SourceError> {
    let mut tar = Tar {
        name: name.into(),
        reader,
        at: 0,
        peeked: None,
        long_name: None,
    };
    let first = tar.take()?.ok_or_else(|| bad(name, "empty archive"))?;
    if first.name != "ova.xml" {
        return Err(bad(
            name,
            format!("the first member is {:?}, not ova.xml", first.name),
        ));
    }
    let mut xml = Vec::new();
    tar.data(first.size, MAX_OVA_XML_BYTES, &mut xml)?;
    let vdis = parse_ova(name, &xml)?;
    if vdis.is_empty() {
        return Err(bad(name, "ova.xml lists no VDI"));
    }
    let shared = Arc::new(Mutex::new(Shared {
        tar,
        done: Vec::new(),
    }));
    let disks = vdis
        .into_iter()
        .enumerate()
        .map(
            |(
                i,
                VdiEntry {
                    id,
                    name: vdi_name,
                    size,
                    device,
                },
            )| {
                let label = match device {
                    Some(d) if d < 26 => format!("xvd{}", (b'a' + d as u8) as char),
                    _ => format!("vdi{i}"),
                };
                let source = XvaSource {
                    shared: shared.clone(),
                    name: format!("{name} ({id}, {vdi_name:?})"),
                    vdi: id,
                    size,
                    block: Vec::new(),
                    block_index: None,
                };
                XvaDisk {
                    label,
                    name: vdi_name,
                    size_bytes: size,
                    source: Box::new(source),
                }
            },
        )
        .collect();
    Ok(XvaExport {
        disks,
        ova_xml: xml,
    })
}

struct Shared {
    tar: Tar,
    /// VDIs whose blocks have been passed: a later block of one is out of order.
    done: Vec<String>,
}

/// One VDI of the stream. Its blocks are read when the stream reaches them.
struct XvaSource {
    shared: Arc<Mutex<Shared>>,
    name: String,
    vdi: String,
    size: u64,
    /// The current block's verified bytes (a full 1 MiB, zero-padded).
    block: Vec<u8>,
    block_index: Option<u64>,
}

impl XvaSource {
    /// Reads and verifies the next block of this VDI in the stream, if the next member
    /// is one; skips other members that are not blocks.
    fn next_block(&mut self) -> Result<Option<u64>, SourceError> {
        let mut guard = self.shared.lock().expect("no panics while held");
        let sh = &mut *guard;
        loop {
            let Some(m) = sh.tar.peek()? else {
                return Ok(None);
            };
            let Some((dir, n, suffix)) = block_name(&m.name) else {
                // Not a block (a directory entry, or something newer xapi adds).
                let m = sh.tar.take()?.expect("peeked");
                sh.tar.skip(m.size.next_multiple_of(512))?;
                continue;
            };
            if dir != self.vdi {
                if sh.done.iter().any(|d| d == dir) || !suffix.is_empty() {
                    return Err(bad(
                        &self.name,
                        format!(
                            "block {n} of {dir} comes after that VDI ended; blocks out of order"
                        ),
                    ));
                }
                sh.done.push(self.vdi.clone());
                return Ok(None);
            }
            if !suffix.is_empty() || !m.regular {
                return Err(bad(&self.name, format!("unexpected member {:?}", m.name)));
            }
            let m = sh.tar.take()?.expect("peeked");
            if n.checked_mul(BLOCK_BYTES).is_none_or(|o| o >= self.size) {
                return Err(bad(
                    &self.name,
                    format!(
                        "block {n} lies beyond the VDI's size of {} bytes",
                        self.size
                    ),
                ));
            }
            if self.block_index.is_some_and(|b| n <= b) {
                return Err(bad(&self.name, format!("block {n} out of order")));
            }
            sh.tar.data(m.size, BLOCK_BYTES, &mut self.block)?;
            // The checksum member, if any, follows its block.
            if let Some(c) = sh.tar.peek()? {
                if let Some((d, cn, kind @ ("checksum" | "xxhash"))) = block_name(&c.name) {
                    if d == self.vdi && cn == n {
                        let kind = kind.to_string();
                        let c = sh.tar.take()?.expect("peeked");
                        let mut sum = Vec::new();
                        sh.tar.data(c.size, 128, &mut sum)?;
                        verify(&self.name, n, &kind, &self.block, &sum)?;
                    }
                }
            }
            self.block.resize(BLOCK_BYTES as usize, 0);
            self.block_index = Some(n);
            return Ok(Some(n));
        }
    }
}

fn verify(name: &str, n: u64, kind: &str, data: &[u8], expected: &[u8]) -> Result<(), SourceError> {
    let want = String::from_utf8_lossy(expected)
        .trim()
        .to_ascii_lowercase();
    let got = if kind == "checksum" {
        use sha1::Digest;
        hex::encode(sha1::Sha1::digest(data))
    } else {
        format!("{:016x}", xxhash_rust::xxh64::xxh64(data, 0))
    };
    if got != want {
        return Err(bad(
            name,
            format!(
                "block {n}: {kind} {want} does not match the data ({got}); the export is corrupt"
            ),
        ));
    }
    Ok(())
}

impl DiskSource for XvaSource {
    fn random_access(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn size_bytes(&self) -> Option<u64> {
        Some(self.size)
    }

    fn next_data(&mut self, offset: u64) -> Result<Option<(u64, u64)>, SourceError> {
        if let Some(b) = self.block_index {
            let end = ((b + 1) * BLOCK_BYTES).min(self.size);
            if offset < end && offset >= b * BLOCK_BYTES {
                return Ok(Some((offset, end)));
            }
        }
        match self.next_block()? {
            Some(b) if (b + 1) * BLOCK_BYTES > offset => {
                let start = (b * BLOCK_BYTES).max(offset);
                Ok(Some((start, ((b + 1) * BLOCK_BYTES).min(self.size))))
            }
            Some(b) => Err(bad(
                &self.name,
                format!("block {b} arrived after the disk was read past it"),
            )),
            None => Ok(None),
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        let Some(b) = self
            .block_index
            .filter(|b| offset >= b * BLOCK_BYTES && offset < (b + 1) * BLOCK_BYTES)
        else {
            return Err(bad(
                &self.name,
                format!("read at {offset} outside the current block"),
            ));
        };
        let at = (offset - b * BLOCK_BYTES) as usize;
        let end = ((b + 1) * BLOCK_BYTES).min(self.size);
        let n = buf.len().min((end - offset) as usize);
        buf[..n].copy_from_slice(&self.block[at..at + n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar member header for `name` of `size` bytes, checksum filled in.
    fn tar_header(name: &str, size: usize) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn tar(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            out.extend_from_slice(&tar_header(name, data.len()));
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn ova(size: u64) -> Vec<u8> {
        format!(
            "<value><struct><member><name>objects</name><value><array><data>\
             <value><struct><member><name>class</name><value>VDI</value></member>\
             <member><name>id</name><value>Ref:5</value></member>\
             <member><name>snapshot</name><value><struct>\
             <member><name>name_label</name><value>root</value></member>\
             <member><name>virtual_size</name><value><string>{size}</string></value></member>\
             </struct></value></member></struct></value>\
             <value><struct><member><name>class</name><value>VBD</value></member>\
             <member><name>id</name><value>Ref:3</value></member>\
             <member><name>snapshot</name><value><struct>\
             <member><name>VDI</name><value>Ref:5</value></member>\
             <member><name>userdevice</name><value>1</value></member>\
             </struct></value></member></struct></value>\
             </data></array></value></member></struct></value>"
        )
        .into_bytes()
    }

    fn sha1_hex(data: &[u8]) -> Vec<u8> {
        use sha1::Digest;
        hex::encode(sha1::Sha1::digest(data)).into_bytes()
    }

    /// Reads a disk the way the backup pipeline does: where `next_data` says, in order.
    fn read_all(src: &mut dyn DiskSource, size: usize) -> Result<Vec<u8>, SourceError> {
        let mut got = vec![0u8; size];
        let mut pos = 0;
        while let Some((s, e)) = src.next_data(pos)? {
            let e = e.min(size as u64);
            let mut at = s;
            while at < e {
                let n = src.read_at(at, &mut got[at as usize..e as usize])?;
                assert!(n > 0);
                at += n as u64;
            }
            pos = e;
        }
        Ok(got)
    }

    #[test]
    fn names_and_numbers_of_members() {
        assert_eq!(parse_octal(b"00000001750\0"), Some(0o1750));
        assert_eq!(parse_octal(b"\0\0\0"), Some(0));
        assert_eq!(parse_octal(b"12x"), None);
        assert_eq!(block_name("Ref:12/00000042"), Some(("Ref:12", 42, "")));
        assert_eq!(
            block_name("Ref:12/00000042.checksum"),
            Some(("Ref:12", 42, "checksum"))
        );
        assert_eq!(block_name("Ref:12/ova.xml"), None);
        assert_eq!(block_name("00000001"), None);
    }

    #[test]
    fn ova_xml_gives_vdis_with_their_devices() {
        let v = parse_ova("t", &ova(3 << 20)).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].id.as_str(), v[0].name.as_str()), ("Ref:5", "root"));
        assert_eq!((v[0].size, v[0].device), (3 << 20, Some(1)));
        let err = parse_ova("t", &ova(u64::MAX)).err().unwrap().to_string();
        assert!(err.contains("implausibly large"), "{err}");
        let err = parse_ova("t", b"<value><struct>")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("ova.xml"), "{err}");
    }

    #[test]
    fn an_export_reads_back_its_blocks_and_zeros() {
        let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let bytes = tar(&[
            ("ova.xml", ova(3 << 20)),
            ("Ref:5/00000001", block.clone()),
            ("Ref:5/00000001.checksum", sha1_hex(&block)),
        ]);
        let export = open_xva(Box::new(std::io::Cursor::new(bytes)), "t.xva").unwrap();
        assert!(export.ova_xml.starts_with(b"<value>"));
        let mut disks = export.disks;
        assert_eq!(disks.len(), 1);
        assert_eq!(
            (disks[0].label.as_str(), disks[0].size_bytes),
            ("xvdb", 3 << 20)
        );
        let got = read_all(disks[0].source.as_mut(), 3 << 20).unwrap();
        assert!(got[..1 << 20].iter().all(|&b| b == 0));
        assert_eq!(&got[1 << 20..2 << 20], block.as_slice());
        assert!(got[2 << 20..].iter().all(|&b| b == 0));
    }

    #[test]
    fn damage_is_an_error_naming_the_block() {
        let block = vec![7u8; 1 << 20];
        let bytes = tar(&[
            ("ova.xml", ova(1 << 20)),
            ("Ref:5/00000000", block),
            ("Ref:5/00000000.checksum", sha1_hex(b"something else")),
        ]);
        let mut export = open_xva(Box::new(std::io::Cursor::new(bytes.clone())), "t.xva").unwrap();
        let err = read_all(export.disks[0].source.as_mut(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("block 0"), "{err}");
        // A tar header whose checksum does not add up.
        let mut broken = bytes;
        broken[0] ^= 1;
        let err = open_xva(Box::new(std::io::Cursor::new(broken)), "t.xva")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("checksum"), "{err}");
        // An archive that does not start with ova.xml.
        let err = open_xva(
            Box::new(std::io::Cursor::new(tar(&[("other", vec![1])]))),
            "t.xva",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("t.xva"), "{err}");
    }
}
