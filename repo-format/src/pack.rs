//! Pack files: many blobs appended into one immutable file with its own table of
//! contents (TOC), so the index can always be rebuilt from the packs alone.
//!
//! Layout (all integers little-endian; FORMAT.md, "Pack files", is the normative text):
//!
//! ```text
//! PackHeader  16 bytes   "DDSKPACK" | version u8 = 1 | 7 reserved zero bytes
//! Blob*                  BlobHeader (48 bytes) followed by stored_len payload bytes
//! TOC                    entry_count × TocEntry (56 bytes)
//! Footer      56 bytes   toc_offset u64 | entry_count u32 | reserved u32 |
//!                        BLAKE3(TOC) [32] | "DDSKEND1"
//! ```
//!
//! Version 2 (encrypted repositories) has no clear blob headers and a sealed TOC:
//!
//! ```text
//! PackHeader  16 bytes   "DDSKPACK" | version u8 = 2 | 7 reserved zero bytes
//! Blob*                  sealed payload (stored_len bytes), nothing in between
//! TOC                    sealed: entry_count u32 | reserved u32 | TocEntry* | padding
//! Footer      24 bytes   toc_offset u64 | sealed_toc_len u32 | reserved u32 | "DDSKEND2"
//! ```

use crate::backend::ReadAt;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::blob::{BlobCodec, BlobKind, Compression, EncodedBlob, MAX_BLOB_BYTES};
use crate::crypto::{RepoKeys, SealedKind};
use crate::error::{Error, IoContext, Result};
use crate::ids::{BlobId, PackId};

pub const PACK_MAGIC: &[u8; 8] = b"DDSKPACK";
pub const PACK_END_MAGIC: &[u8; 8] = b"DDSKEND1";
pub const PACK_END_MAGIC_SEALED: &[u8; 8] = b"DDSKEND2";
pub const PACK_VERSION: u8 = 1;
/// The pack version of encrypted repositories.
pub const PACK_VERSION_SEALED: u8 = 2;
pub const PACK_HEADER_LEN: u64 = 16;
pub const BLOB_HEADER_LEN: u64 = 48;
pub const TOC_ENTRY_LEN: u64 = 56;
pub const FOOTER_LEN: u64 = 56;
pub const FOOTER_LEN_SEALED: u64 = 24;

/// Bytes a pack spends on a blob beyond its payload: the clear header of version 1,
/// nothing in version 2.
pub fn blob_overhead(codec: &BlobCodec) -> u64 {
    if codec.is_sealed() {
        0
    } else {
        BLOB_HEADER_LEN
    }
}
/// A pack may hold at most this many blobs; bounds the TOC a reader allocates.
pub const MAX_PACK_ENTRIES: u32 = 1 << 20;

/// One TOC entry: where a blob sits in its pack and how to decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TocEntry {
    pub id: BlobId,
    pub kind: BlobKind,
    pub compression: Compression,
    pub stored_len: u32,
    pub raw_len: u32,
    /// Offset of the blob's header in the pack; the payload follows the header.
    pub offset: u64,
}

impl TocEntry {
    /// Offset of the payload: after the 48-byte blob header in version 1; `offset`
    /// itself in version 2, which has no blob headers.
    pub fn payload_offset(&self, codec: &BlobCodec) -> u64 {
        self.offset + blob_overhead(codec)
    }

    /// The entry as the TOC stores it (FORMAT.md, "Pack files").
    pub fn encode(&self) -> [u8; TOC_ENTRY_LEN as usize] {
        let mut b = [0u8; TOC_ENTRY_LEN as usize];
        b[..32].copy_from_slice(&self.id.0);
        b[32] = self.kind as u8;
        b[33] = self.compression as u8;
        // 34..36 reserved
        b[36..40].copy_from_slice(&self.stored_len.to_le_bytes());
        b[40..44].copy_from_slice(&self.raw_len.to_le_bytes());
        b[44..52].copy_from_slice(&self.offset.to_le_bytes());
        // 52..56 reserved
        b
    }

    fn decode(b: &[u8], pack: &str, at: u64) -> Result<Self> {
        let bad = |reason: String| Error::CorruptPack {
            pack: pack.to_string(),
            offset: at,
            reason,
        };
        if b.len() != TOC_ENTRY_LEN as usize {
            return Err(bad("short TOC entry".into()));
        }
        let kind =
            BlobKind::from_u8(b[32]).ok_or_else(|| bad(format!("unknown blob kind {}", b[32])))?;
        let compression = Compression::from_u8(b[33])
            .ok_or_else(|| bad(format!("unknown compression {}", b[33])))?;
        Ok(TocEntry {
            id: BlobId::from_slice(&b[..32]).expect("slice is 32 bytes"),
            kind,
            compression,
            stored_len: u32::from_le_bytes(b[36..40].try_into().expect("4 bytes")),
            raw_len: u32::from_le_bytes(b[40..44].try_into().expect("4 bytes")),
            offset: u64::from_le_bytes(b[44..52].try_into().expect("8 bytes")),
        })
    }
}

/// The 48-byte header in front of every blob payload. It repeats the TOC's facts so a
/// pack whose tail (TOC) is lost can still be scanned blob by blob.
fn encode_blob_header(blob: &EncodedBlob) -> [u8; BLOB_HEADER_LEN as usize] {
    let mut h = [0u8; BLOB_HEADER_LEN as usize];
    h[..32].copy_from_slice(&blob.id.0);
    h[32] = blob.kind as u8;
    h[33] = blob.compression as u8;
    h[36..40].copy_from_slice(&(blob.payload.len() as u32).to_le_bytes());
    h[40..44].copy_from_slice(&blob.raw_len.to_le_bytes());
    let check = blake3::hash(&h[..44]);
    h[44..48].copy_from_slice(&check.as_bytes()[..4]);
    h
}

/// Appends blobs to a new pack file under a temporary name; `finish` makes it durable
/// and gives it its final, content-addressed name.
pub struct PackWriter {
    tmp_path: PathBuf,
    keys: Option<std::sync::Arc<RepoKeys>>,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    len_bytes: u64,
    toc: Vec<TocEntry>,
}

/// A pack made durable by [`PackWriter::finish`].
#[derive(Debug)]
pub struct FinishedPack {
    pub id: PackId,
    pub len_bytes: u64,
    pub entries: Vec<TocEntry>,
}

impl PackWriter {
    /// Starts a pack at a fresh temporary path inside `tmp_dir`, of the version `codec`
    /// writes (1 plain, 2 sealed).
    pub fn create(tmp_dir: &Path, codec: &BlobCodec) -> Result<Self> {
        let name = hex::encode(&crate::ids::random_bytes()?[..12]);
        let tmp_path = tmp_dir.join(format!("{}pack-{name}.tmp", crate::lock::writer_tag()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::durable::PRIVATE_FILE_MODE)
            .open(&tmp_path)
            .at(&tmp_path)?;
        let mut w = PackWriter {
            tmp_path,
            keys: codec.keys().cloned(),
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            len_bytes: 0,
            toc: Vec::new(),
        };
        let mut header = [0u8; PACK_HEADER_LEN as usize];
        header[..8].copy_from_slice(PACK_MAGIC);
        header[8] = if w.keys.is_some() {
            PACK_VERSION_SEALED
        } else {
            PACK_VERSION
        };
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).at(&self.tmp_path)?;
        self.hasher.update(bytes);
        self.len_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Appends one blob and returns its TOC entry.
    pub fn add(&mut self, blob: &EncodedBlob) -> Result<TocEntry> {
        let entry = TocEntry {
            id: blob.id,
            kind: blob.kind,
            compression: blob.compression,
            stored_len: blob.payload.len() as u32,
            raw_len: blob.raw_len,
            offset: self.len_bytes,
        };
        if self.keys.is_none() {
            self.write(&encode_blob_header(blob))?;
        }
        self.write(&blob.payload)?;
        self.toc.push(entry);
        Ok(entry)
    }

    /// Bytes written so far (header and blobs).
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Writes the TOC and footer, fsyncs, and puts the pack into `backend` under its id
    /// (a rename in a directory, an upload to an object store).
    pub fn finish(self, backend: &dyn crate::backend::Backend) -> Result<FinishedPack> {
        self.seal(true)?.put(backend)
    }

    /// Writes the TOC and footer and closes the temporary file, fsynced when `durable`
    /// (a directory renames this very file into place; an upload reads it once and
    /// needs no fsync). The pack's id is known from here on; [`SealedPack::put`] stores it.
    pub fn seal(mut self, durable: bool) -> Result<SealedPack> {
        let toc_offset = self.len_bytes;
        let mut toc_bytes = Vec::with_capacity(8 + self.toc.len() * TOC_ENTRY_LEN as usize);
        if let Some(keys) = self.keys.clone() {
            toc_bytes.extend_from_slice(&(self.toc.len() as u32).to_le_bytes());
            toc_bytes.extend_from_slice(&[0; 4]);
            for e in &self.toc {
                toc_bytes.extend_from_slice(&e.encode());
            }
            let sealed = keys.sealer().seal_padded(
                SealedKind::PackToc,
                &sealed_toc_ad(toc_offset),
                &toc_bytes,
            )?;
            let mut footer = [0u8; FOOTER_LEN_SEALED as usize];
            footer[..8].copy_from_slice(&toc_offset.to_le_bytes());
            footer[8..12].copy_from_slice(&(sealed.len() as u32).to_le_bytes());
            footer[16..24].copy_from_slice(PACK_END_MAGIC_SEALED);
            self.write(&sealed)?;
            self.write(&footer)?;
        } else {
            for e in &self.toc {
                toc_bytes.extend_from_slice(&e.encode());
            }
            let mut footer = [0u8; FOOTER_LEN as usize];
            footer[..8].copy_from_slice(&toc_offset.to_le_bytes());
            footer[8..12].copy_from_slice(&(self.toc.len() as u32).to_le_bytes());
            footer[16..48].copy_from_slice(blake3::hash(&toc_bytes).as_bytes());
            footer[48..56].copy_from_slice(PACK_END_MAGIC);
            self.write(&toc_bytes)?;
            self.write(&footer)?;
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp_path, e.into_error()))?;
        if durable {
            file.sync_all().at(&self.tmp_path)?;
        }
        drop(file);
        Ok(SealedPack {
            id: PackId(*self.hasher.finalize().as_bytes()),
            len_bytes: self.len_bytes,
            entries: self.toc,
            tmp_path: Some(self.tmp_path),
        })
    }

    /// Deletes the temporary file of a pack that will not be finished.
    pub fn abandon(self) {
        let path = self.tmp_path.clone();
        drop(self);
        let _ = std::fs::remove_file(path);
    }
}

/// A complete pack in its temporary file, not yet in the repository. Dropped without
/// [`SealedPack::put`], its temporary file is removed.
#[derive(Debug)]
pub struct SealedPack {
    pub id: PackId,
    pub len_bytes: u64,
    pub entries: Vec<TocEntry>,
    tmp_path: Option<PathBuf>,
}

impl SealedPack {
    /// Makes the temporary file durable, for a pack sealed with `durable: false` on one
    /// thread and put into a directory (renamed into place) from another.
    pub fn sync(&self) -> Result<()> {
        let tmp = self.tmp_path.as_ref().expect("set until put or drop");
        std::fs::File::open(tmp).and_then(|f| f.sync_all()).at(tmp)
    }

    /// Puts the pack into `backend` under its id; the temporary file is gone after.
    pub fn put(mut self, backend: &dyn crate::backend::Backend) -> Result<FinishedPack> {
        let tmp = self.tmp_path.take().expect("set until put or drop");
        let put = backend.put_file(crate::backend::ObjectKind::Pack, &self.id.to_hex(), &tmp);
        if put.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        put?;
        Ok(FinishedPack {
            id: self.id,
            len_bytes: self.len_bytes,
            entries: std::mem::take(&mut self.entries),
        })
    }
}

impl Drop for SealedPack {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp_path.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// The id a sealed TOC is bound to: the pack header of version 2 and where the TOC
/// starts, so a TOC cannot be moved to another place in a pack.
fn sealed_toc_ad(toc_offset: u64) -> Vec<u8> {
    let mut ad = Vec::with_capacity(17);
    ad.extend_from_slice(PACK_MAGIC);
    ad.push(PACK_VERSION_SEALED);
    ad.extend_from_slice(&toc_offset.to_le_bytes());
    ad
}

/// Reads a pack's table of contents, checking footer magic, bounds and the TOC hash
/// (version 1) or opening the sealed TOC (version 2, when `codec` is sealed). A pack of
/// the other version than the repository's is refused.
pub fn read_toc(
    file: &dyn ReadAt,
    len_bytes: u64,
    name: &str,
    codec: &BlobCodec,
) -> Result<Vec<TocEntry>> {
    let bad = |offset: u64, reason: String| Error::CorruptPack {
        pack: name.to_string(),
        offset,
        reason,
    };
    let (want_version, footer_len) = match codec.keys() {
        Some(_) => (PACK_VERSION_SEALED, FOOTER_LEN_SEALED),
        None => (PACK_VERSION, FOOTER_LEN),
    };
    if len_bytes < PACK_HEADER_LEN + footer_len {
        return Err(bad(
            0,
            format!("file of {len_bytes} bytes is too short to be a pack"),
        ));
    }
    let mut header = [0u8; PACK_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| bad(0, format!("reading header: {e}")))?;
    if &header[..8] != PACK_MAGIC {
        return Err(bad(0, "not a dedisk pack (bad magic)".into()));
    }
    if header[8] != want_version {
        return Err(bad(
            8,
            match (header[8], codec.is_sealed()) {
                (PACK_VERSION, true) => {
                    "an unencrypted pack (version 1) in an encrypted repository".into()
                }
                (PACK_VERSION_SEALED, false) => {
                    "an encrypted pack (version 2) in an unencrypted repository".into()
                }
                (v, _) => format!("unsupported pack version {v}"),
            },
        ));
    }
    let footer_at = len_bytes - footer_len;
    let mut footer = vec![0u8; footer_len as usize];
    file.read_exact_at(&mut footer, footer_at)
        .map_err(|e| bad(footer_at, format!("reading footer: {e}")))?;
    let magic = if codec.is_sealed() {
        PACK_END_MAGIC_SEALED
    } else {
        PACK_END_MAGIC
    };
    if &footer[footer.len() - 8..] != magic {
        return Err(bad(
            footer_at,
            "footer magic missing (truncated pack?)".into(),
        ));
    }
    let toc_offset = u64::from_le_bytes(footer[..8].try_into().expect("8 bytes"));
    let count_or_len = u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes"));
    let toc_len = match codec.keys() {
        Some(_) => count_or_len as u64,
        None => {
            if count_or_len > MAX_PACK_ENTRIES {
                return Err(bad(footer_at, format!("TOC claims {count_or_len} entries")));
            }
            count_or_len as u64 * TOC_ENTRY_LEN
        }
    };
    if toc_offset.checked_add(toc_len) != Some(footer_at) || toc_offset < PACK_HEADER_LEN {
        return Err(bad(
            footer_at,
            "TOC offset and length do not fit the file".into(),
        ));
    }
    if toc_len > 8 + MAX_PACK_ENTRIES as u64 * TOC_ENTRY_LEN * 9 / 8 + 64 {
        return Err(bad(
            footer_at,
            format!("TOC of {toc_len} bytes is larger than any pack holds"),
        ));
    }
    let mut toc = vec![0u8; toc_len as usize];
    file.read_exact_at(&mut toc, toc_offset)
        .map_err(|e| bad(toc_offset, format!("reading TOC: {e}")))?;
    let entries_at;
    let toc = match codec.keys() {
        Some(keys) => {
            let plain = keys
                .sealer()
                .open_padded(SealedKind::PackToc, &sealed_toc_ad(toc_offset), &toc, "TOC")
                .map_err(|_| {
                    bad(
                        toc_offset,
                        "sealed TOC does not authenticate (damaged, forged or from another place)"
                            .into(),
                    )
                })?;
            let count = u32::from_le_bytes(
                plain
                    .get(..4)
                    .ok_or_else(|| bad(toc_offset, "empty TOC".into()))?
                    .try_into()
                    .expect("4 bytes"),
            );
            if count > MAX_PACK_ENTRIES || plain.len() as u64 != 8 + count as u64 * TOC_ENTRY_LEN {
                return Err(bad(
                    toc_offset,
                    format!(
                        "sealed TOC of {} bytes does not hold {count} entries",
                        plain.len()
                    ),
                ));
            }
            entries_at = 8;
            plain
        }
        None => {
            if blake3::hash(&toc).as_bytes() != &footer[16..48] {
                return Err(bad(toc_offset, "TOC checksum mismatch".into()));
            }
            entries_at = 0;
            toc
        }
    };
    let mut entries = Vec::with_capacity((toc.len() - entries_at) / TOC_ENTRY_LEN as usize);
    for (i, raw) in toc[entries_at..]
        .chunks_exact(TOC_ENTRY_LEN as usize)
        .enumerate()
    {
        let at = toc_offset + i as u64 * TOC_ENTRY_LEN;
        let e = TocEntry::decode(raw, name, at)?;
        let end = e.payload_offset(codec).checked_add(e.stored_len as u64);
        if e.offset < PACK_HEADER_LEN || end.is_none_or(|end| end > toc_offset) {
            return Err(bad(at, format!("entry {i} points outside the blob area")));
        }
        if e.raw_len as usize > MAX_BLOB_BYTES || e.stored_len as usize > MAX_STORED_BYTES {
            return Err(bad(at, format!("entry {i} claims an oversized blob")));
        }
        entries.push(e);
    }
    Ok(entries)
}

/// Largest stored payload: the largest blob, Padmé-padded (at most 12 %) and sealed.
pub const MAX_STORED_BYTES: usize = MAX_BLOB_BYTES + MAX_BLOB_BYTES / 8 + 1024;

/// Reads a blob's stored payload; in version 1 also checks its header names the blob
/// the index or TOC said (version 2 has no header: the payload's seal binds its id).
pub fn read_payload(
    file: &dyn ReadAt,
    pack: PackId,
    entry: &TocEntry,
    codec: &BlobCodec,
) -> Result<Vec<u8>> {
    let corrupt = |reason: String| Error::CorruptBlob {
        blob: entry.id,
        pack,
        offset: entry.offset,
        reason,
    };
    if entry.stored_len as usize > MAX_STORED_BYTES {
        return Err(corrupt("stored length exceeds the format limit".into()));
    }
    let header = blob_overhead(codec) as usize;
    let mut buf = vec![0u8; header + entry.stored_len as usize];
    file.read_exact_at(&mut buf, entry.offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt("pack ends before the blob (truncated pack)".into())
        } else {
            corrupt(format!("read failed: {e}"))
        }
    })?;
    if header > 0 {
        if buf[..32] != entry.id.0 {
            return Err(corrupt("blob header names a different id".into()));
        }
        buf.drain(..header);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{decode_blob, BlobEncoder, BlobOrigin};

    fn write_pack(dir: &Path, blobs: &[Vec<u8>]) -> FinishedPack {
        let mut enc = BlobEncoder::new(3, BlobCodec::plain()).unwrap();
        let mut w = PackWriter::create(dir, &BlobCodec::plain()).unwrap();
        for b in blobs {
            w.add(&enc.encode(BlobKind::Data, b).unwrap()).unwrap();
        }
        w.finish(&crate::backend::LocalDir::new(dir)).unwrap()
    }

    #[test]
    fn toc_round_trip_and_payloads_decode() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + i as usize * 37]).collect();
        let p = write_pack(dir.path(), &blobs);
        let path = crate::backend::LocalDir::new(dir.path())
            .path(crate::backend::ObjectKind::Pack, &p.id.to_hex());
        let f = File::open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        assert_eq!(len, p.len_bytes);
        assert_eq!(
            PackId(*blake3::hash(&std::fs::read(&path).unwrap()).as_bytes()),
            p.id
        );
        let toc = read_toc(&f, len, "t", &BlobCodec::plain()).unwrap();
        assert_eq!(toc, p.entries);
        for (e, raw) in toc.iter().zip(&blobs) {
            let payload = read_payload(&f, p.id, e, &BlobCodec::plain()).unwrap();
            let origin = BlobOrigin {
                pack: p.id,
                offset: e.offset,
            };
            assert_eq!(
                &decode_blob(e.id, e.compression, e.raw_len, &payload, origin).unwrap(),
                raw
            );
        }
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn truncated_or_damaged_toc_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_pack(dir.path(), &[vec![1; 5000], vec![2; 7000]]);
        let bytes = std::fs::read(
            crate::backend::LocalDir::new(dir.path())
                .path(crate::backend::ObjectKind::Pack, &p.id.to_hex()),
        )
        .unwrap();
        for cut in [0, 10, 16, 100, bytes.len() - 57, bytes.len() - 1] {
            let t = dir.path().join(format!("cut{cut}"));
            std::fs::write(&t, &bytes[..cut]).unwrap();
            let f = File::open(&t).unwrap();
            assert!(
                read_toc(&f, cut as u64, "cut", &BlobCodec::plain()).is_err(),
                "cut at {cut}"
            );
        }
        let mut flipped = bytes.clone();
        let toc_at = bytes.len() - 56 - 2 * 56 + 3;
        flipped[toc_at] ^= 0x40;
        let t = dir.path().join("flip");
        std::fs::write(&t, &flipped).unwrap();
        let err = read_toc(
            &File::open(&t).unwrap(),
            flipped.len() as u64,
            "flip",
            &BlobCodec::plain(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
