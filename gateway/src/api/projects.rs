//! Project routes: create, list, get, open, hibernate, snapshots, delete;
//! and the JSON shapes of a project, a snapshot and a container.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonBody, authorize};
use crate::auth::Claims;
use crate::error::{Error, Result};
use crate::lifecycle;
use crate::state::AppState;
use crate::store::{Container, ContainerStatus, Project};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/projects", post(create).get(list))
        .route("/api/projects/{p}", get(show).delete(delete))
        .route("/api/projects/{p}/open", post(open))
        .route("/api/projects/{p}/hibernate", post(hibernate))
        .route(
            "/api/projects/{p}/snapshots",
            get(list_snapshots).post(take_snapshot),
        )
}

/// `POST /open`: every field optional, and so is the body.
#[derive(Deserialize, Default)]
struct OpenBody {
    #[serde(default)]
    start_containers: bool,
    #[serde(default)]
    snapshot: Option<String>,
}

#[derive(Deserialize)]
struct CreateBody {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

/// The contract's project object, with its containers and newest archive.
pub async fn project_json(state: &AppState, p: &Project) -> Result<Value> {
    let containers = state.store.list_containers(&p.id).await?;
    let archive = state.store.list_archives(&p.id).await?.into_iter().next();
    let mut v = json!({
        "id": p.id,
        "name": p.name,
        "status": p.status.as_str(),
        "containers": containers.iter().map(|c| container_json(state, c)).collect::<Vec<_>>(),
        "created_at": p.created_at,
    });
    if let Some(a) = archive {
        // `archive` is the same object under its old name, for one release.
        let snapshot = snapshot_json(&a);
        v["archive"] = snapshot.clone();
        v["snapshot"] = snapshot;
    }
    if let Some(h) = p.hibernated_at {
        v["hibernated_at"] = json!(h);
    }
    Ok(v)
}

/// A version of the project's files: a snapshot (`id` set), or the zip
/// archive of a version hibernated before snapshots (`id` null). `key`,
/// `size` and `sha256` are the fields `archive` had.
pub fn snapshot_json(a: &crate::store::ArchiveVersion) -> Value {
    json!({
        "id": a.snapshot,
        "version": a.version,
        "created_at": a.created_at,
        "reason": a.reason,
        "files": a.files,
        "bytes": a.size,
        "uploaded_bytes": a.uploaded_bytes,
        "key": a.key,
        "size": a.size,
        "sha256": a.sha256,
    })
}

/// The contract's container object.
pub fn container_json(state: &AppState, c: &Container) -> Value {
    let mut v = json!({
        "name": c.name,
        "status": c.status.as_str(),
        "port": c.port,
        "ports": c.ports,
        "start": c.start,
        "public": c.public,
        "env": c.env,
    });
    if let Some(i) = &c.install {
        v["install"] = json!(i);
    }
    if c.running_at_hibernation {
        v["running_at_hibernation"] = json!(true);
    }
    if let Some(t) = &c.template {
        v["template"] = json!(t);
    }
    if c.status == ContainerStatus::Running {
        v["preview_url"] = json!(preview_url(state, &c.project, &c.name));
    }
    v
}

/// `http://{container}.{project}.{domain}[:port]/` (or the flat host).
pub fn preview_url(state: &AppState, project: &str, container: &str) -> String {
    let target = crate::preview::host::PreviewHost {
        project: project.to_owned(),
        container: container.to_owned(),
        port: None,
    };
    format!("{}/", crate::preview::origin(state, &target))
}

async fn create(
    claims: Claims,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response> {
    // The id comes from the body, so a body that does not parse is 400 first.
    let body = body?;
    authorize(&claims, &body.id)?;
    let p = lifecycle::create(&state, &body.id, body.name).await?;
    Ok((StatusCode::CREATED, Json(project_json(&state, &p).await?)).into_response())
}

async fn list(claims: Claims, State(state): State<AppState>) -> Result<Json<Vec<Value>>> {
    let mut out = Vec::new();
    for p in state.store.list_projects().await? {
        if claims.allows(&p.id) {
            out.push(project_json(&state, &p).await?);
        }
    }
    Ok(Json(out))
}

async fn show(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
) -> Result<Json<Value>> {
    authorize(&claims, &p)?;
    let project = state.project(&p).await?;
    Ok(Json(project_json(&state, &project).await?))
}

async fn open(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    authorize(&claims, &p)?;
    let body: OpenBody = if body.iter().all(u8::is_ascii_whitespace) {
        OpenBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let opts = lifecycle::OpenOptions {
        start_containers: body.start_containers,
        snapshot: body.snapshot,
    };
    let project = lifecycle::open_with(&state, &p, opts).await?;
    Ok(Json(project_json(&state, &project).await?))
}

async fn hibernate(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
) -> Result<Json<Value>> {
    authorize(&claims, &p)?;
    let project = lifecycle::hibernate(&state, &p).await?;
    Ok(Json(project_json(&state, &project).await?))
}

/// `GET /snapshots`: the project's versions, newest first.
async fn list_snapshots(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
) -> Result<Json<Value>> {
    authorize(&claims, &p)?;
    state.project(&p).await?;
    let versions = state.store.list_archives(&p).await?;
    Ok(Json(Value::Array(
        versions.iter().map(snapshot_json).collect(),
    )))
}

/// `POST /snapshots`: a snapshot of the active project, now.
async fn take_snapshot(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
) -> Result<Response> {
    authorize(&claims, &p)?;
    let v = lifecycle::snapshot_now(&state, &p, "manual").await?;
    Ok((StatusCode::CREATED, Json(snapshot_json(&v))).into_response())
}

async fn delete(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
) -> Result<StatusCode> {
    authorize(&claims, &p)?;
    lifecycle::delete(&state, &p).await?;
    Ok(StatusCode::NO_CONTENT)
}
