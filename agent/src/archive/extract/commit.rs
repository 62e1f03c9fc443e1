//! Moving a staged extract into place, all or nothing: renames (exchanges
//! for what an entry replaces), then directory modes and times; any failure
//! undoes what was done, in reverse order.

use std::collections::BTreeMap;
use std::io;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt as _};
use cap_std::fs::{Dir, OpenOptions, Permissions, PermissionsExt as _};

use super::plan::{Plan, join};
use super::system_time;
use crate::error::{Error, Result};

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
pub(super) fn commit(root: &Dir, base_rel: &str, stage: &Dir, plan: &Plan) -> Result<()> {
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
        let parent = crate::archive::create::parent_of(path);
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
