//! The metadata of a project file that callers report, and the definition of
//! a file's etag.

/// What an entry is. FIFOs, sockets and device nodes are `Other`: listed,
/// but never read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The parts of a file's metadata that are reported, from either std's or
/// cap-std's `Metadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub size: u64,
    pub mtime_nanos: i64,
    pub ctime_nanos: i64,
    pub ino: u64,
    /// Permission bits only (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Stat {
    /// The etag of a regular file: hex `inode-size-mtime_ns-ctime_ns`. An
    /// atomic write (a new inode), an in-place write (mtime and ctime), a
    /// truncate (size) and a chmod (ctime) all change it, without reading the
    /// content. Directories and other kinds have no etag (`""`), which is also
    /// what an expected etag must be for a file that must not exist yet.
    pub fn etag(&self) -> String {
        if self.kind != Kind::File {
            return String::new();
        }
        format!(
            "{:x}-{:x}-{:x}-{:x}",
            self.ino, self.size, self.mtime_nanos, self.ctime_nanos
        )
    }
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn kind(is_file: bool, is_dir: bool, is_symlink: bool) -> Kind {
    if is_symlink {
        Kind::Symlink
    } else if is_dir {
        Kind::Dir
    } else if is_file {
        Kind::File
    } else {
        Kind::Other
    }
}

impl From<&cap_std::fs::Metadata> for Stat {
    fn from(m: &cap_std::fs::Metadata) -> Stat {
        use cap_std::fs::MetadataExt as _;
        let ft = m.file_type();
        Stat {
            kind: kind(ft.is_file(), ft.is_dir(), ft.is_symlink()),
            size: m.size(),
            mtime_nanos: nanos(m.mtime(), m.mtime_nsec()),
            ctime_nanos: nanos(m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        }
    }
}

impl From<&std::fs::Metadata> for Stat {
    fn from(m: &std::fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt as _;
        let ft = m.file_type();
        Stat {
            kind: kind(ft.is_file(), ft.is_dir(), ft.is_symlink()),
            size: m.size(),
            mtime_nanos: nanos(m.mtime(), m.mtime_nsec()),
            ctime_nanos: nanos(m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_changes_with_content_and_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "one").unwrap();
        let a = Stat::from(&std::fs::metadata(&p).unwrap());
        assert_eq!(a.kind, Kind::File);
        assert!(!a.etag().is_empty());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let b = Stat::from(&std::fs::metadata(&p).unwrap());
        assert_eq!(b.mode, 0o755);
        assert_ne!(a.etag(), b.etag(), "a chmod changes ctime, so the etag");
        std::fs::write(&p, "two!").unwrap();
        let c = Stat::from(&std::fs::metadata(&p).unwrap());
        assert_ne!(b.etag(), c.etag());
        let d = Stat::from(&std::fs::metadata(dir.path()).unwrap());
        assert_eq!(d.kind, Kind::Dir);
        assert_eq!(d.etag(), "", "directories have no etag");
    }
}
