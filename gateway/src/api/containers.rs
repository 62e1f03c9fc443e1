//! Container (dev server) routes: create, list, start, stop, delete, logs.
//! The handlers check what the request says (names, ports, env) and leave
//! the steps to `lifecycle::containers`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::Value;

use super::projects::container_json;
use super::{JsonBody, authorize};
use crate::auth::Claims;
use crate::error::{Error, Result};
use crate::ids;
use crate::lifecycle;
use crate::lifecycle::containers::NewContainer;
use crate::state::AppState;
use crate::store::{Container, ContainerStatus, ProjectStatus, Template};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/projects/{p}/containers", post(create).get(list))
        .route("/api/projects/{p}/containers/{c}", delete(remove).get(show))
        .route("/api/projects/{p}/containers/{c}/start", post(start))
        .route("/api/projects/{p}/containers/{c}/stop", post(stop))
        .route("/api/projects/{p}/containers/{c}/logs", get(logs))
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    #[serde(default)]
    template: Option<Template>,
    port: u16,
    #[serde(default)]
    ports: Vec<u16>,
    start: String,
    #[serde(default)]
    install: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    public: bool,
}

/// Ports a container may declare besides its main one.
const MAX_EXTRA_PORTS: usize = 16;

async fn create(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response> {
    authorize(&claims, &p)?;
    let body = body?;
    ids::container_name(&body.name)?;
    if body.port == 0 || body.ports.contains(&0) {
        return Err(Error::BadRequest("ports must be 1..65535".into()));
    }
    if body.ports.len() > MAX_EXTRA_PORTS {
        return Err(Error::BadRequest(format!(
            "a container may declare at most {MAX_EXTRA_PORTS} other ports"
        )));
    }
    let mut ports = body.ports.clone();
    ports.sort_unstable();
    ports.dedup();
    ports.retain(|&p| p != body.port);
    if let Some(problem) =
        crate::preview::host::flat_host_problem(&body.name, &p, state.config.preview_host_style)
    {
        return Err(Error::BadRequest(problem));
    }
    if body.start.trim().is_empty() {
        return Err(Error::BadRequest("start must be a command".into()));
    }
    if body
        .env
        .keys()
        .any(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(Error::BadRequest(
            "env names must be non-empty and hold no '=' or NUL".into(),
        ));
    }
    let c = lifecycle::containers::create(
        &state,
        &p,
        NewContainer {
            name: body.name,
            template: body.template,
            port: body.port,
            ports,
            start: body.start,
            install: body.install,
            env: body.env,
            public: body.public,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(container_json(&state, &c))).into_response())
}

async fn list(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
) -> Result<Json<Vec<Value>>> {
    authorize(&claims, &p)?;
    let project = state.project(&p).await?;
    let mut cs = state.store.list_containers(&p).await?;
    let mut out = Vec::with_capacity(cs.len());
    for c in cs.iter_mut() {
        let exit = if project.status == ProjectStatus::Active {
            refresh(&state, c).await
        } else {
            None
        };
        out.push(with_exit_code(container_json(&state, c), c, exit));
    }
    Ok(Json(out))
}

async fn show(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, c)): Path<(String, String)>,
) -> Result<Json<Value>> {
    authorize(&claims, &p)?;
    ids::container_name(&c)?;
    let mut c = state.container(&p, &c).await?;
    let exit = refresh(&state, &mut c).await;
    Ok(Json(with_exit_code(container_json(&state, &c), &c, exit)))
}

/// A failed container's JSON carries the exit code of its dev server, when
/// the runtime still knows it.
fn with_exit_code(mut v: Value, c: &Container, exit: Option<i32>) -> Value {
    if c.status == ContainerStatus::Failed
        && let Some(code) = exit
    {
        v["exit_code"] = serde_json::json!(code);
    }
    v
}

/// A dev server recorded as running that has since ended by itself becomes
/// `failed` (non-zero exit) or `stopped`, in the store too. Answers the exit
/// code of a dev server that has ended (running or failed ones are asked).
async fn refresh(state: &AppState, c: &mut Container) -> Option<i32> {
    if c.status != ContainerStatus::Running && c.status != ContainerStatus::Failed {
        return None;
    }
    let (now, exit) = match state.runtime.container_state(&c.project, &c.name).await {
        Ok(Some(crate::runtime::ContainerState::Running)) | Ok(None) => return None,
        Ok(Some(crate::runtime::ContainerState::Exited(0))) => (ContainerStatus::Stopped, Some(0)),
        Ok(Some(crate::runtime::ContainerState::Absent)) => (ContainerStatus::Stopped, None),
        Ok(Some(crate::runtime::ContainerState::Exited(code))) => {
            (ContainerStatus::Failed, Some(code))
        }
        Err(error) => {
            tracing::debug!(project = %c.project, container = %c.name, error = %crate::error::Chain(&error), "cannot read the dev server's state");
            return None;
        }
    };
    if c.status == ContainerStatus::Failed {
        // Already recorded; only the code was wanted.
        return exit;
    }
    // A create or start in progress (an install can take minutes) holds the
    // lock; the listing must not wait for it, and that step sets the status anyway.
    let _guard = state.locks.try_lock(&c.project).await?;
    // Re-read under the lock: a start or stop may have happened meanwhile.
    let Ok(Some(mut fresh)) = state.store.get_container(&c.project, &c.name).await else {
        return None;
    };
    let ended = matches!(
        fresh.status,
        ContainerStatus::Running | ContainerStatus::Failed
    );
    if fresh.status == ContainerStatus::Running {
        fresh.status = now;
        if state.store.update_container(&fresh).await.is_ok() {
            state.emit(
                &c.project,
                "container",
                serde_json::json!({"name": c.name, "status": now.as_str()}),
            );
        }
    }
    *c = fresh;
    ended.then_some(exit).flatten()
}

async fn start(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, c)): Path<(String, String)>,
) -> Result<Json<Value>> {
    authorize(&claims, &p)?;
    ids::container_name(&c)?;
    let c = lifecycle::containers::start(&state, &p, &c).await?;
    Ok(Json(container_json(&state, &c)))
}

async fn stop(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, c)): Path<(String, String)>,
) -> Result<Json<Value>> {
    authorize(&claims, &p)?;
    ids::container_name(&c)?;
    let c = lifecycle::containers::stop(&state, &p, &c).await?;
    Ok(Json(container_json(&state, &c)))
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    delete_files: Option<String>,
}

async fn remove(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, c)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode> {
    authorize(&claims, &p)?;
    ids::container_name(&c)?;
    let delete_files = matches!(q.delete_files.as_deref(), Some("true" | "1" | ""));
    lifecycle::containers::remove(&state, &p, &c, delete_files).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: Option<String>,
}

async fn logs(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, c)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Response> {
    authorize(&claims, &p)?;
    ids::container_name(&c)?;
    state.require_active(&p).await?;
    let c = state.container(&p, &c).await?;
    let follow = matches!(q.follow.as_deref(), Some("true" | "1" | ""));
    let stream = state.runtime.container_logs(&p, &c.name, follow).await?;
    let shutdown = state.shutdown.clone();
    let stream = stream
        .map(|r| r.map_err(|e| std::io::Error::other(e.to_string())))
        .take_until(async move { shutdown.cancelled().await });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}
