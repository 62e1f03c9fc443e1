//! Metadata → the wire's `Entry`, and the definition of a file's etag.

use proto::v1::{Entry, EntryKind};

/// The parts of a file's metadata the agent reports, from either std's or
/// cap-std's `Metadata`.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub kind: EntryKind,
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
    /// what `expected_etag` must be for a file that must not exist yet.
    pub fn etag(&self) -> String {
        if self.kind != EntryKind::File {
            return String::new();
        }
        format!(
            "{:x}-{:x}-{:x}-{:x}",
            self.ino, self.size, self.mtime_nanos, self.ctime_nanos
        )
    }

    /// The wire entry for this metadata at the clean path `rel`.
    pub fn to_entry(&self, rel: &str, symlink_target: Option<String>) -> Entry {
        Entry {
            path: rel.to_owned(),
            kind: self.kind as i32,
            size: self.size,
            mtime_unix_nanos: self.mtime_nanos,
            mode: self.mode,
            etag: self.etag(),
            symlink_target: symlink_target.unwrap_or_default(),
        }
    }
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn kind(is_file: bool, is_dir: bool, is_symlink: bool) -> EntryKind {
    if is_symlink {
        EntryKind::Symlink
    } else if is_dir {
        EntryKind::Dir
    } else if is_file {
        EntryKind::File
    } else {
        // FIFOs, sockets and device nodes: listed, but never read or written.
        EntryKind::Unspecified
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
