//! Keys and sealing for encrypted repositories (format version 2, issue 14).
//!
//! FORMAT.md, section 10, is the normative text; this module holds the primitives, and
//! [`RepoKeys`] is what an open encrypted repository carries.
//!
//! - A random 32-byte [`MasterKey`] per repository. Every other key is derived from it
//!   with BLAKE3's key derivation, one context string per purpose, so no key serves two
//!   purposes: keyed chunk ids, the AEAD key, the chunker's secret, the config MAC.
//! - The master key is stored only wrapped, in [`KeyFile`]s: argon2id turns a password
//!   (and a random salt) into a wrapping key, and the sealing below (AES-256-GCM under a
//!   key derived from a random salt) seals the master key with associated data binding the repository id and the argon2 parameters, so neither
//!   a file moved to another repository nor lowered parameters go unnoticed.
//! - [`Sealer`] seals each object with AES-256-GCM under a key of its own: a random
//!   24-byte salt per object, and the object key a keyed BLAKE3 of that salt (the
//!   construction of C2SP's XAES-256-GCM, with BLAKE3 as the derivation). Every key
//!   seals one message, so the 96-bit nonce is fixed and no nonce can repeat whatever
//!   hosts write at once; associated data names the object's kind and id, so a sealed
//!   object moved to another name or kind fails to open.
//! - Why AES-256-GCM through `ring`: measured on this machine (`cargo bench -p
//!   dedisk-benches --bench aead`, 64 KiB messages, one core) ring's AES-256-GCM seals
//!   5.7 GB/s and this sealer (key derivation and one copy included) 4.3 GB/s;
//!   RustCrypto's XChaCha20-Poly1305 and AES-256-GCM-SIV 1.0 GB/s, and ring's
//!   ChaCha20-Poly1305 1.4 GB/s. Encryption must cost under 10% of a backup, whose
//!   zstd and BLAKE3 already run at a few hundred MB/s and 5 GB/s per core.
//! - [`padme`] pads sealed lengths (Padmé, Nikitin et al. 2019) so sizes leak at most
//!   O(log log n) bits, at most 12% overhead.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// Bytes of every key.
pub const KEY_LEN: usize = 32;
/// Bytes of the random salt stored in front of every sealed object; its object key is
/// derived from it.
pub const SALT_LEN: usize = 24;
/// Bytes of the GCM tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// A key file's `version`.
pub const KEY_FILE_VERSION: u32 = 1;

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| Error::Random(e.to_string()))?;
    Ok(out)
}

/// The repository's master key. Never written anywhere unwrapped; zeroed when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; KEY_LEN]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        Ok(MasterKey(random()?))
    }

    /// The key from its raw bytes (an exported key typed back in).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MasterKey(bytes)
    }

    /// The raw bytes, for an export the admin asked for.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn derive(&self, purpose: &str) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(blake3::derive_key(purpose, &self.0))
    }

    /// The key of keyed chunk ids (`blake3::keyed_hash`): without it nobody can confirm
    /// a guess of a chunk's content from its id.
    pub fn chunk_id_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.derive("dedisk repository v2 chunk id")
    }

    /// The secret mixed into the chunker's cut decision, so cut points do not
    /// fingerprint known content (ePrint 2025/558, 2025/532).
    pub fn chunker_secret(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.derive("dedisk repository v2 chunker")
    }

    /// A MAC over `bytes` (the repository config), so a changed setting is detected.
    pub fn config_mac(&self, bytes: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.derive("dedisk repository v2 config mac"), bytes).as_bytes()
    }

    /// The sealer of the repository's objects.
    pub fn sealer(&self) -> Sealer {
        Sealer {
            key: self.derive("dedisk repository v2 seal"),
        }
    }
}

/// The keys of an open encrypted repository, derived once from its master key. Shared
/// by every thread of a command (`Arc`).
pub struct RepoKeys {
    master: MasterKey,
    id_key: Zeroizing<[u8; KEY_LEN]>,
    sealer: Sealer,
    chunker_secret: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoKeys(..)")
    }
}

impl RepoKeys {
    pub fn new(master: MasterKey) -> Self {
        RepoKeys {
            id_key: master.chunk_id_key(),
            sealer: master.sealer(),
            chunker_secret: master.chunker_secret(),
            master,
        }
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// The id of a blob with these bytes: keyed BLAKE3, so ids tell nothing about
    /// content to whoever lacks the key.
    pub fn blob_id(&self, bytes: &[u8]) -> crate::ids::BlobId {
        crate::ids::BlobId(*blake3::keyed_hash(&self.id_key, bytes).as_bytes())
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The chunker's secret (FORMAT.md, section 7.2).
    pub fn chunker_secret(&self) -> &[u8; KEY_LEN] {
        &self.chunker_secret
    }
}

/// The bytes of a frame [`Sealer::seal_padded`] made (its length (u32), the bytes,
/// then zeros up to the Padmé length of the whole), or `None` when it is inconsistent.
fn unpad(framed: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(framed.get(..4)?.try_into().ok()?) as usize;
    let body = framed.get(4..4 + len)?;
    framed[4 + len..].iter().all(|&b| b == 0).then_some(body)
}

/// What a sealed object is; part of its associated data, so one kind cannot pass for
/// another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SealedKind {
    DataBlob = 1,
    NodeBlob = 2,
    PackToc = 3,
    Snapshot = 4,
    Config = 5,
}

/// Seals and opens objects under one repository's key. Cheap to share between threads.
#[derive(Clone)]
pub struct Sealer {
    key: Zeroizing<[u8; KEY_LEN]>,
}

fn associated(kind: SealedKind, id: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(8 + id.len());
    ad.extend_from_slice(b"dedisk2");
    ad.push(kind as u8);
    ad.extend_from_slice(id);
    ad
}

/// The one-message AES-256-GCM key for `salt` under `key`.
fn object_key(key: &[u8; KEY_LEN], salt: &[u8]) -> LessSafeKey {
    let mut input = Vec::with_capacity(24 + salt.len());
    input.extend_from_slice(b"dedisk2 object key");
    input.extend_from_slice(salt);
    let k = Zeroizing::new(*blake3::keyed_hash(key, &input).as_bytes());
    // A 32-byte key is what AES-256-GCM takes: this cannot fail.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k.as_ref()).expect("32-byte key"))
}

/// `salt || ciphertext || tag` of `plaintext` under a fresh key derived from `key`.
fn seal_with(key: &[u8; KEY_LEN], ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(SALT_LEN + plaintext.len() + TAG_LEN);
    buf.extend_from_slice(&[0; SALT_LEN]);
    buf.extend_from_slice(plaintext);
    seal_in_place(key, ad, buf)
}

/// Seals `buf[SALT_LEN..]` in place (one buffer: no copy of the plaintext beyond the
/// one that filled it) under the key of a fresh salt written into `buf[..SALT_LEN]`,
/// and appends the tag.
fn seal_in_place(key: &[u8; KEY_LEN], ad: &[u8], mut buf: Vec<u8>) -> Result<Vec<u8>> {
    let salt: [u8; SALT_LEN] = random()?;
    buf[..SALT_LEN].copy_from_slice(&salt);
    let tag = object_key(key, &salt)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(ad),
            &mut buf[SALT_LEN..],
        )
        .map_err(|_| Error::BadKey {
            what: "sealing".into(),
            reason: "message too long for AES-GCM".into(),
        })?;
    buf.extend_from_slice(tag.as_ref());
    Ok(buf)
}

/// The plaintext of what [`seal_with`] made with `key` and `ad`, or `None`.
fn open_with(key: &[u8; KEY_LEN], ad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SALT_LEN + TAG_LEN {
        return None;
    }
    let (salt, body) = sealed.split_at(SALT_LEN);
    let mut buf = body.to_vec();
    let n = object_key(key, salt)
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(ad),
            &mut buf,
        )
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

impl Sealer {
    /// `salt || sealed(frame) || tag`, bound to `kind` and `id`: the frame is the
    /// plaintext's length (u32), the bytes, then zeros up to the Padmé length of the
    /// whole, so sealed sizes say little about content sizes. Built in one
    /// buffer (one copy of the plaintext): how blobs, TOCs and snapshots are sealed.
    pub fn seal_padded(&self, kind: SealedKind, id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let framed = padme(4 + plaintext.len() as u64) as usize;
        let mut out = Vec::with_capacity(SALT_LEN + framed + TAG_LEN);
        out.extend_from_slice(&[0; SALT_LEN]);
        out.extend_from_slice(&(plaintext.len() as u32).to_le_bytes());
        out.extend_from_slice(plaintext);
        out.resize(SALT_LEN + framed, 0);
        seal_in_place(&self.key, &associated(kind, id), out)
    }

    /// Opens what [`Sealer::seal_padded`] made as `kind` and `id` in place (no copy: a
    /// restore opens every chunk it reads) and returns where in `sealed` the plaintext
    /// now lies.
    pub fn open_padded_in_place(
        &self,
        kind: SealedKind,
        id: &[u8],
        sealed: &mut [u8],
        what: &str,
    ) -> Result<std::ops::Range<usize>> {
        let fail = |why: &str| Error::Unauthenticated {
            what: format!("{what}{why}"),
        };
        if sealed.len() < SALT_LEN + TAG_LEN {
            return Err(fail(""));
        }
        let (salt, body) = sealed.split_at_mut(SALT_LEN);
        let framed = object_key(&self.key, salt)
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(associated(kind, id)),
                body,
            )
            .map_err(|_| fail(""))?;
        let len = unpad(framed)
            .ok_or_else(|| fail(" (inconsistent padding)"))?
            .len();
        Ok(SALT_LEN + 4..SALT_LEN + 4 + len)
    }

    /// The plaintext of what [`Sealer::seal_padded`] made as `kind` and `id`.
    pub fn open_padded(
        &self,
        kind: SealedKind,
        id: &[u8],
        sealed: &[u8],
        what: &str,
    ) -> Result<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let at = self.open_padded_in_place(kind, id, &mut buf, what)?;
        buf.copy_within(at.clone(), 0);
        buf.truncate(at.len());
        Ok(buf)
    }

    /// `salt || ciphertext || tag` of `plaintext`, bound to `kind` and `id`.
    pub fn seal(&self, kind: SealedKind, id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        seal_with(&self.key, &associated(kind, id), plaintext)
    }

    /// The plaintext of `sealed`, which must have been sealed as `kind` and `id` under
    /// this key; anything else is [`Error::Unauthenticated`] naming `what`.
    pub fn open(&self, kind: SealedKind, id: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        open_with(&self.key, &associated(kind, id), sealed)
            .ok_or_else(|| Error::Unauthenticated { what: what.into() })
    }
}

/// Padmé: the length `len` is padded to, leaking O(log log len) bits of it. Lengths up
/// to 256 are not padded (the blob header already rounds them), larger ones by at most
/// 12%.
pub fn padme(len: u64) -> u64 {
    if len <= 256 {
        return len;
    }
    let e = 63 - u64::from(len.leading_zeros()); // floor(log2 len)
    let s = 64 - u64::from(e.leading_zeros()); // floor(log2 e) + 1
    let mask = (1u64 << (e - s)) - 1;
    (len + mask) & !mask
}

/// argon2id's cost parameters, stored in each key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for KdfParams {
    /// RFC 9106's second recommended option (64 MiB, 3 passes, 4 lanes): above OWASP's
    /// minimum (19 MiB, 2 passes), and under a second on this machine.
    fn default() -> Self {
        KdfParams {
            m_kib: 64 * 1024,
            t: 3,
            p: 4,
        }
    }
}

impl KdfParams {
    /// Refuses parameters too weak to protect a master key, or so large that a forged
    /// key file could make opening it exhaust memory.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.m_kib < 8 * 1024 || self.t < 1 || self.p < 1 {
            return Err(format!(
                "argon2id parameters {self:?} are below 8 MiB / 1 pass / 1 lane"
            ));
        }
        if self.m_kib > 4 * 1024 * 1024 || self.t > 64 || self.p > 64 {
            return Err(format!(
                "argon2id parameters {self:?} are above 4 GiB / 64 passes / 64 lanes"
            ));
        }
        Ok(())
    }

    fn wrapping_key(&self, password: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>> {
        let params =
            argon2::Params::new(self.m_kib, self.t, self.p, Some(KEY_LEN)).map_err(|e| {
                Error::BadKey {
                    what: "argon2id parameters".into(),
                    reason: e.to_string(),
                }
            })?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        argon
            .hash_password_into(password, salt, out.as_mut())
            .map_err(|e| Error::BadKey {
                what: "argon2id".into(),
                reason: e.to_string(),
            })?;
        Ok(out)
    }
}

/// One key file (`keys/<id>.json`, or outside the repository): the master key wrapped
/// by one password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    /// Always `argon2id`.
    pub kdf: String,
    pub params: KdfParams,
    /// Hex, 32 random bytes.
    pub salt: String,
    /// Hex: salt, then the sealed master key and its tag.
    pub wrapped: String,
    /// For people: who or what this key is for (`admin`, `kvm3`...).
    pub label: String,
    pub created: jiff::Timestamp,
}

impl KeyFile {
    /// The associated data the wrapped key is sealed with: the repository id and every
    /// other field of the file, so no byte of a key file can change unnoticed.
    fn wrap_ad(&self, repo_id: &[u8]) -> Vec<u8> {
        let mut fields = self.clone();
        fields.wrapped = String::new();
        let mut ad = b"dedisk2 key".to_vec();
        ad.extend_from_slice(repo_id);
        ad.extend_from_slice(&serde_json::to_vec(&fields).expect("key file serializes"));
        ad
    }

    /// Wraps `master` under `password` for the repository `repo_id`.
    pub fn wrap(
        master: &MasterKey,
        password: &[u8],
        params: KdfParams,
        repo_id: &[u8],
        label: &str,
    ) -> Result<KeyFile> {
        params.check().map_err(|reason| Error::BadKey {
            what: "new key".into(),
            reason,
        })?;
        crate::names::check_label(label).map_err(|reason| Error::BadKey {
            what: "new key's label".into(),
            reason,
        })?;
        let salt: [u8; 32] = random()?;
        let wk = params.wrapping_key(password, &salt)?;
        let mut kf = KeyFile {
            version: KEY_FILE_VERSION,
            kdf: "argon2id".into(),
            params,
            salt: hex::encode(salt),
            wrapped: String::new(),
            label: label.into(),
            // Whole seconds: the file's text is canonical (see `parse`).
            created: jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
                .expect("now is a valid timestamp"),
        };
        kf.wrapped = hex::encode(seal_with(&wk, &kf.wrap_ad(repo_id), master.expose())?);
        Ok(kf)
    }

    /// The file's bytes: pretty JSON and a newline, the only form [`KeyFile::parse`]
    /// accepts.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(self).expect("key file serializes");
        b.push(b'\n');
        b
    }

    /// Parses a key file, which must be exactly in the form [`KeyFile::to_bytes`]
    /// writes: with the wrapped key's associated data covering every field, any changed
    /// byte is then refused, here or when the key is unwrapped.
    pub fn parse(bytes: &[u8], what: &str) -> Result<KeyFile> {
        let bad = |reason: String| Error::BadKey {
            what: what.into(),
            reason,
        };
        let kf: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a key file: {e}")))?;
        if kf.to_bytes() != bytes {
            return Err(bad(
                "not in canonical form (changed by hand or damaged)".into()
            ));
        }
        Ok(kf)
    }

    /// The master key, if `password` opens this key file for repository `repo_id`;
    /// [`Error::WrongPassword`] naming `what` otherwise.
    pub fn unwrap_key(&self, password: &[u8], repo_id: &[u8], what: &str) -> Result<MasterKey> {
        let bad = |reason: String| Error::BadKey {
            what: what.into(),
            reason,
        };
        if self.version != KEY_FILE_VERSION || self.kdf != "argon2id" {
            return Err(bad(format!(
                "key file version {} with {:?} is not one this dedisk reads",
                self.version, self.kdf
            )));
        }
        self.params.check().map_err(bad)?;
        let salt = hex::decode(&self.salt).map_err(|e| bad(format!("salt: {e}")))?;
        let wrapped = hex::decode(&self.wrapped).map_err(|e| bad(format!("wrapped key: {e}")))?;
        // Lower-case hex only: one spelling per value, so no byte can change unnoticed.
        if hex::encode(&salt) != self.salt || hex::encode(&wrapped) != self.wrapped {
            return Err(bad("salt or wrapped key not in lower-case hex".into()));
        }
        if salt.len() != 32 || wrapped.len() != SALT_LEN + KEY_LEN + TAG_LEN {
            return Err(bad("salt or wrapped key of the wrong length".into()));
        }
        let wk = self.params.wrapping_key(password, &salt)?;
        let key = Zeroizing::new(
            open_with(&wk, &self.wrap_ad(repo_id), &wrapped)
                .ok_or_else(|| Error::WrongPassword { key: what.into() })?,
        );
        let bytes: [u8; KEY_LEN] = key
            .as_slice()
            .try_into()
            .map_err(|_| bad("unwrapped key of the wrong length".into()))?;
        Ok(MasterKey(bytes))
    }
}

/// The master key as people can write it down and type back in: 64 hex digits in
/// groups of four, eight groups a line, each line ending in a check group (the first
/// two bytes of BLAKE3 of the line's digits), so a mistyped line is named.
pub fn paper_key(master: &MasterKey) -> String {
    let hexkey = Zeroizing::new(hex::encode(master.expose()));
    let mut out = String::new();
    for (n, line) in hexkey.as_bytes().chunks(32).enumerate() {
        let digits = std::str::from_utf8(line).expect("hex is ASCII");
        let check = &blake3::hash(digits.as_bytes()).to_hex()[..4];
        let groups: Vec<&str> = (0..8).map(|i| &digits[i * 4..i * 4 + 4]).collect();
        out.push_str(&format!("{}: {} {}\n", n + 1, groups.join(" "), check));
    }
    out
}

/// The master key from what [`paper_key`] printed, typed back in (case, spaces and
/// dashes do not matter; line numbers and check groups are checked).
pub fn parse_paper_key(text: &str) -> Result<MasterKey> {
    let bad = |reason: String| Error::BadKey {
        what: "paper key".into(),
        reason,
    };
    let mut digits = Zeroizing::new(String::new());
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() != 2 {
        return Err(bad(format!("{} lines, expected 2", lines.len())));
    }
    for (n, line) in lines.iter().enumerate() {
        let (num, rest) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("line {}: no \"{}:\" in front", n + 1, n + 1)))?;
        if num.trim() != (n + 1).to_string() {
            return Err(bad(format!("line {} is numbered {num:?}", n + 1)));
        }
        let clean: String = rest
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if clean.len() != 36 || !clean.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("line {}: expected 36 hex digits", n + 1)));
        }
        let (key, check) = clean.split_at(32);
        if &blake3::hash(key.as_bytes()).to_hex()[..4] != check {
            return Err(bad(format!(
                "line {}: check group does not match (a typo?)",
                n + 1
            )));
        }
        digits.push_str(key);
    }
    let mut bytes = [0u8; KEY_LEN];
    hex::decode_to_slice(digits.as_bytes(), &mut bytes).map_err(|e| bad(e.to_string()))?;
    let key = MasterKey(bytes);
    bytes.zeroize();
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cheapest parameters `check` accepts, so the tests run fast.
    fn quick() -> KdfParams {
        KdfParams {
            m_kib: 8 * 1024,
            t: 1,
            p: 1,
        }
    }

    #[test]
    fn a_key_file_opens_with_its_password_and_repository_only() {
        let master = MasterKey::generate().unwrap();
        let kf = KeyFile::wrap(&master, b"correct horse", quick(), b"repo-1", "admin").unwrap();
        let bytes = kf.to_bytes();
        let kf = KeyFile::parse(&bytes, "k").unwrap();
        // Every byte counts: a flip is refused by the parser or by the unwrap.
        for i in (0..bytes.len()).step_by(7) {
            let mut t = bytes.clone();
            t[i] ^= 0x20;
            let opened = KeyFile::parse(&t, "k")
                .and_then(|k| k.unwrap_key(b"correct horse", b"repo-1", "k"));
            assert!(
                opened.is_err(),
                "byte {i} ({:?} -> {:?}) flipped went unnoticed: {}",
                bytes[i] as char,
                t[i] as char,
                String::from_utf8_lossy(&t)
            );
        }
        assert_eq!(
            kf.unwrap_key(b"correct horse", b"repo-1", "k")
                .unwrap()
                .expose(),
            master.expose()
        );
        assert!(matches!(
            kf.unwrap_key(b"wrong", b"repo-1", "k"),
            Err(Error::WrongPassword { .. })
        ));
        assert!(matches!(
            kf.unwrap_key(b"correct horse", b"repo-2", "k"),
            Err(Error::WrongPassword { .. })
        ));
        // Parameters lowered by someone who can write the file: no longer opens.
        let mut weaker = kf.clone();
        weaker.params.t = 2;
        assert!(weaker.unwrap_key(b"correct horse", b"repo-1", "k").is_err());
        // A forged file asking for 1 TiB of memory is refused before argon2 runs.
        let mut huge = kf.clone();
        huge.params.m_kib = u32::MAX;
        let e = huge
            .unwrap_key(b"correct horse", b"repo-1", "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("above"), "{e}");
        let mut flipped = kf;
        let mut w = hex::decode(&flipped.wrapped).unwrap();
        w[30] ^= 1;
        flipped.wrapped = hex::encode(w);
        assert!(flipped
            .unwrap_key(b"correct horse", b"repo-1", "k")
            .is_err());
    }

    #[test]
    fn sealed_objects_open_only_as_what_they_were_sealed_as() {
        let s = MasterKey::generate().unwrap().sealer();
        let id = [7u8; 32];
        let a = s.seal(SealedKind::DataBlob, &id, b"guest data").unwrap();
        let b = s.seal(SealedKind::DataBlob, &id, b"guest data").unwrap();
        assert_ne!(a, b, "a fresh salt, so a fresh key, every time");
        assert_eq!(a.len(), SALT_LEN + 10 + TAG_LEN);
        assert_eq!(
            s.open(SealedKind::DataBlob, &id, &a, "x").unwrap(),
            b"guest data"
        );
        assert!(
            !a.windows(10).any(|w| w == b"guest data"),
            "no plaintext in the sealed bytes"
        );
        for (kind, id2) in [
            (SealedKind::NodeBlob, id),
            (SealedKind::DataBlob, [8u8; 32]),
        ] {
            assert!(matches!(
                s.open(kind, &id2, &a, "x"),
                Err(Error::Unauthenticated { .. })
            ));
        }
        for i in 0..a.len() {
            let mut t = a.clone();
            t[i] ^= 0x80;
            assert!(
                s.open(SealedKind::DataBlob, &id, &t, "x").is_err(),
                "byte {i}"
            );
        }
        assert!(s.open(SealedKind::DataBlob, &id, &a[..20], "x").is_err());
        let other = MasterKey::generate().unwrap().sealer();
        assert!(other.open(SealedKind::DataBlob, &id, &a, "x").is_err());
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_by_master() {
        let m = MasterKey::from_bytes([1; 32]);
        let keys = [*m.chunk_id_key(), *m.chunker_secret()];
        assert_ne!(keys[0], keys[1]);
        assert_ne!(*MasterKey::from_bytes([2; 32]).chunk_id_key(), keys[0]);
        assert_ne!(m.config_mac(b"a"), m.config_mac(b"b"));
        assert_eq!(format!("{m:?}"), "MasterKey(..)");
    }

    #[test]
    fn a_paper_key_types_back_in_and_names_a_typo() {
        let m = MasterKey::generate().unwrap();
        let paper = paper_key(&m);
        assert_eq!(paper.lines().count(), 2);
        let back = parse_paper_key(&paper.to_uppercase().replace(' ', "-")).unwrap();
        assert_eq!(back.expose(), m.expose());
        let digit = paper.find(": ").unwrap() + 3;
        let mut typo = paper.clone().into_bytes();
        typo[digit] = if typo[digit] == b'0' { b'1' } else { b'0' };
        let e = parse_paper_key(std::str::from_utf8(&typo).unwrap()).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn padded_seals_round_trip_and_hide_the_exact_length() {
        let s = MasterKey::generate().unwrap().sealer();
        for len in [0usize, 1, 300, 5000, 70_000] {
            let plain = vec![9u8; len];
            let sealed = s.seal_padded(SealedKind::PackToc, b"id", &plain).unwrap();
            assert_eq!(
                sealed.len() as u64,
                padme(4 + len as u64) + (SALT_LEN + TAG_LEN) as u64
            );
            assert_eq!(
                s.open_padded(SealedKind::PackToc, b"id", &sealed, "t")
                    .unwrap(),
                plain
            );
        }
    }

    #[test]
    fn padme_pads_by_at_most_twelve_percent_and_leaks_few_lengths() {
        assert_eq!(padme(100), 100);
        assert_eq!(padme(1000), 1024);
        assert_eq!(padme(1025), 1088);
        let mut lengths = std::collections::HashSet::new();
        for len in (257..=1u64 << 20).step_by(97) {
            let p = padme(len);
            assert!(
                p >= len && p as f64 <= len as f64 * 1.12 + 1.0,
                "{len} -> {p}"
            );
            lengths.insert(p);
        }
        assert!(
            lengths.len() < 1000,
            "{} distinct padded lengths",
            lengths.len()
        );
    }
}
