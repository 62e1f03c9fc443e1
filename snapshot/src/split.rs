//! A manifest stored in pieces, so that the next snapshot of a project stores
//! only the pieces that changed (a project of 30,000 files has a manifest of
//! a few MB; hibernating it unchanged would otherwise store it whole again).
//!
//! [`Manifest::encode`](crate::Manifest::encode) writes the manifest as
//! zstd frames end to end, one per content-defined piece of its JSON, so
//! that an unchanged stretch of entries gives the same frame bytes in every
//! version. The store keeps each frame as a chunk (its plaintext is the
//! frame) in a pack, like file data, and under the snapshot's name a small
//! [`SplitIndex`] listing the frames in order and the packs holding them.
//! The snapshot's id stays the blake3 of the whole manifest (the frames
//! concatenated), which a reader checks after putting it together.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{
    ChunkReader, Error, Id, MANIFEST_MAX, Pack, PackBuilder, PackChunk, PackRef, Result, compress,
};

/// The `format` of a split index (manifests themselves are 1 or 2).
pub const FORMAT_SPLIT: u32 = 3;
/// Smallest piece of a manifest's JSON (except its last).
pub const PIECE_MIN: u32 = 16 * 1024;
/// Average piece the cut points aim for.
pub const PIECE_AVG: u32 = 64 * 1024;
/// Largest piece.
pub const PIECE_MAX: u32 = 256 * 1024;
/// Largest split index a reader accepts (decompressed).
const INDEX_MAX: u64 = 64 * 1024 * 1024;
/// A writer stores every frame again, in fresh packs, rather than leave
/// the manifest spread over more packs than this (each is one more read).
pub const PACKS_MAX: usize = 8;
/// Most frames a manifest may be split into (one per piece of at least
/// [`PIECE_MIN`] bytes of JSON); a manifest framed otherwise (another
/// writer's) is stored whole.
pub const FRAMES_MAX: usize = (MANIFEST_MAX / PIECE_MIN as u64) as usize + 1;
/// Largest frame stored as a piece (so its pack stays well below
/// [`crate::PACK_MAX`]); a manifest with a larger one is stored whole.
pub const FRAME_MAX: usize = 16 * 1024 * 1024;

/// Where the frames of a stored manifest are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitIndex {
    /// Always [`FORMAT_SPLIT`].
    pub format: u32,
    /// The snapshot's id: the blake3 of the frames concatenated.
    pub manifest: Id,
    /// Bytes of the whole manifest.
    pub size: u64,
    /// The frames in order: each the id (blake3) and length of its bytes,
    /// stored as a chunk whose plaintext is the frame.
    pub frames: Vec<PackChunk>,
    /// The packs holding the frames (every chunk in them listed).
    pub packs: Vec<PackRef>,
}

/// The zstd frames of a stored manifest, in order.
pub fn frames(bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = zstd::zstd_safe::find_frame_compressed_size(rest).map_err(|code| {
            Error::Corrupt(format!(
                "manifest frame at byte {}: {}",
                bytes.len() - rest.len(),
                zstd::zstd_safe::get_error_name(code)
            ))
        })?;
        let (frame, tail) = rest.split_at(n);
        out.push(frame);
        rest = tail;
    }
    Ok(out)
}

/// JSON cut at content-defined points and compressed piece by piece: the
/// stored form of a manifest (one valid zstd stream of several frames).
pub(crate) fn compress_pieces(json: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(json.len() / 3);
    for c in fastcdc::v2020::FastCDC::new(json, PIECE_MIN, PIECE_AVG, PIECE_MAX) {
        out.extend_from_slice(&compress(&json[c.offset..c.offset + c.length])?);
    }
    Ok(out)
}

/// What [`SplitIndex::write`] made: the index and the packs it needs
/// stored (the packs of `previous` it reuses are already in the store).
pub struct Split {
    pub index: SplitIndex,
    /// New packs: id and bytes.
    pub new_packs: Vec<(Id, Vec<u8>)>,
}

impl SplitIndex {
    /// Splits the stored manifest `bytes` (id `id`) into frames and packs
    /// those that `previous` (the index of the project's previous
    /// snapshot) does not hold; when the frames would lie in more than
    /// [`PACKS_MAX`] packs, every frame is packed again.
    ///
    /// A manifest in more than [`FRAMES_MAX`] frames, or with a frame over
    /// [`FRAME_MAX`] (a single-frame manifest of an older writer, say), is
    /// refused (`Error::Invalid`): the caller stores it whole.
    pub fn write(id: Id, bytes: &[u8], previous: Option<&SplitIndex>) -> Result<Split> {
        let frames = frames(bytes)?;
        if frames.len() > FRAMES_MAX {
            return Err(Error::Invalid(format!(
                "manifest {id} is in {} frames (at most {FRAMES_MAX} are split)",
                frames.len()
            )));
        }
        if let Some(f) = frames.iter().find(|f| f.len() > FRAME_MAX) {
            return Err(Error::Invalid(format!(
                "manifest {id} has a frame of {} bytes (at most {FRAME_MAX} are split)",
                f.len()
            )));
        }
        let mut known: HashMap<Id, usize> = HashMap::new();
        if let Some(p) = previous {
            for (i, pack) in p.packs.iter().enumerate() {
                for c in &pack.chunks {
                    known.insert(c.id, i);
                }
            }
        }
        let ids: Vec<Id> = frames.iter().map(|f| Id::of(f)).collect();
        let reused: HashSet<usize> = ids.iter().filter_map(|i| known.get(i).copied()).collect();
        // The changed frames of one snapshot fit in one more pack (a few
        // hundred KiB), so this bounds the packs at about `PACKS_MAX`.
        if reused.len() >= PACKS_MAX {
            known.clear();
        }
        let mut packs: Vec<PackRef> = Vec::new();
        let mut used: Vec<usize> = Vec::new();
        let mut new_packs = Vec::new();
        let mut builder = PackBuilder::new();
        let mut added = HashSet::new();
        let close = |b: PackBuilder, packs: &mut Vec<PackRef>, new: &mut Vec<(Id, Vec<u8>)>| {
            let (pid, pbytes, chunks) = b.finish();
            packs.push(PackRef {
                id: pid,
                size: pbytes.len() as u64,
                chunks,
            });
            new.push((pid, pbytes));
        };
        for (frame, fid) in frames.iter().zip(&ids) {
            if let Some(&i) = known.get(fid) {
                if !used.contains(&i) {
                    used.push(i);
                }
                continue;
            }
            if !added.insert(*fid) {
                continue;
            }
            builder.add(*fid, &compress(frame)?, frame.len() as u32);
            if builder.is_full() {
                close(std::mem::take(&mut builder), &mut packs, &mut new_packs);
            }
        }
        if !builder.is_empty() {
            close(builder, &mut packs, &mut new_packs);
        }
        if let Some(p) = previous {
            used.sort_unstable();
            packs.extend(used.iter().map(|&i| p.packs[i].clone()));
        }
        let index = SplitIndex {
            format: FORMAT_SPLIT,
            manifest: id,
            size: bytes.len() as u64,
            frames: frames
                .iter()
                .zip(ids)
                .map(|(f, id)| PackChunk {
                    id,
                    len: f.len() as u32,
                })
                .collect(),
            packs,
        };
        index.validate()?;
        Ok(Split { index, new_packs })
    }

    /// The stored form: JSON compressed with zstd.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::Invalid(format!("cannot encode the split index: {e}")))?;
        Ok(zstd::bulk::compress(&json, 3)?)
    }

    /// Reads the object stored under snapshot `expected`'s name when it is
    /// not the manifest itself, checking that it is a split index of that
    /// snapshot.
    pub fn decode(bytes: &[u8], expected: &Id) -> Result<SplitIndex> {
        let json =
            crate::manifest::decompress(bytes, INDEX_MAX, &format!("split index of {expected}"))?;
        let index: SplitIndex = serde_json::from_slice(&json).map_err(|e| {
            Error::Corrupt(format!(
                "manifest {expected}: neither the manifest nor its split index ({e})"
            ))
        })?;
        if &index.manifest != expected {
            return Err(Error::Corrupt(format!(
                "the split index stored as {expected} is that of {}",
                index.manifest
            )));
        }
        index.validate()?;
        Ok(index)
    }

    /// Format, size bounds, and every frame in a listed pack.
    fn validate(&self) -> Result<()> {
        let bad = |why: String| Error::Invalid(format!("split index of {}: {why}", self.manifest));
        if self.format != FORMAT_SPLIT {
            return Err(bad(format!(
                "format {} (this reader knows {FORMAT_SPLIT})",
                self.format
            )));
        }
        if self.size > MANIFEST_MAX {
            return Err(bad(format!("a manifest of {} bytes", self.size)));
        }
        let total: u64 = self.frames.iter().map(|f| f.len as u64).sum();
        if total != self.size {
            return Err(bad(format!("frames of {total} bytes, size {}", self.size)));
        }
        let held: HashSet<Id> = self
            .packs
            .iter()
            .flat_map(|p| p.chunks.iter().map(|c| c.id))
            .collect();
        if let Some(f) = self.frames.iter().find(|f| !held.contains(&f.id)) {
            return Err(bad(format!("frame {} is in no listed pack", f.id)));
        }
        // Every pack listed is read: each must be needed, and once.
        let wanted: HashSet<Id> = self.frames.iter().map(|f| f.id).collect();
        let mut seen = HashSet::new();
        for p in &self.packs {
            if !seen.insert(p.id) {
                return Err(bad(format!("pack {} is listed twice", p.id)));
            }
            if !p.chunks.iter().any(|c| wanted.contains(&c.id)) {
                return Err(bad(format!("pack {} holds no frame of it", p.id)));
            }
        }
        if self.frames.len() > FRAMES_MAX {
            return Err(bad(format!("{} frames", self.frames.len())));
        }
        Ok(())
    }

    /// The ids of the packs holding frames.
    pub fn pack_ids(&self) -> impl Iterator<Item = &Id> {
        self.packs.iter().map(|p| &p.id)
    }

    /// The whole manifest, from its packs (read and checked by the caller
    /// with [`Pack::open`]), checked against its id.
    pub fn assemble(&self, packs: &HashMap<Id, Pack>) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.size.min(64 << 20) as usize);
        let mut pack_of: HashMap<Id, &Id> = HashMap::new();
        for p in &self.packs {
            for c in &p.chunks {
                pack_of.insert(c.id, &p.id);
            }
        }
        let mut reader = ChunkReader::new()?;
        for f in &self.frames {
            let pid = pack_of
                .get(&f.id)
                .ok_or_else(|| Error::Invalid(format!("frame {} is in no listed pack", f.id)))?;
            let pack = packs
                .get(*pid)
                .ok_or_else(|| Error::Invalid(format!("pack {pid} was not read")))?;
            let frame = reader.read(pack, &f.id)?;
            if frame.len() != f.len as usize {
                return Err(Error::Corrupt(format!(
                    "frame {} is {} bytes, the index says {}",
                    f.id,
                    frame.len(),
                    f.len
                )));
            }
            out.extend_from_slice(frame);
        }
        let got = Id::of(&out);
        if got != self.manifest {
            return Err(Error::Corrupt(format!(
                "manifest {} put together from its frames hashes to {got}",
                self.manifest
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, FORMAT, Kind, Manifest};
    use std::path::PathBuf;

    fn manifest(files: usize, salt: &str) -> Manifest {
        let mut entries = vec![Entry {
            path: PathBuf::new(),
            kind: Kind::Dir,
            size: 0,
            mode: 0o755,
            mtime_ns: 1,
            target: None,
            chunks: vec![],
        }];
        for i in 0..files {
            let name = if i == files / 2 {
                format!("file-{i:06}-{salt}.ts")
            } else {
                format!("file-{i:06}.ts")
            };
            entries.push(Entry {
                path: PathBuf::from(name),
                kind: Kind::File,
                size: 0,
                mode: 0o644,
                mtime_ns: i as i64,
                target: None,
                chunks: vec![],
            });
        }
        let mut m = Manifest {
            format: FORMAT,
            created_ns: 7,
            entries,
            packs: vec![],
        };
        m.sort();
        m
    }

    fn read(split: &Split, previous: &[(Id, Vec<u8>)]) -> Vec<u8> {
        let packs: HashMap<Id, Pack> = split
            .new_packs
            .iter()
            .chain(previous)
            .filter(|(id, _)| split.index.pack_ids().any(|p| p == id))
            .map(|(id, b)| (*id, Pack::open(b.clone(), id).unwrap()))
            .collect();
        split.index.assemble(&packs).unwrap()
    }

    #[test]
    fn an_unchanged_manifest_stores_no_frame_again_and_an_edit_few() {
        let (id, bytes) = manifest(40_000, "a").encode().unwrap();
        assert!(frames(&bytes).unwrap().len() > 4, "several frames");
        let first = SplitIndex::write(id, &bytes, None).unwrap();
        assert_eq!(read(&first, &[]), bytes);
        let stored = first.index.encode().unwrap();
        let back = SplitIndex::decode(&stored, &id).unwrap();
        assert_eq!(back, first.index);
        assert!(SplitIndex::decode(&stored, &Id::of(b"other")).is_err());

        let again = SplitIndex::write(id, &bytes, Some(&first.index)).unwrap();
        assert!(again.new_packs.is_empty());
        assert_eq!(read(&again, &first.new_packs), bytes);

        let (id2, bytes2) = manifest(40_000, "b").encode().unwrap();
        let edit = SplitIndex::write(id2, &bytes2, Some(&first.index)).unwrap();
        let new: usize = edit.new_packs.iter().map(|(_, b)| b.len()).sum();
        assert!(
            new > 0 && new < bytes2.len() / 4,
            "{new} of {}",
            bytes2.len()
        );
        assert_eq!(read(&edit, &first.new_packs), bytes2);
        let m = Manifest::decode(&bytes2, &id2).unwrap();
        assert_eq!(m, manifest(40_000, "b"));
    }

    #[test]
    fn a_manifest_framed_otherwise_is_refused_for_splitting() {
        let m = manifest(200, "a");
        let json = serde_json::to_vec(&m).unwrap();
        // An older writer's single frame, over the frame bound.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let big: Vec<u8> = (0..FRAME_MAX + 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let one = zstd::bulk::compress(&big, 1).unwrap();
        assert!(one.len() > FRAME_MAX);
        assert!(matches!(
            SplitIndex::write(Id::of(&one), &one, None),
            Err(Error::Invalid(_))
        ));
        // A small single frame is fine.
        let small = zstd::bulk::compress(&json, 3).unwrap();
        let split = SplitIndex::write(Id::of(&small), &small, None).unwrap();
        assert_eq!(split.index.frames.len(), 1);
    }

    #[test]
    fn an_index_listing_a_pack_twice_or_for_nothing_is_refused() {
        let (id, bytes) = manifest(5_000, "a").encode().unwrap();
        let split = SplitIndex::write(id, &bytes, None).unwrap();
        let mut twice = split.index.clone();
        twice.packs.push(twice.packs[0].clone());
        assert!(SplitIndex::decode(&twice.encode().unwrap(), &id).is_err());
        let mut idle = split.index.clone();
        idle.packs.push(crate::PackRef {
            id: Id::of(b"unrelated"),
            size: 100,
            chunks: vec![PackChunk {
                id: Id::of(b"x"),
                len: 1,
            }],
        });
        assert!(SplitIndex::decode(&idle.encode().unwrap(), &id).is_err());
    }

    #[test]
    fn a_tampered_frame_is_refused() {
        let (id, bytes) = manifest(5_000, "a").encode().unwrap();
        let mut split = SplitIndex::write(id, &bytes, None).unwrap();
        let (pid, b) = split.new_packs.remove(0);
        let mut packs = HashMap::new();
        packs.insert(pid, Pack::open(b, &pid).unwrap());
        let mut index = split.index.clone();
        index.manifest = Id::of(b"other");
        assert!(matches!(index.assemble(&packs), Err(Error::Corrupt(_))));
        index = split.index.clone();
        index.frames.reverse();
        if index.frames.len() > 1 {
            assert!(index.assemble(&packs).is_err());
        }
    }
}
