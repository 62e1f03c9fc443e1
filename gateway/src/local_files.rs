//! File reads straight from a project's folder, for a runtime whose projects
//! are folders on the gateway's own machine (the local runtime).
//!
//! A `GET` of a file through the agent costs a gRPC call to another process
//! (~0.1 ms), most of the time of a small read. Here the gateway opens the
//! file itself, through the agent's own resolver ([`agent::paths::Root`]:
//! `openat2` with `RESOLVE_BENEATH` below a handle on the project folder), so
//! there is still one resolver and the same refusals: `..`, absolute paths,
//! NUL bytes and symlinks that leave the folder. Entries and etags come from
//! the agent's [`Stat`], and errors take the agent's own mapping (through its
//! gRPC status), so the answer is the one the agent would have given.
//! Writes, listings and everything else still go to the agent.

use std::os::unix::fs::FileExt as _;
use std::path::Path;

use agent::fs::entry::Stat;
use agent::paths::Root;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;

use crate::agent_client::Entry;
use crate::error::{Error, Result};

/// Larger reads are streamed from a blocking thread in chunks of this size;
/// smaller ones are read at once on the calling task (page-cache reads of a
/// few KiB take microseconds, less than a hand-off to another thread).
const CHUNK: u64 = 256 * 1024;

/// An agent error as the gateway would have received it over gRPC.
fn agent_error(e: agent::error::Error) -> Error {
    Error::from(tonic::Status::from(e))
}

/// A regular file opened for reading below a project folder.
pub struct LocalFile {
    file: std::fs::File,
    stat: Stat,
    /// The entry the agent would report for it.
    pub entry: Entry,
}

/// Opens the file at `path` (as `ids::file_path` gave it) below `folder`.
pub fn open(folder: &Path, path: &str) -> Result<LocalFile> {
    let dir = cap_std::fs::Dir::open_ambient_dir(folder, cap_std::ambient_authority())
        .map_err(|e| Error::Unavailable(format!("cannot open the project's folder: {e}")))?;
    let root = Root {
        dir,
        path: folder.to_path_buf(),
    };
    let rel = Root::clean(path).map_err(agent_error)?;
    let file = root.open_read(&rel).map_err(agent_error)?.into_std();
    let meta = file
        .metadata()
        .map_err(|e| agent_error(agent::error::Error::Io(e)))?;
    if meta.is_dir() {
        return Err(agent_error(agent::error::Error::IsDirectory(rel)));
    }
    if !meta.is_file() {
        return Err(agent_error(agent::error::Error::InvalidArgument(format!(
            "{rel}: not a regular file"
        ))));
    }
    let stat = Stat::from(&meta);
    let entry = Entry::from(stat.to_entry(&rel, None));
    Ok(LocalFile { file, stat, entry })
}

impl LocalFile {
    /// The bytes from `offset`, at most `length` (0 = to the end), as the
    /// agent's read would stream them.
    pub fn read(self, offset: u64, length: u64) -> Result<BoxStream<'static, Result<Bytes>>> {
        let size = self.stat.size;
        let start = offset.min(size);
        let end = match length {
            0 => size,
            n => size.min(start.saturating_add(n)),
        };
        if end - start <= CHUNK {
            let mut buf = vec![0u8; (end - start) as usize];
            let n = read_full_at(&self.file, &mut buf, start)
                .map_err(|e| agent_error(agent::error::Error::Io(e)))?;
            buf.truncate(n);
            return Ok(futures::stream::once(async move { Ok(Bytes::from(buf)) }).boxed());
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(4);
        let file = self.file;
        tokio::task::spawn_blocking(move || {
            let mut pos = start;
            while pos < end {
                let want = (end - pos).min(CHUNK) as usize;
                let mut buf = vec![0u8; want];
                let msg = match read_full_at(&file, &mut buf, pos) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        pos += n as u64;
                        Ok(Bytes::from(buf))
                    }
                    Err(e) => Err(agent_error(agent::error::Error::Io(e))),
                };
                let failed = msg.is_err();
                // A send error: the browser went away; stop reading.
                if tx.blocking_send(msg).is_err() || failed {
                    break;
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
