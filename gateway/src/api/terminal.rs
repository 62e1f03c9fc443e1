//! The terminal WebSocket (`GET /api/projects/{p}/terminal`), bridged to
//! agents' PTY sessions: the project's agent for a shell beside the files;
//! for a container, the agent that runs its dev server (the local runtime:
//! the project's; Kubernetes: the one in the dev pod). A container session's
//! id is `{container}_{agent's id}`, so a reattach finds its agent from the
//! id alone.
//!
//! Server to client: first `{"type":"session","id","offset","truncated"}`,
//! then binary frames of output, `{"type":"exit","code"}` and a close at the
//! end. Client to server: binary keystrokes; text `{"type":"resize",...}` (and
//! `{"type":"signal","signal":N}`). `?session=` reattaches; `?offset=N` (the
//! output bytes the client already has) makes the reattach exact: the next
//! frame starts at byte N, so nothing is shown twice and nothing is skipped.
//!
//! Flow control: one writer per socket reads the session only when its last
//! frame was written, so a slow browser stops the agent stream (gRPC flow
//! control, then the agent's held ring, then the PTY itself) instead of
//! making the gateway buffer; the client's keystrokes go through a bounded
//! queue the other way.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{FutureExt as _, SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::authorize;
use super::ws::{Liveness, PEER_TIMEOUT, READ_BUFFER, close_frame, ping_interval};
use crate::agent_client::{PtyEvent, PtyInput, PtySpec};
use crate::auth::QueryClaims;
use crate::error::{Error, Result};
use crate::ids;
use crate::metrics::WsGauge;
use crate::runtime::ShellTarget;
use crate::state::AppState;
use crate::store::ContainerStatus;

/// The terminal routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/projects/{p}/terminal", get(terminal))
}

/// Output frames are coalesced up to this size when the session has more
/// ready at once: fewer, larger frames cost the browser and the kernel less.
const MAX_FRAME: usize = 64 * 1024;

/// Keystroke and resize messages queued towards the agent at most.
const INPUT_QUEUE: usize = 64;

/// Largest client message (a paste) accepted on a terminal socket.
const MAX_INPUT_MESSAGE: usize = 1 << 20;

/// Largest terminal accepted, in columns and rows.
const MAX_DIMENSION: u32 = 1000;

/// The query of the terminal route, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Params {
    container: Option<String>,
    session: Option<String>,
    cols: u32,
    rows: u32,
    cmd: Option<String>,
    offset: Option<u64>,
}

impl Params {
    fn parse(q: &BTreeMap<String, String>) -> Result<Params> {
        let nonempty = |k: &str| {
            q.get(k)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let dimension = |k: &str, default: u32| -> Result<u32> {
            match nonempty(k) {
                None => Ok(default),
                Some(v) => match v.parse::<u32>() {
                    Ok(n) if (1..=MAX_DIMENSION).contains(&n) => Ok(n),
                    _ => Err(Error::BadRequest(format!(
                        "{k} must be a number from 1 to {MAX_DIMENSION}"
                    ))),
                },
            }
        };
        let container = nonempty("container");
        if let Some(c) = &container {
            ids::container_name(c)?;
        }
        let session = nonempty("session");
        if let Some(s) = &session {
            let ok = s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(Error::BadRequest(format!("invalid session id {s:?}")));
            }
        }
        let offset = match nonempty("offset") {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| Error::BadRequest("offset must be a byte count".into()))?,
            ),
        };
        if offset.is_some() && session.is_none() {
            return Err(Error::BadRequest(
                "offset needs a session to reattach to".into(),
            ));
        }
        Ok(Params {
            container,
            session,
            cols: dimension("cols", 80)?,
            rows: dimension("rows", 24)?,
            cmd: q.get("cmd").filter(|v| !v.trim().is_empty()).cloned(),
            offset,
        })
    }

    /// The command of a new session: `sh -c cmd`, or empty for the login shell.
    fn argv(&self) -> Vec<String> {
        match &self.cmd {
            Some(cmd) => vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
            None => Vec::new(),
        }
    }
}

/// Client to server control messages.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    Resize { cols: u32, rows: u32 },
    Signal { signal: i32 },
}

/// An attached session: its events (the first one, `Started`, already
/// consumed) and where keystrokes go.
pub struct Attached {
    pub id: String,
    pub from_offset: u64,
    pub truncated: bool,
    pub events: BoxStream<'static, Result<PtyEvent>>,
    pub input: mpsc::Sender<PtyInput>,
}

async fn terminal(
    State(state): State<AppState>,
    Path(project): Path<String>,
    QueryClaims(claims): QueryClaims,
    query: std::result::Result<
        Query<BTreeMap<String, String>>,
        axum::extract::rejection::QueryRejection,
    >,
    ws: WebSocketUpgrade,
) -> Result<Response> {
    authorize(&claims, &project)?;
    let Query(query) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let params = Params::parse(&query)?;
    // A terminal opened on a hibernated project wakes it.
    crate::lifecycle::ensure_active(&state, &project).await?;
    let attached = match &params.session {
        Some(id) => reattach(&state, &project, id, params.offset).await?,
        None => open(&state, &project, &params).await?,
    };
    let span = tracing::info_span!(
        "terminal",
        project = %project,
        session = %attached.id,
        container = params.container.as_deref().unwrap_or(""),
    );
    span.in_scope(|| {
        tracing::info!(
            from_offset = attached.from_offset,
            truncated = attached.truncated,
            reattach = params.session.is_some(),
            "terminal attached"
        )
    });
    // A connected terminal keeps its project awake (idle hibernation).
    let hold = state.activity.hold(&project);
    // A keystroke message is small; a paste may be large, but not unbounded.
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .max_message_size(MAX_INPUT_MESSAGE)
        // Answers `devgate` to a browser that sent its token in the offer.
        .protocols([crate::auth::WS_PROTOCOL]);
    Ok(ws.on_upgrade(move |socket| {
        async move {
            let _hold = hold;
            let _ws = WsGauge::new(&state.metrics, "terminal");
            state.metrics.open_terminals.inc();
            bridge(socket, attached, state.shutdown.clone()).await;
            state.metrics.open_terminals.dec();
            tracing::info!("terminal detached");
        }
        .instrument(span)
    }))
}

/// Starts a new session (a shell at the project root, or in a container) and
/// attaches to it from its first byte.
async fn open(state: &AppState, project: &str, p: &Params) -> Result<Attached> {
    let Some(name) = &p.container else {
        let agent = state.agent_of_active(project).await?;
        let session = agent
            .start_pty(PtySpec {
                argv: p.argv(),
                cwd: String::new(),
                env: BTreeMap::new(),
                cols: p.cols,
                rows: p.rows,
            })
            .await?;
        return attach_agent(&agent, &session.id, Some(0)).await;
    };
    let c = state.container(project, name).await?;
    if c.status != ContainerStatus::Running {
        return Err(Error::Conflict(format!("container {name} is not running")));
    }
    let ShellTarget::Agent { endpoint, cwd, env } =
        state.runtime.container_shell(project, name, &c.env).await?;
    let agent = state.agents.get_for_container(project, name, &endpoint)?;
    let session = agent
        .start_pty(PtySpec {
            argv: p.argv(),
            cwd,
            env,
            cols: p.cols,
            rows: p.rows,
        })
        .await?;
    let mut attached = attach_agent(&agent, &session.id, Some(0)).await?;
    attached.id = format!("{name}{CONTAINER_SESSION}{}", attached.id);
    Ok(attached)
}

/// Between the container and the agent's session id in a container
/// session's id: neither a container name (a DNS label) nor an agent's id
/// (hex) holds it.
const CONTAINER_SESSION: char = '_';

/// Attaches to an existing session: a container's (its id names the
/// container) through that container's agent, else the project agent's.
async fn reattach(
    state: &AppState,
    project: &str,
    id: &str,
    offset: Option<u64>,
) -> Result<Attached> {
    let Some((name, session)) = id.split_once(CONTAINER_SESSION) else {
        let agent = state.agent_of_active(project).await?;
        return attach_agent(&agent, id, offset).await;
    };
    ids::container_name(name)?;
    // An unknown container is an unknown session (404), whatever the runtime.
    state.container(project, name).await?;
    let ShellTarget::Agent { endpoint, .. } = state
        .runtime
        .container_shell(project, name, &BTreeMap::new())
        .await?;
    let agent = state.agents.get_for_container(project, name, &endpoint)?;
    let mut attached = attach_agent(&agent, session, offset).await?;
    attached.id = id.to_owned();
    Ok(attached)
}

async fn attach_agent(
    agent: &crate::agent_client::AgentClient,
    id: &str,
    offset: Option<u64>,
) -> Result<Attached> {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    let mut events = agent
        .attach_pty(id, offset, tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    // The agent answers `started` first; anything else is a broken stream,
    // and an error here (unknown session) still becomes an HTTP answer.
    match events.next().await {
        Some(Ok(PtyEvent::Started {
            session,
            from_offset,
            truncated,
        })) => Ok(Attached {
            id: if session.id.is_empty() {
                id.to_owned()
            } else {
                session.id
            },
            from_offset,
            truncated,
            events,
            input: tx,
        }),
        Some(Err(e)) => Err(e),
        Some(Ok(other)) => Err(Error::internal(format!(
            "agent began an attach with {other:?}"
        ))),
        None => Err(Error::Unavailable(
            "the agent ended the attach at once".into(),
        )),
    }
}

/// Moves bytes between the WebSocket and the session until either ends.
async fn bridge(socket: WebSocket, attached: Attached, shutdown: CancellationToken) {
    let Attached {
        id,
        from_offset,
        truncated,
        mut events,
        input,
    } = attached;
    let (mut sink, mut stream) = socket.split();
    let alive = Liveness::new();
    let done = shutdown.child_token();

    // Reader: keystrokes and control messages to the session. Sending into a
    // full queue waits, so a slow agent stops us reading the browser.
    let reader = {
        let alive = alive.clone();
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    _ = done.cancelled() => break,
                };
                let Some(Ok(msg)) = msg else { break };
                alive.touch();
                let item = match msg {
                    Message::Binary(b) => PtyInput::Data(b),
                    Message::Text(t) => match serde_json::from_str::<Control>(t.as_str()) {
                        Ok(Control::Resize { cols, rows }) => PtyInput::Resize {
                            cols: cols.clamp(1, MAX_DIMENSION),
                            rows: rows.clamp(1, MAX_DIMENSION),
                        },
                        Ok(Control::Signal { signal }) => PtyInput::Signal(signal),
                        Err(error) => {
                            tracing::debug!(error = %crate::error::Chain(&error), "ignored a control message");
                            continue;
                        }
                    },
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                let sent = tokio::select! {
                    r = input.send(item) => r,
                    _ = done.cancelled() => break,
                };
                if sent.is_err() {
                    break;
                }
            }
            done.cancel();
        })
    };

    let hello = serde_json::json!({"type": "session", "id": id, "offset": from_offset, "truncated": truncated});
    let mut next_offset = from_offset;
    let mut ping = ping_interval();
    // An event read ahead while coalescing output, to handle next.
    let mut ahead: Option<Option<Result<PtyEvent>>> = None;
    let mut out: Vec<Message> = vec![Message::Text(hello.to_string().into())];
    let close = 'outer: loop {
        for msg in out.drain(..) {
            // Blocks while the browser is slow; nothing is read from the
            // session meanwhile, which is the backpressure.
            let sent = tokio::select! {
                r = sink.send(msg) => r,
                _ = done.cancelled() => break 'outer None,
            };
            if sent.is_err() {
                break 'outer None;
            }
        }
        let ev = match ahead.take() {
            Some(ev) => ev,
            None => tokio::select! {
                ev = events.next() => ev,
                _ = ping.tick() => {
                    if alive.silent_for() > PEER_TIMEOUT {
                        tracing::info!("terminal peer silent; detaching");
                        break None;
                    }
                    out.push(Message::Ping(Bytes::new()));
                    continue;
                }
                _ = done.cancelled() => break None,
            },
        };
        match ev {
            Some(Ok(PtyEvent::Output { offset, data })) => {
                let Some(data) = in_order(&mut next_offset, offset, data) else {
                    continue;
                };
                if data.len() >= MAX_FRAME {
                    out.push(Message::Binary(data));
                    continue;
                }
                // Take whatever else is ready now into the same frame.
                let mut buf = BytesMut::from(&data[..]);
                while buf.len() < MAX_FRAME {
                    match events.next().now_or_never() {
                        Some(Some(Ok(PtyEvent::Output { offset, data }))) => {
                            if let Some(d) = in_order(&mut next_offset, offset, data) {
                                buf.extend_from_slice(&d);
                            }
                        }
                        Some(Some(Ok(PtyEvent::KeepAlive))) => {}
                        Some(other) => {
                            ahead = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
                out.push(Message::Binary(buf.freeze()));
            }
            Some(Ok(PtyEvent::Exit { code, reason })) => {
                for msg in out.drain(..) {
                    if sink.send(msg).await.is_err() {
                        break 'outer None;
                    }
                }
                let mut exit = serde_json::json!({"type": "exit", "code": code});
                if let Some(reason) = reason {
                    exit["reason"] = reason.into();
                }
                if sink
                    .send(Message::Text(exit.to_string().into()))
                    .await
                    .is_err()
                {
                    break None;
                }
                tracing::info!(code, "terminal session ended");
                break Some(close_frame(1000, "the session ended"));
            }
            Some(Ok(PtyEvent::KeepAlive)) => {}
            Some(Ok(PtyEvent::Started { .. })) => {}
            Some(Err(error)) => {
                tracing::warn!(error = %crate::error::Chain(&error), "the session's stream failed");
                break Some(close_frame(1011, "the terminal session's stream failed"));
            }
            None => break Some(close_frame(1011, "the terminal session's stream ended")),
        }
    };
    let close = close.or_else(|| {
        shutdown
            .is_cancelled()
            .then(|| close_frame(1001, "the gateway is shutting down"))
    });
    if let Some(close) = close {
        let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(close)).await;
        // Give the peer a moment to answer the close, so it sees a clean end.
        let _ = tokio::time::timeout(Duration::from_secs(2), done.cancelled()).await;
    }
    done.cancel();
    let _ = reader.await;
}

/// The part of a chunk at `offset` that follows `next` (what was sent so far),
/// advancing `next`. Offsets let the bridge drop a byte it already sent; the
/// agent never skips any, but a gap would be logged rather than hidden.
fn in_order(next: &mut u64, offset: u64, data: Bytes) -> Option<Bytes> {
    let end = offset + data.len() as u64;
    if end <= *next {
        return None;
    }
    if offset > *next {
        tracing::warn!(
            expected = *next,
            got = offset,
            "terminal output skipped bytes"
        );
        *next = end;
        return Some(data);
    }
    let skip = (*next - offset) as usize;
    *next = end;
    Some(data.slice(skip..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn params_defaults_and_checks() {
        let p = Params::parse(&q(&[])).expect("defaults");
        assert_eq!(
            (p.cols, p.rows, p.container, p.session, p.offset),
            (80, 24, None, None, None)
        );
        let p = Params::parse(&q(&[
            ("container", ""),
            ("session", ""),
            ("cols", "120"),
            ("rows", "40"),
        ]))
        .expect("empty values mean absent");
        assert_eq!((p.cols, p.rows, p.container), (120, 40, None));
        let p = Params::parse(&q(&[("session", "abc-1"), ("offset", "1234")])).expect("reattach");
        assert_eq!(
            (p.session.as_deref(), p.offset),
            (Some("abc-1"), Some(1234))
        );
        assert_eq!(
            Params::parse(&q(&[("cmd", "echo hi")]))
                .expect("cmd")
                .argv(),
            ["/bin/sh", "-c", "echo hi"]
        );
        for bad in [
            vec![("cols", "0")],
            vec![("rows", "1001")],
            vec![("cols", "x")],
            vec![("container", "Bad_Name")],
            vec![("session", "../x")],
            vec![("session", "a"), ("offset", "-1")],
            vec![("offset", "5")],
        ] {
            assert!(Params::parse(&q(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn in_order_drops_repeats_and_keeps_the_rest() {
        let mut next = 10;
        assert_eq!(
            in_order(&mut next, 10, Bytes::from_static(b"abc")).as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(next, 13);
        assert_eq!(in_order(&mut next, 11, Bytes::from_static(b"bc")), None);
        assert_eq!(
            in_order(&mut next, 12, Bytes::from_static(b"cde")).as_deref(),
            Some(&b"de"[..])
        );
        assert_eq!(next, 15);
        assert_eq!(
            in_order(&mut next, 20, Bytes::from_static(b"z")).as_deref(),
            Some(&b"z"[..])
        );
        assert_eq!(next, 21);
    }

    #[test]
    fn control_messages() {
        assert!(matches!(
            serde_json::from_str::<Control>(r#"{"type":"resize","cols":100,"rows":30}"#),
            Ok(Control::Resize {
                cols: 100,
                rows: 30
            })
        ));
        assert!(matches!(
            serde_json::from_str::<Control>(r#"{"type":"signal","signal":2}"#),
            Ok(Control::Signal { signal: 2 })
        ));
        assert!(serde_json::from_str::<Control>(r#"{"type":"nope"}"#).is_err());
    }
}
