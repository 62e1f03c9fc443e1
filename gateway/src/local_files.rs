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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Handles on project folders, kept between reads: opening a folder as a
/// [`Root`] canonicalises its path (a `readlink` per component) and opens
/// it, about 8 % of a small read's CPU in a profile of the file benchmark.
/// A kept handle is used while the folder's path still names the same
/// directory (device and inode, one `statx`): a folder torn down and made
/// again by an open is a new directory, and its inode number cannot be the
/// old one's while the handle holds that one open.
#[derive(Default)]
pub struct Folders {
    open: std::sync::Mutex<HashMap<PathBuf, KeptFolder>>,
}

/// A kept handle and the device and inode of the directory it holds.
type KeptFolder = (u64, u64, Arc<Root>);

/// Folder handles kept at most; past it the map starts over (each handle is
/// one descriptor, and a project read once keeps its handle until then).
const FOLDERS_KEPT: usize = 1024;

impl Folders {
    /// The handle on `folder`, kept or opened now.
    pub fn get(&self, folder: &Path) -> Result<Arc<Root>> {
        let unavailable = |e: std::io::Error| {
            Error::Unavailable(format!("cannot open the project's folder: {e}"))
        };
        let named = match rustix::fs::stat(folder) {
            Ok(st) => (st.st_dev, st.st_ino),
            Err(e) => {
                self.forget(folder);
                return Err(unavailable(e.into()));
            }
        };
        if let Some((dev, ino, root)) = self.lock().get(folder)
            && (*dev, *ino) == named
        {
            return Ok(root.clone());
        }
        // Opened without the lock (a slow file system stalls only this
        // read), and kept under the identity of what was opened, not of what
        // the path named a moment before.
        let root = Arc::new(Root::open(folder).map_err(unavailable)?);
        let opened = rustix::fs::fstat(root.dir()).map_err(|e| unavailable(e.into()))?;
        let mut open = self.lock();
        if open.len() >= FOLDERS_KEPT {
            open.clear();
        }
        open.insert(
            folder.to_path_buf(),
            (opened.st_dev, opened.st_ino, root.clone()),
        );
        Ok(root)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, KeptFolder>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the handle on `folder` (its project was torn down).
    pub fn forget(&self, folder: &Path) {
        self.lock().remove(folder);
    }
}

/// Opens the file at `path` (as `ids::file_path` gave it) below `root`.
pub fn open(root: &Root, path: &str) -> Result<LocalFile> {
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn text(root: &Root, path: &str) -> Result<String> {
        let mut data = open(root, path)?.read(0, 0)?;
        let mut out = Vec::new();
        while let Some(chunk) = data.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn a_kept_folder_handle_never_outlives_its_folder() {
        let base = tempfile::tempdir().unwrap();
        let folder = base.path().join("p");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("f"), "first").unwrap();
        let folders = Folders::default();
        let a = folders.get(&folder).unwrap();
        assert_eq!(text(&a, "f").await.unwrap(), "first");
        // The same folder: the same handle.
        assert!(Arc::ptr_eq(&a, &folders.get(&folder).unwrap()));

        // Torn down (moved away, as into the trash) and made again: the
        // path names a new directory, and reads see it, not the old one.
        let trash = base.path().join("trash");
        std::fs::rename(&folder, &trash).unwrap();
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("f"), "second").unwrap();
        let b = folders.get(&folder).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(text(&b, "f").await.unwrap(), "second");

        // Removed for good, old handle dropped, made again: still the new one.
        drop(a);
        std::fs::remove_dir_all(&trash).unwrap();
        std::fs::remove_dir_all(&folder).unwrap();
        assert!(matches!(folders.get(&folder), Err(Error::Unavailable(_))));
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("f"), "third").unwrap();
        let c = folders.get(&folder).unwrap();
        assert_eq!(text(&c, "f").await.unwrap(), "third");
        folders.forget(&folder);
        assert!(!Arc::ptr_eq(&c, &folders.get(&folder).unwrap()));
    }
}
