//! Content-defined chunking (FastCDC 2020): a small edit in a large file
//! changes only the chunks around it, so only those are stored again.

use std::io::Read;

/// Smallest chunk (except a file's last one).
pub const CHUNK_MIN: u32 = 128 * 1024;
/// Average chunk size the cut points aim for.
pub const CHUNK_AVG: u32 = 512 * 1024;
/// Largest chunk.
pub const CHUNK_MAX: u32 = 2 * 1024 * 1024;

/// The chunks of one file's bytes, in order. An empty file has none.
pub struct Chunker<R: Read> {
    inner: fastcdc::v2020::StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    pub fn new(source: R) -> Chunker<R> {
        Chunker {
            inner: fastcdc::v2020::StreamCDC::new(source, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| match r {
            Ok(c) => Ok(c.data),
            Err(fastcdc::v2020::Error::IoError(e)) => Err(e),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        })
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
        let chunks: Vec<_> = Chunker::new(&d[..]).map(|c| c.unwrap()).collect();
        assert!(chunks.len() > 2);
        assert_eq!(chunks.concat(), d);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= CHUNK_MIN as usize && c.len() <= CHUNK_MAX as usize);
        }
        assert_eq!(Chunker::new(&[][..]).count(), 0);
    }

    #[test]
    fn a_small_edit_changes_few_chunks() {
        let mut d = data(8 << 20, 2);
        let before: Vec<_> = Chunker::new(&d[..])
            .map(|c| crate::Id::of(&c.unwrap()))
            .collect();
        d[4 << 20] ^= 0xff;
        let after: Vec<_> = Chunker::new(&d[..])
            .map(|c| crate::Id::of(&c.unwrap()))
            .collect();
        let changed = after.iter().filter(|id| !before.contains(id)).count();
        assert!((1..=2).contains(&changed), "{changed} chunks changed");
    }
}
