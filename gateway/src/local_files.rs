//! File reads straight from a project's folder, for a runtime whose projects
//! are folders on the gateway's own machine (the local runtime).
//!
//! A `GET` of a file through the agent costs a gRPC call to another process
//! (~0.1 ms), most of the time of a small read. Here the gateway opens the
//! file itself, through the one resolver ([`devgate_fs::Root`]: `openat2` with
//! `RESOLVE_BENEATH` below a handle on the project folder), so the refusals
//! are the agent's: `..`, absolute paths, NUL bytes and symlinks that leave
//! the folder. Entries and etags come from the same [`Stat`], and errors map
//! from devgate-fs's classification to the answer the agent's status would
//! have given. Writes, listings and everything else still go to the agent.

use std::path::Path;

use bytes::Bytes;
use chrono::TimeZone as _;
use devgate_fs::read::{READ_CHUNK, read_full_at, read_range, read_window};
use devgate_fs::{Root, Stat};
use futures::StreamExt as _;
use futures::stream::BoxStream;

use crate::agent_client::{Entry, EntryKind};
use crate::error::{Error, Result};

/// Reads up to this size are done at once on the calling task (page-cache
/// reads of a few KiB take microseconds, less than a hand-off to another
/// thread); larger ones are streamed from a blocking thread in chunks of it,
/// as the agent does.
const CHUNK: u64 = READ_CHUNK as u64;

/// A regular file opened for reading below a project folder.
pub struct LocalFile {
    file: std::fs::File,
    /// The entry the agent would report for it.
    pub entry: Entry,
}

/// Opens the file at `path` (as `ids::file_path` gave it) below `folder`.
pub fn open(folder: &Path, path: &str) -> Result<LocalFile> {
    let root = Root::open(folder)
        .map_err(|e| Error::Unavailable(format!("cannot open the project's folder: {e}")))?;
    let rel = Root::clean(path)?;
    let file = root.open_read(&rel)?.into_std();
    let meta = file.metadata().map_err(devgate_fs::Error::Io)?;
    if meta.is_dir() {
        return Err(devgate_fs::Error::IsDirectory(rel).into());
    }
    if !meta.is_file() {
        return Err(
            devgate_fs::Error::InvalidArgument(format!("{rel}: not a regular file")).into(),
        );
    }
    let entry = file_entry(&Stat::from(&meta), rel);
    Ok(LocalFile { file, entry })
}

/// The entry of a regular file, as the agent's `ReadStart` would carry it.
fn file_entry(stat: &Stat, path: String) -> Entry {
    let etag = stat.etag();
    Entry {
        path,
        kind: EntryKind::File,
        size: stat.size,
        mtime: chrono::Utc.timestamp_nanos(stat.mtime_nanos),
        mode: stat.mode,
        etag: Some(etag).filter(|t| !t.is_empty()),
        symlink_target: None,
    }
}

impl LocalFile {
    /// The bytes from `offset`, at most `length` (0 = to the end), as the
    /// agent's read would stream them.
    pub fn read(self, offset: u64, length: u64) -> Result<BoxStream<'static, Result<Bytes>>> {
        let (start, end) = read_window(self.entry.size, offset, length);
        if end - start <= CHUNK {
            let mut buf = vec![0u8; (end - start) as usize];
            let n = read_full_at(&self.file, &mut buf, start).map_err(devgate_fs::Error::Io)?;
            buf.truncate(n);
            return Ok(futures::stream::once(async move { Ok(Bytes::from(buf)) }).boxed());
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(4);
        let file = self.file;
        tokio::task::spawn_blocking(move || {
            read_range(&file, start, end, |chunk| {
                let msg = chunk
                    .map(Bytes::from)
                    .map_err(|e| Error::from(devgate_fs::Error::Io(e)));
                // A send error: the browser went away; stop reading.
                tx.blocking_send(msg).is_ok()
            });
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }
}
