//! The manifest: every path of the snapshot with its metadata and, for files,
//! the ids of its chunks; and the packs those chunks are stored in. Stored
//! as zstd-compressed JSON; the snapshot's id is the blake3 of those stored
//! bytes.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;

use serde::{Deserialize, Serialize};

use crate::{Error, Id, Result};

/// The format version this crate writes and reads.
pub const FORMAT: u32 = 1;
/// Largest decompressed manifest a reader accepts.
pub const MANIFEST_MAX: u64 = 512 * 1024 * 1024;

/// What kind of entry a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// One path of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the project root, `/`-separated; `""` is the root itself.
    pub path: String,
    pub kind: Kind,
    /// Bytes of a file (0 for directories; the target's length for symlinks).
    pub size: u64,
    /// Permission bits (`0o7777` at most; no file type bits).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// A symlink's target, as stored in the link (may be absolute or point
    /// outside the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A file's chunks, in order; their lengths add up to `size`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Id>,
}

/// A pack object the snapshot's chunks are stored in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    /// blake3 of the pack object; its object name.
    pub id: Id,
    /// Bytes of the pack object.
    pub size: u64,
    /// The chunks in it (all of them, used by this snapshot or not).
    pub chunks: Vec<PackChunk>,
}

/// A chunk of a pack: its id and its length in plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackChunk {
    pub id: Id,
    pub len: u32,
}

/// A snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// When the snapshot was cut, nanoseconds since the Unix epoch.
    pub created_ns: i64,
    /// Every path, parents before children (sorted by path components).
    pub entries: Vec<Entry>,
    pub packs: Vec<PackRef>,
}

impl Manifest {
    /// The stored form: JSON compressed with zstd. Its blake3 is the
    /// snapshot's id.
    pub fn encode(&self) -> Result<(Id, Vec<u8>)> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::Invalid(format!("cannot encode the manifest: {e}")))?;
        let bytes = zstd::bulk::compress(&json, 3)?;
        Ok((Id::of(&bytes), bytes))
    }

    /// Reads a stored manifest, checking its hash against `expected`, then
    /// its rules (see [`Manifest::validate`]).
    pub fn decode(bytes: &[u8], expected: &Id) -> Result<Manifest> {
        let got = Id::of(bytes);
        if &got != expected {
            return Err(Error::Corrupt(format!(
                "manifest {expected} hashes to {got}"
            )));
        }
        let mut json = Vec::new();
        zstd::stream::read::Decoder::new(bytes)?
            .take(MANIFEST_MAX + 1)
            .read_to_end(&mut json)
            .map_err(|e| Error::Corrupt(format!("manifest {expected}: {e}")))?;
        if json.len() as u64 > MANIFEST_MAX {
            return Err(Error::Invalid(format!(
                "manifest {expected} is larger than {MANIFEST_MAX} bytes"
            )));
        }
        let m: Manifest = serde_json::from_slice(&json)
            .map_err(|e| Error::Corrupt(format!("manifest {expected}: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    /// Sorts entries so that parents come before their children.
    pub fn sort(&mut self) {
        self.entries
            .sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    }

    /// Checks the rules a reader relies on before writing anything: format
    /// version; safe, unique paths whose parents are directories listed
    /// earlier; chunk lengths unknown here, but every chunk of a file is in
    /// a listed pack.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(Error::Invalid(format!(
                "manifest format {} (this reader knows {FORMAT})",
                self.format
            )));
        }
        let stored: HashMap<&Id, u32> = self
            .packs
            .iter()
            .flat_map(|p| p.chunks.iter())
            .map(|c| (&c.id, c.len))
            .collect();
        let mut dirs: HashSet<&str> = HashSet::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for e in &self.entries {
            check_path(&e.path)?;
            if !seen.insert(&e.path) {
                return Err(Error::Invalid(format!("duplicate path {:?}", e.path)));
            }
            if !e.path.is_empty() {
                let parent = e.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                if !dirs.contains(parent) {
                    return Err(Error::Invalid(format!(
                        "{:?} comes before its parent directory, or its parent is not a directory",
                        e.path
                    )));
                }
            }
            if e.mode & !0o7777 != 0 {
                return Err(Error::Invalid(format!("{:?}: mode {:o}", e.path, e.mode)));
            }
            match e.kind {
                Kind::Dir => {
                    dirs.insert(&e.path);
                }
                Kind::Symlink => {
                    let t = e.target.as_deref().unwrap_or("");
                    if t.is_empty() || t.contains('\0') || e.path.is_empty() {
                        return Err(Error::Invalid(format!("{:?}: bad symlink", e.path)));
                    }
                }
                Kind::File => {
                    if e.path.is_empty() {
                        return Err(Error::Invalid("the root must be a directory".into()));
                    }
                    if e.size > 0 && e.chunks.is_empty() {
                        return Err(Error::Invalid(format!("{:?}: no chunks", e.path)));
                    }
                    let mut total = 0u64;
                    for c in &e.chunks {
                        let Some(len) = stored.get(c) else {
                            return Err(Error::Invalid(format!(
                                "{:?}: chunk {c} is in no pack",
                                e.path
                            )));
                        };
                        total += u64::from(*len);
                    }
                    if total != e.size {
                        return Err(Error::Invalid(format!(
                            "{:?}: chunks add up to {total} bytes, not {}",
                            e.path, e.size
                        )));
                    }
                }
            }
            if e.kind != Kind::File && !e.chunks.is_empty() {
                return Err(Error::Invalid(format!(
                    "{:?}: chunks on a non-file",
                    e.path
                )));
            }
        }
        Ok(())
    }

    /// Where each chunk is stored: chunk id to index in `packs`.
    pub fn chunk_packs(&self) -> HashMap<Id, usize> {
        let mut m = HashMap::new();
        for (i, p) in self.packs.iter().enumerate() {
            for c in &p.chunks {
                m.entry(c.id).or_insert(i);
            }
        }
        m
    }

    /// Files (regular files) and their bytes.
    pub fn totals(&self) -> (u64, u64) {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .fold((0, 0), |(n, b), e| (n + 1, b + e.size))
    }
}

/// A relative `/`-separated path with no empty, `.` or `..` component and no
/// NUL; `""` is the root.
fn check_path(p: &str) -> Result<()> {
    if p.is_empty() {
        return Ok(());
    }
    let bad = p.contains('\0') || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::Invalid(format!("unsafe path {p:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::Dir,
            size: 0,
            mode: 0o755,
            mtime_ns: 1,
            target: None,
            chunks: vec![],
        }
    }

    fn manifest(entries: Vec<Entry>) -> Manifest {
        Manifest {
            format: FORMAT,
            created_ns: 0,
            entries,
            packs: vec![],
        }
    }

    #[test]
    fn round_trip_and_hash_check() {
        let mut m = manifest(vec![dir("a/b"), dir(""), dir("a")]);
        m.sort();
        assert_eq!(m.entries[0].path, "");
        assert_eq!(m.entries[2].path, "a/b");
        let (id, bytes) = m.encode().unwrap();
        assert_eq!(Manifest::decode(&bytes, &id).unwrap(), m);
        let mut bad = bytes.clone();
        bad[bytes.len() / 2] ^= 1;
        assert!(matches!(
            Manifest::decode(&bad, &id),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn unsafe_manifests_are_refused() {
        for p in ["../x", "/etc", "a//b", "a/./b", "a/\0"] {
            let m = manifest(vec![dir(""), dir(p)]);
            assert!(m.validate().is_err(), "{p}");
        }
        // A child before its parent, a child of a symlink.
        assert!(
            manifest(vec![dir(""), dir("a/b"), dir("a")])
                .validate()
                .is_err()
        );
        let mut link = dir("l");
        link.kind = Kind::Symlink;
        link.target = Some("/etc".into());
        assert!(manifest(vec![dir(""), link.clone()]).validate().is_ok());
        assert!(
            manifest(vec![dir(""), link, dir("l/x")])
                .validate()
                .is_err()
        );
        // A file whose chunk is in no pack.
        let f = Entry {
            path: "f".into(),
            kind: Kind::File,
            size: 3,
            mode: 0o644,
            mtime_ns: 0,
            target: None,
            chunks: vec![Id::of(b"abc")],
        };
        assert!(manifest(vec![dir(""), f]).validate().is_err());
        let mut m = manifest(vec![dir("")]);
        m.format = 2;
        assert!(m.validate().is_err());
    }
}
