//! The Process service: one-shot commands ([`run`]), PTY sessions that
//! outlive their clients ([`pty`]), and named background processes
//! ([`background`]). This module is the proto ↔ domain edge; every child is
//! built by [`spawn::command`] (or its PTY flavour) and every working
//! directory resolved by [`spawn::resolve_cwd`].

pub(crate) mod background;
pub(crate) mod pty;
mod reactor;
pub(crate) mod ring;
pub(crate) mod run;
pub(crate) mod spawn;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use proto::v1::{self as pb, attach_pty_request, attach_pty_response, background_logs_response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::State;
use crate::error::Error;
use ring::Next;

pub(crate) use spawn::command;

/// Idle time after which a long-lived stream sends a keep-alive.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Bytes per output message of a stream.
const STREAM_CHUNK: usize = 128 * 1024;
/// Largest per-stream output cap a Run may ask for: the answer is one gRPC
/// message, and clients refuse messages over a few MiB by default.
const MAX_RUN_OUTPUT: u64 = 16 << 20;
/// How long a client may take to send its `start` message.
const ATTACH_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace between SIGTERM and SIGKILL for background processes at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub(crate) struct ProcessService {
    state: State,
    sessions: Arc<pty::Sessions>,
    procs: Arc<background::Procs>,
}

impl ProcessService {
    /// Builds the service and registers its shutdown work in `state.tasks`:
    /// when `state.shutdown` is cancelled, PTY sessions end (SIGHUP, then
    /// SIGKILL; attached clients get the exit) and background process groups
    /// are stopped, and the agent waits for that before exiting. Must be
    /// called inside the Tokio runtime.
    pub(crate) fn new(state: State) -> Self {
        let sessions = pty::Sessions::new(
            Duration::from_secs(state.config.pty_keep_secs),
            state.config.max_pty_sessions as usize,
            state.shutdown.clone(),
        );
        let procs =
            background::Procs::new(state.config.max_background as usize, state.shutdown.clone());
        let (s, p, shutdown) = (sessions.clone(), procs.clone(), state.shutdown.clone());
        state.tasks.spawn(async move {
            shutdown.cancelled().await;
            tokio::join!(s.end_all(), p.stop_all(SHUTDOWN_GRACE));
            tracing::info!("pty sessions and background processes ended");
        });
        Self {
            state,
            sessions,
            procs,
        }
    }

    /// Starts the agent's own dev server (`--start`): `sh -c command` as
    /// the background process `name` in `cwd`, exactly as a client's
    /// StartBackground would (the same log, stop and shutdown).
    pub(crate) fn start_managed(&self, name: &str, command: &str, cwd: &str) -> Result<(), Error> {
        let spec = background::StartSpec {
            name: name.to_owned(),
            argv: vec!["sh".into(), "-c".into(), command.to_owned()],
            cwd: self.cwd(cwd)?,
            env: std::collections::HashMap::new(),
        };
        self.procs.start(spec).map(|_| ())
    }

    fn cwd(&self, cwd: &str) -> Result<std::path::PathBuf, Error> {
        spawn::resolve_cwd(&self.state.root, cwd)
    }
}

#[tonic::async_trait]
impl pb::process_server::Process for ProcessService {
    async fn run(&self, req: Request<pb::RunRequest>) -> Result<Response<pb::RunResponse>, Status> {
        let r = req.into_inner();
        if r.max_output_bytes > MAX_RUN_OUTPUT {
            return Err(Error::InvalidArgument(format!(
                "max_output_bytes may be at most {MAX_RUN_OUTPUT}"
            ))
            .into());
        }
        let spec = run::Spec {
            cwd: self.cwd(&r.cwd)?,
            argv: r.argv,
            env: r.env,
            stdin: r.stdin,
            timeout: match r.timeout_ms {
                0 => run::DEFAULT_TIMEOUT,
                ms => Duration::from_millis(ms.into()),
            },
            max_output: match r.max_output_bytes {
                0 => run::DEFAULT_MAX_OUTPUT,
                n => n as usize,
            },
        };
        let o = run::run(spec, self.state.shutdown.clone()).await?;
        Ok(Response::new(pb::RunResponse {
            exit_code: o.exit_code,
            stdout: o.stdout,
            stderr: o.stderr,
            duration_ms: o.duration.as_millis() as u64,
            stdout_truncated: o.stdout_truncated,
            stderr_truncated: o.stderr_truncated,
            timed_out: o.timed_out,
            signal: o.signal,
        }))
    }

    async fn start_pty(
        &self,
        req: Request<pb::StartPtyRequest>,
    ) -> Result<Response<pb::PtySession>, Status> {
        let r = req.into_inner();
        let spec = pty::StartSpec {
            cwd: self.cwd(&r.cwd)?,
            argv: r.argv,
            env: r.env,
            cols: dimension(r.cols, 80, "cols")?,
            rows: dimension(r.rows, 24, "rows")?,
        };
        let session = self.sessions.start(spec)?;
        Ok(Response::new(pty_info(session.info())))
    }

    async fn attach_pty(
        &self,
        req: Request<Streaming<pb::AttachPtyRequest>>,
    ) -> Result<Response<Stream<pb::AttachPtyResponse>>, Status> {
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(ATTACH_START_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no start message"))??;
        let Some(pb::AttachPtyRequest {
            msg: Some(attach_pty_request::Msg::Start(start)),
        }) = first
        else {
            return Err(Error::InvalidArgument("the first message must be start".into()).into());
        };
        let session = self.sessions.get(&start.session_id)?;
        let (attached, from, truncated) = session.attach(start.offset)?;
        tracing::debug!(session = %session.id, from, truncated, "client attached");

        let started = pb::AttachPtyResponse {
            event: Some(attach_pty_response::Event::Started(pb::AttachStarted {
                session: Some(pty_info(session.info())),
                from_offset: from,
                truncated,
            })),
        };

        // Client input runs beside the output; it ends with the client's
        // half of the stream, the output ends with the session or the client.
        let input_session = session.clone();
        let input_task = tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let res = match msg.msg {
                    Some(attach_pty_request::Msg::Input(data)) => input_session.input(data).await,
                    Some(attach_pty_request::Msg::Resize(r)) => {
                        // The same bounds as at start, but no default: a
                        // zero size is refused.
                        match (size(r.cols, "cols"), size(r.rows, "rows")) {
                            (Ok(c), Ok(rw)) => input_session.resize(c, rw),
                            (Err(e), _) | (_, Err(e)) => Err(e),
                        }
                    }
                    Some(attach_pty_request::Msg::Signal(sig)) => {
                        input_session.signal_foreground(sig)
                    }
                    Some(attach_pty_request::Msg::Start(_)) | None => Err(Error::InvalidArgument(
                        "start may only be the first message".into(),
                    )),
                };
                if let Err(error) = res {
                    tracing::debug!(%error, session = %input_session.id, "attach input refused");
                }
            }
        });
        // The output is read from the cursor by the response stream itself,
        // on the connection's task: no task or channel in between, so new
        // output wakes the connection directly. Dropping the stream (the
        // client left) detaches the cursor and stops the input.
        let output = AttachOutput {
            attached,
            _input: AbortOnDrop(input_task),
        };
        let first = futures::stream::once(async move { Ok(started) });
        let rest = futures::stream::unfold(Some(output), |state| async move {
            let mut st = state?;
            let next = tokio::time::timeout(KEEPALIVE, st.attached.cursor.next(STREAM_CHUNK)).await;
            let event = match next {
                Err(_) => attach_pty_response::Event::Keepalive(pb::KeepAlive {}),
                Ok(Next::Data { offset, data }) => {
                    attach_pty_response::Event::Output(pb::PtyOutput { offset, data })
                }
                Ok(Next::Exit(code)) => attach_pty_response::Event::Exit(pb::PtyExit {
                    code,
                    reason: st.attached.session().end_reason(),
                }),
                Ok(Next::Evicted) => {
                    // Leave the session at once (it may expire), then tell
                    // the client if it ever reads again.
                    tracing::info!(session = %st.attached.session().id, "client evicted");
                    drop(st);
                    return Some((
                        Err(Status::resource_exhausted(
                            "this client fell too far behind the session's output; attach again from your offset",
                        )),
                        None,
                    ));
                }
            };
            let more = matches!(
                event,
                attach_pty_response::Event::Output(_) | attach_pty_response::Event::Keepalive(_)
            );
            let msg = pb::AttachPtyResponse { event: Some(event) };
            Some((Ok(msg), more.then_some(st)))
        });
        Ok(Response::new(Box::pin(first.chain(rest))))
    }

    async fn list_pty(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::ListPtyResponse>, Status> {
        Ok(Response::new(pb::ListPtyResponse {
            sessions: self.sessions.list().into_iter().map(pty_info).collect(),
        }))
    }

    async fn kill_pty(
        &self,
        req: Request<pb::KillPtyRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        self.sessions
            .kill(&r.session_id, r.signal, &r.reason)
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn start_background(
        &self,
        req: Request<pb::StartBackgroundRequest>,
    ) -> Result<Response<pb::BackgroundProcess>, Status> {
        let r = req.into_inner();
        let argv = match (r.argv.is_empty(), r.command.is_empty()) {
            (false, true) => r.argv,
            (true, false) => vec!["sh".into(), "-c".into(), r.command],
            (false, false) => {
                return Err(
                    Error::InvalidArgument("give either command or argv, not both".into()).into(),
                );
            }
            (true, true) => {
                return Err(Error::InvalidArgument("command or argv is required".into()).into());
            }
        };
        let spec = background::StartSpec {
            name: r.name,
            argv,
            cwd: self.cwd(&r.cwd)?,
            env: r.env,
        };
        let p = self.procs.start(spec)?;
        Ok(Response::new(bg_info(p.info())))
    }

    async fn stop_background(
        &self,
        req: Request<pb::StopBackgroundRequest>,
    ) -> Result<Response<pb::BackgroundProcess>, Status> {
        let r = req.into_inner();
        let grace = match r.grace_ms {
            0 => background::DEFAULT_GRACE,
            ms => Duration::from_millis(ms.into()),
        };
        Ok(Response::new(bg_info(
            self.procs.stop(&r.name, grace).await?,
        )))
    }

    async fn list_background(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::ListBackgroundResponse>, Status> {
        Ok(Response::new(pb::ListBackgroundResponse {
            processes: self.procs.list().into_iter().map(bg_info).collect(),
        }))
    }

    async fn background_logs(
        &self,
        req: Request<pb::BackgroundLogsRequest>,
    ) -> Result<Response<Stream<pb::BackgroundLogsResponse>>, Status> {
        let r = req.into_inner();
        let p = self.procs.get(&r.name)?;
        let (_, end_now) = p.log.bounds();
        if r.offset > end_now {
            return Err(Error::InvalidArgument(format!(
                "offset {} is past the log's end ({end_now} bytes)",
                r.offset
            ))
            .into());
        }
        let (mut cursor, _, _) = p.log.cursor(Some(r.offset));
        let follow = r.follow;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                // Without follow, stop at the end as it was when asked.
                if !follow && cursor.position() >= end_now {
                    if let Some(code) = p.log.exit() {
                        let _ = tx
                            .send(Ok(background_logs_response::Event::Exit(pb::PtyExit {
                                reason: String::new(),
                                code,
                            })))
                            .await;
                    }
                    return;
                }
                let next = tokio::select! {
                    n = tokio::time::timeout(KEEPALIVE, cursor.next(STREAM_CHUNK)) => n,
                    _ = tx.closed() => return,
                };
                let (event, end) = match next {
                    Err(_) => (
                        background_logs_response::Event::Keepalive(pb::KeepAlive {}),
                        false,
                    ),
                    Ok(Next::Data { offset, mut data }) => {
                        if !follow {
                            data.truncate(end_now.saturating_sub(offset) as usize);
                        }
                        (
                            background_logs_response::Event::Output(pb::PtyOutput { offset, data }),
                            false,
                        )
                    }
                    Ok(Next::Exit(code)) => (
                        background_logs_response::Event::Exit(pb::PtyExit {
                            code,
                            reason: String::new(),
                        }),
                        true,
                    ),
                    // Background logs are not held; nobody is evicted.
                    Ok(Next::Evicted) => return,
                };
                if tx.send(Ok(event)).await.is_err() || end {
                    return;
                }
            }
        });
        let stream = ReceiverStream::new(rx).map(|e: Result<_, Status>| {
            e.map(|event| pb::BackgroundLogsResponse { event: Some(event) })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Aborts a task when dropped (the attach's input reader, when the output
/// side ends).
/// An attached client's side of an `AttachPty` call, held by its response
/// stream.
struct AttachOutput {
    attached: pty::Attached,
    _input: AbortOnDrop,
}

impl Drop for AttachOutput {
    fn drop(&mut self) {
        tracing::debug!(session = %self.attached.session().id, "client detached");
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn dimension(v: u32, default: u16, what: &str) -> Result<u16, Error> {
    match v {
        0 => Ok(default),
        v => size(v, what),
    }
}

/// A terminal dimension: 1 to 4096.
fn size(v: u32, what: &str) -> Result<u16, Error> {
    match v {
        1..=4096 => Ok(v as u16),
        _ => Err(Error::InvalidArgument(format!(
            "{what} must be between 1 and 4096"
        ))),
    }
}

fn pty_info(i: pty::Info) -> pb::PtySession {
    pb::PtySession {
        id: i.id,
        pid: i.pid,
        argv: i.argv,
        cols: i.cols.into(),
        rows: i.rows.into(),
        created_unix_ms: i.created_unix_ms,
        exited: i.exit.is_some(),
        exit_code: i.exit.unwrap_or(0),
        output_end: i.output_end,
        output_start: i.output_start,
        attached: i.attached,
    }
}

fn bg_info(i: background::Info) -> pb::BackgroundProcess {
    pb::BackgroundProcess {
        name: i.name,
        pid: i.pid,
        running: i.exit.is_none(),
        exit_code: i.exit.unwrap_or(0),
        started_unix_ms: i.started_unix_ms,
        log_end: i.log_end,
    }
}

/// Milliseconds since the Unix epoch, for the `*_unix_ms` fields.
pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
