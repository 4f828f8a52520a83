//! Typed identifiers. Every kind of id gets its own newtype so a pack id can never be
//! passed where a chunk id is expected.

use std::fmt;
use std::str::FromStr;

/// Length in bytes of every id in the repository (BLAKE3-256 or 32 random bytes).
pub const ID_LEN: usize = 32;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; ID_LEN]);

        impl $name {
            /// Lower-case hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 8 hex characters, as shown to people.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
            /// Builds an id from exactly 32 bytes; `None` for any other length.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; ID_LEN]>::try_from(bytes).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = crate::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; ID_LEN];
                hex::decode_to_slice(s, &mut out).map_err(|_| crate::Error::BadId {
                    kind: stringify!($name),
                    text: s.chars().take(80).collect(),
                })?;
                Ok(Self(out))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Identifies a blob (a data chunk or a manifest node): BLAKE3-256 of its uncompressed bytes.
    BlobId
);
id_type!(
    /// Identifies a pack file: BLAKE3-256 of the whole file.
    PackId
);
id_type!(
    /// Identifies a snapshot: BLAKE3-256 of its JSON file.
    SnapshotId
);
id_type!(
    /// A repository's random identity, chosen at `init`.
    RepoId
);

impl BlobId {
    /// The id of `data`, as it must be stored: BLAKE3-256 of the uncompressed bytes.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }
}

/// 32 bytes from the operating system's random source.
pub fn random_bytes() -> Result<[u8; ID_LEN], crate::Error> {
    let mut out = [0u8; ID_LEN];
    getrandom::fill(&mut out).map_err(|e| crate::Error::Random(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_bad_text() {
        let id = BlobId::of(b"hello");
        let back: BlobId = id.to_hex().parse().unwrap();
        assert_eq!(id, back);
        assert_eq!(id.short().len(), 8);
        assert!("zz".parse::<BlobId>().is_err());
        assert!(id.to_hex()[..62].parse::<BlobId>().is_err());
    }

    #[test]
    fn blob_id_is_blake3() {
        assert_eq!(
            BlobId::of(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
