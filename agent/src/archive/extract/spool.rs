//! Where an archive waits while it is checked and extracted: in memory up
//! to a limit, else in an unnamed temporary file, read by each extract
//! thread through its own cheap reader.

use std::io::{self, Read, Seek, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::Bytes;

use super::MEMORY_SPOOL;
#[cfg(test)]
use crate::error::Error;
use crate::error::Result;

/// A whole archive, in memory or in an unnamed temporary file.
#[derive(Clone)]
pub(crate) enum Spool {
    Memory(Bytes),
    File(Arc<std::fs::File>, u64),
}

impl Spool {
    pub(super) fn len(&self) -> u64 {
        match self {
            Spool::Memory(b) => b.len() as u64,
            Spool::File(_, len) => *len,
        }
    }
}

/// Collects an archive arriving in order (a client stream).
pub(crate) struct SpoolWriter {
    mem: Vec<u8>,
    file: Option<std::fs::File>,
    len: u64,
    limit: u64,
}

impl Default for SpoolWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SpoolWriter {
    pub(crate) fn new() -> Self {
        Self::with_limit(MEMORY_SPOOL)
    }

    /// A spool that moves to a temporary file past `limit` bytes.
    pub(crate) fn with_limit(limit: u64) -> Self {
        SpoolWriter {
            mem: Vec::new(),
            file: None,
            len: 0,
            limit,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) -> Result<()> {
        if self.file.is_none() && self.len + data.len() as u64 > self.limit {
            let mut f = tempfile::tempfile()?;
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        match &mut self.file {
            Some(f) => f.write_all(data)?,
            None => self.mem.extend_from_slice(data),
        }
        self.len += data.len() as u64;
        Ok(())
    }

    pub(crate) fn finish(self) -> Spool {
        match self.file {
            Some(f) => Spool::File(Arc::new(f), self.len),
            None => Spool::Memory(Bytes::from(self.mem)),
        }
    }
}

/// Collects an archive of known size arriving in parts at any offset (a
/// parallel download).
#[cfg(test)] // Was fed by ranged S3 GETs; kept for its tests.
pub(crate) enum SpoolAt {
    Memory(Vec<u8>),
    File(std::fs::File, u64),
}

#[cfg(test)]
impl SpoolAt {
    /// A spool in memory up to `limit` bytes, else in a temporary file.
    pub(crate) fn with_limit(size: u64, limit: u64) -> Result<SpoolAt> {
        if size <= limit {
            Ok(SpoolAt::Memory(vec![0; size as usize]))
        } else {
            let f = tempfile::tempfile()?;
            f.set_len(size)?;
            Ok(SpoolAt::File(f, size))
        }
    }

    pub(crate) fn put(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            SpoolAt::Memory(m) => {
                let at = offset as usize;
                m.get_mut(at..at + data.len())
                    .ok_or_else(|| Error::Internal("download part beyond the object".into()))?
                    .copy_from_slice(data);
            }
            SpoolAt::File(f, _) => f.write_all_at(data, offset)?,
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Spool {
        match self {
            SpoolAt::Memory(m) => Spool::Memory(Bytes::from(m)),
            SpoolAt::File(f, len) => Spool::File(Arc::new(f), len),
        }
    }
}

/// A reader over a spool with its own position; cheap to clone, so each
/// extract thread reads the archive independently.
#[derive(Clone)]
pub(super) struct SpoolReader {
    pub(super) spool: Spool,
    pub(super) pos: u64,
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &self.spool {
            Spool::Memory(b) => {
                let start = (self.pos as usize).min(b.len());
                let n = buf.len().min(b.len() - start);
                buf[..n].copy_from_slice(&b[start..start + n]);
                n
            }
            Spool::File(f, len) => {
                let want = (buf.len() as u64).min(len.saturating_sub(self.pos)) as usize;
                f.read_at(&mut buf[..want], self.pos)?
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SpoolReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.spool.len();
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        self.pos = p;
        Ok(p)
    }
}
