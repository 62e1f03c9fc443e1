//! Atomic file writes: a temporary file beside the target, fsync, rename.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, LazyLock, Mutex};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _};
use devgate_fs::{Kind, Root, Stat};

use crate::error::{Error, Result};

/// What a write may assume about the file it replaces.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteOptions {
    /// The target's current etag must equal this (`""`: the target must not exist).
    pub(crate) expected_etag: Option<String>,
    /// Fail with `AlreadyExists` if the target exists (checked atomically at the rename).
    pub(crate) create_only: bool,
    /// Create missing parent directories.
    pub(crate) make_parents: bool,
    /// Mode of a new file (default 0o644); a replaced file keeps its own.
    pub(crate) mode: Option<u32>,
}

/// A write in progress. Data goes to a temporary file in the target's
/// directory, through a handle on that directory opened at [`AtomicWrite::begin`]:
/// if the directory is later swapped for a symlink, the write still lands in
/// the directory that was checked. Dropping it without [`AtomicWrite::commit`]
/// removes the temporary file, so a cancelled write leaves nothing.
pub(crate) struct AtomicWrite {
    parent: Arc<Dir>,
    name: String,
    rel: String,
    tmp_name: String,
    /// Key of this write's entry in the pending registry.
    id: u64,
    file: Option<std::fs::File>,
    opts: WriteOptions,
    mode: u32,
    /// Owner of the replaced file, kept when the agent may (as root).
    owner: Option<(u32, u32)>,
    existed: bool,
}

impl AtomicWrite {
    /// Checks the preconditions and creates the temporary file for the clean
    /// path `rel`. A symlink at `rel` that stays inside the root is followed:
    /// the file it points to is replaced, not the link.
    pub(crate) fn begin(root: &Root, rel: &str, opts: WriteOptions) -> Result<AtomicWrite> {
        if rel.is_empty() {
            return Err(Error::IsDirectory(String::new()));
        }
        let mut rel = rel.to_owned();
        let mut current = lstat_opt(root, &rel)?;
        if current.is_some_and(|s| s.kind == Kind::Symlink) {
            // Canonicalising through the root's handle cannot leave the root;
            // a dangling or outside link fails here with a clear error.
            let canon = root
                .dir()
                .canonicalize(&rel)
                .map_err(|e| crate::error::io_error(&rel, e))?;
            rel = canon
                .to_str()
                .ok_or_else(|| Error::InvalidArgument(format!("{rel}: link target is not utf-8")))?
                .to_owned();
            current = lstat_opt(root, &rel)?;
        }
        check_preconditions(&rel, current.as_ref(), &opts)?;
        let mode = match current {
            Some(s) => s.mode,
            None => opts.mode.unwrap_or(0o644) & 0o7777,
        };
        let (parent, name) = root
            .open_parent(&rel, opts.make_parents)
            .map_err(Error::from)?;
        let parent = Arc::new(parent);
        let id = rand::random::<u64>();
        let tmp_name = devgate_fs::temp::tmp_name(id);
        let file = parent
            .open_with(
                &tmp_name,
                OpenOptions::new().write(true).create_new(true).mode(0o600),
            )
            .map_err(|e| crate::error::io_error(&rel, e))?
            .into_std();
        let existed = current.is_some();
        let owner = current
            .filter(|s| Some((s.uid, s.gid)) != own_ids())
            .map(|s| (s.uid, s.gid));
        pending().insert(id, (parent.clone(), tmp_name.clone()));
        Ok(AtomicWrite {
            parent,
            name,
            rel,
            tmp_name,
            id,
            file: Some(file),
            opts,
            mode,
            owner,
            existed,
        })
    }

    /// The clean path being written (after following a symlink at the target).
    pub(crate) fn rel(&self) -> &str {
        &self.rel
    }

    /// Whether the target existed when the write began (so the write will
    /// modify rather than create it).
    pub(crate) fn existed(&self) -> bool {
        self.existed
    }

    /// Appends `data` to the temporary file.
    pub(crate) fn write_all(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(data).map_err(Error::Io),
            None => Err(Error::Internal("write after commit".into())),
        }
    }

    /// Makes the data durable and puts it in place: fsync, mode, the
    /// precondition checked again against the directory handle, rename over
    /// the target, fsync of the directory. Blocking: call it off the runtime.
    pub(crate) fn commit(mut self) -> Result<Stat> {
        let Some(file) = self.file.take() else {
            return Err(Error::Internal("write committed twice".into()));
        };
        file.sync_data()?;
        if let Some((uid, gid)) = self.owner {
            // Keeps a project file owned by the project's user when a root
            // agent replaces it. Without the privilege (EPERM) the new file
            // is simply ours, as any editor's atomic save would leave it.
            let _ = rustix::fs::fchown(
                &file,
                rustix::process::Uid::from_raw(uid).into(),
                rustix::process::Gid::from_raw(gid).into(),
            );
        }
        rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(self.mode))
            .map_err(std::io::Error::from)?;
        // Checked again here because the file may have changed while the data
        // streamed in. The check and the rename run under one lock, so agent
        // writes with preconditions are serialised (two writes holding the
        // same etag: exactly one wins); only another process writing in those
        // microseconds can still slip between them.
        static COMMIT: Mutex<()> = Mutex::new(());
        // The lock guards no data, so a poisoned lock is still usable.
        let serial = COMMIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = match self.parent.symlink_metadata(&self.name) {
            Ok(m) => Some(Stat::from(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(crate::error::io_error(&self.rel, e)),
        };
        check_preconditions(&self.rel, current.as_ref(), &self.opts)?;
        rename(
            &self.parent,
            &self.tmp_name,
            &self.parent,
            &self.name,
            !self.opts.create_only,
        )
        .map_err(|e| crate::error::io_error(&self.rel, e))?;
        drop(serial);
        // The temporary name is gone now; nothing for Drop to clean up.
        self.tmp_name.clear();
        pending().remove(&self.id);
        fsync_dir(&self.parent)?;
        Ok(Stat::from(&file.metadata()?))
    }
}

impl Drop for AtomicWrite {
    fn drop(&mut self) {
        pending().remove(&self.id);
        if !self.tmp_name.is_empty()
            && let Err(error) = self.parent.remove_file(&self.tmp_name)
        {
            tracing::warn!(%error, path = %self.rel, "cannot remove temporary file");
        }
    }
}

/// This process's effective uid and gid.
fn own_ids() -> Option<(u32, u32)> {
    Some((
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    ))
}

/// Removes the temporary files of writes still in progress. Called when the
/// agent exits with writes unfinished (the grace period ran out): their
/// handlers are never dropped, so their own cleanup would not run.
pub(crate) fn abandon_all() {
    let all: Vec<_> = pending().drain().map(|(_, v)| v).collect();
    for (dir, tmp) in all {
        let _ = dir.remove_file(&tmp);
    }
}

/// A temporary file: its directory and name.
type PendingTmp = (Arc<Dir>, String);

/// Temporary files of the writes in progress, by write id.
fn pending() -> std::sync::MutexGuard<'static, HashMap<u64, PendingTmp>> {
    static PENDING: LazyLock<Mutex<HashMap<u64, PendingTmp>>> = LazyLock::new(Mutex::default);
    // A panic while holding this lock cannot leave the map inconsistent
    // (single insert/remove calls), so a poisoned lock is still usable.
    PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Renames `from` in `from_dir` to `to` in `to_dir` (single names, through
/// the handles). Without `overwrite` an existing `to` is refused atomically
/// (`RENAME_NOREPLACE`), or with a stat first on filesystems lacking it.
pub(crate) fn rename(
    from_dir: &Dir,
    from: &str,
    to_dir: &Dir,
    to: &str,
    overwrite: bool,
) -> std::io::Result<()> {
    use rustix::fs::{RenameFlags, renameat, renameat_with};
    if overwrite {
        return renameat(from_dir, from, to_dir, to).map_err(Into::into);
    }
    match renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE) {
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            if to_dir.symlink_metadata(to).is_ok() {
                return Err(std::io::ErrorKind::AlreadyExists.into());
            }
            renameat(from_dir, from, to_dir, to).map_err(Into::into)
        }
        other => other.map_err(Into::into),
    }
}

/// Makes a rename in `dir` durable. cap-std holds directories as `O_PATH`
/// handles, which cannot be fsynced, so the directory is opened for reading.
fn fsync_dir(dir: &Dir) -> std::io::Result<()> {
    let readable = dir.open_with(".", OpenOptions::new().read(true))?;
    readable.sync_all()
}

fn lstat_opt(root: &Root, rel: &str) -> Result<Option<Stat>> {
    match root.symlink_metadata(rel) {
        Ok(m) => Ok(Some(Stat::from(&m))),
        Err(devgate_fs::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn check_preconditions(rel: &str, current: Option<&Stat>, opts: &WriteOptions) -> Result<()> {
    if let Some(s) = current {
        match s.kind {
            Kind::File => {}
            Kind::Dir => return Err(Error::IsDirectory(rel.to_owned())),
            _ => return Err(Error::InvalidArgument(format!("{rel}: not a regular file"))),
        }
        if opts.create_only {
            return Err(Error::AlreadyExists(rel.to_owned()));
        }
    }
    if let Some(expected) = &opts.expected_etag {
        let actual = current.map(Stat::etag).unwrap_or_default();
        if *expected != actual {
            return Err(Error::FailedPrecondition(format!(
                "{rel}: etag does not match"
            )));
        }
    }
    Ok(())
}
