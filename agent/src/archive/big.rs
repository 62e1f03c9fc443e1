//! Big files in an archive without holding them in memory. A first pass
//! streams the file through a zip writer whose sink keeps only the headers
//! (the zip crate computes the CRC and sizes and patches the local header);
//! the result is a one-entry zip made of those headers around the file
//! itself, read again from disk when the entry is raw-copied into the
//! archive. The second read is checked against the first: a file that
//! changed in between fails the archive instead of corrupting it.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::create::zip_error;
use crate::error::{Error, Result};

/// A one-entry zip whose content is the file on disk, and the running CRC
/// of that content as the raw copy reads it.
pub(crate) struct BigEntry {
    pub(crate) zip: ZipArchive<VirtualZip>,
    check: Arc<Mutex<(flate2::Crc, u64)>>,
}

/// Builds the one-entry zip of a big file (stored, not deflated: big files
/// in a project are mostly media and binaries already compressed).
pub(crate) fn prepare(name: &str, file: std::fs::File, mode: u32, mtime: i64) -> Result<BigEntry> {
    let file = Arc::new(file);
    let in_data = Arc::new(AtomicBool::new(false));
    let sink = HeaderSink {
        in_data: in_data.clone(),
        ..Default::default()
    };
    let mut w = ZipWriter::new(sink);
    let size = file.metadata()?.len();
    let opts = super::mtime::stamped(mtime)
        .compression_method(CompressionMethod::Stored)
        .unix_permissions(mode)
        .large_file(size >= u32::MAX as u64 - 65536);
    w.start_file(name, opts).map_err(zip_error)?;
    in_data.store(true, Ordering::Relaxed);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])?;
        at += n as u64;
    }
    in_data.store(false, Ordering::Relaxed);
    let sink = w.finish().map_err(zip_error)?;
    let data_start = sink
        .data_start
        .ok_or_else(|| Error::Internal("big entry without data".into()))?;
    let check = Arc::new(Mutex::new((flate2::Crc::new(), 0)));
    let zip = VirtualZip {
        prefix: Arc::from(sink.prefix),
        file,
        data_start,
        data_len: sink.data_len,
        suffix: Arc::from(sink.suffix),
        pos: 0,
        check: check.clone(),
    };
    Ok(BigEntry {
        zip: ZipArchive::new(zip).map_err(zip_error)?,
        check,
    })
}

/// After the raw copy: the file read the second time must be the file that
/// was hashed the first time.
pub(crate) fn verify(entry: &mut BigEntry, name: &str) -> Result<()> {
    let (expected, len) = entry
        .zip
        .by_index_raw(0)
        .map(|f| (f.crc32(), f.compressed_size()))
        .map_err(zip_error)?;
    let check = entry.check.lock().unwrap_or_else(|p| p.into_inner());
    if check.1 != len || check.0.sum() != expected {
        return Err(Error::FailedPrecondition(format!(
            "{name} changed while it was being archived"
        )));
    }
    Ok(())
}

/// Keeps what a `ZipWriter` writes around one entry's data, and only counts
/// the data (written while `in_data` is set).
#[derive(Default)]
struct HeaderSink {
    prefix: Vec<u8>,
    data_start: Option<u64>,
    data_len: u64,
    suffix: Vec<u8>,
    pos: u64,
    in_data: Arc<AtomicBool>,
}

impl HeaderSink {
    fn end(&self) -> u64 {
        match self.data_start {
            Some(s) => s + self.data_len + self.suffix.len() as u64,
            None => self.prefix.len() as u64,
        }
    }
}

fn put(buf: &mut Vec<u8>, at: usize, data: &[u8]) {
    if buf.len() < at + data.len() {
        buf.resize(at + data.len(), 0);
    }
    buf[at..at + data.len()].copy_from_slice(data);
}

impl Write for HeaderSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.in_data.load(Ordering::Relaxed) {
            let start = *self.data_start.get_or_insert(self.pos);
            if self.pos != start + self.data_len {
                return Err(io::Error::other("big entry data written out of order"));
            }
            self.data_len += data.len() as u64;
        } else {
            match self.data_start {
                Some(s) if self.pos >= s + self.data_len => {
                    let at = (self.pos - s - self.data_len) as usize;
                    put(&mut self.suffix, at, data);
                }
                Some(s) if self.pos + data.len() as u64 <= s => {
                    put(&mut self.prefix, self.pos as usize, data)
                }
                Some(_) => {
                    return Err(io::Error::other("zip writer patched inside big entry data"));
                }
                None => put(&mut self.prefix, self.pos as usize, data),
            }
        }
        self.pos += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for HeaderSink {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.end().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        self.pos = p;
        Ok(p)
    }
}

/// A zip file made of in-memory headers around a file's content on disk.
/// Reads of the content are CRC-checked as they go (in order, as a raw copy
/// reads them).
#[derive(Clone)]
pub(crate) struct VirtualZip {
    prefix: Arc<[u8]>,
    file: Arc<std::fs::File>,
    data_start: u64,
    data_len: u64,
    suffix: Arc<[u8]>,
    pos: u64,
    /// CRC of the content read so far, and how far that is.
    check: Arc<Mutex<(flate2::Crc, u64)>>,
}

impl VirtualZip {
    fn len(&self) -> u64 {
        self.data_start + self.data_len + self.suffix.len() as u64
    }
}

impl Read for VirtualZip {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let data_end = self.data_start + self.data_len;
        let n = if self.pos < self.data_start {
            let from = &self.prefix[self.pos as usize..self.data_start as usize];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            n
        } else if self.pos < data_end {
            let off = self.pos - self.data_start;
            let want = (buf.len() as u64).min(data_end - self.pos) as usize;
            let n = self.file.read_at(&mut buf[..want], off)?;
            if n == 0 {
                return Err(io::Error::other("file shrank while it was being archived"));
            }
            let mut check = self.check.lock().unwrap_or_else(|p| p.into_inner());
            if off == check.1 {
                check.0.update(&buf[..n]);
                check.1 += n as u64;
            }
            n
        } else {
            let at = ((self.pos - data_end) as usize).min(self.suffix.len());
            let from = &self.suffix[at..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for VirtualZip {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        self.pos = p;
        Ok(p)
    }
}
