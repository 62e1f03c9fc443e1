//! Content-defined chunking (FastCDC 2020): a small edit in a large file
//! changes only the chunks around it, so only those are stored again.

use std::io::{self, Read};

use fastcdc::v2020::{MASKS, Normalization, logarithm2};

/// Smallest chunk (except a file's last one).
pub const CHUNK_MIN: u32 = 128 * 1024;
/// Average chunk size the cut points aim for.
pub const CHUNK_AVG: u32 = 512 * 1024;
/// Largest chunk.
pub const CHUNK_MAX: u32 = 2 * 1024 * 1024;

/// Cuts files into chunks, one after the other, through one buffer of
/// [`CHUNK_MAX`] bytes kept for all of them. The cut points are FastCDC
/// 2020's (normalisation level 1, the original gear table) over a window of
/// at most `CHUNK_MAX` bytes from each chunk's start, the same as
/// `fastcdc::v2020::StreamCDC` gives; only the copying differs (that one
/// allocates and zeroes a buffer per file and moves the whole of it after
/// every chunk: most of a cut's CPU for a tree of small files).
pub struct Chunker {
    buf: Box<[u8]>,
    masks: (u64, u64),
}

impl Default for Chunker {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunker {
    pub fn new() -> Chunker {
        let bits = logarithm2(CHUNK_AVG);
        let level = Normalization::Level1.bits();
        Chunker {
            buf: vec![0u8; CHUNK_MAX as usize].into_boxed_slice(),
            masks: (
                MASKS[(bits + level) as usize],
                MASKS[(bits - level) as usize],
            ),
        }
    }

    /// The chunks of `source`'s bytes, read to its end.
    pub fn chunks<R: Read>(&mut self, source: R) -> Chunks<'_, R> {
        Chunks {
            chunker: self,
            source,
            start: 0,
            end: 0,
            eof: false,
        }
    }
}

/// The chunks of one source, in order; an empty source has none.
pub struct Chunks<'a, R: Read> {
    chunker: &'a mut Chunker,
    source: R,
    /// The unreturned bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunks<'_, R> {
    /// The next chunk, borrowed until the next call.
    pub fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        let cap = self.chunker.buf.len();
        if !self.eof && self.end - self.start < cap {
            // Only the bytes not yet returned move to the front.
            self.chunker.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            while self.end < cap {
                match self.source.read(&mut self.chunker.buf[self.end..]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => self.end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let window = &self.chunker.buf[self.start..self.end];
        if window.is_empty() {
            return Ok(None);
        }
        let (mask_s, mask_l) = self.chunker.masks;
        let (_, count) = fastcdc::v2020::cut(
            window,
            CHUNK_MIN as usize,
            CHUNK_AVG as usize,
            CHUNK_MAX as usize,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        let chunk = self.start..self.start + count;
        self.start += count;
        Ok(Some(&self.chunker.buf[chunk]))
    }

    /// Every chunk, copied.
    #[cfg(test)]
    pub fn collect_all(mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Some(c) = self.next_chunk()? {
            out.push(c.to_vec());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_input_in_bounds() {
        let d = data(5 << 20, 1);
        let chunks = Chunker::new().chunks(&d[..]).collect_all().unwrap();
        assert!(chunks.len() > 2);
        assert_eq!(chunks.concat(), d);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= CHUNK_MIN as usize && c.len() <= CHUNK_MAX as usize);
        }
        assert!(
            Chunker::new()
                .chunks(&[][..])
                .collect_all()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_small_edit_changes_few_chunks() {
        let mut d = data(8 << 20, 2);
        let ids = |d: &[u8]| -> Vec<crate::Id> {
            let chunks = Chunker::new().chunks(d).collect_all().unwrap();
            chunks.iter().map(|c| crate::Id::of(c)).collect()
        };
        let before = ids(&d);
        d[4 << 20] ^= 0xff;
        let after = ids(&d);
        let changed = after.iter().filter(|id| !before.contains(id)).count();
        assert!((1..=2).contains(&changed), "{changed} chunks changed");
    }

    /// A reader giving at most `n` bytes per read, as pipes and some file
    /// systems do.
    struct Short<'a>(&'a [u8], usize);

    impl Read for Short<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn cut_points_are_fastcdc_stream_ones_whatever_the_reads_and_files_before() {
        // Earlier snapshots were cut by fastcdc's StreamCDC: the same cut
        // points keep their chunks reusable.
        let mut chunker = Chunker::new();
        for (len, seed, read) in [(9 << 20, 3, 1 << 20), (5_000, 4, 64), (3 << 20, 5, 7_000)] {
            let d = data(len, seed);
            let reference: Vec<Vec<u8>> =
                fastcdc::v2020::StreamCDC::new(&d[..], CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
                    .map(|c| c.unwrap().data)
                    .collect();
            let ours = chunker.chunks(Short(&d, read)).collect_all().unwrap();
            assert_eq!(ours, reference, "{len} bytes read {read} at a time");
        }
    }
}
