//! Cutting a snapshot: walk the whole root (never following a symlink,
//! leaving out only the agent's own temporary entries), chunk every file,
//! and pack the chunks the project's previous snapshot does not hold. Runs
//! on a blocking thread (read, chunk, hash) beside a packing thread
//! (compress, pack); finished packs go to the uploader on a channel.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use cap_fs_ext::{DirExt as _, FollowSymlinks, OpenOptionsFollowExt as _};
use cap_std::fs::{Dir, MetadataExt as _, OpenOptions};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use devgate_snapshot::{
    ChunkCompressor, Chunker, Entry, FORMAT, Id, Kind, Manifest, PackBuilder, PackRef,
};

use crate::error::{Error, Result};

/// How often a file that changes while it is read is read again.
const REREADS: usize = 5;

/// Chunks waiting for the packing thread (each at most `CHUNK_MAX`, 2 MiB).
const PACK_QUEUE: usize = 8;

/// A regular file's identity as last seen by a cut or a restore of this
/// agent: while inode, ctime, size and mtime are all unchanged, its content
/// is the one recorded (the kernel moves ctime on every write, truncate,
/// chmod and utimes, and no caller can set it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Stamp {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) ctime_ns: i64,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
}

/// How far a file's ctime must lie before the moment it was stat'ed for
/// its stamp to be kept: a write in the same tick of the kernel's coarse
/// clock could leave ctime unchanged (the "racy" case of git's index).
pub(crate) const RACY_NS: i64 = 100_000_000;

impl Stamp {
    pub(crate) fn of(m: &cap_std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            ctime_ns: m
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.ctime_nsec()),
            size: m.len(),
            mtime_ns: mtime_ns(m),
        }
    }

    /// The stamp of `m`, stat'ed at `seen_ns`, unless its ctime is too
    /// recent to tell a later write apart.
    pub(crate) fn settled(m: &cap_std::fs::Metadata, seen_ns: i64) -> Option<Stamp> {
        let s = Stamp::of(m);
        (s.ctime_ns < seen_ns.saturating_sub(RACY_NS)).then_some(s)
    }
}

/// Stamps of the files of one snapshot, aligned with its manifest's
/// entries (`None` where no stamp could be kept).
pub(crate) struct Stamps {
    pub(crate) manifest: Id,
    pub(crate) by_entry: Vec<Option<Stamp>>,
}

/// A finished pack for the uploader.
pub(crate) struct NewPack {
    pub(crate) id: Id,
    pub(crate) bytes: Vec<u8>,
}

/// Cuts the snapshot of `root`, reusing the chunks of `previous`. With
/// `stamps` of that same manifest, a file whose stamp is unchanged is not
/// read again: its chunks are the previous entry's. Returns the manifest
/// and the stamps of its entries.
pub(crate) fn cut(
    root: &Dir,
    previous: Option<&Manifest>,
    stamps: Option<&[Option<Stamp>]>,
    packs_out: tokio::sync::mpsc::Sender<NewPack>,
    stop: &AtomicBool,
) -> Result<(Manifest, Vec<Option<Stamp>>)> {
    let created_ns = now_ns();
    let unchanged = match (previous, stamps) {
        (Some(m), Some(st)) if st.len() == m.entries.len() => m
            .entries
            .iter()
            .zip(st)
            .filter_map(|(e, s)| {
                let s = (*s)?;
                (e.kind == Kind::File && e.size == s.size && e.mtime_ns == s.mtime_ns)
                    .then(|| (e.path.clone(), (s, e.chunks.clone())))
            })
            .collect(),
        _ => HashMap::new(),
    };
    let abandon = AtomicBool::new(false);
    let meta = root.dir_metadata()?;
    let mut entries = vec![Entry {
        path: PathBuf::new(),
        kind: Kind::Dir,
        size: 0,
        mode: meta.mode() & 0o7777,
        mtime_ns: mtime_ns(&meta),
        target: None,
        chunks: vec![],
    }];
    // The writer, and with it the packing queue's sender, belongs to the
    // scope's closure: should the walk panic, unwinding drops it, which ends
    // the packing thread that the scope then waits for (held outside, the
    // queue would stay open and the scope would wait forever).
    let (walked, new_packs, mut w) = std::thread::scope(|scope| {
        let (to_pack, queue) = sync_channel(PACK_QUEUE);
        let packer = std::thread::Builder::new()
            .name("snapshot-pack".into())
            .spawn_scoped(scope, || pack_chunks(queue, packs_out, &abandon))?;
        let mut w = Writer {
            unchanged,
            stamps: HashMap::new(),
            reused_files: 0,
            chunker: Chunker::new(),
            dedup: Dedup {
                known: previous.map(Manifest::chunk_packs).unwrap_or_default(),
                used_previous: BTreeSet::new(),
                fresh: HashSet::new(),
                to_pack,
            },
            stop,
        };
        // Dropped before the writer when the walk unwinds: no last pack.
        let mut unfinished = Abandon(Some(&abandon));
        let walked = walk(root, Path::new(""), &mut w, &mut entries);
        if walked.is_ok() {
            unfinished.0 = None;
        }
        drop(unfinished);
        // Closing the queue ends the packing thread (after its last pack).
        let (closed, _) = sync_channel(0);
        drop(std::mem::replace(&mut w.dedup.to_pack, closed));
        let packed = packer.join().unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::Internal(format!(
                "the packing thread panicked: {why}"
            )))
        });
        Ok::<_, Error>((walked, packed, w))
    })?;
    // A failed packer (upload ended) shows first as a closed queue in the walk.
    let new_packs = match (walked, new_packs) {
        (_, Err(e)) => return Err(e),
        (Err(e), _) => return Err(e),
        (Ok(()), Ok(p)) => p,
    };
    tracing::debug!(
        reused = w.reused_files,
        "files whose stamp was unchanged, not read again"
    );
    let previous_packs = previous.map(|m| &m.packs[..]).unwrap_or_default();
    let mut packs: Vec<PackRef> = w
        .dedup
        .used_previous
        .iter()
        .map(|&i| previous_packs[i].clone())
        .collect();
    packs.extend(new_packs);
    let mut m = Manifest {
        format: FORMAT,
        created_ns,
        entries,
        packs,
    };
    m.format = m.needed_format();
    m.sort();
    m.validate()
        .map_err(|e| Error::Internal(format!("the snapshot cut is invalid: {e}")))?;
    let stamps = m.entries.iter().map(|e| w.stamps.remove(&e.path)).collect();
    Ok((m, stamps))
}

struct Writer<'a> {
    /// Files of the previous snapshot with the stamp they had: path to
    /// (stamp, chunks).
    unchanged: HashMap<PathBuf, (Stamp, Vec<Id>)>,
    /// Stamps of this cut's files, by path.
    stamps: HashMap<PathBuf, Stamp>,
    reused_files: usize,
    chunker: Chunker,
    dedup: Dedup,
    stop: &'a AtomicBool,
}

/// Which chunks are stored already, and the queue of the new ones.
struct Dedup {
    /// Chunks of the previous snapshot: id to index in its `packs`.
    known: HashMap<Id, usize>,
    used_previous: BTreeSet<usize>,
    /// Chunks packed by this snapshot.
    fresh: HashSet<Id>,
    to_pack: SyncSender<(Id, Vec<u8>)>,
}

impl Writer<'_> {
    /// The chunks of a file the previous snapshot holds unchanged (same
    /// stamp), marking their packs as used; `None` when it must be read.
    fn reuse(&mut self, path: &Path, now: &Stamp) -> Option<Vec<Id>> {
        let (stamp, chunks) = self.unchanged.remove(path)?;
        if stamp != *now {
            return None;
        }
        let known = &self.dedup.known;
        let packs: Option<Vec<usize>> = chunks.iter().map(|c| known.get(c).copied()).collect();
        self.dedup.used_previous.extend(packs?);
        self.reused_files += 1;
        Some(chunks)
    }
}

impl Dedup {
    fn chunk(&mut self, data: &[u8]) -> Result<Id> {
        let id = Id::of(data);
        if let Some(&i) = self.known.get(&id) {
            self.used_previous.insert(i);
        } else if self.fresh.insert(id) {
            self.to_pack
                .send((id, data.to_vec()))
                .map_err(|_| Error::Unavailable("snapshot packing ended".into()))?;
        }
        Ok(id)
    }
}

/// Sets its flag when dropped holding one: a walk that failed or unwound.
struct Abandon<'a>(Option<&'a AtomicBool>);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// The packing thread: compresses the new chunks in the order they come,
/// packs them and hands each full pack to the uploader. Returns the packs
/// made; once the cut is `abandon`ed it packs and uploads nothing more.
fn pack_chunks(
    queue: Receiver<(Id, Vec<u8>)>,
    out: tokio::sync::mpsc::Sender<NewPack>,
    abandon: &AtomicBool,
) -> Result<Vec<PackRef>> {
    let mut zstd = ChunkCompressor::new().map_err(|e| Error::Internal(format!("compress: {e}")))?;
    let mut pack = PackBuilder::new();
    let mut made = Vec::new();
    let mut flush = |pack: PackBuilder| {
        let (id, bytes, chunks) = pack.finish();
        made.push(PackRef {
            id,
            size: bytes.len() as u64,
            chunks,
        });
        out.blocking_send(NewPack { id, bytes })
            .map_err(|_| Error::Unavailable("snapshot upload ended".into()))
    };
    for (id, data) in queue {
        if abandon.load(Ordering::Relaxed) {
            break;
        }
        let compressed = zstd
            .compress(&data)
            .map_err(|e| Error::Internal(format!("compress: {e}")))?;
        pack.add(id, compressed, data.len() as u32);
        if pack.is_full() {
            flush(std::mem::take(&mut pack))?;
        }
    }
    if !pack.is_empty() && !abandon.load(Ordering::Relaxed) {
        flush(pack)?;
    }
    Ok(made)
}

/// Names are any bytes: one that is not UTF-8 makes the manifest format 2
/// (`path_hex`), as does such a symlink target.
fn walk(dir: &Dir, prefix: &Path, w: &mut Writer<'_>, out: &mut Vec<Entry>) -> Result<()> {
    if w.stop.load(Ordering::Relaxed) {
        return Err(Error::Unavailable("snapshot cancelled".into()));
    }
    let mut names = Vec::new();
    for entry in dir.entries()? {
        let entry = entry?;
        let name = entry.file_name();
        // The agent's own entries (ASCII names); and a volume's
        // `lost+found` (root's, unreadable, made again by the file
        // system), at the root only.
        let agents = name.to_str().is_some_and(devgate_fs::temp::is_agent_entry);
        let top = prefix.as_os_str().is_empty();
        if agents || (top && name == "lost+found") {
            continue;
        }
        names.push(name);
    }
    names.sort();
    for name in names {
        let path = prefix.join(&name);
        let meta = match dir.symlink_metadata(&name) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let mtime = mtime_ns(&meta);
        if ft.is_dir() {
            let sub = match dir.open_dir_nofollow(&name) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            out.push(Entry {
                path: path.clone(),
                kind: Kind::Dir,
                size: 0,
                mode,
                mtime_ns: mtime,
                target: None,
                chunks: vec![],
            });
            walk(&sub, &path, w, out)?;
        } else if ft.is_symlink() {
            let target = match dir.read_link_contents(&name) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            out.push(Entry {
                path,
                size: target.as_os_str().len() as u64,
                kind: Kind::Symlink,
                mode,
                mtime_ns: mtime,
                target: Some(target),
                chunks: vec![],
            });
        } else if ft.is_file() {
            let now = Stamp::of(&meta);
            if let Some(chunks) = w.reuse(&path, &now) {
                w.stamps.insert(path.clone(), now);
                out.push(Entry {
                    path,
                    kind: Kind::File,
                    size: now.size,
                    mode,
                    mtime_ns: now.mtime_ns,
                    target: None,
                    chunks,
                });
                continue;
            }
            match read_file(dir, &name, &path, w)? {
                Some((size, mode, mtime_ns, chunks)) => out.push(Entry {
                    path,
                    kind: Kind::File,
                    size,
                    mode,
                    mtime_ns,
                    target: None,
                    chunks,
                }),
                None => continue,
            }
        } else {
            // Sockets, FIFOs and devices hold no data and mean nothing
            // after a restart.
            tracing::info!(path = %path.display(), "snapshot leaves out a socket, fifo or device");
        }
    }
    Ok(())
}

type FileRead = (u64, u32, i64, Vec<Id>);

/// Reads a file's chunks; reads again when the file changed meanwhile
/// (size, mtime or ctime differ before and after), so each file is
/// consistent. `None` when it went away.
fn read_file(dir: &Dir, name: &OsStr, path: &Path, w: &mut Writer<'_>) -> Result<Option<FileRead>> {
    read_file_with(dir, name, path, w, &mut |_| {})
}

/// [`read_file`], calling `between(attempt)` after each read and before
/// the file's metadata is looked at again (the tests change the file there).
fn read_file_with(
    dir: &Dir,
    name: &OsStr,
    path: &Path,
    w: &mut Writer<'_>,
    between: &mut dyn FnMut(usize),
) -> Result<Option<FileRead>> {
    let mut opts = OpenOptions::new();
    opts.read(true).follow(FollowSymlinks::No);
    for attempt in 0..REREADS {
        let f = match dir.open_with(name, &opts) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let before = f.metadata()?;
        if !before.file_type().is_file() {
            return Ok(None);
        }
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let mut file = w.chunker.chunks(f.try_clone()?.into_std());
        while let Some(data) = file.next_chunk()? {
            size += data.len() as u64;
            chunks.push(w.dedup.chunk(data)?);
        }
        between(attempt);
        let seen_ns = now_ns();
        let after = f.metadata()?;
        let stable = size == after.len()
            && before.len() == after.len()
            && mtime_ns(&before) == mtime_ns(&after)
            && (before.ctime(), before.ctime_nsec()) == (after.ctime(), after.ctime_nsec());
        if stable {
            if let Some(stamp) = Stamp::settled(&after, seen_ns) {
                w.stamps.insert(path.to_path_buf(), stamp);
            }
            return Ok(Some((
                size,
                after.mode() & 0o7777,
                mtime_ns(&after),
                chunks,
            )));
        }
        tracing::debug!(path = %path.display(), "file changed while read; reading it again");
    }
    Err(Error::Unavailable(format!(
        "{} kept changing while it was read ({REREADS} times)",
        path.display()
    )))
}

fn mtime_ns(m: &cap_std::fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(stop: &AtomicBool) -> (Writer<'_>, Receiver<(Id, Vec<u8>)>) {
        let (tx, rx) = sync_channel(64);
        let w = Writer {
            unchanged: HashMap::new(),
            stamps: HashMap::new(),
            reused_files: 0,
            chunker: Chunker::new(),
            dedup: Dedup {
                known: HashMap::new(),
                used_previous: BTreeSet::new(),
                fresh: HashSet::new(),
                to_pack: tx,
            },
            stop,
        };
        (w, rx)
    }

    fn open_root(tmp: &std::path::Path) -> Dir {
        Dir::open_ambient_dir(tmp, cap_std::ambient_authority()).unwrap()
    }

    #[test]
    fn a_file_changed_while_read_is_read_again() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f.txt");
        std::fs::write(&file, b"old content").unwrap();
        let root = open_root(tmp.path());
        let stop = AtomicBool::new(false);
        let (mut w, _rx) = writer(&stop);
        let mut calls = 0;
        let got = read_file_with(
            &root,
            "f.txt".as_ref(),
            "f.txt".as_ref(),
            &mut w,
            &mut |attempt| {
                calls += 1;
                if attempt == 0 {
                    std::fs::write(&file, b"the new, longer content").unwrap();
                }
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(calls, 2, "read once more after the change");
        assert_eq!(got.0, 23);
        assert_eq!(got.3, vec![Id::of(b"the new, longer content")]);
    }

    #[test]
    fn a_same_size_rewrite_with_its_mtime_put_back_is_caught_by_ctime() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f.txt");
        std::fs::write(&file, b"AAAA").unwrap();
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        let root = open_root(tmp.path());
        let stop = AtomicBool::new(false);
        let (mut w, _rx) = writer(&stop);
        let got = read_file_with(
            &root,
            "f.txt".as_ref(),
            "f.txt".as_ref(),
            &mut w,
            &mut |attempt| {
                if attempt == 0 {
                    // Same size, same mtime: only the ctime tells.
                    std::fs::write(&file, b"BBBB").unwrap();
                    let f = std::fs::File::options().write(true).open(&file).unwrap();
                    f.set_modified(mtime).unwrap();
                }
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.3, vec![Id::of(b"BBBB")], "never the torn read");
        let ns = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert_eq!(got.2, ns, "the mtime put back");
    }

    #[test]
    fn a_file_that_never_settles_fails_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("busy.log");
        std::fs::write(&file, b"0").unwrap();
        let root = open_root(tmp.path());
        let stop = AtomicBool::new(false);
        let (mut w, _rx) = writer(&stop);
        let mut calls = 0;
        let err = read_file_with(
            &root,
            "busy.log".as_ref(),
            "logs/busy.log".as_ref(),
            &mut w,
            &mut |attempt| {
                calls += 1;
                std::fs::write(&file, "x".repeat(attempt + 2)).unwrap();
            },
        )
        .unwrap_err();
        assert_eq!(calls, REREADS, "bounded");
        let msg = err.to_string();
        assert!(
            msg.contains("logs/busy.log") && msg.contains("kept changing"),
            "{msg}"
        );
    }

    fn tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("src")).unwrap();
        for i in 0..20 {
            std::fs::write(
                tmp.path().join(format!("src/f{i}.txt")),
                format!("file {i}"),
            )
            .unwrap();
        }
        tmp
    }

    #[test]
    fn a_cut_whose_upload_ended_fails_and_returns() {
        let tmp = tree();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        drop(rx);
        let stop = AtomicBool::new(false);
        let err = cut(&open_root(tmp.path()), None, None, tx, &stop).unwrap_err();
        assert!(err.to_string().contains("snapshot upload ended"), "{err}");
    }

    #[test]
    fn a_cancelled_cut_fails_and_uploads_nothing() {
        let tmp = tree();
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let stop = AtomicBool::new(true);
        let err = cut(&open_root(tmp.path()), None, None, tx, &stop).unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
        assert!(rx.try_recv().is_err(), "no pack after a failed walk");
    }

    #[test]
    fn a_whole_cut_lists_every_pack_it_uploaded() {
        let tmp = tree();
        let mut big = vec![0u8; 9 << 20];
        rand::fill(&mut big[..]);
        std::fs::write(tmp.path().join("big.bin"), big).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let stop = AtomicBool::new(false);
        let (m, _) = cut(&open_root(tmp.path()), None, None, tx, &stop).unwrap();
        let mut sent = Vec::new();
        while let Ok(p) = rx.try_recv() {
            sent.push(p.id);
        }
        let listed: Vec<Id> = m.packs.iter().map(|p| p.id).collect();
        assert!(sent.len() >= 2, "9 MiB of noise makes more than one pack");
        assert_eq!(sent, listed);
        let files = m.entries.iter().filter(|e| e.kind == Kind::File).count();
        assert_eq!(files, 21);
    }
}
