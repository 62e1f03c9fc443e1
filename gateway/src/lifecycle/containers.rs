//! Containers (dev servers) of a project: create (the template cloned into
//! `/{name}/`, then `install`, both in the command log; a failure takes back
//! what it added), start, stop and remove. Each step holds the project's lock
//! and checks, under it, that the project is active.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;

use crate::error::{Error, Result};
use crate::runtime::{ContainerSpec, ExecSpec};
use crate::state::AppState;
use crate::store::{CommandLogEntry, Container, ContainerStatus, ProjectStatus, Template};

/// A container to create, its fields checked by the caller (names, ports,
/// env); `ports` holds the other declared ports, sorted, without the main one.
pub struct NewContainer {
    pub name: String,
    pub template: Option<Template>,
    pub port: u16,
    pub ports: Vec<u16>,
    pub start: String,
    pub install: Option<String>,
    pub env: BTreeMap<String, String>,
    pub public: bool,
}

/// 409 `project_not_active` unless the store says the project is active
/// (read under its lock, so no lifecycle step can change that meanwhile).
async fn check_active(state: &AppState, p: &str) -> Result<()> {
    if state.project(p).await?.status != ProjectStatus::Active {
        return Err(Error::ProjectNotActive(p.to_owned()));
    }
    Ok(())
}

/// Creates a stopped container: its files in `/{name}/` (cloned from the
/// template, or an empty folder), `install` run there. Names and ports
/// already claimed are a 409; a failed clone or install removes the folder
/// it made and records nothing.
pub async fn create(state: &AppState, p: &str, new: NewContainer) -> Result<Container> {
    let _guard = state.locks.lock(p).await?;
    check_active(state, p).await?;
    let existing = state.store.list_containers(p).await?;
    if existing.iter().any(|c| c.name == new.name) {
        return Err(Error::Conflict(format!("container {} exists", new.name)));
    }
    for port in std::iter::once(new.port).chain(new.ports.iter().copied()) {
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
    let client = state.agent_of_active(p).await?;
    let name = new.name.clone();
    // Files go to /{name}/ now, not at start.
    let mut created_dir = false;
    if let Some(t) = &new.template {
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
        let command = format!(
            "git clone {} {}{}",
            t.git,
            name,
            t.git_ref
                .as_deref()
                .map(|r| format!(" (ref {r})"))
                .unwrap_or_default()
        );
        state
            .log_command(
                CommandLogEntry::new(p, format!("{name}: clone"), command)
                    .took(t0.elapsed())
                    .outcome(&r, |c| {
                        format!(
                            "{}\ncommit {}, {} files",
                            c.progress.join("\n"),
                            c.commit,
                            c.files
                        )
                    }),
            )
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
    if let Some(install) = new.install.as_deref().filter(|s| !s.trim().is_empty()) {
        let spec = ExecSpec {
            argv: vec!["sh".into(), "-c".into(), install.to_owned()],
            cwd: name.clone(),
            env: new.env.clone(),
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
            .log_command(
                CommandLogEntry::new(p, format!("{name}: install"), install)
                    .took_ms(ms)
                    .exited(code, out, err),
            )
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
        project: p.to_owned(),
        name: name.clone(),
        status: ContainerStatus::Stopped,
        port: new.port,
        ports: new.ports,
        start: new.start,
        install: new.install,
        env: new.env,
        public: new.public,
        template: new.template,
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
        p,
        "container",
        serde_json::json!({"name": name, "status": "stopped"}),
    );
    Ok(c)
}

/// Starts a container's dev server (nothing when it runs already).
pub async fn start(state: &AppState, p: &str, name: &str) -> Result<Container> {
    let _guard = state.locks.lock(p).await?;
    check_active(state, p).await?;
    start_container(state, p, name).await
}

/// Stops a container's dev server; its files stay.
pub async fn stop(state: &AppState, p: &str, name: &str) -> Result<Container> {
    let _guard = state.locks.lock(p).await?;
    check_active(state, p).await?;
    let mut c = state.container(p, name).await?;
    state.runtime.stop_container(p, &c.name).await?;
    c.status = ContainerStatus::Stopped;
    state.store.update_container(&c).await?;
    state.emit(
        p,
        "container",
        serde_json::json!({"name": c.name, "status": "stopped"}),
    );
    Ok(c)
}

/// Removes a container's record (stopping its dev server), and its files
/// with `delete_files`, which needs the project active.
pub async fn remove(state: &AppState, p: &str, name: &str, delete_files: bool) -> Result<()> {
    let _guard = state.locks.lock(p).await?;
    let project = state.project(p).await?;
    let c = state.container(p, name).await?;
    if project.status != ProjectStatus::Active && delete_files {
        return Err(Error::ProjectNotActive(p.to_owned()));
    }
    state.runtime.stop_container(p, &c.name).await?;
    if delete_files {
        let client = state.agent_of_active(p).await?;
        match client.remove(&c.name, true).await {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    state.store.delete_container(p, &c.name).await?;
    state.emit(
        p,
        "container",
        serde_json::json!({"name": c.name, "status": "deleted"}),
    );
    Ok(())
}

/// Starts a container's dev server and records it running; the caller
/// holds the project's lock (an open resuming its containers, [`start`]).
pub async fn start_container(
    state: &AppState,
    id: &str,
    name: &str,
) -> Result<crate::store::Container> {
    let mut c = state.container(id, name).await?;
    if c.status == ContainerStatus::Running
        && state.runtime.container_route(id, name, None).await.is_ok()
    {
        return Ok(c);
    }
    let spec = ContainerSpec {
        name: c.name.clone(),
        port: c.port,
        ports: c.ports.clone(),
        start: c.start.clone(),
        env: c.env.clone(),
    };
    c.status = ContainerStatus::Starting;
    state.store.update_container(&c).await?;
    match state.runtime.start_container(id, &spec).await {
        Ok(route) => {
            tracing::info!(
                project = id,
                container = name,
                port = route.port,
                "container started"
            );
            c.status = ContainerStatus::Running;
            state.store.update_container(&c).await?;
            state.emit(
                id,
                "container",
                serde_json::json!({"name": name, "status": "running"}),
            );
            Ok(c)
        }
        Err(e) => {
            c.status = ContainerStatus::Failed;
            let _ = state.store.update_container(&c).await;
            state.emit(
                id,
                "container",
                serde_json::json!({"name": name, "status": "failed"}),
            );
            Err(e)
        }
    }
}
