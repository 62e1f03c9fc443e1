//! Writing a zip of a directory as a stream, fast: files are read and
//! deflated in parallel, each into a one-entry zip in memory, and a single
//! writer copies those pre-compressed entries in order (the zip crate's raw
//! copy) into a forward-only sink that hands out fixed-size chunks.

use std::collections::HashSet;
use std::io::{self, Cursor, Read as _, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cap_fs_ext::{DirExt as _, FollowSymlinks, OpenOptionsFollowExt as _};
use cap_std::fs::{Dir, MetadataExt as _, OpenOptions};
use sha2::{Digest as _, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::error::{Error, Result};

/// Names left out of an archive when the caller names none.
pub(crate) const DEFAULT_EXCLUDES: [&str; 3] = ["node_modules", ".git", "__pycache__"];

/// Bytes of file content read but not yet written out, across all workers.
/// Bounds memory whatever the tree holds; one file larger than this still
/// goes through, alone.
const BUDGET: u64 = 48 * 1024 * 1024;

/// Files larger than this are not read into memory but streamed from disk
/// (twice: to hash, then to copy), stored rather than deflated.
const BIG_FILE: u64 = 32 * 1024 * 1024;

/// Deflate level: the fastest. On source trees it loses a few percent of size
/// to level 6 and runs several times faster, and the upload is what waits.
const LEVEL: i64 = 1;

/// What a finished archive was.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub(crate) size: u64,
    pub(crate) sha256: String,
    /// Regular files and symlinks in the archive.
    pub(crate) files: u64,
}

/// What to archive.
pub(crate) struct Spec {
    /// Open handle of the directory to archive (inside the root).
    pub(crate) base: Dir,
    /// The base's path relative to the root, to judge symlink targets.
    pub(crate) base_rel: String,
    pub(crate) excludes: HashSet<String>,
    /// Keep symlinks that point outside the root (a download of
    /// everything); else they are left out, so the archive extracts.
    pub(crate) keep_outside_links: bool,
}

/// The names to exclude from a request's options.
pub(crate) fn excludes(exclude: &[String], no_defaults: bool) -> HashSet<String> {
    let mut set: HashSet<String> = exclude.iter().filter(|s| !s.is_empty()).cloned().collect();
    if exclude.is_empty() && !no_defaults {
        set.extend(DEFAULT_EXCLUDES.iter().map(|s| s.to_string()));
    }
    set
}

/// Writes the zip of `spec` into `sink`; blocking, runs on its own thread.
/// `stop` ends it early with an error (the caller went away).
pub(crate) fn write_zip(spec: &Spec, sink: ChunkSink, stop: &AtomicBool) -> Result<Summary> {
    write_zip_with(spec, sink, stop, BIG_FILE)
}

fn write_zip_with(spec: &Spec, sink: ChunkSink, stop: &AtomicBool, big: u64) -> Result<Summary> {
    let entries = walk(spec)?;
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let (txs, rxs): (Vec<_>, Vec<_>) = entries.iter().map(|_| sync_channel(1)).unzip();
    let budget = Budget::new(entries.iter().map(|e| cost(e, big)).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| worker(spec, &entries, &txs, &budget, stop, big));
        }
        let res = writer(&entries, rxs, &budget, sink, stop);
        if res.is_err() {
            stop.store(true, Ordering::Relaxed);
            budget.wake_all();
        }
        res
    })
}

/// A `Write` that hashes and counts everything and sends it on in chunks of
/// `chunk_size(n)` bytes (n = chunk index from 0), the last one shorter.
pub(crate) struct ChunkSink {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: BytesMut,
    chunk_size: fn(usize) -> usize,
    sent: usize,
    hasher: Sha256,
    total: u64,
}

impl ChunkSink {
    pub(crate) fn new(
        tx: tokio::sync::mpsc::Sender<Bytes>,
        chunk_size: fn(usize) -> usize,
    ) -> Self {
        ChunkSink {
            tx,
            buf: BytesMut::with_capacity(chunk_size(0)),
            chunk_size,
            sent: 0,
            hasher: Sha256::new(),
            total: 0,
        }
    }

    fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        self.sent += 1;
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "archive receiver went away"))
    }

    /// Sends the last chunk; returns the size and hex sha256 of everything.
    fn finish(mut self) -> io::Result<(u64, String)> {
        if !self.buf.is_empty() || self.sent == 0 {
            let last = self.buf.split().freeze();
            self.send(last)?;
        }
        Ok((self.total, hex::encode(self.hasher.finalize())))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        self.total += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let want = (self.chunk_size)(self.sent);
            let take = rest.len().min(want - self.buf.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() >= want {
                let chunk = self.buf.split().freeze();
                self.buf.reserve((self.chunk_size)(self.sent + 1));
                self.send(chunk)?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
enum Kind {
    /// `mtime`: Unix seconds.
    File {
        size: u64,
        mode: u32,
        mtime: i64,
    },
    Dir {
        mode: u32,
        mtime: i64,
    },
    Symlink {
        target: String,
    },
}

#[derive(Debug)]
struct Entry {
    /// Path inside the archive, `/`-separated, relative to the base.
    name: String,
    kind: Kind,
}

/// An entry made ready by a worker.
enum Prepared {
    /// A one-entry zip holding the compressed file.
    File(ZipArchive<Cursor<Vec<u8>>>),
    /// A big file, to be streamed from disk by the writer.
    Big(super::big::BigEntry),
    /// The entry needs nothing beyond its metadata (directory, symlink).
    Meta,
    /// The file went away between the walk and the read.
    Vanished,
}

fn cost(e: &Entry, big: u64) -> u64 {
    match e.kind {
        // A big file is streamed: only its read buffer counts.
        Kind::File { size, .. } if size > big => 1 << 20,
        Kind::File { size, .. } => size,
        _ => 0,
    }
}

/// Lists the tree depth-first in name order, directories before their
/// contents, skipping excluded names and never following a symlink.
fn walk(spec: &Spec) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk_dir(&spec.base, "", spec, &mut out)?;
    Ok(out)
}

fn walk_dir(dir: &Dir, prefix: &str, spec: &Spec, out: &mut Vec<Entry>) -> Result<()> {
    let mut names = Vec::new();
    for entry in dir.entries()? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(dir = %prefix, name = ?name, "skipping a name that is not utf-8");
            continue;
        };
        // Excluded names, and the temporary files of writes in progress.
        if spec.excludes.contains(name) || devgate_fs::temp::is_temporary(name) {
            continue;
        }
        names.push((name.to_owned(), entry));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, entry) in names {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        if ft.is_dir() {
            out.push(Entry {
                name: path.clone(),
                kind: Kind::Dir {
                    mode,
                    mtime: meta.mtime(),
                },
            });
            let sub = match dir.open_dir_nofollow(&name) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    out.pop();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            walk_dir(&sub, &path, spec, out)?;
        } else if ft.is_symlink() {
            let target = match dir.read_link_contents(&name) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(target) = target.to_str().map(str::to_owned) else {
                tracing::warn!(path = %path, "skipping a symlink whose target is not utf-8");
                continue;
            };
            // An extract refuses links that leave the root, so an archive that
            // carried one could never be restored; such a link is left out,
            // unless asked for (only its target string is read: the link is
            // never followed).
            let in_root = format!("{}/{}", spec.base_rel, parent_of(&path));
            if !spec.keep_outside_links && crate::archive::link_escapes(&in_root, &target) {
                tracing::warn!(path = %path, target = %target, "skipping a symlink that points outside the root");
                continue;
            }
            out.push(Entry {
                name: path,
                kind: Kind::Symlink { target },
            });
        } else if ft.is_file() {
            out.push(Entry {
                name: path,
                kind: Kind::File {
                    size: meta.len(),
                    mode,
                    mtime: meta.mtime(),
                },
            });
        }
        // Sockets, fifos and devices have no place in an archive.
    }
    Ok(())
}

pub(crate) fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Hands out entries in order, each once its bytes fit in the budget. Taking
/// the index and the budget together, in order, means the entry the writer
/// waits for is always being worked on: no deadlock whatever the sizes.
struct Budget {
    costs: Vec<u64>,
    state: Mutex<(usize, u64)>,
    cond: Condvar,
}

impl Budget {
    fn new(costs: Vec<u64>) -> Self {
        Budget {
            costs,
            state: Mutex::new((0, 0)),
            cond: Condvar::new(),
        }
    }

    fn take(&self, stop: &AtomicBool) -> Option<usize> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if stop.load(Ordering::Relaxed) || st.0 >= self.costs.len() {
                return None;
            }
            let want = self.costs[st.0];
            if st.1 == 0 || st.1 + want <= BUDGET {
                st.1 += want;
                st.0 += 1;
                return Some(st.0 - 1);
            }
            st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn release(&self, index: usize) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 -= self.costs[index];
        drop(st);
        self.cond.notify_all();
    }

    fn wake_all(&self) {
        self.cond.notify_all();
    }
}

fn worker(
    spec: &Spec,
    entries: &[Entry],
    txs: &[SyncSender<Result<Prepared>>],
    budget: &Budget,
    stop: &AtomicBool,
    big: u64,
) {
    while let Some(i) = budget.take(stop) {
        // An error goes to the writer in its place in the order, so the
        // caller learns which file failed.
        let res = prepare(&spec.base, &entries[i], big);
        // The writer may be gone after an error; nothing to do then.
        let _ = txs[i].send(res);
    }
}

fn prepare(base: &Dir, entry: &Entry, big: u64) -> Result<Prepared> {
    let Kind::File { size, mode, mtime } = entry.kind else {
        return Ok(Prepared::Meta);
    };
    let mut opts = OpenOptions::new();
    opts.read(true).follow(FollowSymlinks::No);
    let mut file = match base.open_with(&entry.name, &opts) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Prepared::Vanished),
        Err(e) => {
            return Err(Error::Io(io::Error::new(
                e.kind(),
                format!("{}: {e}", entry.name),
            )));
        }
    };
    if size > big {
        return Ok(Prepared::Big(super::big::prepare(
            &entry.name,
            file.into_std(),
            mode,
            mtime,
        )?));
    }
    let mut data = Vec::with_capacity(size as usize);
    file.read_to_end(&mut data)?;
    let method = if stored_by_name(&entry.name) || data.len() < 64 {
        CompressionMethod::Stored
    } else {
        CompressionMethod::Deflated
    };
    let zip = one_entry_zip(&entry.name, &data, mode, mtime, method)?;
    if method == CompressionMethod::Deflated {
        let mut zip = zip;
        let compressed = zip.by_index_raw(0).map_err(zip_error)?.compressed_size();
        // Incompressible content: storing it costs less to read back.
        if compressed > data.len() as u64 - data.len() as u64 / 16 {
            return Ok(Prepared::File(one_entry_zip(
                &entry.name,
                &data,
                mode,
                mtime,
                CompressionMethod::Stored,
            )?));
        }
        return Ok(Prepared::File(zip));
    }
    Ok(Prepared::File(zip))
}

fn one_entry_zip(
    name: &str,
    data: &[u8],
    mode: u32,
    mtime: i64,
    method: CompressionMethod,
) -> Result<ZipArchive<Cursor<Vec<u8>>>> {
    let cap = match method {
        CompressionMethod::Stored => data.len() + name.len() * 2 + 256,
        _ => data.len() / 2 + name.len() * 2 + 256,
    };
    let mut w = ZipWriter::new(Cursor::new(Vec::with_capacity(cap)));
    let mut opts = super::mtime::stamped(mtime)
        .compression_method(method)
        .unix_permissions(mode)
        .large_file(data.len() as u64 >= u32::MAX as u64 - 65536);
    if method == CompressionMethod::Deflated {
        opts = opts.compression_level(Some(LEVEL));
    }
    w.start_file(name, opts).map_err(zip_error)?;
    w.write_all(data)?;
    let cursor = w.finish().map_err(zip_error)?;
    ZipArchive::new(cursor).map_err(zip_error)
}

/// Formats that are already compressed: deflating them again only costs time.
fn stored_by_name(name: &str) -> bool {
    const EXT: &[&str] = &[
        "png", "jpg", "jpeg", "gif", "webp", "avif", "ico", "woff", "woff2", "zip", "gz", "tgz",
        "bz2", "xz", "zst", "br", "7z", "rar", "jar", "mp3", "mp4", "m4a", "webm", "ogg", "mov",
        "pdf", "wasm", "bin",
    ];
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| EXT.iter().any(|e| ext.eq_ignore_ascii_case(e)))
}

fn writer(
    entries: &[Entry],
    rxs: Vec<Receiver<Result<Prepared>>>,
    budget: &Budget,
    sink: ChunkSink,
    stop: &AtomicBool,
) -> Result<Summary> {
    let mut zip = ZipWriter::new(TailWriter::new(sink));
    let mut files = 0;
    for (i, rx) in rxs.into_iter().enumerate() {
        let prepared = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(p) => break p,
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => {
                    return Err(Error::Unavailable("archive cancelled".into()));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Internal("archive worker stopped".into()));
                }
            }
        };
        budget.release(i);
        let entry = &entries[i];
        match (prepared?, &entry.kind) {
            (Prepared::Vanished, _) => {
                tracing::debug!(path = %entry.name, "file vanished while archiving");
            }
            (Prepared::File(mut one), _) => {
                let file = one.by_index_raw(0).map_err(zip_error)?;
                zip.raw_copy_file(file).map_err(zip_error)?;
                files += 1;
            }
            (Prepared::Big(mut one), _) => {
                let file = one.zip.by_index_raw(0).map_err(zip_error)?;
                zip.raw_copy_file(file).map_err(zip_error)?;
                super::big::verify(&mut one, &entry.name)?;
                files += 1;
            }
            (Prepared::Meta, Kind::Dir { mode, mtime }) => {
                let opts = super::mtime::stamped(*mtime).unix_permissions(*mode);
                zip.add_directory(entry.name.as_str(), opts)
                    .map_err(zip_error)?;
            }
            (Prepared::Meta, Kind::Symlink { target }) => {
                let opts = SimpleFileOptions::default().unix_permissions(0o777);
                zip.add_symlink(entry.name.as_str(), target, opts)
                    .map_err(zip_error)?;
                files += 1;
            }
            (Prepared::Meta, Kind::File { .. }) => {
                return Err(Error::Internal("file entry without content".into()));
            }
        }
    }
    let tail = zip.finish().map_err(zip_error)?;
    let (size, sha256) = tail.into_inner()?.finish()?;
    Ok(Summary {
        size,
        sha256,
        files,
    })
}

pub(crate) fn zip_error(e: zip::result::ZipError) -> Error {
    match e {
        zip::result::ZipError::Io(io) => Error::Io(io),
        other => Error::InvalidArgument(format!("zip: {other}")),
    }
}

/// Makes a forward-only writer look seekable to `ZipWriter`, which seeks back
/// only a few bytes (to patch the local header of a symlink or directory
/// entry it just wrote) and asks for positions. The last `KEEP` bytes stay in
/// memory for that; everything older has gone to the sink.
struct TailWriter<W: Write> {
    inner: W,
    /// Bytes not yet passed on, starting at offset `flushed`.
    buf: Vec<u8>,
    flushed: u64,
    pos: u64,
}

const KEEP: usize = 64 * 1024;
const FLUSH_AT: usize = 1024 * 1024;

impl<W: Write> TailWriter<W> {
    fn new(inner: W) -> Self {
        TailWriter {
            inner,
            buf: Vec::with_capacity(FLUSH_AT + KEEP),
            flushed: 0,
            pos: 0,
        }
    }

    fn into_inner(mut self) -> io::Result<W> {
        self.inner.write_all(&self.buf)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for TailWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let at = (self.pos - self.flushed) as usize;
        let overlap = (self.buf.len() - at).min(data.len());
        self.buf[at..at + overlap].copy_from_slice(&data[..overlap]);
        self.buf.extend_from_slice(&data[overlap..]);
        self.pos += data.len() as u64;
        if self.buf.len() >= FLUSH_AT && self.pos == self.flushed + self.buf.len() as u64 {
            let cut = self.buf.len() - KEEP;
            self.inner.write_all(&self.buf[..cut])?;
            self.buf.drain(..cut);
            self.flushed += cut as u64;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Seek for TailWriter<W> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let end = self.flushed + self.buf.len() as u64;
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => end.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) if p >= self.flushed && p <= end => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "zip writer sought outside the kept tail of the stream",
            )),
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn tail_writer_patches_recent_bytes_and_streams_the_rest() {
        let mut w = TailWriter::new(Vec::new());
        w.write_all(&vec![1u8; FLUSH_AT + 10]).unwrap();
        assert!(w.seek(SeekFrom::Start(0)).is_err());
        let end = w.seek(SeekFrom::End(0)).unwrap();
        w.seek(SeekFrom::Start(end - 4)).unwrap();
        w.write_all(&[9, 9]).unwrap();
        w.seek(SeekFrom::Start(end)).unwrap();
        w.write_all(&[7]).unwrap();
        let out = w.into_inner().unwrap();
        assert_eq!(out.len(), FLUSH_AT + 11);
        assert_eq!(&out[out.len() - 5..], &[9, 9, 1, 1, 7]);
    }

    /// Big files are streamed from disk, the rest compressed in memory; the
    /// archive reads back byte for byte (the zip crate checks each CRC).
    #[test]
    fn big_and_small_files_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        std::fs::write(tmp.path().join("big.bin"), &big).unwrap();
        std::fs::set_permissions(
            tmp.path().join("big.bin"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/small.txt"), "small ".repeat(100)).unwrap();
        std::os::unix::fs::symlink("../big.bin", tmp.path().join("d/link")).unwrap();
        let spec = Spec {
            base: Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap(),
            base_rel: String::new(),
            excludes: HashSet::new(),
            keep_outside_links: false,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            while let Some(chunk) = rx.blocking_recv() {
                out.extend_from_slice(&chunk);
            }
            out
        });
        let summary = write_zip_with(
            &spec,
            ChunkSink::new(tx, |_| 4096),
            &AtomicBool::new(false),
            100_000,
        )
        .unwrap();
        let bytes = reader.join().unwrap();
        assert_eq!(summary.size, bytes.len() as u64);
        assert_eq!(summary.files, 3);
        let mut zip = ZipArchive::new(Cursor::new(bytes)).unwrap();
        let mut f = zip.by_name("big.bin").unwrap();
        assert_eq!(f.compression(), CompressionMethod::Stored);
        assert_eq!(f.unix_mode().unwrap() & 0o777, 0o750);
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert!(got == big, "big file content differs");
        drop(f);
        let mut got = String::new();
        zip.by_name("d/small.txt")
            .unwrap()
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "small ".repeat(100));
        assert!(zip.by_name("d/link").unwrap().is_symlink());
    }

    #[test]
    fn excludes_default_only_without_explicit_names() {
        assert!(excludes(&[], false).contains("node_modules"));
        assert!(excludes(&[], true).is_empty());
        let set = excludes(&["dist".into()], false);
        assert!(set.contains("dist") && !set.contains(".git"));
    }
}
