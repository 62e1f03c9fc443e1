//! The one resolver of client paths: every project file is opened through
//! [`Root`], in the agent and in the gateway's local reads alike.
//!
//! # The invariant
//!
//! Nothing touches a client-named file except through the root's directory
//! handle ([`Root::dir`], a [`cap_std::fs::Dir`]). Every path handed
//! to that handle is first checked by [`Root::clean`] (no `..`, no absolute
//! path, no NUL byte), and then resolved by the kernel *relative to the
//! handle* with `openat2(RESOLVE_BENEATH)` (cap-std falls back to a careful
//! component-by-component walk on kernels without it). A symlink that points
//! outside the root, even one swapped in after a check, therefore fails the
//! open itself: there is no check-then-use window. Symlinks that stay inside
//! the root work; absolute symlink targets are refused even when they happen
//! to name a place inside the root, because the kernel cannot know that.
//!
//! # How to use it (for every module that touches files)
//!
//! ```text
//! let rel = Root::clean(&req.path)?;            // "" is the root itself
//! let file = root.open_read(&rel)?;             // read a file
//! let dir = root.resolve_dir(&rel)?;            // a Dir handle beneath the root
//! let (parent, name) = root.open_parent(&rel, false)?; // to create `name`
//! root.dir().create_dir_all(&rel)               // any cap-std call on `dir()`,
//!     .map_err(|e| Root::io_error(&rel, e))?;   // with errors mapped like this
//! ```
//!
//! Every method of `Root::dir()` (and of any `Dir` obtained from it) is confined
//! beneath that directory, so walking with `root.dir().entries()` /
//! `read_dir(rel)` and creating with `create`, `create_dir_all`, `symlink`,
//! `rename` are all safe. Map the `io::Error`s they return with
//! [`Root::io_error`] so that an escape becomes [`Error::PathOutsideRoot`].
//!
//! A `Dir` from [`Root::open_parent`] pins the parent directory: a later swap
//! of that directory for a symlink cannot redirect what is created through
//! the handle. Only single-component names should be passed to such a parent
//! handle when symlinks inside the root must keep working (a symlink in the
//! parent pointing at `../x` is fine from the root but escapes the parent).

use std::path::{Path, PathBuf};

use cap_std::fs::Dir;

use crate::error::{Error, Result, is_escape};

/// The served directory, held open as a capability. Built only by
/// [`Root::open`], so its host path is always canonical.
pub struct Root {
    /// Handle on the root directory; every cap-std call on it stays beneath it.
    dir: Dir,
    /// The root's canonical host path, for logs, inotify and process working
    /// directories (via [`Root::host_path`]); never open files through it.
    path: PathBuf,
}

impl Root {
    /// Opens `path` as the root: canonicalised first (symlinks in the path
    /// to the root itself are the operator's choice), then held open.
    pub fn open(path: &Path) -> std::io::Result<Root> {
        let path = path.canonicalize()?;
        let dir = Dir::open_ambient_dir(&path, cap_std::ambient_authority())?;
        Ok(Root { dir, path })
    }

    /// The handle on the root directory. Every cap-std call on it (and on any
    /// `Dir` opened through it) stays beneath the root.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The root's canonical host path. Not for opening files: only for logs,
    /// inotify watches and what needs a host path (see [`Root::host_path`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks a client path's syntax and returns it normalised: no leading or
    /// trailing `/`, no empty or `.` segments; `""` means the root itself.
    /// Refuses (`PathOutsideRoot`) absolute paths, `..` segments and NUL bytes.
    /// `%2e%2e` and the like are ordinary names here: nothing decodes them.
    pub fn clean(p: &str) -> Result<String> {
        if p.contains('\0') {
            return Err(Error::PathOutsideRoot(p.replace('\0', "\\0")));
        }
        if p.starts_with('/') {
            return Err(Error::PathOutsideRoot(p.to_owned()));
        }
        let mut out = String::with_capacity(p.len());
        for seg in p.split('/') {
            match seg {
                "" | "." => {}
                ".." => return Err(Error::PathOutsideRoot(p.to_owned())),
                s => {
                    if !out.is_empty() {
                        out.push('/');
                    }
                    out.push_str(s);
                }
            }
        }
        Ok(out)
    }

    /// Opens the directory at the clean path `rel` (`""` = a new handle on the
    /// root), following symlinks that stay inside the root.
    pub fn resolve_dir(&self, rel: &str) -> Result<Dir> {
        let res = if rel.is_empty() {
            self.dir.try_clone()
        } else {
            self.dir.open_dir(rel)
        };
        res.map_err(|e| Self::io_error(rel, e))
    }

    /// Opens the file at the clean path `rel` for reading. The open does not
    /// block: a FIFO planted in the tree cannot hang the caller (check
    /// `metadata().is_file()` on the result before reading).
    pub fn open_read(&self, rel: &str) -> Result<cap_std::fs::File> {
        use cap_std::fs::OpenOptionsExt as _;
        if rel.is_empty() {
            return Err(Error::IsDirectory(String::new()));
        }
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
        self.dir
            .open_with(rel, &opts)
            .map_err(|e| Self::io_error(rel, e))
    }

    /// Metadata of `rel`, following symlinks (inside the root only).
    pub fn metadata(&self, rel: &str) -> Result<cap_std::fs::Metadata> {
        let res = if rel.is_empty() {
            self.dir.dir_metadata()
        } else {
            self.dir.metadata(rel)
        };
        res.map_err(|e| Self::io_error(rel, e))
    }

    /// Metadata of `rel` itself: a symlink is reported as a symlink.
    pub fn symlink_metadata(&self, rel: &str) -> Result<cap_std::fs::Metadata> {
        let res = if rel.is_empty() {
            self.dir.dir_metadata()
        } else {
            self.dir.symlink_metadata(rel)
        };
        res.map_err(|e| Self::io_error(rel, e))
    }

    /// Opens the parent directory of the clean, non-empty path `rel` and
    /// returns it with the last component's name, for creating, replacing,
    /// renaming or removing that entry through the handle. With
    /// `make_parents`, missing parent directories are created first.
    pub fn open_parent(&self, rel: &str, make_parents: bool) -> Result<(Dir, String)> {
        let Some((parent, name)) = split_parent(rel) else {
            return Err(Error::InvalidArgument(
                "the root itself cannot be used here".into(),
            ));
        };
        if make_parents && !parent.is_empty() {
            self.dir
                .create_dir_all(parent)
                .map_err(|e| Self::io_error(parent, e))?;
        }
        let dir = self.resolve_dir(parent)?;
        Ok((dir, name.to_owned()))
    }

    /// Host path of the directory at the clean path `rel`, after checking
    /// that it resolves to a directory inside the root. Only for things that
    /// need a host path, such as a child process's working directory: the
    /// process can do whatever its user can anyway, so the race between this
    /// check and its use does not widen what a client can do.
    pub fn host_path(&self, rel: &str) -> Result<PathBuf> {
        let canon = if rel.is_empty() {
            PathBuf::new()
        } else {
            self.dir
                .canonicalize(rel)
                .map_err(|e| Self::io_error(rel, e))?
        };
        let meta = self.metadata(rel)?;
        if !meta.is_dir() {
            return Err(Error::NotADirectory(rel.to_owned()));
        }
        Ok(self.path.join(canon))
    }

    /// Maps an `io::Error` from an operation on `rel` to this crate's error:
    /// a sandbox escape becomes `PathOutsideRoot`; `NotFound` keeps the client
    /// path; everything else stays an I/O error.
    pub fn io_error(rel: &str, e: std::io::Error) -> Error {
        if is_escape(&e) {
            return Error::PathOutsideRoot(rel.to_owned());
        }
        match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(rel.to_owned()),
            std::io::ErrorKind::AlreadyExists => Error::AlreadyExists(rel.to_owned()),
            std::io::ErrorKind::IsADirectory => Error::IsDirectory(rel.to_owned()),
            std::io::ErrorKind::NotADirectory => Error::NotADirectory(rel.to_owned()),
            std::io::ErrorKind::DirectoryNotEmpty => Error::DirectoryNotEmpty(rel.to_owned()),
            _ => Error::Io(e),
        }
    }
}

/// Splits a clean, non-empty path into (parent, last component).
pub fn split_parent(rel: &str) -> Option<(&str, &str)> {
    if rel.is_empty() {
        return None;
    }
    Some(match rel.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", rel),
    })
}

/// Joins a clean directory path and a single name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_normalises_and_refuses() {
        assert_eq!(Root::clean("").unwrap(), "");
        assert_eq!(Root::clean("./a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(Root::clean("..%2fx").unwrap(), "..%2fx");
        assert_eq!(Root::clean("...").unwrap(), "...");
        for bad in [
            "..",
            "../x",
            "a/../../x",
            "a/..",
            "/etc/passwd",
            "/",
            "a\0b",
        ] {
            assert!(
                matches!(Root::clean(bad), Err(Error::PathOutsideRoot(_))),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn open_canonicalises_and_symlinks_out_fail_the_open() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir_all(real.join("d")).unwrap();
        std::fs::write(tmp.path().join("secret"), "s").unwrap();
        std::fs::write(real.join("d/f"), "f").unwrap();
        std::os::unix::fs::symlink("../secret", real.join("out")).unwrap();
        std::os::unix::fs::symlink("d/f", real.join("in")).unwrap();
        std::os::unix::fs::symlink("real", tmp.path().join("alias")).unwrap();
        let root = Root::open(&tmp.path().join("alias/./d/..")).unwrap();
        assert_eq!(root.path(), real.canonicalize().unwrap());
        assert!(root.open_read("in").is_ok(), "a link inside the root works");
        assert!(matches!(
            root.open_read("out"),
            Err(Error::PathOutsideRoot(p)) if p == "out"
        ));
        assert!(matches!(root.open_read("nope"), Err(Error::NotFound(_))));
        assert!(matches!(root.open_read(""), Err(Error::IsDirectory(_))));
        assert_eq!(root.host_path("d").unwrap(), root.path().join("d"));
        assert!(matches!(root.host_path("in"), Err(Error::NotADirectory(_))));
    }

    #[test]
    fn split_and_join() {
        assert_eq!(split_parent("a/b/c"), Some(("a/b", "c")));
        assert_eq!(split_parent("c"), Some(("", "c")));
        assert_eq!(split_parent(""), None);
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("a", "x"), "a/x");
    }
}
