//! The watch WebSocket (`GET /api/projects/{p}/watch`): file changes of a
//! project, from this gateway or any process in the project, as JSON text
//! frames `{"kind", "path", "to"?}` bridged from the agent's Watch stream.

use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::ws::{Liveness, PEER_TIMEOUT, READ_BUFFER, close_frame, ping_interval};
use crate::agent_client::{FsEvent, FsEventKind};
use crate::auth::QueryClaims;
use crate::error::Result;
use crate::metrics::WsGauge;
use crate::state::AppState;

/// The watch routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/projects/{p}/watch", get(watch))
}

/// One change, as the contract's text frame.
#[derive(Debug, Serialize)]
struct ChangeFrame<'a> {
    kind: &'static str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
}

fn frame(ev: &FsEvent) -> String {
    let kind = match ev.kind {
        FsEventKind::Created => "created",
        FsEventKind::Modified => "modified",
        FsEventKind::Removed => "removed",
        FsEventKind::Renamed => "renamed",
    };
    let to = match ev.kind {
        FsEventKind::Renamed => ev.to.as_deref(),
        _ => None,
    };
    // Serializing a struct of strings cannot fail.
    serde_json::to_string(&ChangeFrame {
        kind,
        path: &ev.path,
        to,
    })
    .unwrap_or_default()
}

async fn watch(
    State(state): State<AppState>,
    Path(project): Path<String>,
    QueryClaims(claims): QueryClaims,
    ws: WebSocketUpgrade,
) -> Result<Response> {
    super::authorize(&claims, &project)?;
    let agent = state.active_agent(&project).await?;
    // The agent's stream is opened before the upgrade so that an unknown or
    // inactive project is an HTTP error rather than a socket that closes at once.
    let events = agent.watch("").await?;
    let span = tracing::info_span!("watch", project = %project);
    // The client has nothing to say on this socket but pongs and a close.
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .max_message_size(64 * 1024)
        // Answers `devgate` to a browser that sent its token in the offer.
        .protocols([crate::auth::WS_PROTOCOL]);
    // An open watch (an editor showing the project) keeps it awake.
    let hold = state.activity.hold(&project);
    Ok(ws.on_upgrade(move |socket| {
        async move {
            let _hold = hold;
            let gauge = WsGauge::new(&state.metrics, "watch");
            serve(socket, events, state.shutdown.clone()).await;
            drop(gauge);
        }
        .instrument(span)
    }))
}

async fn serve(
    socket: WebSocket,
    mut events: futures::stream::BoxStream<'static, Result<FsEvent>>,
    shutdown: CancellationToken,
) {
    let (mut sink, mut stream) = socket.split();
    let alive = Liveness::new();
    let done = shutdown.child_token();
    // The reader only notices the peer: its pongs, and its close.
    let reader = {
        let alive = alive.clone();
        let done = done.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                alive.touch();
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
            done.cancel();
        })
    };
    let mut ping = ping_interval();
    let close = loop {
        let msg = tokio::select! {
            _ = done.cancelled() => break None,
            ev = events.next() => match ev {
                Some(Ok(ev)) => Message::Text(frame(&ev).into()),
                Some(Err(error)) => {
                    tracing::warn!(error = %crate::error::Chain(&error), "watch stream of the agent failed");
                    break Some(close_frame(1011, "the project's file watch ended"));
                }
                None => break Some(close_frame(1001, "the project's file watch ended")),
            },
            _ = ping.tick() => {
                if alive.silent_for() > PEER_TIMEOUT {
                    tracing::debug!("watch peer silent; closing");
                    break None;
                }
                Message::Ping(Default::default())
            }
        };
        // A send blocks while the peer is slow: then the agent's stream is not
        // read either, and gRPC flow control holds the rest back.
        let sent = tokio::select! {
            r = sink.send(msg) => r,
            _ = done.cancelled() => break None,
        };
        if sent.is_err() {
            break None;
        }
    };
    let shutting_down = shutdown.is_cancelled();
    let close =
        close.or_else(|| shutting_down.then(|| close_frame(1001, "the gateway is shutting down")));
    if let Some(close) = close {
        let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(close)).await;
    }
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_the_contract() {
        let ev = |kind, path: &str, to: Option<&str>| FsEvent {
            kind,
            path: path.into(),
            to: to.map(Into::into),
        };
        assert_eq!(
            frame(&ev(FsEventKind::Created, "a/b.txt", None)),
            r#"{"kind":"created","path":"a/b.txt"}"#
        );
        assert_eq!(
            frame(&ev(FsEventKind::Modified, "x", None)),
            r#"{"kind":"modified","path":"x"}"#
        );
        assert_eq!(
            frame(&ev(FsEventKind::Removed, "x", Some("ignored"))),
            r#"{"kind":"removed","path":"x"}"#
        );
        assert_eq!(
            frame(&ev(FsEventKind::Renamed, "old", Some("new"))),
            r#"{"kind":"renamed","path":"old","to":"new"}"#
        );
    }
}
