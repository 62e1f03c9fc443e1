//! What an archive would write, and every check before anything is
//! written: entry names that cannot leave the extract directory, symlink
//! targets that cannot leave the root, the caps, the existing tree and the
//! free space.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Seek};

use cap_std::fs::Dir;
use zip::ZipArchive;

use super::spool::SpoolReader;
use super::{Limits, MAX_LINK, RATIO_FLOOR, Spool};
use crate::archive::create::zip_error;
use crate::error::{Error, Result};

#[derive(Debug)]
pub(super) struct FilePlan {
    pub(super) index: usize,
    pub(super) path: String,
    pub(super) mode: u32,
    /// Size the archive declares; inflating past it, or ending before it,
    /// is an error.
    pub(super) size: u64,
    /// Modification time the entry carries (Unix seconds), restored.
    pub(super) mtime: Option<i64>,
}

#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Directories to create, parents first, with the mode and modification
    /// time to restore (None: only implied by a deeper entry).
    pub(super) dirs: BTreeMap<String, Option<(u32, Option<i64>)>>,
    pub(super) files: Vec<FilePlan>,
    pub(super) links: Vec<(String, String)>,
    /// Directories of the plan that already exist under the extract
    /// directory (filled by `check_tree`); the others are made new.
    pub(super) existing: HashSet<String>,
}

pub(super) fn too_many(n: u64, max: u64) -> Error {
    Error::TooLarge(format!(
        "the archive holds {n} entries; at most {max} are accepted"
    ))
}

/// The expanded size the entries declare (what inflating may reach: an entry
/// inflating past its own declared size fails) against the byte and ratio
/// caps.
pub(super) fn check_caps(plan: &Plan, archive_len: u64, limits: Limits) -> Result<()> {
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
pub(super) fn declared_entries(spool: &Spool) -> Result<Option<u64>> {
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
pub(super) fn clean_name(raw: &[u8]) -> Result<Option<String>> {
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

pub(super) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

pub(super) fn plan<R: Read + Seek>(archive: &mut ZipArchive<R>, base_rel: &str) -> Result<Plan> {
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
            let mtime = crate::archive::mtime::of_entry(&entry);
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
            let at = join(base_rel, crate::archive::create::parent_of(&path));
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
                mtime: crate::archive::mtime::of_entry(&entry),
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
pub(super) fn check_tree(root: &Dir, base_rel: &str, plan: &mut Plan) -> Result<()> {
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
pub(super) fn check_space(root: &Dir, plan: &Plan) -> Result<()> {
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
