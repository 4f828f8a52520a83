//! Blobs: the unit of storage. A blob is either a data chunk of a disk or a manifest
//! node; it is addressed by the BLAKE3-256 of its uncompressed bytes (keyed BLAKE3 in an
//! encrypted repository) and stored zstd-compressed unless compression does not shrink
//! it; in an encrypted repository the stored bytes are then padded and sealed
//! (FORMAT.md, sections 3 and 10).

use std::sync::Arc;

use crate::crypto::{RepoKeys, SealedKind};

use crate::error::{Error, Result};
use crate::ids::BlobId;

/// Largest data chunk the format allows (the chunker's `max_bytes` must not exceed it).
pub const MAX_CHUNK_BYTES: usize = 16 << 20;
/// Largest uncompressed blob of any kind; bounds every decompression.
pub const MAX_BLOB_BYTES: usize = 16 << 20;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    /// Bytes of a disk (or of a metadata file).
    Data = 1,
    /// A node of a manifest tree.
    ManifestNode = 2,
}

impl BlobKind {
    /// The kind its sealed bytes are bound to.
    pub fn sealed_kind(self) -> SealedKind {
        match self {
            BlobKind::Data => SealedKind::DataBlob,
            BlobKind::ManifestNode => SealedKind::NodeBlob,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(BlobKind::Data),
            2 => Some(BlobKind::ManifestNode),
            _ => None,
        }
    }
}

/// How a blob's payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

impl Compression {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A blob ready to be appended to a pack.
#[derive(Clone, Debug)]
pub struct EncodedBlob {
    pub id: BlobId,
    pub kind: BlobKind,
    pub compression: Compression,
    pub raw_len: u32,
    /// The bytes stored: compressed or not, then sealed in an encrypted repository.
    pub payload: Vec<u8>,
}

/// How a repository names and protects blobs: plain BLAKE3 and stored as they are
/// (format version 1), or keyed ids and sealed payloads (version 2).
#[derive(Clone, Debug, Default)]
pub struct BlobCodec {
    keys: Option<Arc<RepoKeys>>,
}

impl BlobCodec {
    /// The codec of a plaintext (version 1) repository.
    pub fn plain() -> Self {
        BlobCodec { keys: None }
    }

    /// The codec of an encrypted repository with these keys.
    pub fn sealed(keys: Arc<RepoKeys>) -> Self {
        BlobCodec { keys: Some(keys) }
    }

    pub fn keys(&self) -> Option<&Arc<RepoKeys>> {
        self.keys.as_ref()
    }

    pub fn is_sealed(&self) -> bool {
        self.keys.is_some()
    }

    /// The id of a blob holding `bytes`.
    pub fn id_of(&self, bytes: &[u8]) -> BlobId {
        match &self.keys {
            Some(k) => k.blob_id(bytes),
            None => BlobId::of(bytes),
        }
    }
}

/// Compresses (and seals) blobs, reusing one zstd context. One per worker thread; not `Sync`.
pub struct BlobEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    codec: BlobCodec,
}

impl BlobEncoder {
    pub fn new(level: i32, codec: BlobCodec) -> Result<Self> {
        let compressor =
            zstd::bulk::Compressor::new(level).map_err(|e| Error::Compress(e.to_string()))?;
        Ok(BlobEncoder { compressor, codec })
    }

    /// The id a blob of `raw` bytes gets in this repository.
    pub fn id_of(&self, raw: &[u8]) -> BlobId {
        self.codec.id_of(raw)
    }

    /// Encodes `raw` whose id the caller already computed (hashing is done once, upstream).
    pub fn encode_with_id(
        &mut self,
        id: BlobId,
        kind: BlobKind,
        raw: &[u8],
    ) -> Result<EncodedBlob> {
        if raw.len() > MAX_BLOB_BYTES {
            return Err(Error::BlobTooLarge {
                len_bytes: raw.len(),
                max_bytes: MAX_BLOB_BYTES,
            });
        }
        let compressed = self
            .compressor
            .compress(raw)
            .map_err(|e| Error::Compress(e.to_string()))?;
        // Incompressible data (media, archives, encrypted volumes) is stored as it is, so
        // restore does not pay for a decompression that gains nothing.
        let (compression, payload) = match (&self.codec.keys, compressed.len() < raw.len()) {
            (None, true) => (Compression::Zstd, compressed),
            (None, false) => (Compression::None, raw.to_vec()),
            (Some(k), true) => (
                Compression::Zstd,
                k.sealer()
                    .seal_padded(kind.sealed_kind(), &id.0, &compressed)?,
            ),
            (Some(k), false) => (
                Compression::None,
                k.sealer().seal_padded(kind.sealed_kind(), &id.0, raw)?,
            ),
        };
        Ok(EncodedBlob {
            id,
            kind,
            compression,
            raw_len: raw.len() as u32,
            payload,
        })
    }

    /// Hashes and encodes `raw`.
    pub fn encode(&mut self, kind: BlobKind, raw: &[u8]) -> Result<EncodedBlob> {
        self.encode_with_id(self.codec.id_of(raw), kind, raw)
    }
}

/// Where a blob was read from, for error messages.
#[derive(Clone, Copy, Debug)]
pub struct BlobOrigin {
    pub pack: crate::ids::PackId,
    pub offset: u64,
}

/// Decompresses and verifies blobs, reusing one zstd context (creating a context per
/// blob cost 5 % of a restore's CPU). One per thread; not `Sync`.
pub struct BlobDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
    codec: BlobCodec,
}

impl BlobDecoder {
    pub fn new(codec: BlobCodec) -> Result<Self> {
        Ok(Self {
            decompressor: zstd::bulk::Decompressor::new()
                .map_err(|e| Error::Compress(e.to_string()))?,
            codec,
        })
    }

    /// Opens (in an encrypted repository), decompresses and checks a blob of `kind`
    /// against its id. Takes the stored bytes by value: they are opened in place, and an
    /// uncompressed blob's bytes become the result without a copy.
    #[allow(clippy::too_many_arguments)]
    pub fn decode(
        &mut self,
        id: BlobId,
        kind: BlobKind,
        compression: Compression,
        raw_len: u32,
        mut payload: Vec<u8>,
        origin: BlobOrigin,
    ) -> Result<Vec<u8>> {
        let plain = match &self.codec.keys {
            None => 0..payload.len(),
            Some(k) => k
                .sealer()
                .open_padded_in_place(kind.sealed_kind(), &id.0, &mut payload, "blob")
                .map_err(|_| Error::CorruptBlob {
                    blob: id,
                    pack: origin.pack,
                    offset: origin.offset,
                    reason: format!(
                        "does not authenticate as a {} blob with this id (damaged, forged or moved)",
                        match kind {
                            BlobKind::Data => "data",
                            BlobKind::ManifestNode => "manifest node",
                        }
                    ),
                })?,
        };
        let stored = match compression {
            Compression::None => {
                payload.copy_within(plain.clone(), 0);
                payload.truncate(plain.len());
                Stored::Raw(payload)
            }
            Compression::Zstd => Stored::Compressed(&payload[plain]),
        };
        decode_with(
            Some(&mut self.decompressor),
            &self.codec,
            id,
            raw_len,
            stored,
            origin,
        )
    }
}

/// A blob's bytes as stored, once opened: the raw bytes, or a zstd frame.
enum Stored<'a> {
    Raw(Vec<u8>),
    Compressed(&'a [u8]),
}

/// Decompresses `payload` and checks that it hashes to `id`.
///
/// `raw_len` bounds the decompression, so a hostile payload cannot make it allocate more.
pub fn decode_blob(
    id: BlobId,
    compression: Compression,
    raw_len: u32,
    payload: &[u8],
    origin: BlobOrigin,
) -> Result<Vec<u8>> {
    let stored = match compression {
        Compression::None => Stored::Raw(payload.to_vec()),
        Compression::Zstd => Stored::Compressed(payload),
    };
    decode_with(None, &BlobCodec::plain(), id, raw_len, stored, origin)
}

fn decode_with(
    decompressor: Option<&mut zstd::bulk::Decompressor<'static>>,
    codec: &BlobCodec,
    id: BlobId,
    raw_len: u32,
    stored: Stored<'_>,
    origin: BlobOrigin,
) -> Result<Vec<u8>> {
    let corrupt = |reason: String| Error::CorruptBlob {
        blob: id,
        pack: origin.pack,
        offset: origin.offset,
        reason,
    };
    if raw_len as usize > MAX_BLOB_BYTES {
        return Err(corrupt(format!(
            "raw length {raw_len} exceeds the format limit"
        )));
    }
    let raw = match stored {
        Stored::Raw(bytes) => bytes,
        Stored::Compressed(payload) => match decompressor {
            Some(d) => d.decompress(payload, raw_len as usize),
            None => zstd::bulk::decompress(payload, raw_len as usize),
        }
        .map_err(|e| corrupt(format!("zstd: {e}")))?,
    };
    if raw.len() != raw_len as usize {
        return Err(corrupt(format!(
            "decoded {} bytes, expected {raw_len}",
            raw.len()
        )));
    }
    let actual = codec.id_of(&raw);
    if actual != id {
        return Err(corrupt(format!(
            "content hashes to {}, not to its id",
            actual.short()
        )));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PackId;

    const ORIGIN: BlobOrigin = BlobOrigin {
        pack: PackId([0; 32]),
        offset: 0,
    };

    #[test]
    fn compressible_and_incompressible_round_trip() {
        let mut enc = BlobEncoder::new(3, BlobCodec::plain()).unwrap();
        let text = b"abcabcabc".repeat(1000);
        let b = enc.encode(BlobKind::Data, &text).unwrap();
        assert_eq!(b.compression, Compression::Zstd);
        assert!(b.payload.len() < text.len());
        let back = decode_blob(b.id, b.compression, b.raw_len, &b.payload, ORIGIN).unwrap();
        assert_eq!(back, text);

        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let noise = blake3::Hasher::new().update(&noise).finalize_xof();
        let mut bytes = vec![0u8; 8192];
        noise.clone().fill(&mut bytes);
        let b = enc.encode(BlobKind::Data, &bytes).unwrap();
        assert_eq!(b.compression, Compression::None);
        assert_eq!(b.payload, bytes);
    }

    #[test]
    fn flipped_byte_is_detected() {
        let mut enc = BlobEncoder::new(3, BlobCodec::plain()).unwrap();
        let b = enc.encode(BlobKind::Data, &b"x".repeat(500)).unwrap();
        let mut payload = b.payload.clone();
        let last = payload.len() - 1;
        payload[last] ^= 1;
        assert!(decode_blob(b.id, b.compression, b.raw_len, &payload, ORIGIN).is_err());
    }

    #[test]
    fn lying_raw_len_does_not_allocate_unbounded() {
        let mut enc = BlobEncoder::new(3, BlobCodec::plain()).unwrap();
        let b = enc.encode(BlobKind::Data, &vec![7u8; 100_000]).unwrap();
        assert!(decode_blob(b.id, b.compression, 10, &b.payload, ORIGIN).is_err());
        assert!(decode_blob(b.id, b.compression, u32::MAX, &b.payload, ORIGIN).is_err());
    }
}
