//! Container (dev server) routes: create (template clone into `/{name}/` and
//! `install`, both in the command log), list, start, stop, delete, logs.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::Utc;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::Value;

use super::projects::container_json;
use super::{JsonBody, authorize};
use crate::auth::Claims;
use crate::error::{Error, Result};
use crate::ids;
use crate::lifecycle;
use crate::runtime::ExecSpec;
use crate::state::AppState;
use crate::store::{CommandLogEntry, Container, ContainerStatus, ProjectStatus, Template};

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

/// Checks the project is active (409 `project_not_active` otherwise).
async fn require_active(state: &AppState, p: &str) -> Result<()> {
    if state.project(p).await?.status != ProjectStatus::Active {
        return Err(Error::ProjectNotActive(p.to_owned()));
    }
    Ok(())
}

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
    let _guard = state.locks.lock(&p).await?;
    require_active(&state, &p).await?;
    let existing = state.store.list_containers(&p).await?;
    if existing.iter().any(|c| c.name == body.name) {
        return Err(Error::Conflict(format!("container {} exists", body.name)));
    }
    for port in std::iter::once(body.port).chain(ports.iter().copied()) {
        if let Some(other) = existing
            .iter()
            .find(|c| c.port == port || c.ports.contains(&port))
        {
            return Err(Error::Conflict(format!(
                "port {port} is claimed by container {}",
                other.name
            )));
        }
    }
    let client = state.agent_of_active(&p).await?;
    let name = body.name.clone();
    // Files go to /{name}/ now, not at start.
    let mut created_dir = false;
    if let Some(t) = &body.template {
        let t0 = Instant::now();
        // Bundled templates are served over git's dumb HTTP protocol, which
        // cannot do shallow clones; they are small anyway.
        let bundled = state
            .templates
            .iter()
            .any(|(n, _)| t.git.ends_with(&format!("/templates/{n}.git")));
        let r = client
            .clone_repo(
                &t.git,
                t.git_ref.as_deref().unwrap_or(""),
                &name,
                true,
                !bundled,
            )
            .await
            .map_err(|e| match e {
                // The agent says "failed precondition" for a clone that failed
                // (bad URL, unknown ref): to the caller that is a bad template.
                Error::PreconditionFailed(m) | Error::NotFound(m) => {
                    Error::BadRequest(format!("template clone failed: {m}"))
                }
                other => other,
            });
        state
            .log_command(CommandLogEntry {
                id: 0,
                truncated: false,
                project: p.clone(),
                ts: Utc::now(),
                label: format!("{name}: clone"),
                command: format!(
                    "git clone {} {}{}",
                    t.git,
                    name,
                    t.git_ref
                        .as_deref()
                        .map(|r| format!(" (ref {r})"))
                        .unwrap_or_default()
                ),
                exit_code: Some(if r.is_ok() { 0 } else { 1 }),
                duration_ms: t0.elapsed().as_millis() as u64,
                stdout: r
                    .as_ref()
                    .map(|c| {
                        let mut s = c.progress.join("\n");
                        s.push_str(&format!("\ncommit {}, {} files", c.commit, c.files));
                        s
                    })
                    .unwrap_or_default(),
                stderr: r.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
            })
            .await;
        r?;
        created_dir = true;
    } else {
        match client.mkdir(&name, true).await {
            Ok(_) => created_dir = true,
            Err(Error::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(install) = body.install.as_deref().filter(|s| !s.trim().is_empty()) {
        let spec = ExecSpec {
            argv: vec!["sh".into(), "-c".into(), install.to_owned()],
            cwd: name.clone(),
            env: body.env.clone(),
            stdin: Vec::new(),
            timeout_ms: 15 * 60 * 1000,
            max_output_bytes: 0,
        };
        let r = client.run(spec).await;
        let (code, out, err, ms) = match &r {
            Ok(o) => (
                o.exit_code,
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
                o.duration_ms,
            ),
            Err(e) => (-1, String::new(), e.to_string(), 0),
        };
        state
            .log_command(CommandLogEntry {
                id: 0,
                truncated: false,
                project: p.clone(),
                ts: Utc::now(),
                label: format!("{name}: install"),
                command: install.to_owned(),
                exit_code: Some(code),
                duration_ms: ms,
                stdout: out,
                stderr: err,
            })
            .await;
        if r.is_err() || code != 0 {
            // A failed request changes nothing: take back the files it added.
            if created_dir {
                let _ = client.remove(&name, true).await;
            }
            return Err(match r {
                Err(e) => e,
                Ok(_) => Error::BadRequest(format!(
                    "install exited with code {code}; see the command log"
                )),
            });
        }
    }
    let c = Container {
        project: p.clone(),
        name: name.clone(),
        status: ContainerStatus::Stopped,
        port: body.port,
        ports,
        start: body.start,
        install: body.install,
        env: body.env,
        public: body.public,
        template: body.template,
        created_at: Utc::now(),
        running_at_hibernation: false,
    };
    if let Err(e) = state.store.create_container(&c).await {
        if created_dir {
            let _ = client.remove(&name, true).await;
        }
        return Err(e);
    }
    state.emit(
        &p,
        "container",
        serde_json::json!({"name": name, "status": "stopped"}),
    );
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
    let _guard = state.locks.lock(&p).await?;
    require_active(&state, &p).await?;
    let c = lifecycle::start_container(&state, &p, &c).await?;
    Ok(Json(container_json(&state, &c)))
}

async fn stop(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, c)): Path<(String, String)>,
) -> Result<Json<Value>> {
    authorize(&claims, &p)?;
    ids::container_name(&c)?;
    let _guard = state.locks.lock(&p).await?;
    require_active(&state, &p).await?;
    let mut c = state.container(&p, &c).await?;
    state.runtime.stop_container(&p, &c.name).await?;
    c.status = ContainerStatus::Stopped;
    state.store.update_container(&c).await?;
    state.emit(
        &p,
        "container",
        serde_json::json!({"name": c.name, "status": "stopped"}),
    );
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
    let _guard = state.locks.lock(&p).await?;
    let project = state.project(&p).await?;
    let c = state.container(&p, &c).await?;
    let delete_files = matches!(q.delete_files.as_deref(), Some("true" | "1" | ""));
    if project.status != ProjectStatus::Active && delete_files {
        return Err(Error::ProjectNotActive(p));
    }
    state.runtime.stop_container(&p, &c.name).await?;
    if delete_files {
        let client = state.agent_of_active(&p).await?;
        match client.remove(&c.name, true).await {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    state.store.delete_container(&p, &c.name).await?;
    state.emit(
        &p,
        "container",
        serde_json::json!({"name": c.name, "status": "deleted"}),
    );
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
    require_active(&state, &p).await?;
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
