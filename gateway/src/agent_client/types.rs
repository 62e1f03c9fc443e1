//! The gateway's own types for what an agent answers and takes (entries,
//! events, PTY sessions, background processes, archive and clone results),
//! made from the agent's protobuf messages here and nowhere else.

// `.into()` between proto byte fields and `Bytes`/`Vec<u8>` keeps compiling
// whichever of the two the generated code uses.
#![allow(clippy::useless_conversion)]

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, TimeZone as _, Utc};
use proto::v1 as pb;
use serde::Serialize;

/// What a file-system entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// A file, directory or symlink of a project, as the contract shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: DateTime<Utc>,
    #[serde(serialize_with = "octal_mode")]
    pub mode: u32,
    /// The agent's etag, bare. It is shown (entries, the PUT answer, the
    /// `ETag` header) in its quoted HTTP form, the same string everywhere.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "quoted_etag"
    )]
    pub etag: Option<String>,
    #[serde(skip)]
    pub symlink_target: Option<String>,
}

/// `"etag"`: an entity tag as HTTP writes it (RFC 9110 section 8.8.3), so
/// that a client can send back in `If-Match` exactly what it was given.
pub fn quote_etag(etag: &str) -> String {
    format!("\"{etag}\"")
}

fn quoted_etag<S: serde::Serializer>(
    etag: &Option<String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match etag {
        Some(t) => s.serialize_str(&quote_etag(t)),
        None => s.serialize_none(),
    }
}

fn octal_mode<S: serde::Serializer>(mode: &u32, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{:04o}", mode & 0o7777))
}

impl From<pb::Entry> for Entry {
    fn from(e: pb::Entry) -> Entry {
        let kind = match pb::EntryKind::try_from(e.kind) {
            Ok(pb::EntryKind::Dir) => EntryKind::Dir,
            Ok(pb::EntryKind::Symlink) => EntryKind::Symlink,
            _ => EntryKind::File,
        };
        Entry {
            path: e.path,
            kind,
            size: e.size,
            mtime: Utc.timestamp_nanos(e.mtime_unix_nanos),
            mode: e.mode,
            etag: Some(e.etag).filter(|t| !t.is_empty()),
            symlink_target: Some(e.symlink_target).filter(|t| !t.is_empty()),
        }
    }
}

/// A change in a project's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsEvent {
    pub kind: FsEventKind,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsEventKind {
    Created,
    Modified,
    Removed,
    Renamed,
}

/// Options of a file write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Fail with 412 unless the file's etag is this one.
    pub expected_etag: Option<String>,
    /// Fail with 412 if the path exists.
    pub create_only: bool,
    /// Fail with 412 unless the path exists (`If-Match: *`), checked by the
    /// agent at the start and at the commit.
    pub must_exist: bool,
    pub make_parents: bool,
    pub mode: Option<u32>,
}

/// Options of an archive: the directory and the names left out.
#[derive(Debug, Clone, Default)]
pub struct ArchiveOptions {
    pub path: String,
    pub exclude: Vec<String>,
    /// Everything: no default exclusions, and symlinks pointing outside the
    /// project kept as symlinks.
    pub all: bool,
}

/// What an archive held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub size: u64,
    pub sha256: String,
    pub files: u64,
}

/// A piece of a streamed archive.
#[derive(Debug, Clone)]
pub enum ArchiveChunk {
    Data(Bytes),
    /// The last item.
    Summary(ArchiveSummary),
}

/// Caps the agent enforces on a zip from outside (0 = none); over one, the
/// extract fails with 413 and writes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractCaps {
    pub max_entries: u64,
    pub max_bytes: u64,
    pub max_ratio: u64,
}

/// What an extraction wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExtractSummary {
    pub files: u64,
    pub bytes: u64,
}

/// The result of a clone.
#[derive(Debug, Clone, Default)]
pub struct CloneResult {
    pub commit: String,
    pub files: u64,
    /// Progress lines, for the command log.
    pub progress: Vec<String>,
}

/// A PTY session of an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PtySession {
    pub id: String,
    pub pid: u32,
    pub cols: u32,
    pub rows: u32,
    pub exited: bool,
    pub exit_code: i32,
    pub output_start: u64,
    pub output_end: u64,
    pub attached: u32,
}

impl From<pb::PtySession> for PtySession {
    fn from(s: pb::PtySession) -> PtySession {
        PtySession {
            id: s.id,
            pid: s.pid,
            cols: s.cols,
            rows: s.rows,
            exited: s.exited,
            exit_code: s.exit_code,
            output_start: s.output_start,
            output_end: s.output_end,
            attached: s.attached,
        }
    }
}

/// How to start a PTY session.
#[derive(Debug, Clone, Default)]
pub struct PtySpec {
    /// Empty = the login shell.
    pub argv: Vec<String>,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    pub cols: u32,
    pub rows: u32,
}

/// Client to agent, on an attached PTY.
#[derive(Debug, Clone)]
pub enum PtyInput {
    Data(Bytes),
    Resize { cols: u32, rows: u32 },
    Signal(i32),
}

/// Agent to client, on an attached PTY.
#[derive(Debug, Clone)]
pub enum PtyEvent {
    Started {
        session: PtySession,
        from_offset: u64,
        truncated: bool,
    },
    Output {
        offset: u64,
        data: Bytes,
    },
    Exit {
        code: i32,
        /// Why the session was ended, when it was ended for a reason
        /// ("hibernated").
        reason: Option<String>,
    },
    KeepAlive,
}

/// A named background process (a dev server on one machine).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackgroundProcess {
    pub name: String,
    pub pid: u32,
    pub running: bool,
    pub exit_code: i32,
    pub log_end: u64,
}

impl From<pb::BackgroundProcess> for BackgroundProcess {
    fn from(p: pb::BackgroundProcess) -> BackgroundProcess {
        BackgroundProcess {
            name: p.name,
            pid: p.pid,
            running: p.running,
            exit_code: p.exit_code,
            log_end: p.log_end,
        }
    }
}
