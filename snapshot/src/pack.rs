//! Pack objects: compressed chunks end to end, then an index, then a
//! trailer. A pack's name is the blake3 of the whole object.
//!
//! ```text
//! "DGSNPK01"                                   8 bytes
//! chunk 0 (zstd frame) | chunk 1 | ...
//! index: per chunk, id (32) offset (u64 LE) compressed length (u32 LE) length (u32 LE)
//! trailer: chunk count (u32 LE) index offset (u64 LE) "DGSNPKIX"
//! ```

use std::collections::HashMap;

use crate::{Error, Id, Result};

const MAGIC: &[u8; 8] = b"DGSNPK01";
const INDEX_MAGIC: &[u8; 8] = b"DGSNPKIX";
const INDEX_ENTRY: usize = 48;
const TRAILER: usize = 20;
/// A pack is closed once it holds this many bytes.
pub const PACK_TARGET: usize = 4 * 1024 * 1024;
/// Largest pack a reader accepts.
pub const PACK_MAX: u64 = 64 * 1024 * 1024;

/// Builds one pack in memory.
pub struct PackBuilder {
    buf: Vec<u8>,
    index: Vec<(Id, u64, u32, u32)>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    pub fn new() -> PackBuilder {
        let mut buf = Vec::with_capacity(PACK_TARGET + 1024 * 1024);
        buf.extend_from_slice(MAGIC);
        PackBuilder {
            buf,
            index: Vec::new(),
        }
    }

    /// Adds a chunk already compressed (see [`compress`]).
    pub fn add(&mut self, id: Id, compressed: &[u8], len: u32) {
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(compressed);
        self.index.push((id, offset, compressed.len() as u32, len));
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether the pack reached its target size.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= PACK_TARGET
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The finished pack: its id, bytes and chunks.
    pub fn finish(mut self) -> (Id, Vec<u8>, Vec<crate::PackChunk>) {
        let index_offset = self.buf.len() as u64;
        for (id, off, clen, len) in &self.index {
            self.buf.extend_from_slice(&id.0);
            self.buf.extend_from_slice(&off.to_le_bytes());
            self.buf.extend_from_slice(&clen.to_le_bytes());
            self.buf.extend_from_slice(&len.to_le_bytes());
        }
        self.buf
            .extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&index_offset.to_le_bytes());
        self.buf.extend_from_slice(INDEX_MAGIC);
        let id = Id::of(&self.buf);
        let chunks = self
            .index
            .into_iter()
            .map(|(id, _, _, len)| crate::PackChunk { id, len })
            .collect();
        (id, self.buf, chunks)
    }
}

/// Compression level of every frame the format writes.
const LEVEL: i32 = 3;

/// A chunk as stored in a pack: one zstd frame.
pub fn compress(raw: &[u8]) -> Result<Vec<u8>> {
    Ok(zstd::bulk::compress(raw, LEVEL)?)
}

/// Compresses chunk after chunk as [`compress`] does, byte for byte, with
/// one zstd context and one output buffer kept for all of them (a new
/// context per chunk allocates and clears its tables every time: a tenth
/// of a cut's CPU for a tree of small files).
pub struct ChunkCompressor {
    zstd: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
}

impl ChunkCompressor {
    pub fn new() -> Result<ChunkCompressor> {
        Ok(ChunkCompressor {
            zstd: zstd::bulk::Compressor::new(LEVEL)?,
            out: Vec::new(),
        })
    }

    /// `raw` as one zstd frame, borrowed until the next call.
    pub fn compress(&mut self, raw: &[u8]) -> Result<&[u8]> {
        self.out.clear();
        self.out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        self.zstd.compress_to_buffer(raw, &mut self.out)?;
        Ok(&self.out)
    }
}

/// Reads chunk after chunk out of packs with one zstd context and one
/// buffer kept for all of them (a restore reads thousands).
pub struct ChunkReader {
    zstd: zstd::bulk::Decompressor<'static>,
    out: Vec<u8>,
}

impl ChunkReader {
    pub fn new() -> Result<ChunkReader> {
        Ok(ChunkReader {
            zstd: zstd::bulk::Decompressor::new()?,
            out: Vec::new(),
        })
    }

    /// Chunk `id` of `pack`, checked against its id, borrowed until the
    /// next call.
    pub fn read(&mut self, pack: &Pack, id: &Id) -> Result<&[u8]> {
        let &(off, clen, len) = pack
            .index
            .get(id)
            .ok_or_else(|| Error::Invalid(format!("chunk {id} is not in its pack")))?;
        self.out.clear();
        self.out.reserve(len);
        self.zstd
            .decompress_to_buffer(&pack.bytes[off..off + clen], &mut self.out)
            .map_err(|e| Error::Corrupt(format!("chunk {id}: {e}")))?;
        if self.out.len() != len || &Id::of(&self.out) != id {
            return Err(Error::Corrupt(format!("chunk {id} does not match its id")));
        }
        Ok(&self.out)
    }
}

/// A pack read back and checked against its name.
pub struct Pack {
    bytes: Vec<u8>,
    index: HashMap<Id, (usize, usize, usize)>,
}

impl Pack {
    /// Checks that `bytes` hash to `id` and parses the index.
    pub fn open(bytes: Vec<u8>, id: &Id) -> Result<Pack> {
        let got = Id::of(&bytes);
        if &got != id {
            return Err(Error::Corrupt(format!("pack {id} hashes to {got}")));
        }
        let bad = |why: &str| Error::Invalid(format!("pack {id}: {why}"));
        let n = bytes.len();
        if n < MAGIC.len() + TRAILER || &bytes[..8] != MAGIC || &bytes[n - 8..] != INDEX_MAGIC {
            return Err(bad("not a pack"));
        }
        let t = &bytes[n - TRAILER..];
        let count = u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize;
        let mut o = [0u8; 8];
        o.copy_from_slice(&t[4..12]);
        let index_offset = u64::from_le_bytes(o) as usize;
        if index_offset < MAGIC.len()
            || count
                .checked_mul(INDEX_ENTRY)
                .and_then(|l| l.checked_add(index_offset))
                != Some(n - TRAILER)
        {
            return Err(bad("index out of bounds"));
        }
        let mut index = HashMap::with_capacity(count);
        for e in bytes[index_offset..n - TRAILER].chunks_exact(INDEX_ENTRY) {
            let mut cid = [0u8; 32];
            cid.copy_from_slice(&e[..32]);
            o.copy_from_slice(&e[32..40]);
            let off = u64::from_le_bytes(o) as usize;
            let clen = u32::from_le_bytes([e[40], e[41], e[42], e[43]]) as usize;
            let len = u32::from_le_bytes([e[44], e[45], e[46], e[47]]) as usize;
            if off < MAGIC.len() || off.checked_add(clen).is_none_or(|end| end > index_offset) {
                return Err(bad("chunk out of bounds"));
            }
            // A chunk (2 MiB at most) or a manifest frame (16 MiB) is never
            // bigger than a pack may be: a reader allocates this much.
            if len as u64 > PACK_MAX {
                return Err(bad("chunk larger than a pack may be"));
            }
            index.insert(Id(cid), (off, clen, len));
        }
        Ok(Pack { bytes, index })
    }

    pub fn chunk_ids(&self) -> impl Iterator<Item = &Id> {
        self.index.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let mut b = PackBuilder::new();
        let chunks: Vec<Vec<u8>> = vec![b"hello".to_vec(), vec![7u8; 100_000], vec![]];
        for c in &chunks {
            b.add(Id::of(c), &compress(c).unwrap(), c.len() as u32);
        }
        let (id, bytes, ids) = b.finish();
        assert_eq!(ids.len(), 3);
        let p = Pack::open(bytes.clone(), &id).unwrap();
        for c in &chunks {
            assert_eq!(
                ChunkReader::new().unwrap().read(&p, &Id::of(c)).unwrap(),
                &c[..]
            );
        }
        assert!(
            ChunkReader::new()
                .unwrap()
                .read(&p, &Id::of(b"nope"))
                .is_err()
        );
        let mut bad = bytes;
        bad[10] ^= 1;
        assert!(matches!(Pack::open(bad, &id), Err(Error::Corrupt(_))));
    }

    #[test]
    fn a_kept_compressor_writes_the_frames_a_new_one_does() {
        let mut c = ChunkCompressor::new().unwrap();
        let text: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for raw in [
            &text[..],
            b"hello",
            &[][..],
            &text[..1000],
            &vec![7u8; 2 << 20][..],
        ] {
            assert_eq!(c.compress(raw).unwrap(), &compress(raw).unwrap()[..]);
        }
    }

    #[test]
    fn one_reader_reads_chunk_after_chunk() {
        let chunks: Vec<Vec<u8>> = vec![vec![1u8; 300_000], b"small".to_vec(), vec![]];
        let mut b = PackBuilder::new();
        for c in &chunks {
            b.add(Id::of(c), &compress(c).unwrap(), c.len() as u32);
        }
        let (id, bytes, _) = b.finish();
        let p = Pack::open(bytes, &id).unwrap();
        let mut r = ChunkReader::new().unwrap();
        for c in chunks.iter().chain(chunks.iter().rev()) {
            assert_eq!(r.read(&p, &Id::of(c)).unwrap(), &c[..]);
        }
        assert!(r.read(&p, &Id::of(b"nope")).is_err());
        assert_eq!(r.read(&p, &Id::of(b"small")).unwrap(), b"small");
    }
}
