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

use std::path::Path;

use agent::fs::entry::Stat;
use agent::paths::Root;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;

use crate::agent_client::Entry;
use crate::error::{Error, Result};

/// Reads up to this size are done at once on the calling task (page-cache
/// reads of a few KiB take microseconds, less than a hand-off to another
/// thread); larger ones are streamed from a blocking thread in chunks of it,
/// as the agent does.
const CHUNK: u64 = agent::fs::READ_CHUNK as u64;

/// An agent error as the gateway would have received it over gRPC.
fn agent_error(e: agent::error::Error) -> Error {
    Error::from(tonic::Status::from(e))
}

/// A regular file opened for reading below a project folder.
pub struct LocalFile {
    file: std::fs::File,
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
    let entry = Entry::from(Stat::from(&meta).to_entry(&rel, None));
    Ok(LocalFile { file, entry })
}

impl LocalFile {
    /// The bytes from `offset`, at most `length` (0 = to the end), as the
    /// agent's read would stream them.
    pub fn read(self, offset: u64, length: u64) -> Result<BoxStream<'static, Result<Bytes>>> {
        let (start, end) = agent::fs::read_window(self.entry.size, offset, length);
        if end - start <= CHUNK {
            let mut buf = vec![0u8; (end - start) as usize];
            let n = agent::fs::read_full_at(&self.file, &mut buf, start)
                .map_err(|e| agent_error(agent::error::Error::Io(e)))?;
            buf.truncate(n);
            return Ok(futures::stream::once(async move { Ok(Bytes::from(buf)) }).boxed());
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(4);
        let file = self.file;
        tokio::task::spawn_blocking(move || {
            agent::fs::read_range(&file, start, end, |chunk| {
                let msg = chunk
                    .map(Bytes::from)
                    .map_err(|e| agent_error(agent::error::Error::Io(e)));
                // A send error: the browser went away; stop reading.
                tx.blocking_send(msg).is_ok()
            });
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }
}
