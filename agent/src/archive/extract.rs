//! Extracting a zip into the root, all or nothing: the whole archive is
//! spooled first (its central directory is at the end); the caps (entries,
//! expanded bytes, ratio) and every entry are checked before anything is
//! written; files are inflated in parallel into a staging directory inside
//! the root (a temporary name: hidden, swept at start), each checked against
//! its declared size and CRC; only then is everything renamed into place,
//! and any failure up to the last rename moves back what was moved and
//! removes the staging directory.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use cap_fs_ext::{DirExt as _, FollowSymlinks, OpenOptionsFollowExt as _};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _, Permissions, PermissionsExt as _};
use zip::ZipArchive;

use super::create::zip_error;
use crate::error::{Error, Result};

/// Archives up to this size are spooled in memory; larger ones go to a
/// temporary file outside the root.
pub(crate) const MEMORY_SPOOL: u64 = 128 * 1024 * 1024;

/// Longest symlink target accepted.
const MAX_LINK: u64 = 4096;

/// Expanded bytes below which the ratio cap does not apply: a tiny zip of a
/// zero-filled file is harmless, and the cap is about amplification.
const RATIO_FLOOR: u64 = 16 * 1024 * 1024;

/// Caps on an archive from outside (an upload); 0 = no cap. The platform's
/// own archives (restores) are extracted without them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    /// Entries in the central directory.
    pub(crate) max_entries: u64,
    /// Bytes of file content once expanded.
    pub(crate) max_bytes: u64,
    /// Expanded bytes per byte of archive, once past [`RATIO_FLOOR`].
    pub(crate) max_ratio: u64,
}

/// What an extract wrote.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Summary {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
}

/// A whole archive, in memory or in an unnamed temporary file.
#[derive(Clone)]
pub(crate) enum Spool {
    Memory(Bytes),
    File(Arc<std::fs::File>, u64),
}

impl Spool {
    fn len(&self) -> u64 {
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
struct SpoolReader {
    spool: Spool,
    pos: u64,
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

#[derive(Debug)]
struct FilePlan {
    index: usize,
    path: String,
    mode: u32,
    /// Size the archive declares; inflating past it, or ending before it,
    /// is an error.
    size: u64,
    /// Modification time the entry carries (Unix seconds), restored.
    mtime: Option<i64>,
}

#[derive(Debug, Default)]
struct Plan {
    /// Directories to create, parents first, with the mode and modification
    /// time to restore (None: only implied by a deeper entry).
    dirs: BTreeMap<String, Option<(u32, Option<i64>)>>,
    files: Vec<FilePlan>,
    links: Vec<(String, String)>,
    /// Directories of the plan that already exist under the extract
    /// directory (filled by `check_tree`); the others are made new.
    existing: HashSet<String>,
}

/// Checks `spool` against `limits` and every entry against the tree under
/// `base_rel` (the extract directory, relative to the root), stages them all,
/// then moves them into place. Blocking. The tree changes only if everything
/// passed.
pub(crate) fn extract(root: &Dir, base_rel: &str, spool: Spool, limits: Limits) -> Result<Summary> {
    let archive_len = spool.len();
    // From the end record alone, before the central directory is parsed
    // (which costs memory per entry).
    if limits.max_entries > 0
        && let Some(n) = declared_entries(&spool)?
        && n > limits.max_entries
    {
        return Err(too_many(n, limits.max_entries));
    }
    let reader = SpoolReader { spool, pos: 0 };
    let mut archive = ZipArchive::new(reader).map_err(|e| match e {
        zip::result::ZipError::Io(io) => Error::Io(io),
        other => Error::InvalidArgument(format!("not a zip archive: {other}")),
    })?;
    // The reader may have trusted another end record than ours.
    if limits.max_entries > 0 && archive.len() as u64 > limits.max_entries {
        return Err(too_many(archive.len() as u64, limits.max_entries));
    }
    let mut plan = plan(&mut archive, base_rel)?;
    check_caps(&plan, archive_len, limits)?;
    check_tree(root, base_rel, &mut plan)?;
    check_space(root, &plan)?;
    write(root, base_rel, &archive, &plan)
}

fn too_many(n: u64, max: u64) -> Error {
    Error::TooLarge(format!(
        "the archive holds {n} entries; at most {max} are accepted"
    ))
}

/// The expanded size the entries declare (what inflating may reach: an entry
/// inflating past its own declared size fails) against the byte and ratio
/// caps.
fn check_caps(plan: &Plan, archive_len: u64, limits: Limits) -> Result<()> {
    let expanded: u64 = plan
        .files
        .iter()
        .map(|f| f.size)
        .fold(0u64, u64::saturating_add);
    if limits.max_bytes > 0 && expanded > limits.max_bytes {
        return Err(Error::TooLarge(format!(
            "the archive expands to {expanded} bytes; at most {} are accepted",
            limits.max_bytes
        )));
    }
    if limits.max_ratio > 0
        && expanded > RATIO_FLOOR
        && expanded > archive_len.saturating_mul(limits.max_ratio)
    {
        return Err(Error::TooLarge(format!(
            "the archive ({archive_len} bytes) expands to {expanded} bytes, more than {} times its size",
            limits.max_ratio
        )));
    }
    Ok(())
}

/// The entry count the archive's end record declares (the zip64 record's
/// when the classic one says it overflowed), from the last 64 KiB only.
/// None when there is no end record (the zip reader then refuses the
/// archive).
fn declared_entries(spool: &Spool) -> Result<Option<u64>> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const LOCATOR: [u8; 4] = [0x50, 0x4b, 0x06, 0x07];
    const EOCD64: [u8; 4] = [0x50, 0x4b, 0x06, 0x06];
    let len = spool.len();
    let tail_len = len.min(22 + 0xFFFF + 20);
    let mut tail = vec![0u8; tail_len as usize];
    let mut r = SpoolReader {
        spool: spool.clone(),
        pos: len - tail_len,
    };
    r.read_exact(&mut tail)?;
    let Some(at) = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == EOCD)
    else {
        return Ok(None);
    };
    let count = u16::from_le_bytes([tail[at + 10], tail[at + 11]]);
    if count != 0xFFFF || at < 20 || tail[at - 20..at - 16] != LOCATOR {
        return Ok(Some(count.into()));
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&tail[at - 12..at - 4]);
    let mut record = [0u8; 40];
    let mut r = SpoolReader {
        spool: spool.clone(),
        pos: u64::from_le_bytes(offset),
    };
    if r.read_exact(&mut record).is_err() || record[..4] != EOCD64 {
        return Ok(Some(count.into()));
    }
    let mut total = [0u8; 8];
    total.copy_from_slice(&record[32..40]);
    Ok(Some(u64::from_le_bytes(total)))
}

/// Where a name goes, relative to the extract directory; None for the
/// directory itself ("./"). Refuses what could leave it.
fn clean_name(raw: &[u8]) -> Result<Option<String>> {
    let shown = String::from_utf8_lossy(raw).replace('\0', "\\0");
    let bad = |why: &str| {
        Err(Error::PathOutsideRoot(format!(
            "archive entry {shown:?}: {why}"
        )))
    };
    let Ok(name) = std::str::from_utf8(raw) else {
        return bad("name is not utf-8");
    };
    if name.contains('\0') {
        return bad("name holds a nul byte");
    }
    if name.starts_with('/') {
        return bad("absolute path");
    }
    if name.contains('\\') {
        return bad("backslash in name");
    }
    let mut parts = Vec::new();
    for seg in name.split('/') {
        match seg {
            "" | "." => {}
            ".." => return bad("parent directory component"),
            s => parts.push(s),
        }
    }
    Ok(if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    })
}

/// Whether a symlink at `dir` (relative to the root) pointing to `target`
/// would resolve, lexically, outside the root. Absolute targets always do.
pub(crate) fn link_escapes(dir: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return true;
    }
    let mut depth: Vec<&str> = dir
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    for seg in target.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return true;
                }
            }
            s => depth.push(s),
        }
    }
    false
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

fn plan<R: Read + Seek>(archive: &mut ZipArchive<R>, base_rel: &str) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut seen = HashSet::new();
    let mut nondirs: HashSet<String> = HashSet::new();
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(zip_error)?;
        let Some(path) = clean_name(entry.name_raw())? else {
            continue;
        };
        if !seen.insert(path.clone()) {
            return Err(Error::InvalidArgument(format!(
                "archive entry {path:?} appears twice"
            )));
        }
        let mode = entry.unix_mode();
        if entry.is_dir() {
            let mtime = super::mtime::of_entry(&entry);
            plan.dirs
                .insert(path, Some((mode.map_or(0o755, |m| m & 0o777), mtime)));
        } else if entry.is_symlink() {
            if entry.size() > MAX_LINK {
                return Err(Error::InvalidArgument(format!(
                    "archive entry {path:?}: symlink target too long"
                )));
            }
            drop(entry);
            let mut target = String::new();
            archive
                .by_index(index)
                .map_err(zip_error)?
                .read_to_string(&mut target)
                .map_err(|_| {
                    Error::InvalidArgument(format!("archive entry {path:?}: bad symlink target"))
                })?;
            let at = join(base_rel, super::create::parent_of(&path));
            if link_escapes(&at, &target) {
                return Err(Error::PathOutsideRoot(format!(
                    "archive entry {path:?}: symlink to {target:?} leaves the root"
                )));
            }
            nondirs.insert(path.clone());
            plan.links.push((path, target));
        } else {
            nondirs.insert(path.clone());
            plan.files.push(FilePlan {
                index,
                path,
                mode: mode.map_or(0o644, |m| m & 0o777),
                size: entry.size(),
                mtime: super::mtime::of_entry(&entry),
            });
        }
    }
    // Every ancestor of an entry is a directory: not a file, not a symlink
    // (writing under a symlink could land anywhere it points).
    let paths: Vec<String> = plan
        .dirs
        .keys()
        .cloned()
        .chain(plan.files.iter().map(|f| f.path.clone()))
        .chain(plan.links.iter().map(|l| l.0.clone()))
        .collect();
    for path in &paths {
        for anc in ancestors(path) {
            if nondirs.contains(anc) {
                return Err(Error::InvalidArgument(format!(
                    "archive entry {path:?} lies under {anc:?}, which is not a directory"
                )));
            }
            plan.dirs.entry(anc.to_owned()).or_insert(None);
        }
    }
    Ok(plan)
}

/// Checks the plan against what already exists: no directory of the plan is
/// an existing file or symlink, no file or link lands on an existing
/// directory. Reads only.
fn check_tree(root: &Dir, base_rel: &str, plan: &mut Plan) -> Result<()> {
    let mut base_so_far = String::new();
    for seg in base_rel.split('/').filter(|s| !s.is_empty()) {
        base_so_far = join(&base_so_far, seg);
        match root.symlink_metadata(&base_so_far) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{base_so_far:?} is not a directory (symlinks are not followed)"
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e.into()),
        }
    }
    for dir in plan.dirs.keys() {
        match root.symlink_metadata(join(base_rel, dir)) {
            Ok(m) if m.is_dir() => {
                plan.existing.insert(dir.clone());
            }
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{dir:?} exists and is not a directory (symlinks are not followed)"
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    let check_leaf = |path: &str| -> Result<()> {
        match root.symlink_metadata(join(base_rel, path)) {
            Ok(m) if m.is_dir() => Err(Error::IsDirectory(path.to_owned())),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    };
    for f in &plan.files {
        check_leaf(&f.path)?;
    }
    for (path, _) in &plan.links {
        check_leaf(path)?;
    }
    Ok(())
}

/// Refuses an archive whose declared content does not fit in the free space
/// of the root's filesystem, before writing anything.
fn check_space(root: &Dir, plan: &Plan) -> Result<()> {
    let need: u64 = plan.files.iter().map(|f| f.size).sum();
    let st = rustix::fs::fstatvfs(root).map_err(io::Error::from)?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if need > free {
        return Err(Error::FailedPrecondition(format!(
            "the archive holds {need} bytes and the volume has {free} free"
        )));
    }
    Ok(())
}

/// The staging directory of one extract, at the root under a temporary
/// name. Dropping it removes it with whatever it still holds: everything on
/// failure, the entries that were replaced after a commit.
struct Staging<'a> {
    root: &'a Dir,
    name: String,
    dir: Dir,
}

impl<'a> Staging<'a> {
    fn new(root: &'a Dir) -> Result<Staging<'a>> {
        let name = devgate_fs::temp::staging_name(rand::random());
        root.create_dir(&name)?;
        let dir = match root.open_dir_nofollow(&name) {
            Ok(d) => d,
            Err(e) => {
                let _ = devgate_fs::temp::remove_tree(root, &name);
                return Err(e.into());
            }
        };
        Ok(Staging { root, name, dir })
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if let Err(error) = devgate_fs::temp::remove_tree(self.root, &self.name) {
            tracing::warn!(%error, name = %self.name, "cannot remove an extract's staging directory; the next start sweeps it");
        }
    }
}

fn write<R: Read + Seek + Clone + Send + Sync>(
    root: &Dir,
    base_rel: &str,
    archive: &ZipArchive<R>,
    plan: &Plan,
) -> Result<Summary> {
    let staging = Staging::new(root)?;
    let stage = &staging.dir;
    // Parents first (a BTreeMap orders "a" before "a/b").
    for dir in plan.dirs.keys() {
        stage.create_dir(dir)?;
    }

    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    // File creation blocks in the kernel as much as it computes: more
    // threads than cores keep the cores busy.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get() * 2)
        .clamp(4, 16);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut archive = archive.clone();
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = plan.files.get(i) else {
                            return Ok(());
                        };
                        let n = write_file(stage, &mut archive, f, &mut buf)?;
                        bytes.fetch_add(n, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut first = Ok(());
        for h in handles {
            let res = h
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("extract thread panicked".into())));
            if first.is_ok() {
                first = res;
            }
        }
        first
    })?;
    for (path, target) in &plan.links {
        // The target was checked in `plan` not to leave the root.
        stage.symlink_contents(target, path)?;
    }
    commit(root, base_rel, stage, plan)?;
    Ok(Summary {
        files: (plan.files.len() + plan.links.len()) as u64,
        bytes: bytes.load(Ordering::Relaxed),
    })
}

/// One rename done by a commit, undone by renaming back.
struct Moved {
    /// Path relative to the staging directory and to the extract directory.
    path: String,
    /// Swapped with an existing entry (`RENAME_EXCHANGE`), which now sits in
    /// the staging directory.
    exchanged: bool,
}

/// Moves the staged tree into place: a new directory whose parent exists is
/// moved whole, a file or symlink into an existing directory on its own
/// (exchanged with what it replaces, which lands in the staging directory);
/// then directory modes and times, deepest first. On any failure everything
/// done is undone in reverse order and the error returned.
fn commit(root: &Dir, base_rel: &str, stage: &Dir, plan: &Plan) -> Result<()> {
    let mut made_base = Vec::new();
    let mut so_far = String::new();
    for seg in base_rel.split('/').filter(|s| !s.is_empty()) {
        so_far = join(&so_far, seg);
        match root.create_dir(&so_far) {
            Ok(()) => made_base.push(so_far.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                remove_made(root, &made_base);
                return Err(e.into());
            }
        }
    }
    let base = if base_rel.is_empty() {
        root.try_clone()
    } else {
        root.open_dir(base_rel)
    };
    let base = match base {
        Ok(b) => b,
        Err(e) => {
            remove_made(root, &made_base);
            return Err(e.into());
        }
    };
    let mut moved = Vec::new();
    let mut touched = Vec::new();
    let res = place(stage, &base, plan, &mut moved)
        .and_then(|()| set_dir_attributes(&base, plan, &mut touched));
    if let Err(e) = res {
        undo(stage, &base, &moved, &touched);
        remove_made(root, &made_base);
        return Err(e);
    }
    Ok(())
}

fn place(stage: &Dir, base: &Dir, plan: &Plan, moved: &mut Vec<Moved>) -> Result<()> {
    let in_place = |path: &str| {
        let parent = super::create::parent_of(path);
        parent.is_empty() || plan.existing.contains(parent)
    };
    let new_dirs = plan
        .dirs
        .keys()
        .filter(|d| !plan.existing.contains(*d) && in_place(d));
    let leaves = plan
        .files
        .iter()
        .map(|f| &f.path)
        .chain(plan.links.iter().map(|l| &l.0))
        .filter(|p| in_place(p));
    // Grouped by parent, so each pair of parent handles is opened once.
    let mut by_parent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for path in new_dirs.chain(leaves) {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        by_parent.entry(parent).or_default().push(name);
    }
    for (parent, names) in by_parent {
        let (from, to) = parents(stage, base, parent)?;
        for name in names {
            let exchanged = rename_in(&from, &to, name)?;
            moved.push(Moved {
                path: join(parent, name),
                exchanged,
            });
        }
    }
    Ok(())
}

/// Handles on `parent` in the staging and the extract directory.
fn parents(stage: &Dir, base: &Dir, parent: &str) -> Result<(Dir, Dir)> {
    if parent.is_empty() {
        return Ok((stage.try_clone()?, base.try_clone()?));
    }
    Ok((stage.open_dir(parent)?, base.open_dir(parent)?))
}

/// Moves `name` from `from` to `to`; an existing entry there is swapped
/// into `from` (true), so that undoing puts it back. What is swapped out must
/// be a file or symlink: a directory that appeared since the checks is
/// swapped back and the commit fails.
fn rename_in(from: &Dir, to: &Dir, name: &str) -> Result<bool> {
    use rustix::fs::{RenameFlags, renameat_with};
    match renameat_with(from, name, to, name, RenameFlags::NOREPLACE) {
        Ok(()) => return Ok(false),
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(io::Error::from(e).into()),
    }
    renameat_with(from, name, to, name, RenameFlags::EXCHANGE).map_err(io::Error::from)?;
    if from.symlink_metadata(name).is_ok_and(|m| m.is_dir()) {
        renameat_with(from, name, to, name, RenameFlags::EXCHANGE).map_err(io::Error::from)?;
        return Err(Error::IsDirectory(name.to_owned()));
    }
    Ok(true)
}

/// Restores the mode and time of each directory the archive describes,
/// deepest first (after its content was moved in, which touches a
/// directory's time; a read-only directory after its content). What an
/// existing directory had is recorded in `touched` for `undo`.
fn set_dir_attributes(
    base: &Dir,
    plan: &Plan,
    touched: &mut Vec<(String, Option<(u32, std::time::SystemTime)>)>,
) -> Result<()> {
    for (dir, restore) in plan.dirs.iter().rev() {
        let Some((mode, mtime)) = restore else {
            continue;
        };
        let before = if plan.existing.contains(dir) {
            let m = base.symlink_metadata(dir)?;
            Some((m.permissions().mode() & 0o7777, m.modified()?.into_std()))
        } else {
            None
        };
        touched.push((dir.clone(), before));
        set_dir(base, dir, *mode, mtime.and_then(system_time))?;
    }
    Ok(())
}

fn set_dir(base: &Dir, dir: &str, mode: u32, at: Option<std::time::SystemTime>) -> Result<()> {
    // The time first: the mode may forbid opening the directory. A
    // read-only open, not `open_dir` (an O_PATH handle, which cannot set
    // times).
    if let Some(at) = at {
        let mut read = OpenOptions::new();
        read.read(true).follow(FollowSymlinks::No);
        base.open_with(dir, &read)?.into_std().set_modified(at)?;
    }
    base.set_permissions(dir, Permissions::from_mode(mode))?;
    Ok(())
}

/// Undoes a failed commit, best effort, in reverse order: directory modes
/// and times (new directories made writable again, so they can move back
/// and be removed), then each rename.
fn undo(
    stage: &Dir,
    base: &Dir,
    moved: &[Moved],
    touched: &[(String, Option<(u32, std::time::SystemTime)>)],
) {
    for (dir, before) in touched.iter().rev() {
        let res = match before {
            Some((mode, at)) => set_dir(base, dir, *mode, Some(*at)),
            None => set_dir(base, dir, 0o700, None),
        };
        if let Err(error) = res {
            tracing::warn!(%error, %dir, "cannot restore a directory's mode after a failed extract");
        }
    }
    for m in moved.iter().rev() {
        let (parent, name) = m.path.rsplit_once('/').unwrap_or(("", &m.path));
        let res = parents(stage, base, parent).and_then(|(from, to)| {
            use rustix::fs::{RenameFlags, renameat_with};
            let flags = if m.exchanged {
                RenameFlags::EXCHANGE
            } else {
                RenameFlags::NOREPLACE
            };
            renameat_with(&to, name, &from, name, flags).map_err(|e| io::Error::from(e).into())
        });
        if let Err(error) = res {
            tracing::error!(%error, path = %m.path, "cannot undo a move of a failed extract");
        }
    }
}

/// Removes the directories a commit made for the extract directory itself,
/// deepest first (they are empty again after `undo`).
fn remove_made(root: &Dir, made: &[String]) {
    for dir in made.iter().rev() {
        let _ = root.remove_dir(dir);
    }
}

/// Inflates one entry into the staging directory, checking its size against
/// the declared one (the CRC is checked by the zip reader at the end of the
/// entry). Returns the bytes written.
fn write_file<R: Read + Seek>(
    stage: &Dir,
    archive: &mut ZipArchive<R>,
    f: &FilePlan,
    buf: &mut [u8],
) -> Result<u64> {
    let mut opts = OpenOptions::new();
    opts.write(true)
        .create_new(true)
        .follow(FollowSymlinks::No)
        .mode(f.mode);
    let mut out = stage.open_with(&f.path, &opts)?;
    let mut entry = archive.by_index(f.index).map_err(zip_error)?;
    let mut n = 0u64;
    loop {
        let got = match entry.read(buf) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "archive entry {:?}: {e}",
                    f.path
                )));
            }
        };
        n += got as u64;
        // The declared sizes were checked against the caps and the free
        // space: an entry that inflates past its own is a zip bomb, not a
        // file, and is refused before the excess is written.
        if n > f.size {
            return Err(Error::InvalidArgument(format!(
                "archive entry {:?} is larger than it declares ({} bytes)",
                f.path, f.size
            )));
        }
        out.write_all(&buf[..got])?;
    }
    if n != f.size {
        return Err(Error::InvalidArgument(format!(
            "archive entry {:?} is {n} bytes, not the {} it declares",
            f.path, f.size
        )));
    }
    // The umask may have cut bits off the mode given at creation: set it
    // explicitly.
    out.set_permissions(Permissions::from_mode(f.mode))?;
    if let Some(at) = f.mtime.and_then(system_time) {
        out.into_std().set_modified(at)?;
    }
    Ok(n)
}

/// Unix seconds as a time (before 1970: the epoch).
fn system_time(secs: i64) -> Option<std::time::SystemTime> {
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs.max(0) as u64))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn names_that_leave_are_refused() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a\0b",
            "a\\..\\b",
            "a/..",
        ] {
            assert!(clean_name(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(clean_name(b"./a//b/").unwrap().as_deref(), Some("a/b"));
        assert_eq!(clean_name(b"./").unwrap(), None);
    }

    fn sample_zip() -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        w.start_file("d/run.sh", opts).unwrap();
        w.write_all(&b"#!/bin/sh\n".repeat(1000)).unwrap();
        w.add_symlink("d/link", "run.sh", opts).unwrap();
        w.finish().unwrap().into_inner()
    }

    /// Archives too big for memory go through a temporary file, streamed or
    /// placed part by part; both extract the same.
    #[test]
    fn file_spools_extract_like_memory_ones() {
        let zip = sample_zip();
        let mut streamed = SpoolWriter::with_limit(100);
        for chunk in zip.chunks(77) {
            streamed.push(chunk).unwrap();
        }
        let mut placed = SpoolAt::with_limit(zip.len() as u64, 100).unwrap();
        for (i, chunk) in zip.chunks(1000).enumerate().rev() {
            placed.put(i as u64 * 1000, chunk).unwrap();
        }
        for spool in [streamed.finish(), placed.finish()] {
            assert!(matches!(spool, Spool::File(..)));
            let tmp = tempfile::tempdir().unwrap();
            let root = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
            let s = extract(&root, "out", spool, Limits::default()).unwrap();
            assert_eq!((s.files, s.bytes), (2, 10_000));
            let meta = std::fs::metadata(tmp.path().join("out/d/run.sh")).unwrap();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
                0o755
            );
            assert_eq!(
                std::fs::read_link(tmp.path().join("out/d/link"))
                    .unwrap()
                    .to_str(),
                Some("run.sh")
            );
        }
    }

    #[test]
    fn link_targets_are_judged_from_their_directory() {
        assert!(!link_escapes("a/b", "../c"));
        assert!(!link_escapes("a", "../c"));
        assert!(link_escapes("a", "../../c"));
        assert!(link_escapes("", "../c"));
        assert!(link_escapes("a", "/etc"));
        assert!(!link_escapes("", "x/./y"));
    }
}
