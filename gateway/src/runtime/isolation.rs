//! Per-project users for the local runtime. When the gateway runs as root,
//! each project's agent (and so every shell, dev server and command of the
//! project) runs under a uid of its own, allocated from `--project-uid-base`
//! and kept in `<data-dir>/uids.json`; its folder is that uid's (0700), so no
//! project can read another's files, signal its processes or read their
//! `/proc` entries. The folders above a project folder (the data dir,
//! `projects/`) are 0711: searchable, not listable. `HOME` is
//! `<data-dir>/homes/<id>` (the uid's, 0700), removed with the environment,
//! as a pod's `/tmp` would be. Without root there is one user for every
//! project, and local mode is for one trusted user (the README says so).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::listeners;

/// Whether projects get users of their own (`--isolate-projects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IsolationMode {
    /// On when the gateway runs as root (which then refuses to start when
    /// the data dir is not reachable by other users); off for an ordinary user.
    #[default]
    Auto,
    /// Always; the gateway refuses to start when it cannot.
    On,
    /// Never: every project runs as the gateway's user.
    Off,
}

/// The users of projects: allocation, folders and homes.
pub struct Isolation {
    /// Held for the gateway's life: no other gateway on this machine hands
    /// out uids from the same base (their projects would share users).
    _range_lock: std::fs::File,
    base: u32,
    file: PathBuf,
    homes: PathBuf,
    uids: Mutex<BTreeMap<String, u32>>,
    /// Every listening socket's port and owner, and when that was read: the
    /// kernel is asked at most once a second, however many requests come.
    listeners: std::sync::RwLock<Arc<Listeners>>,
    /// Held while the listeners are read: when the answer expires under
    /// load, one request reads and the others wait for its answer.
    reading: tokio::sync::Mutex<()>,
}

/// One reading of the machine's listening sockets.
struct Listeners {
    at: Instant,
    owners: listeners::Owners,
}

impl Listeners {
    /// Whether `uid` owns every socket listening on `port`, `None` when
    /// nothing does; from this reading when it is fresh enough to answer.
    /// "Nothing listens" is answered only by a reading made after `since`:
    /// whoever binds next is seen by the next request.
    fn answer(&self, port: u16, uid: u32, since: Option<Instant>) -> Option<Option<bool>> {
        if self.at.elapsed() >= FRESH {
            return None;
        }
        match self.owners.get(&port) {
            Some(owners) => Some(Some(owners.iter().all(|&o| o == uid))),
            None => since.filter(|&t| self.at >= t).map(|_| None),
        }
    }
}

/// How long a reading of the listeners answers for ports found listening.
const FRESH: Duration = Duration::from_secs(1);

/// The uid range a gateway hands out, from its base.
const RANGE: u32 = 1 << 20;

impl Isolation {
    /// Isolation for the projects under `data_dir`, or `None` when `mode`
    /// and the machine say there is none. Sets the modes of the folders
    /// every project's user must pass through.
    pub fn new(
        mode: IsolationMode,
        data_dir: &Path,
        dirs: &[&Path],
        base: u32,
    ) -> anyhow::Result<Option<Isolation>> {
        if mode == IsolationMode::Off {
            return Ok(None);
        }
        if !rustix::process::geteuid().is_root() {
            if mode == IsolationMode::On {
                anyhow::bail!("--isolate-projects on needs the gateway to run as root");
            }
            tracing::info!(
                "local projects run as the gateway's own user: local mode is for one trusted user (run as root for a user per project)"
            );
            return Ok(None);
        }
        if let Some(blocked) = unsearchable_ancestor(data_dir) {
            // As root, falling back would run every project as root: a
            // project's shell could read the secret and every project.
            anyhow::bail!(
                "{} is not searchable by other users, so project users could not reach their folders under {}: \
                 move --data-dir (e.g. to /var/lib/devgate), or pass --isolate-projects off to run every project as root (one trusted user only)",
                blocked.display(),
                data_dir.display()
            );
        }
        anyhow::ensure!(
            base >= 1000 && base.checked_add(RANGE).is_some(),
            "--project-uid-base {base} must be at least 1000 and leave room for {RANGE} users"
        );
        let range_lock = lock_range(base)?;
        let homes = data_dir.join("homes");
        std::fs::create_dir_all(&homes)?;
        for dir in dirs.iter().copied().chain([data_dir, homes.as_path()]) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        }
        let file = data_dir.join("uids.json");
        let uids = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        tracing::info!(base, "each project runs as a user of its own");
        Ok(Some(Isolation {
            _range_lock: range_lock,
            base,
            file,
            homes,
            uids: Mutex::new(uids),
            listeners: std::sync::RwLock::new(Arc::new(Listeners {
                at: Instant::now()
                    .checked_sub(FRESH)
                    .unwrap_or_else(Instant::now),
                owners: Default::default(),
            })),
            reading: tokio::sync::Mutex::default(),
        }))
    }

    /// The project's uid (also its gid), allocated and recorded on first use.
    pub fn uid(&self, project: &str) -> io::Result<u32> {
        let mut uids = self.uids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&uid) = uids.get(project) {
            return Ok(uid);
        }
        let next = uids.values().copied().max().map_or(self.base, |m| m + 1);
        if next >= self.base + RANGE {
            return Err(io::Error::other("no project uid left in the range"));
        }
        uids.insert(project.to_owned(), next);
        // Written before the uid is used: a crash cannot hand it out twice.
        let tmp = self.file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&*uids)?)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, &self.file)?;
        Ok(next)
    }

    /// Makes `root` (the project folder) and the project's home that uid's,
    /// 0700; a tree made before isolation was on is handed over entry by
    /// entry (symlinks themselves, never what they point to). Blocking.
    pub fn prepare(&self, project: &str, root: &Path) -> io::Result<(u32, PathBuf)> {
        let uid = self.uid(project)?;
        std::fs::create_dir_all(root)?;
        if std::fs::symlink_metadata(root)?.uid() != uid {
            chown_tree(root, uid)?;
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        let home = self.homes.join(project);
        // `$HOME/tmp` is the project's TMPDIR: /tmp is shared by every user.
        std::fs::create_dir_all(home.join("tmp"))?;
        for dir in [home.join("tmp"), home.clone()] {
            std::os::unix::fs::lchown(&dir, Some(uid), Some(uid))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok((uid, home))
    }

    /// A folder for the project's agent socket, the project's alone.
    pub fn socket_dir(&self, project: &str, sockets: &Path) -> io::Result<PathBuf> {
        let uid = self.uid(project)?;
        let dir = sockets.join(project);
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::lchown(&dir, Some(uid), Some(uid))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    }

    /// Ends every process of the project's user, including any that left
    /// the agent's process groups (a daemonised server, a `setsid` shell):
    /// `kill -KILL -1` run as that user signals exactly its processes.
    /// Blocking.
    pub fn kill_all(&self, project: &str) -> io::Result<()> {
        use std::os::unix::process::CommandExt as _;
        let uid = self.uid(project)?;
        let status = std::process::Command::new("kill")
            .args(["-KILL", "-1"])
            .uid(uid)
            .gid(uid)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        // `kill -1` fails when there was nothing left to signal: fine.
        let _ = status;
        Ok(())
    }

    /// Removes the project's home (its environment is gone).
    pub fn clear_home(&self, project: &str) -> io::Result<()> {
        match std::fs::remove_dir_all(self.homes.join(project)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether the project's user owns the TCP sockets listening on `port`
    /// (any local address); `None` when nothing listens there. Answered
    /// from the last reading of the machine's listeners when it is fresh
    /// enough; otherwise one request reads them again (on a blocking
    /// thread) while the others wait for it without holding a thread: a
    /// blocking task per waiting request once spawned a thread each, every
    /// second, under load.
    pub async fn port_owned_by(self: &Arc<Self>, project: &str, port: u16) -> Option<bool> {
        if let Some(owned) = self.port_owned_by_cached(project, port) {
            return owned;
        }
        let uid = self.uid(project).ok()?;
        let arrived = Instant::now();
        let _reading = self.reading.lock().await;
        // Another request may have read them while this one waited.
        if let Some(owned) = self.current().answer(port, uid, Some(arrived)) {
            return owned;
        }
        let Ok(owners) = tokio::task::spawn_blocking(listeners::read).await else {
            // Not known: refused, as another user's port would be.
            return Some(false);
        };
        let fresh = Arc::new(Listeners {
            at: Instant::now(),
            owners,
        });
        let owned = fresh.answer(port, uid, Some(arrived)).flatten();
        *self.listeners.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        owned
    }

    /// [`Self::port_owned_by`] from the last reading alone: `None` when
    /// the listeners must be read again.
    fn port_owned_by_cached(&self, project: &str, port: u16) -> Option<Option<bool>> {
        let uid = *self
            .uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(project)?;
        self.current().answer(port, uid, None)
    }

    fn current(&self) -> Arc<Listeners> {
        self.listeners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Takes the machine-wide lock of the uid range starting at `base`
/// (`/run/devgate/uid-base-<base>.lock`, an advisory `flock` held while the
/// gateway runs).
fn lock_range(base: u32) -> anyhow::Result<std::fs::File> {
    let dir = Path::new("/run/devgate");
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("uid-base-{base}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            anyhow::anyhow!(
                "another gateway on this machine gives projects uids from --project-uid-base {base}; give each gateway a base of its own"
            )
        },
    )?;
    Ok(file)
}

/// Hands `dir` and everything below it to `uid` (and gid `uid`), without
/// following symlinks. Only folders, symlinks and regular files with one
/// link are handed over: a hard link could be another name of a file
/// outside the project (`/etc/shadow`, the gateway's secret), and devices,
/// FIFOs and sockets have no business in a project; those stay as they are.
fn chown_tree(dir: &Path, uid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            chown_tree(&path, uid)?;
        } else if kind.is_symlink() || (kind.is_file() && meta.nlink() == 1) {
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
        } else {
            tracing::warn!(path = %path.display(), "not handed to the project's user (hard link or special file)");
        }
    }
    Ok(())
}

/// `PATH` as a project's user can use it: the gateway's own entries that
/// user can search (a folder under `/root` would make every command found
/// only later in `PATH` fail with "Permission denied" instead of running).
pub fn reachable_path(path: &str) -> String {
    path.split(':')
        .filter(|dir| {
            !dir.is_empty()
                && Path::new(dir).is_absolute()
                && std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
                && unsearchable_ancestor(Path::new(dir)).is_none()
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// The first folder on the way to `path` (itself excluded) that other users
/// cannot search (no `o+x`), if any.
fn unsearchable_ancestor(path: &Path) -> Option<PathBuf> {
    let path = std::path::absolute(path).ok()?;
    path.ancestors()
        .skip(1)
        .find(|dir| {
            std::fs::metadata(dir)
                .map(|m| m.permissions().mode() & 0o001 == 0)
                .unwrap_or(true)
        })
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_keeps_only_what_others_can_search() {
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("closed");
        let open = dir.path().join("open");
        std::fs::create_dir_all(closed.join("bin")).unwrap();
        std::fs::create_dir_all(&open).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}/bin::relative:/usr/bin",
            open.display(),
            closed.display()
        );
        assert_eq!(
            reachable_path(&path),
            format!("{}:/usr/bin", open.display())
        );
    }

    #[test]
    fn ancestors_must_be_searchable() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b/data");
        std::fs::create_dir_all(&inner).unwrap();
        assert_eq!(unsearchable_ancestor(&inner), None);
        let a = dir.path().join("a");
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(unsearchable_ancestor(&inner), Some(a.clone()));
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
