//! [`Stat`] → the wire's `Entry`: where the Filesystem service turns file
//! metadata into protobuf.

use devgate_fs::{Kind, Stat};
use proto::v1::{Entry, EntryKind};

/// The wire entry for `stat` at the clean path `rel`.
pub(crate) fn to_entry(stat: &Stat, rel: &str, symlink_target: Option<String>) -> Entry {
    Entry {
        path: rel.to_owned(),
        kind: kind(stat.kind) as i32,
        size: stat.size,
        mtime_unix_nanos: stat.mtime_nanos,
        mode: stat.mode,
        etag: stat.etag(),
        symlink_target: symlink_target.unwrap_or_default(),
    }
}

fn kind(k: Kind) -> EntryKind {
    match k {
        Kind::File => EntryKind::File,
        Kind::Dir => EntryKind::Dir,
        Kind::Symlink => EntryKind::Symlink,
        Kind::Other => EntryKind::Unspecified,
    }
}
