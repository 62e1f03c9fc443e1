//! Restoring a snapshot into the root, all or nothing: everything is made
//! in a staging directory inside the root (a temporary name, hidden from
//! listings), each pack and chunk is checked against its id before a byte
//! of it is written, and only when every file is complete are the entries
//! moved into place. Any failure removes the staging directory.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use cap_std::fs::{Dir, FileExt as _, OpenOptions, Permissions, PermissionsExt as _};
use devgate_snapshot::{ChunkReader, Id, Kind, Manifest, Pack};
use rustix::fs::{AtFlags, Timespec, Timestamps};

use crate::error::{Error, Result};

/// Where a chunk's bytes go: entry index and offset in the file.
type Targets = HashMap<Id, Vec<(usize, u64)>>;

/// A restore in progress.
pub(crate) struct Staging {
    pub(crate) name: String,
    pub(crate) dir: Dir,
    targets: Targets,
}

/// Makes the staging directory with every directory and empty file of the
/// manifest, and answers which packs are needed.
pub(crate) fn prepare(root: &Dir, m: &Manifest) -> Result<(Staging, Vec<usize>)> {
    // Nothing of the snapshot may exist in the root already: the restore
    // never overwrites.
    for e in &m.entries {
        if e.is_top_level() && root.symlink_metadata(&e.path).is_ok() {
            return Err(Error::AlreadyExists(format!(
                "{} exists already: a snapshot is restored into an empty project",
                e.path.display()
            )));
        }
    }
    let name = devgate_fs::temp::restore_dir_name(rand::random());
    root.create_dir(&name)?;
    spread_hint(root, &name);
    let dir = root.open_dir(&name)?;
    let staging = Staging {
        name,
        dir,
        targets: HashMap::new(),
    };
    match fill(&staging, m) {
        Ok((targets, packs)) => Ok((Staging { targets, ..staging }, packs)),
        Err(e) => {
            discard(root, &staging.name);
            Err(e)
        }
    }
}

/// Marks the staging directory as the top of a new hierarchy
/// (`FS_TOPDIR_FL`, `chattr +T`), best effort: ext4's Orlov allocator then
/// places its subdirectories, and so the files in them, in block groups
/// with room, rather than next to the staging directory. On ext4 without a
/// journal every new inode skips the group's recently deleted ones (freed
/// in the last minute, several while unwritten), one buffer lookup each; a
/// restore right after the teardown of the same project (the user's
/// hibernate-then-open, and the benchmark's) would otherwise allocate its
/// thousands of inodes in the groups that teardown just emptied, at about a
/// millisecond each. Other file systems ignore or refuse the flag; nothing
/// depends on it.
fn spread_hint(root: &Dir, name: &str) {
    use rustix::fs::{IFlags, Mode, OFlags, ioctl_getflags, ioctl_setflags, openat};
    // The flags ioctl needs a readable descriptor (cap-std's are `O_PATH`).
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let set = openat(root, name, flags, Mode::empty()).and_then(|dir| {
        let f = ioctl_getflags(&dir)?;
        ioctl_setflags(&dir, f | IFlags::TOPDIR)
    });
    if let Err(error) = set {
        tracing::debug!(%error, "restore: no FS_TOPDIR_FL on the staging directory");
    }
}

fn fill(s: &Staging, m: &Manifest) -> Result<(Targets, Vec<usize>)> {
    let where_ = m.chunk_packs();
    let mut targets: Targets = HashMap::new();
    let mut packs = Vec::new();
    let mut lens: HashMap<Id, u32> = HashMap::new();
    for p in &m.packs {
        for c in &p.chunks {
            lens.insert(c.id, c.len);
        }
    }
    for (i, e) in m.entries.iter().enumerate() {
        match e.kind {
            Kind::Dir if e.path.as_os_str().is_empty() => {}
            // A top-level directory is made under a random name, then
            // renamed: ext4 starts its search for the group of a top
            // directory at the hash of its name, so the same names would
            // land, cycle after cycle, in the groups the last teardown
            // emptied (see `spread_hint`).
            Kind::Dir if e.is_top_level() => {
                let tmp = devgate_fs::temp::restore_dir_name(rand::random());
                s.dir.create_dir(&tmp)?;
                s.dir.rename(&tmp, &s.dir, &e.path)?;
            }
            Kind::Dir => s.dir.create_dir(&e.path)?,
            // An empty file is made here; the others by the first of their
            // chunks to arrive (`apply_pack`), so that making thousands of
            // inodes overlaps the downloads and spreads over their threads.
            Kind::File if e.chunks.is_empty() => {
                s.dir
                    .open_with(&e.path, OpenOptions::new().write(true).create_new(true))?;
            }
            Kind::File => {
                let mut offset = 0u64;
                for c in &e.chunks {
                    targets.entry(*c).or_default().push((i, offset));
                    offset += u64::from(lens.get(c).copied().unwrap_or(0));
                }
            }
            // Made last, so nothing is ever written through one.
            Kind::Symlink => {}
        }
    }
    for c in targets.keys() {
        if let Some(&p) = where_.get(c) {
            packs.push(p);
        }
    }
    packs.sort_unstable();
    packs.dedup();
    Ok((targets, packs))
}

/// Writes every chunk of `bytes` (pack `id`, checked against its id) that
/// the snapshot's files need. Answers how many chunk placements it wrote.
pub(crate) fn apply_pack(s: &Staging, m: &Manifest, id: &Id, bytes: Vec<u8>) -> Result<usize> {
    let pack = Pack::open(bytes, id).map_err(snapshot_error)?;
    let mut reader = ChunkReader::new().map_err(snapshot_error)?;
    let mut written = 0;
    for c in pack.chunk_ids().copied().collect::<Vec<_>>() {
        let Some(places) = s.targets.get(&c) else {
            continue;
        };
        let data = reader.read(&pack, &c).map_err(snapshot_error)?;
        for &(entry, offset) in places {
            let path = &m.entries[entry].path;
            // Made by whichever pack brings its first chunk: the staging
            // directory is this restore's own, so an existing file is one
            // it made. Its size is the manifest's once every chunk is in.
            let f = s
                .dir
                .open_with(path, OpenOptions::new().write(true).create(true))?;
            f.write_all_at(data, offset)?;
            written += 1;
        }
    }
    Ok(written)
}

/// How many chunk placements the restore must write.
pub(crate) fn placements(s: &Staging) -> usize {
    s.targets.values().map(Vec::len).sum()
}

/// Makes the symlinks, sets modes and times (deepest first), then moves
/// every top-level entry from the staging directory into the root.
pub(crate) fn finish(root: &Dir, s: Staging, m: &Manifest) -> Result<()> {
    let res = settle(&s, m).and_then(|()| move_in(root, &s, m));
    discard(root, &s.name);
    res
}

/// The stamps of the files just restored (see `create::Stamp`): a file
/// whose size or mtime is not the manifest's, or that cannot be stat'ed,
/// gets none and is read by the next cut.
///
/// Unlike a cut's, these stamps do not wait for ctime to settle: the
/// restore set every file's mtime to the manifest's, which lies in the
/// past, and no process of the project runs before the restore ends, so a
/// later write moves mtime to the present and cannot go unseen even when
/// ctime stays in the same clock tick. (A manifest mtime within the racy
/// window of now, a file written just before a hibernation and restored at
/// once, still waits.)
pub(crate) fn stamps(root: &Dir, m: &Manifest) -> Vec<Option<super::create::Stamp>> {
    let seen_ns = super::create::now_ns();
    let old = seen_ns.saturating_sub(super::create::RACY_NS);
    m.entries
        .iter()
        .map(|e| {
            if e.kind != Kind::File || e.mtime_ns >= old {
                return None;
            }
            let meta = root.symlink_metadata(&e.path).ok()?;
            let stamp = super::create::Stamp::of(&meta);
            (meta.is_file() && stamp.size == e.size && stamp.mtime_ns == e.mtime_ns)
                .then_some(stamp)
        })
        .collect()
}

fn settle(s: &Staging, m: &Manifest) -> Result<()> {
    for e in &m.entries {
        if e.kind == Kind::Symlink {
            let target = e.target.as_deref().unwrap_or(Path::new(""));
            rustix::fs::symlinkat(target, &s.dir, e.path.as_path()).map_err(io::Error::from)?;
        }
    }
    // Deepest first, so setting a directory's time comes after its content.
    for e in m.entries.iter().rev() {
        if e.path.as_os_str().is_empty() {
            continue;
        }
        // A top-level directory gets its mode and time once moved into
        // place: moving a directory needs write access to it.
        let top_dir = e.kind == Kind::Dir && e.is_top_level();
        if top_dir {
            continue;
        }
        if e.kind != Kind::Symlink {
            s.dir
                .set_permissions(&e.path, Permissions::from_mode(e.mode))?;
        }
        set_mtime(&s.dir, &e.path, e.mtime_ns)?;
    }
    Ok(())
}

fn move_in(root: &Dir, s: &Staging, m: &Manifest) -> Result<()> {
    for e in &m.entries {
        if !e.is_top_level() {
            continue;
        }
        // renameat2(RENAME_NOREPLACE): an entry that appeared meanwhile is
        // never replaced.
        rustix::fs::renameat_with(
            &s.dir,
            e.path.as_path(),
            root,
            e.path.as_path(),
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|err| {
            Error::Io(io::Error::new(
                io::Error::from(err).kind(),
                format!("cannot move {} into place: {err}", e.path.display()),
            ))
        })?;
        devgate_pause::at_blocking("restore-commit");
    }
    for e in m.entries.iter().rev() {
        if e.kind == Kind::Dir && e.is_top_level() {
            root.set_permissions(&e.path, Permissions::from_mode(e.mode))?;
            set_mtime(root, &e.path, e.mtime_ns)?;
        }
    }
    if let Some(r) = m.entries.iter().find(|e| e.path.as_os_str().is_empty()) {
        set_mtime(root, Path::new("."), r.mtime_ns)?;
    }
    Ok(())
}

/// Removes a staging directory, best effort.
pub(crate) fn discard(root: &Dir, name: &str) {
    if let Err(error) = devgate_fs::temp::remove_tree(root, name)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(%error, name, "cannot remove the staging directory of a restore");
    }
}

fn set_mtime(dir: &Dir, path: &Path, ns: i64) -> Result<()> {
    let t = Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(dir, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::Io(io::Error::from(e)))
}

fn snapshot_error(e: devgate_snapshot::Error) -> Error {
    match e {
        devgate_snapshot::Error::Io(io) => Error::Io(io),
        other => Error::FailedPrecondition(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devgate_snapshot::{Entry, FORMAT, PackBuilder, PackRef, compress};

    fn entry(path: &str, kind: Kind, chunks: Vec<Id>, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind,
            size,
            mode: 0o755,
            mtime_ns: 1_600_000_000_000_000_000,
            target: None,
            chunks,
        }
    }

    /// A manifest of `a/b/f.txt` holding `data`, and its one pack.
    fn one_file(data: &[u8]) -> (Manifest, Id, Vec<u8>) {
        let mut b = PackBuilder::new();
        let cid = Id::of(data);
        b.add(cid, &compress(data).unwrap(), data.len() as u32);
        let (pid, bytes, chunks) = b.finish();
        let m = Manifest {
            format: FORMAT,
            created_ns: 0,
            entries: vec![
                entry("", Kind::Dir, vec![], 0),
                entry("a", Kind::Dir, vec![], 0),
                entry("a/b", Kind::Dir, vec![], 0),
                entry("a/b/f.txt", Kind::File, vec![cid], data.len() as u64),
            ],
            packs: vec![PackRef {
                id: pid,
                size: bytes.len() as u64,
                chunks,
            }],
        };
        m.validate().unwrap();
        (m, pid, bytes)
    }

    fn root(tmp: &tempfile::TempDir) -> Dir {
        Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap()
    }

    #[test]
    fn a_restore_writes_the_files_and_leaves_no_staging() {
        let tmp = tempfile::tempdir().unwrap();
        let root = root(&tmp);
        let (m, pid, bytes) = one_file(b"hello, restore");
        let (s, packs) = prepare(&root, &m).unwrap();
        assert_eq!(packs, vec![0]);
        // ext4 (the machine's and most volumes') takes the spreading hint.
        let statfs = rustix::fs::fstatfs(&s.dir).unwrap();
        if statfs.f_type == 0xEF53 {
            let dir = std::fs::File::open(tmp.path().join(&s.name)).unwrap();
            let flags = rustix::fs::ioctl_getflags(&dir).unwrap();
            assert!(flags.contains(rustix::fs::IFlags::TOPDIR), "{flags:?}");
        }
        assert_eq!(apply_pack(&s, &m, &pid, bytes).unwrap(), 1);
        assert_eq!(placements(&s), 1);
        finish(&root, s, &m).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("a/b/f.txt")).unwrap(),
            b"hello, restore"
        );
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a")]);
    }

    #[test]
    fn a_tampered_pack_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = root(&tmp);
        let (m, pid, mut bytes) = one_file(b"the real content");
        let n = bytes.len();
        bytes[n / 3] ^= 1;
        let (s, _) = prepare(&root, &m).unwrap();
        let err = apply_pack(&s, &m, &pid, bytes).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(
            !tmp.path().join(&s.name).join("a/b/f.txt").exists(),
            "nothing written"
        );
        let name = s.name.clone();
        discard(&root, &name);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_split_over_two_packs_and_an_empty_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = root(&tmp);
        let (a, b) = (vec![1u8; 1000], vec![2u8; 500]);
        let pack = |data: &[u8]| {
            let mut p = PackBuilder::new();
            p.add(Id::of(data), &compress(data).unwrap(), data.len() as u32);
            p.finish()
        };
        let (pa, ba, ca) = pack(&a);
        let (pb, bb, cb) = pack(&b);
        let m = Manifest {
            format: FORMAT,
            created_ns: 0,
            entries: vec![
                entry("", Kind::Dir, vec![], 0),
                entry("big", Kind::File, vec![Id::of(&a), Id::of(&b)], 1500),
                entry("empty", Kind::File, vec![], 0),
            ],
            packs: vec![
                PackRef {
                    id: pa,
                    size: ba.len() as u64,
                    chunks: ca,
                },
                PackRef {
                    id: pb,
                    size: bb.len() as u64,
                    chunks: cb,
                },
            ],
        };
        m.validate().unwrap();
        let (s, packs) = prepare(&root, &m).unwrap();
        assert_eq!(packs, vec![0, 1]);
        // The second pack first: the file is made by whichever comes first.
        assert_eq!(apply_pack(&s, &m, &pb, bb).unwrap(), 1);
        assert_eq!(apply_pack(&s, &m, &pa, ba).unwrap(), 1);
        finish(&root, s, &m).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("big")).unwrap(),
            [a, b].concat()
        );
        assert_eq!(std::fs::read(tmp.path().join("empty")).unwrap(), b"");
    }

    #[test]
    fn names_and_targets_that_are_not_utf8_are_restored_as_they_were() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt as _;
        let src = tempfile::tempdir().unwrap();
        let dir = src.path().join(OsStr::from_bytes(b"caf\xe9"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(OsStr::from_bytes(b"n\xff.txt")), b"latin-1").unwrap();
        std::os::unix::fs::symlink(OsStr::from_bytes(b"../\xfe"), dir.join("link")).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (m, _) = super::super::create::cut(&root(&src), None, None, tx, &stop).unwrap();
        assert_eq!(m.format, devgate_snapshot::FORMAT_BYTES);
        let (id, bytes) = m.encode().unwrap();
        let m = Manifest::decode(&bytes, &id).unwrap();

        let dst = tempfile::tempdir().unwrap();
        let droot = root(&dst);
        let (s, _) = prepare(&droot, &m).unwrap();
        let mut written = 0;
        while let Ok(p) = rx.try_recv() {
            written += apply_pack(&s, &m, &p.id, p.bytes).unwrap();
        }
        assert_eq!(written, placements(&s));
        finish(&droot, s, &m).unwrap();
        let out = dst.path().join(OsStr::from_bytes(b"caf\xe9"));
        assert_eq!(
            std::fs::read(out.join(OsStr::from_bytes(b"n\xff.txt"))).unwrap(),
            b"latin-1"
        );
        let link = std::fs::read_link(out.join("link")).unwrap();
        assert_eq!(link.as_os_str().as_bytes(), b"../\xfe");
    }
}
