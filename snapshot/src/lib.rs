//! The snapshot format of devgate (formats 1 and 2), documented for a second reader
//! in `docs/snapshot-format.md`: a manifest listing every path of a project
//! folder, and content-defined chunks of its files, compressed and stored in
//! pack objects. Every object is named by (or lists) the blake3 hash of its
//! content, and every read checks it.
//!
//! This crate knows the format only: no file system walk, no network, no
//! protobuf. The agent writes and restores snapshots with it; the gateway
//! reads manifests (dedup, retention, garbage collection).

mod chunk;
mod manifest;
mod pack;
pub mod split;

pub use chunk::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, Chunker, Chunks};
pub use manifest::{Entry, FORMAT, FORMAT_BYTES, Kind, MANIFEST_MAX, Manifest, PackChunk, PackRef};
pub use pack::{ChunkCompressor, ChunkReader, PACK_MAX, PACK_TARGET, Pack, PackBuilder, compress};
pub use split::{FORMAT_SPLIT, SplitIndex};

use std::fmt;

/// A blake3 hash: the id of a chunk (of its plaintext), a pack (of the pack
/// object) or a snapshot (of the stored manifest object).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    /// Parses 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Id> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::Invalid(format!(
                "not an id (64 lowercase hex digits): {s:?}"
            )));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| Error::Invalid(format!("bad id {s:?}: {e}")))?;
        Ok(Id(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.to_hex())
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Id, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Id::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a snapshot object cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object's content is not what its name or its manifest says
    /// (tampered with, truncated, or corrupt).
    #[error("integrity check failed: {0}")]
    Corrupt(String),
    /// A well-formed object that breaks the format's rules (an unsafe path,
    /// a missing chunk, an unknown format version).
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
