//! Process calls of the agent client: one-shot commands, PTY sessions
//! and background processes with their logs.

// `.into()` between proto byte fields and `Bytes`/`Vec<u8>` keeps compiling
// whichever of the two the generated code uses.
#![allow(clippy::useless_conversion)]

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt as _};
use proto::v1 as pb;

use super::{AgentClient, BackgroundProcess, PtyEvent, PtyInput, PtySession, PtySpec, unary};
use crate::agent_types::{ExecOutput, ExecSpec};
use crate::error::{Error, Result};

impl AgentClient {
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
            .terminal()
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
}
