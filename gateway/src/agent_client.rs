//! The gateway's client of project agents: the one module that converts
//! between the agent's protobuf messages and the gateway's own types. It
//! connects over a Unix socket (local runtime) or TCP (Kubernetes) with the
//! agent's token, and [`AgentPool`] caches one channel per project.

// `.into()` between proto byte fields and `Bytes`/`Vec<u8>` keeps compiling
// whichever of the two the generated code uses.
#![allow(clippy::useless_conversion)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone as _, Utc};
use futures::stream::{BoxStream, Stream, StreamExt as _};
use proto::v1 as pb;
use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::runtime::{AgentAddress, AgentEndpoint, ExecOutput, ExecSpec};

/// Largest gRPC message accepted from an agent.
const MAX_MESSAGE: usize = 64 << 20;

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

fn entry(e: Option<pb::Entry>) -> Result<Entry> {
    e.map(Entry::from)
        .ok_or_else(|| Error::internal("agent answered without an entry"))
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

/// A connection to one agent; cheap to clone.
#[derive(Clone)]
pub struct AgentClient {
    channel: Channel,
    token: Arc<str>,
}

impl AgentClient {
    /// A lazily connected client: the first call dials.
    pub fn connect_lazy(endpoint: &AgentEndpoint) -> Result<AgentClient> {
        let channel = match &endpoint.address {
            AgentAddress::Unix(path) => {
                let path = path.clone();
                base_endpoint(Endpoint::from_static("http://agent.local"))
                    .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                        }
                    }))
            }
            AgentAddress::Tcp(uri) => base_endpoint(
                Endpoint::from_shared(uri.clone())
                    .map_err(|e| Error::internal(format!("bad agent uri {uri}: {e}")))?,
            )
            .connect_lazy(),
        };
        Ok(AgentClient {
            channel,
            token: Arc::from(endpoint.token.as_str()),
        })
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        // The token was checked to be header-safe when the endpoint was made;
        // a bad one would only make the agent answer 401, never panic here.
        if let Ok(v) = format!("Bearer {}", self.token).parse() {
            req.metadata_mut().insert(proto::AUTH_METADATA_KEY, v);
        }
        req
    }

    fn fs(&self) -> pb::filesystem_client::FilesystemClient<Channel> {
        pb::filesystem_client::FilesystemClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn process(&self) -> pb::process_client::ProcessClient<Channel> {
        pb::process_client::ProcessClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn git(&self) -> pb::git_client::GitClient<Channel> {
        pb::git_client::GitClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn archive(&self) -> pb::archive_client::ArchiveClient<Channel> {
        pb::archive_client::ArchiveClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    // ---- files ----

    /// One entry.
    pub async fn stat(&self, path: &str) -> Result<Entry> {
        let r = unary(self.fs().stat(self.req(pb::StatRequest {
            path: path.to_owned(),
        })))
        .await?;
        entry(r.into_inner().entry)
    }

    /// A directory's entries, `depth` levels down (0 and 1: its own entries).
    pub async fn list(&self, path: &str, depth: u32) -> Result<Vec<Entry>> {
        let r = unary(self.fs().list(self.req(pb::ListRequest {
            path: path.to_owned(),
            depth,
        })))
        .await?;
        Ok(r.into_inner()
            .entries
            .into_iter()
            .map(Entry::from)
            .collect())
    }

    /// A file's entry and its bytes from `offset`, at most `length` (0 = to the end).
    pub async fn read(
        &self,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<(Entry, BoxStream<'static, Result<Bytes>>)> {
        let mut s = self
            .fs()
            .read(self.req(pb::ReadRequest {
                path: path.to_owned(),
                offset,
                length,
            }))
            .await?
            .into_inner();
        let first = s
            .message()
            .await?
            .ok_or_else(|| Error::internal("read stream ended before its start"))?;
        let e = match first.event {
            Some(pb::read_response::Event::Start(st)) => entry(st.entry)?,
            _ => return Err(Error::internal("read stream did not begin with start")),
        };
        // Each chunk is handed out only once the next message (or the end of
        // the call, with its trailers) has arrived. A response with a
        // Content-Length stops polling its body after the last byte; without
        // this look-ahead the gRPC call would be dropped before its trailers,
        // every read would reset its HTTP/2 stream, and after enough resets h2
        // closes the whole connection (ENHANCE_YOUR_CALM), failing the reads in
        // flight on it.
        let data = futures::stream::unfold(
            (s, None::<Bytes>, false),
            |(mut s, mut held, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match s.message().await {
                        Ok(Some(pb::ReadResponse {
                            event: Some(pb::read_response::Event::Data(d)),
                        })) => {
                            if let Some(prev) = held.replace(Bytes::from(d)) {
                                return Some((Ok(prev), (s, held, false)));
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => return held.map(|last| (Ok(last), (s, None, true))),
                        Err(status) => {
                            return Some((Err(Error::from(status)), (s, None, true)));
                        }
                    }
                }
            },
        )
        .boxed();
        Ok((e, data))
    }

    /// Writes a file atomically from a stream of chunks; the agent commits only
    /// when the whole body arrived. A body error or a body over `limit` bytes
    /// cancels the call, and nothing is written.
    pub async fn write(
        &self,
        path: &str,
        opts: WriteOptions,
        body: BoxStream<'static, Result<Bytes>>,
        limit: u64,
    ) -> Result<Entry> {
        let start = pb::WriteRequest {
            msg: Some(pb::write_request::Msg::Start(pb::WriteStart {
                path: path.to_owned(),
                expected_etag: opts.expected_etag,
                create_only: opts.create_only,
                must_exist: opts.must_exist,
                make_parents: opts.make_parents,
                mode: opts.mode,
            })),
        };
        let (tx, msgs) = upstream(start);
        let mut fs = self.fs();
        let rpc = fs.write(self.req(msgs));
        let r = drive(
            rpc,
            pump(body, tx, limit, |d| pb::WriteRequest {
                msg: Some(pb::write_request::Msg::Data(d.into())),
            }),
        )
        .await?;
        entry(r.entry)
    }

    /// Makes a directory (and its parents when asked).
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<Entry> {
        let r = unary(self.fs().make_dir(self.req(pb::MakeDirRequest {
            path: path.to_owned(),
            parents,
        })))
        .await?;
        entry(r.into_inner().entry)
    }

    /// Removes a file or directory (a non-empty one only with `recursive`).
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        unary(self.fs().remove(self.req(pb::RemoveRequest {
            path: path.to_owned(),
            recursive,
        })))
        .await?;
        Ok(())
    }

    /// Renames; an existing `to` is 409 unless `overwrite`.
    pub async fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<Entry> {
        let r = unary(self.fs().r#move(self.req(pb::MoveRequest {
            from: from.to_owned(),
            to: to.to_owned(),
            overwrite,
        })))
        .await?;
        entry(r.into_inner().entry)
    }

    /// Changes under `path`, recursively, as they happen (keep-alives dropped).
    pub async fn watch(&self, path: &str) -> Result<BoxStream<'static, Result<FsEvent>>> {
        let s = self
            .fs()
            .watch(self.req(pb::WatchRequest {
                path: path.to_owned(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(s.filter_map(|m| async move {
            match m {
                Ok(pb::WatchResponse {
                    event: Some(pb::watch_response::Event::Change(c)),
                }) => {
                    let kind = match pb::EventKind::try_from(c.kind) {
                        Ok(pb::EventKind::Created) => FsEventKind::Created,
                        Ok(pb::EventKind::Removed) => FsEventKind::Removed,
                        Ok(pb::EventKind::Renamed) => FsEventKind::Renamed,
                        _ => FsEventKind::Modified,
                    };
                    Some(Ok(FsEvent {
                        kind,
                        path: c.path,
                        to: Some(c.to).filter(|t| !t.is_empty()),
                    }))
                }
                Ok(_) => None,
                Err(status) => Some(Err(Error::from(status))),
            }
        })
        .boxed())
    }

    // ---- processes ----

    /// Runs a command to completion.
    pub async fn run(&self, spec: ExecSpec) -> Result<ExecOutput> {
        let r = self
            .process()
            .run(self.req(pb::RunRequest {
                argv: spec.argv,
                cwd: spec.cwd,
                env: spec.env.into_iter().collect(),
                stdin: spec.stdin.into(),
                timeout_ms: spec.timeout_ms,
                max_output_bytes: spec.max_output_bytes,
            }))
            .await?
            .into_inner();
        Ok(ExecOutput {
            exit_code: r.exit_code,
            stdout: r.stdout.into(),
            stderr: r.stderr.into(),
            duration_ms: r.duration_ms,
            timed_out: r.timed_out,
            truncated: r.stdout_truncated || r.stderr_truncated,
        })
    }

    /// Starts a PTY session that outlives its clients.
    pub async fn start_pty(&self, spec: PtySpec) -> Result<PtySession> {
        let r = unary(self.process().start_pty(self.req(pb::StartPtyRequest {
            argv: spec.argv,
            cwd: spec.cwd,
            env: spec.env.into_iter().collect(),
            cols: spec.cols,
            rows: spec.rows,
        })))
        .await?;
        Ok(r.into_inner().into())
    }

    /// Attaches to a PTY session: output from `offset` (None = the oldest
    /// byte held), input from `input`. Dropping the returned stream detaches.
    pub async fn attach_pty<S>(
        &self,
        session_id: &str,
        offset: Option<u64>,
        input: S,
    ) -> Result<BoxStream<'static, Result<PtyEvent>>>
    where
        S: Stream<Item = PtyInput> + Send + 'static,
    {
        let start = pb::AttachPtyRequest {
            msg: Some(pb::attach_pty_request::Msg::Start(pb::AttachStart {
                session_id: session_id.to_owned(),
                offset,
            })),
        };
        let msgs = futures::stream::iter([start]).chain(input.map(|i| pb::AttachPtyRequest {
            msg: Some(match i {
                PtyInput::Data(d) => pb::attach_pty_request::Msg::Input(d.into()),
                PtyInput::Resize { cols, rows } => {
                    pb::attach_pty_request::Msg::Resize(pb::Resize { cols, rows })
                }
                PtyInput::Signal(s) => pb::attach_pty_request::Msg::Signal(s),
            }),
        }));
        let s = self
            .process()
            .attach_pty(self.req(msgs))
            .await?
            .into_inner();
        Ok(s.filter_map(|m| async move {
            use pb::attach_pty_response::Event;
            match m {
                Ok(pb::AttachPtyResponse { event: Some(e) }) => Some(Ok(match e {
                    Event::Started(s) => PtyEvent::Started {
                        session: s.session.map(PtySession::from).unwrap_or_default(),
                        from_offset: s.from_offset,
                        truncated: s.truncated,
                    },
                    Event::Output(o) => PtyEvent::Output {
                        offset: o.offset,
                        data: Bytes::from(o.data),
                    },
                    Event::Exit(x) => PtyEvent::Exit {
                        code: x.code,
                        reason: Some(x.reason).filter(|r| !r.is_empty()),
                    },
                    Event::Keepalive(_) => PtyEvent::KeepAlive,
                })),
                Ok(_) => None,
                Err(status) => Some(Err(Error::from(status))),
            }
        })
        .boxed())
    }

    /// Starts a named background process with `sh -c command` in `cwd`.
    pub async fn start_background(
        &self,
        name: &str,
        command: &str,
        cwd: &str,
        env: BTreeMap<String, String>,
    ) -> Result<BackgroundProcess> {
        let r = unary(
            self.process()
                .start_background(self.req(pb::StartBackgroundRequest {
                    name: name.to_owned(),
                    command: command.to_owned(),
                    argv: Vec::new(),
                    cwd: cwd.to_owned(),
                    env: env.into_iter().collect(),
                })),
        )
        .await?;
        Ok(r.into_inner().into())
    }

    /// Stops a background process's group (SIGTERM, SIGKILL after `grace_ms`).
    pub async fn stop_background(&self, name: &str, grace_ms: u32) -> Result<BackgroundProcess> {
        let r = unary(
            self.process()
                .stop_background(self.req(pb::StopBackgroundRequest {
                    name: name.to_owned(),
                    grace_ms,
                })),
        )
        .await?;
        Ok(r.into_inner().into())
    }

    /// The agent's terminal sessions.
    pub async fn list_pty(&self) -> Result<Vec<PtySession>> {
        let r = unary(self.process().list_pty(self.req(pb::Empty {}))).await?;
        Ok(r.into_inner()
            .sessions
            .into_iter()
            .map(PtySession::from)
            .collect())
    }

    /// Ends a terminal session (SIGHUP, SIGKILL after the agent's grace) and
    /// returns once it exited; attached clients get `reason` with the exit.
    pub async fn end_pty(&self, id: &str, reason: &str) -> Result<()> {
        unary(self.process().kill_pty(self.req(pb::KillPtyRequest {
            session_id: id.to_owned(),
            signal: 0,
            reason: reason.to_owned(),
        })))
        .await?;
        Ok(())
    }

    /// The agent's background processes.
    pub async fn list_background(&self) -> Result<Vec<BackgroundProcess>> {
        let r = unary(self.process().list_background(self.req(pb::Empty {}))).await?;
        Ok(r.into_inner()
            .processes
            .into_iter()
            .map(BackgroundProcess::from)
            .collect())
    }

    /// A background process's output from `offset`; with `follow`, open until it ends.
    pub async fn background_logs(
        &self,
        name: &str,
        offset: u64,
        follow: bool,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let s = self
            .process()
            .background_logs(self.req(pb::BackgroundLogsRequest {
                name: name.to_owned(),
                offset,
                follow,
            }))
            .await?
            .into_inner();
        Ok(s.filter_map(|m| async move {
            use pb::background_logs_response::Event;
            match m {
                Ok(pb::BackgroundLogsResponse {
                    event: Some(Event::Output(o)),
                }) => Some(Ok(Bytes::from(o.data))),
                Ok(_) => None,
                Err(status) => Some(Err(Error::from(status))),
            }
        })
        .boxed())
    }

    // ---- git ----

    /// Clones `url` at `git_ref` into `dir` (absent or empty).
    pub async fn clone_repo(
        &self,
        url: &str,
        git_ref: &str,
        dir: &str,
        drop_git_dir: bool,
        shallow: bool,
    ) -> Result<CloneResult> {
        let mut git = self.git();
        // `GitClient::clone` the RPC, not `Clone::clone`.
        let mut s = pb::git_client::GitClient::clone(
            &mut git,
            self.req(pb::CloneRequest {
                url: url.to_owned(),
                r#ref: git_ref.to_owned(),
                dir: dir.to_owned(),
                shallow,
                drop_git_dir,
            }),
        )
        .await?
        .into_inner();
        let mut out = CloneResult::default();
        while let Some(m) = s.message().await? {
            match m.event {
                Some(pb::clone_response::Event::Progress(p)) => out.progress.push(p),
                Some(pb::clone_response::Event::Done(d)) => {
                    out.commit = d.commit;
                    out.files = d.files;
                }
                None => {}
            }
        }
        Ok(out)
    }

    // ---- archives ----

    /// A zip of `opts.path`, streamed: data chunks, then the summary.
    pub async fn create_archive(
        &self,
        opts: ArchiveOptions,
    ) -> Result<BoxStream<'static, Result<ArchiveChunk>>> {
        let s = self
            .archive()
            .create(self.req(pb::CreateArchiveRequest {
                options: Some(archive_options(opts)),
            }))
            .await?
            .into_inner();
        Ok(s.filter_map(|m| async move {
            use pb::create_archive_response::Event;
            match m {
                Ok(pb::CreateArchiveResponse {
                    event: Some(Event::Data(d)),
                }) => Some(Ok(ArchiveChunk::Data(Bytes::from(d)))),
                Ok(pb::CreateArchiveResponse {
                    event: Some(Event::Summary(s)),
                }) => Some(Ok(ArchiveChunk::Summary(summary(s)))),
                Ok(_) => None,
                Err(status) => Some(Err(Error::from(status))),
            }
        })
        .boxed())
    }

    /// Extracts a zip streamed from `body` into `path`; every entry is checked
    /// before anything is written. A body over `limit` bytes cancels the call.
    pub async fn extract(
        &self,
        path: &str,
        body: BoxStream<'static, Result<Bytes>>,
        limit: u64,
        caps: Option<ExtractCaps>,
    ) -> Result<ExtractSummary> {
        let start = pb::ExtractRequest {
            msg: Some(pb::extract_request::Msg::Start(pb::ExtractStart {
                path: path.to_owned(),
                limits: caps.map(|c| pb::ExtractLimits {
                    max_entries: c.max_entries,
                    max_bytes: c.max_bytes,
                    max_ratio: c.max_ratio,
                }),
            })),
        };
        let (tx, msgs) = upstream(start);
        let mut ac = self.archive();
        let rpc = ac.extract(self.req(msgs));
        let r = drive(
            rpc,
            pump(body, tx, limit, |d| pb::ExtractRequest {
                msg: Some(pb::extract_request::Msg::Data(d.into())),
            }),
        )
        .await?;
        Ok(ExtractSummary {
            files: r.files,
            bytes: r.bytes,
        })
    }

    // ---- snapshots ----

    fn snapshot(&self) -> pb::snapshot_client::SnapshotClient<Channel> {
        pb::snapshot_client::SnapshotClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// Cuts a snapshot of the whole project. `previous` is the newest
    /// snapshot (its id and stored manifest), whose chunks are not uploaded
    /// again. `sign` answers the agent's requests for upload URLs of new
    /// packs. Answers the agent's summary and the new manifest's bytes.
    pub async fn snapshot_create(
        &self,
        previous: Option<(String, Bytes)>,
        sign: &PackSigner<'_>,
    ) -> Result<(SnapshotDone, Bytes)> {
        let (id, manifest) = previous.unwrap_or_default();
        self.snapshot_call(true, id, manifest, sign).await
    }

    /// Restores snapshot `id` (its stored manifest `manifest`) into the
    /// project, which must be empty. `sign` answers the agent's requests for
    /// download URLs.
    pub async fn snapshot_restore(
        &self,
        id: String,
        manifest: Bytes,
        sign: &PackSigner<'_>,
    ) -> Result<SnapshotDone> {
        Ok(self.snapshot_call(false, id, manifest, sign).await?.0)
    }

    async fn snapshot_call(
        &self,
        create: bool,
        id: String,
        manifest: Bytes,
        sign: &PackSigner<'_>,
    ) -> Result<(SnapshotDone, Bytes)> {
        use pb::snapshot_control::Msg;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotControl>(4);
        let control = |m: Msg| pb::SnapshotControl { msg: Some(m) };
        let mut first = Vec::new();
        for piece in manifest.chunks(1 << 20) {
            first.push(control(Msg::Manifest(piece.to_vec())));
        }
        first.push(control(Msg::Start(pb::SnapshotStart { id })));
        let sender = tx.clone();
        let feed = tokio::spawn(async move {
            for m in first {
                if sender.send(m).await.is_err() {
                    return;
                }
            }
        });
        let mut client = self.snapshot();
        let req = self.req(ReceiverStream::new(rx));
        let call = if create {
            client.create(req).await
        } else {
            client.restore(req).await
        };
        let mut events = call.map_err(snapshot_status)?.into_inner();
        let mut out = Vec::new();
        let mut done = None;
        while let Some(ev) = events.message().await.map_err(snapshot_status)? {
            match ev.event {
                Some(pb::snapshot_event::Event::NeedUrls(n)) => {
                    if n.packs.is_empty() || n.packs.len() > 64 {
                        return Err(Error::internal("the agent asked for a bad batch of urls"));
                    }
                    let urls = sign(n.packs.clone()).await?;
                    let urls = n
                        .packs
                        .into_iter()
                        .zip(urls)
                        .map(|(pack, url)| pb::PackUrl { pack, url })
                        .collect();
                    if tx
                        .send(control(Msg::Urls(pb::PackUrls { urls })))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Some(pb::snapshot_event::Event::Manifest(piece)) => {
                    if (out.len() + piece.len()) as u64 > devgate_snapshot::MANIFEST_MAX {
                        return Err(Error::internal("the agent's manifest is too large"));
                    }
                    out.extend_from_slice(&piece);
                }
                Some(pb::snapshot_event::Event::Done(d)) => {
                    done = Some(SnapshotDone {
                        id: d.id,
                        files: d.files,
                        bytes: d.bytes,
                        uploaded_bytes: d.uploaded_bytes,
                        packs_uploaded: d.packs_uploaded,
                    });
                }
                None => {}
            }
        }
        feed.abort();
        let done =
            done.ok_or_else(|| Error::internal("the snapshot stream ended without its summary"))?;
        Ok((done, Bytes::from(out)))
    }
}

/// Signs URLs for a batch of pack ids (hex), one per id, in order.
pub type PackSigner<'a> =
    dyn Fn(Vec<String>) -> futures::future::BoxFuture<'a, Result<Vec<String>>> + Send + Sync + 'a;

/// What the agent reports at the end of a snapshot or a restore.
#[derive(Debug, Clone, Default)]
pub struct SnapshotDone {
    pub id: String,
    pub files: u64,
    pub bytes: u64,
    pub uploaded_bytes: u64,
    pub packs_uploaded: u64,
}

/// A snapshot call's failure: the agent's integrity and format errors
/// (failed precondition) name the snapshot and say what is wrong, and are
/// kept as such; anything else maps as usual.
fn snapshot_status(s: tonic::Status) -> Error {
    if s.code() == tonic::Code::FailedPrecondition {
        Error::SnapshotUnusable(s.message().to_owned())
    } else {
        Error::from(s)
    }
}

/// How long a unary call (stat, list, mkdir, ...) may take before the request
/// fails with 504, so a hung agent cannot hang requests forever.
const UNARY_TIMEOUT: Duration = Duration::from_secs(30);

/// A unary call with [`UNARY_TIMEOUT`].
async fn unary<T>(
    call: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(UNARY_TIMEOUT, call).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::Timeout("the agent did not answer in time".into())),
    }
}

fn base_endpoint(e: Endpoint) -> Endpoint {
    e.connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
}

fn archive_options(o: ArchiveOptions) -> pb::ArchiveOptions {
    pb::ArchiveOptions {
        path: o.path,
        exclude: o.exclude,
        no_default_excludes: o.all,
        keep_outside_links: o.all,
    }
}

fn summary(s: pb::ArchiveSummary) -> ArchiveSummary {
    ArchiveSummary {
        size: s.size,
        sha256: s.sha256,
        files: s.files,
    }
}

/// The message stream of a client-streaming call: `first`, then what is sent on the sender.
fn upstream<Req: Send + 'static>(
    first: Req,
) -> (tokio::sync::mpsc::Sender<Req>, ReceiverStream<Req>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Req>(4);
    // A new channel has room, so the first message is queued at once.
    let _ = tx.try_send(first);
    (tx, ReceiverStream::new(rx))
}

/// Sends the body's chunks, then drops the sender (half-closing the call's
/// stream, which commits it). Fails on a body error or past `limit` bytes.
async fn pump<Req>(
    mut body: BoxStream<'static, Result<Bytes>>,
    tx: tokio::sync::mpsc::Sender<Req>,
    limit: u64,
    wrap: fn(Bytes) -> Req,
) -> Result<()> {
    let mut total: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(Error::PayloadTooLarge(limit));
        }
        if tx.send(wrap(chunk)).await.is_err() {
            // The call ended early; its own result says why.
            break;
        }
    }
    drop(tx);
    Ok(())
}

/// Drives a client-streaming call beside its [`pump`]. When the pump fails,
/// the call is dropped, which cancels its stream so the agent discards what
/// it got and nothing is committed.
async fn drive<Resp, F, P>(rpc: F, pump: P) -> Result<Resp>
where
    F: std::future::Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    P: std::future::Future<Output = Result<()>>,
{
    tokio::pin!(rpc);
    tokio::pin!(pump);
    tokio::select! {
        r = &mut rpc => return r.map(|r| r.into_inner()).map_err(Error::from),
        p = &mut pump => p?,
    }
    rpc.await.map(|r| r.into_inner()).map_err(Error::from)
}

/// One cached client per project, replaced when the project's endpoint changes
/// (a restarted agent has a new token).
#[derive(Clone, Default)]
pub struct AgentPool {
    clients: Arc<Mutex<HashMap<String, (AgentEndpoint, AgentClient)>>>,
}

impl AgentPool {
    /// The client for `project` at `endpoint`, reusing a cached channel.
    pub fn get(&self, project: &str, endpoint: &AgentEndpoint) -> Result<AgentClient> {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ep, c)) = map.get(project)
            && ep == endpoint
        {
            return Ok(c.clone());
        }
        let c = AgentClient::connect_lazy(endpoint)?;
        map.insert(project.to_owned(), (endpoint.clone(), c.clone()));
        Ok(c)
    }

    /// Forgets a project's client (its agent stopped).
    pub fn forget(&self, project: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project);
    }
}
