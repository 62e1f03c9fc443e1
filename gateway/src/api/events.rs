//! `GET /api/projects/{p}/events`: server-sent events of a project's
//! lifecycle progress, status changes, container changes and command-log lines.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::stream::{Stream, StreamExt as _};

use super::authorize;
use super::projects::project_json;
use crate::auth::QueryClaims;
use crate::error::Result;
use crate::metrics::KindLabels;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/projects/{p}/events", get(events))
}

/// Decrements the open-streams gauge when the stream is dropped.
struct OpenGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn events(
    QueryClaims(claims): QueryClaims,
    State(state): State<AppState>,
    Path(p): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    authorize(&claims, &p)?;
    // Subscribe before reading the project, so no change falls in between.
    let rx = state.events.subscribe(&p);
    let project = state.project(&p).await?;
    let first = Event::default()
        .event("project")
        .json_data(project_json(&state, &project).await?)
        .ok();
    let gauge = state
        .metrics
        .open_websockets
        .get_or_create(&KindLabels {
            kind: "events".into(),
        })
        .clone();
    gauge.inc();
    let guard = OpenGuard(gauge);
    let shutdown = state.shutdown.clone();
    let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |m| {
        let _keep = &guard;
        let ev = match m {
            Ok(e) => Event::default().event(e.event).json_data(e.data).ok(),
            // A slow reader missed some events; tell it so it can re-read state.
            Err(_) => Some(Event::default().event("lagged").data("{}")),
        };
        futures::future::ready(ev.map(Ok))
    });
    let stream = futures::stream::iter(first.map(Ok))
        .chain(live)
        .take_until(async move { shutdown.cancelled().await });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
