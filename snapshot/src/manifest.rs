//! The manifest: every path of the snapshot with its metadata and, for files,
//! the ids of its chunks; and the packs those chunks are stored in. Stored
//! as zstd-compressed JSON; the snapshot's id is the blake3 of those stored
//! bytes.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Error, Id, Result};

/// The format version this crate writes when every name and symlink target
/// is UTF-8 (the manifest is then exactly a format 1 one, which older
/// readers open).
pub const FORMAT: u32 = 1;
/// The format version of a manifest with a name or a symlink target that
/// is not UTF-8 (`path_hex`, `target_hex`). This crate reads both.
pub const FORMAT_BYTES: u32 = 2;
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
#[serde(try_from = "EntryRepr", into = "EntryRepr")]
pub struct Entry {
    /// Relative to the project root, `/`-separated; `""` is the root itself.
    /// Any bytes but NUL (stored as `path`, or as `path_hex` when not UTF-8).
    pub path: PathBuf,
    pub kind: Kind,
    /// Bytes of a file (0 for directories; the target's length for symlinks).
    pub size: u64,
    /// Permission bits (`0o7777` at most; no file type bits).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// A symlink's target, as stored in the link (may be absolute or point
    /// outside the root; `target`, or `target_hex` when not UTF-8).
    pub target: Option<PathBuf>,
    /// A file's chunks, in order; their lengths add up to `size`.
    pub chunks: Vec<Id>,
}

impl Entry {
    /// Whether the path or the target needs `FORMAT_BYTES`.
    fn needs_bytes(&self) -> bool {
        self.path.to_str().is_none() || self.target.as_ref().is_some_and(|t| t.to_str().is_none())
    }

    /// Whether this is an entry at the top of the root (not the root).
    pub fn is_top_level(&self) -> bool {
        let b = self.path.as_os_str().as_bytes();
        !b.is_empty() && !b.contains(&b'/')
    }
}

/// How an entry is stored: a name or target that is not UTF-8 goes in
/// lowercase hex instead (`path_hex`, `target_hex`).
#[derive(Serialize, Deserialize)]
struct EntryRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_hex: Option<String>,
    kind: Kind,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chunks: Vec<Id>,
}

/// A path as stored: `(utf8, hex)`, exactly one of them set.
fn store_path(p: &std::path::Path) -> (Option<String>, Option<String>) {
    match p.to_str() {
        Some(s) => (Some(s.to_owned()), None),
        None => (None, Some(hex::encode(p.as_os_str().as_bytes()))),
    }
}

fn load_path(utf8: Option<String>, hexed: Option<String>, what: &str) -> Result<Option<PathBuf>> {
    match (utf8, hexed) {
        (Some(s), None) => Ok(Some(PathBuf::from(s))),
        (None, Some(h)) => {
            let bytes = hex::decode(&h)
                .map_err(|e| Error::Invalid(format!("bad {what}_hex {h:?}: {e}")))?;
            if std::str::from_utf8(&bytes).is_ok() {
                // One spelling per path: UTF-8 is stored as such.
                return Err(Error::Invalid(format!(
                    "{what}_hex {h:?} is UTF-8: it belongs in {what}"
                )));
            }
            Ok(Some(PathBuf::from(OsStr::from_bytes(&bytes))))
        }
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(Error::Invalid(format!(
            "both {what} and {what}_hex are set"
        ))),
    }
}

impl From<Entry> for EntryRepr {
    fn from(e: Entry) -> EntryRepr {
        let (path, path_hex) = store_path(&e.path);
        let (target, target_hex) = match &e.target {
            Some(t) => store_path(t),
            None => (None, None),
        };
        EntryRepr {
            path,
            path_hex,
            kind: e.kind,
            size: e.size,
            mode: e.mode,
            mtime_ns: e.mtime_ns,
            target,
            target_hex,
            chunks: e.chunks,
        }
    }
}

impl TryFrom<EntryRepr> for Entry {
    type Error = Error;

    fn try_from(r: EntryRepr) -> Result<Entry> {
        let path = load_path(r.path, r.path_hex, "path")?
            .ok_or_else(|| Error::Invalid("an entry with no path".into()))?;
        Ok(Entry {
            path,
            kind: r.kind,
            size: r.size,
            mode: r.mode,
            mtime_ns: r.mtime_ns,
            target: load_path(r.target, r.target_hex, "target")?,
            chunks: r.chunks,
        })
    }
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

/// Decompresses a stored zstd object (`what`, for errors) of at most `max`
/// bytes decompressed.
pub(crate) fn decompress(bytes: &[u8], max: u64, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(bytes)?
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Corrupt(format!("{what}: {e}")))?;
    if out.len() as u64 > max {
        return Err(Error::Invalid(format!("{what} is larger than {max} bytes")));
    }
    Ok(out)
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
    /// The format version this manifest needs: [`FORMAT`], or
    /// [`FORMAT_BYTES`] when a name or a target is not UTF-8.
    pub fn needed_format(&self) -> u32 {
        if self.entries.iter().any(Entry::needs_bytes) {
            FORMAT_BYTES
        } else {
            FORMAT
        }
    }

    /// The stored form: JSON compressed with zstd, in one frame per
    /// content-defined piece (see [`crate::split`]). Its blake3 is the
    /// snapshot's id.
    pub fn encode(&self) -> Result<(Id, Vec<u8>)> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::Invalid(format!("cannot encode the manifest: {e}")))?;
        let bytes = crate::split::compress_pieces(&json)?;
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
        let json = decompress(bytes, MANIFEST_MAX, &format!("manifest {expected}"))?;
        let m: Manifest = serde_json::from_slice(&json)
            .map_err(|e| Error::Corrupt(format!("manifest {expected}: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    /// Sorts entries so that parents come before their children.
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| {
            let (a, b) = (a.path.as_os_str().as_bytes(), b.path.as_os_str().as_bytes());
            a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
        });
    }

    /// Checks the rules a reader relies on before writing anything: format
    /// version; safe, unique paths whose parents are directories listed
    /// earlier; chunk lengths unknown here, but every chunk of a file is in
    /// a listed pack.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT && self.format != FORMAT_BYTES {
            return Err(Error::Invalid(format!(
                "manifest format {} (this reader knows {FORMAT} and {FORMAT_BYTES})",
                self.format
            )));
        }
        if self.format == FORMAT
            && let Some(e) = self.entries.iter().find(|e| e.needs_bytes())
        {
            return Err(Error::Invalid(format!(
                "{:?}: a name or target that is not UTF-8 in a format {FORMAT} manifest",
                e.path
            )));
        }
        let stored: HashMap<&Id, u32> = self
            .packs
            .iter()
            .flat_map(|p| p.chunks.iter())
            .map(|c| (&c.id, c.len))
            .collect();
        let mut dirs: HashSet<&[u8]> = HashSet::new();
        let mut seen: HashSet<&[u8]> = HashSet::new();
        for e in &self.entries {
            let path = e.path.as_os_str().as_bytes();
            check_path(path)?;
            if !seen.insert(path) {
                return Err(Error::Invalid(format!("duplicate path {:?}", e.path)));
            }
            if !path.is_empty() {
                let parent = match path.iter().rposition(|&c| c == b'/') {
                    Some(i) => &path[..i],
                    None => &[][..],
                };
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
                    dirs.insert(path);
                }
                Kind::Symlink => {
                    let t = e.target.as_deref().map(|t| t.as_os_str().as_bytes());
                    let t = t.unwrap_or_default();
                    if t.is_empty() || t.contains(&0) || path.is_empty() {
                        return Err(Error::Invalid(format!("{:?}: bad symlink", e.path)));
                    }
                }
                Kind::File => {
                    if path.is_empty() {
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
fn check_path(p: &[u8]) -> Result<()> {
    if p.is_empty() {
        return Ok(());
    }
    let bad = p.contains(&0)
        || p.split(|&c| c == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..");
    if bad {
        return Err(Error::Invalid(format!(
            "unsafe path {:?}",
            OsStr::from_bytes(p)
        )));
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
        assert_eq!(m.entries[0].path, std::path::Path::new(""));
        assert_eq!(m.entries[2].path, std::path::Path::new("a/b"));
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
        m.format = 3;
        assert!(m.validate().is_err());
    }

    fn decode_json(json: &str) -> Result<Manifest> {
        let bytes = zstd::bulk::compress(json.as_bytes(), 3).unwrap();
        Manifest::decode(&bytes, &Id::of(&bytes))
    }

    #[test]
    fn a_format_1_manifest_as_older_agents_wrote_it_still_reads() {
        let chunk = Id::of(b"echo hi\n");
        let pack = Id::of(b"some pack");
        let json = format!(
            r#"{{"format":1,"created_ns":5,"entries":[
              {{"path":"","kind":"dir","size":0,"mode":493,"mtime_ns":1}},
              {{"path":"run.sh","kind":"file","size":8,"mode":493,"mtime_ns":2,"chunks":["{chunk}"]}},
              {{"path":"outside","kind":"symlink","size":13,"mode":511,"mtime_ns":-3,"target":"/etc/hostname"}}
            ],"packs":[{{"id":"{pack}","size":99,"chunks":[{{"id":"{chunk}","len":8}}]}}]}}"#
        );
        let m = decode_json(&json).unwrap();
        assert_eq!(m.format, FORMAT);
        assert_eq!(m.entries[1].path, std::path::Path::new("run.sh"));
        assert_eq!(m.entries[1].chunks, vec![chunk]);
        assert_eq!(
            m.entries[2].target.as_deref(),
            Some(std::path::Path::new("/etc/hostname"))
        );
        assert_eq!(m.needed_format(), FORMAT);
        // Written again, it is the same format 1 manifest.
        let (_, bytes) = m.encode().unwrap();
        let back: serde_json::Value =
            serde_json::from_slice(&zstd::bulk::decompress(&bytes, 1 << 20).unwrap()).unwrap();
        assert_eq!(back["entries"][1]["path"], "run.sh");
        assert!(back["entries"][1].get("path_hex").is_none());
    }

    #[test]
    fn names_and_targets_that_are_not_utf8_round_trip_in_format_2() {
        let name = PathBuf::from(OsStr::from_bytes(b"caf\xe9"));
        let mut d = dir("");
        d.path = name.clone();
        let mut link = dir("x");
        link.path = name.join(OsStr::from_bytes(b"l\xff"));
        link.kind = Kind::Symlink;
        link.target = Some(PathBuf::from(OsStr::from_bytes(b"../\xfe")));
        let mut m = manifest(vec![dir(""), d, link]);
        // Format 1 cannot hold them.
        assert!(m.validate().is_err());
        m.format = m.needed_format();
        assert_eq!(m.format, FORMAT_BYTES);
        m.validate().unwrap();
        let (id, bytes) = m.encode().unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&zstd::bulk::decompress(&bytes, 1 << 20).unwrap()).unwrap();
        assert_eq!(json["entries"][1]["path_hex"], "636166e9");
        assert!(json["entries"][1].get("path").is_none());
        assert_eq!(json["entries"][2]["target_hex"], "2e2e2ffe");
        let back = Manifest::decode(&bytes, &id).unwrap();
        assert_eq!(back, m);
        assert_eq!(
            back.entries[2].path.as_os_str().as_bytes(),
            b"caf\xe9/l\xff"
        );
    }

    #[test]
    fn a_path_is_spelled_one_way() {
        let base = r#"{"format":2,"created_ns":0,"packs":[],"entries":[{"path":"","kind":"dir","size":0,"mode":493,"mtime_ns":1},"#;
        // UTF-8 in hex, both spellings, neither.
        for e in [
            r#"{"path_hex":"61","kind":"dir","size":0,"mode":493,"mtime_ns":1}"#,
            r#"{"path":"a","path_hex":"ff","kind":"dir","size":0,"mode":493,"mtime_ns":1}"#,
            r#"{"kind":"dir","size":0,"mode":493,"mtime_ns":1}"#,
            r#"{"path_hex":"2f6574ff","kind":"dir","size":0,"mode":493,"mtime_ns":1}"#,
        ] {
            assert!(decode_json(&format!("{base}{e}]}}")).is_err(), "{e}");
        }
        let ok = r#"{"path_hex":"ff","kind":"dir","size":0,"mode":493,"mtime_ns":1}"#;
        decode_json(&format!("{base}{ok}]}}")).unwrap();
    }
}
