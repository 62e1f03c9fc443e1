//! Project lifecycle above the runtime, the same for every runtime: create,
//! open (restoring the newest archive when hibernated), hibernate (archive via
//! the agent, verify from the archive store, only then tear down), delete, and
//! the start-up pass that gives active projects their agents back. Every step
//! of a project holds its lock, so they never interleave.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt as _;

use crate::agent_client::{ArchiveChunk, ArchiveOptions, ArchiveSummary};
use crate::archive_store::ArchiveStore;
use crate::error::{Error, Result};
use crate::metrics::{LifecycleLabels, OpLabels};
use crate::runtime::ContainerSpec;
use crate::state::AppState;
use crate::store::{ArchiveVersion, CommandLogEntry, ContainerStatus, Project, ProjectStatus};

/// Records a new project, status `created` (no environment yet).
pub async fn create(state: &AppState, id: &str, name: Option<String>) -> Result<Project> {
    let now = Utc::now();
    let p = Project {
        id: id.to_owned(),
        name: name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| id.to_owned()),
        status: ProjectStatus::Created,
        created_at: now,
        updated_at: now,
        hibernated_at: None,
    };
    state.store.create_project(&p).await?;
    tracing::info!(project = id, "project created");
    state.emit(
        id,
        "status",
        serde_json::json!({"status": p.status.as_str()}),
    );
    Ok(p)
}

async fn set_status(state: &AppState, p: &mut Project, status: ProjectStatus) -> Result<()> {
    p.status = status;
    p.updated_at = Utc::now();
    // Forget first: while the store write is in flight nobody may trust the old status.
    state.statuses.forget(&p.id);
    state.store.update_project(p).await?;
    state.statuses.put(&p.id, status);
    state.emit(
        &p.id,
        "status",
        serde_json::json!({"status": status.as_str()}),
    );
    Ok(())
}

fn progress(state: &AppState, project: &str, step: &str, message: impl Into<String>) {
    state.emit(
        project,
        "progress",
        serde_json::json!({"step": step, "message": message.into()}),
    );
}

/// What `POST /open` may ask for besides making the project active.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Start again the containers that were running when the project was
    /// hibernated.
    pub start_containers: bool,
}

/// Makes the project active, then does what `opts` asks.
pub async fn open_with(state: &AppState, id: &str, opts: OpenOptions) -> Result<Project> {
    let p = open(state, id).await?;
    if opts.start_containers {
        resume_containers(state, id).await?;
    }
    Ok(p)
}

/// Starts again the containers that were running at the last hibernation,
/// and clears that mark. A container that does not start is recorded
/// `failed` (by `start_container`); the project stays active, and the
/// answer's containers say which ones run.
async fn resume_containers(state: &AppState, id: &str) -> Result<()> {
    let _guard = state.locks.lock(id).await;
    // Hibernated again meanwhile: nothing to start now; the marks stay.
    if state.project(id).await?.status != ProjectStatus::Active {
        return Ok(());
    }
    for c in state.store.list_containers(id).await? {
        if !c.running_at_hibernation {
            continue;
        }
        progress(
            state,
            id,
            "containers",
            format!("starting {} (it was running at hibernation)", c.name),
        );
        if let Err(error) = start_container(state, id, &c.name).await {
            tracing::warn!(project = id, container = %c.name, error = %crate::error::Chain(&error), "cannot start the container again after hibernation");
        }
        // start_container recorded the outcome; read it back to clear the mark.
        if let Some(mut fresh) = state.store.get_container(id, &c.name).await? {
            fresh.running_at_hibernation = false;
            state.store.update_container(&fresh).await?;
        }
    }
    Ok(())
}

/// Makes the project active: starts its environment, restoring the newest
/// archive first when it is hibernated. Idempotent.
pub async fn open(state: &AppState, id: &str) -> Result<Project> {
    // Fast path, without the project's lock (a container's install may hold
    // it for minutes): an active project only needs its agent up.
    let p = state.project(id).await?;
    if p.status == ProjectStatus::Active {
        state.runtime.ensure(id).await?;
        return Ok(p);
    }
    let _guard = state.locks.lock(id).await;
    let mut p = state.project(id).await?;
    match p.status {
        ProjectStatus::Active => {
            // The agent may have died with a previous gateway: bring it back.
            state.runtime.ensure(id).await?;
            Ok(p)
        }
        ProjectStatus::Hibernated | ProjectStatus::Restoring => {
            restore(state, &mut p).await?;
            Ok(p)
        }
        ProjectStatus::Failed if !state.store.list_archives(id).await?.is_empty() => {
            restore(state, &mut p).await?;
            Ok(p)
        }
        ProjectStatus::Created
        | ProjectStatus::Starting
        | ProjectStatus::Hibernating
        | ProjectStatus::Failed => {
            // Hibernating here means a gateway stopped mid-hibernation: the
            // environment is only torn down after a verified archive, so the
            // files are still in place.
            let previous = p.status;
            set_status(state, &mut p, ProjectStatus::Starting).await?;
            progress(state, id, "environment", "starting the environment");
            if let Err(e) = state.runtime.ensure(id).await {
                tracing::warn!(project = id, error = %crate::error::Chain(&e), "cannot start the environment");
                // A failed request changes nothing: back to where it was.
                let _ = set_status(state, &mut p, previous).await;
                return Err(e);
            }
            set_status(state, &mut p, ProjectStatus::Active).await?;
            tracing::info!(project = id, "project active");
            Ok(p)
        }
    }
}

async fn restore(state: &AppState, p: &mut Project) -> Result<()> {
    let id = p.id.clone();
    let t0 = Instant::now();
    let previous = p.status;
    set_status(state, p, ProjectStatus::Restoring).await?;
    let newest = state.store.list_archives(&id).await?.into_iter().next();
    let result = async {
        if newest.is_some() {
            // Whatever a cut-short teardown or restore left behind goes first:
            // the archive is extracted into an empty environment.
            state.runtime.teardown(&id).await?;
            state.agents.forget(&id);
        }
        progress(state, &id, "environment", "starting the environment");
        let endpoint = state.runtime.ensure(&id).await?;
        let client = state.agents.get(&id, &endpoint)?;
        let Some(a) = &newest else { return Ok(None) };
        progress(
            state,
            &id,
            "extract",
            format!("extracting archive version {}", a.version),
        );
        let summary = match state.archives.as_ref() {
            ArchiveStore::Folder(_) => {
                let data = state.archives.read(&a.key).await?;
                client.extract("", data, u64::MAX).await?
            }
            ArchiveStore::S3 { bucket, .. } => client.extract_from_s3("", bucket, &a.key).await?,
        };
        Ok::<_, Error>(Some((a.clone(), summary)))
    }
    .await;
    let elapsed = t0.elapsed();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    state
        .metrics
        .lifecycle_seconds
        .get_or_create(&LifecycleLabels {
            op: "restore".into(),
            outcome: outcome.into(),
        })
        .observe(elapsed.as_secs_f64());
    match result {
        Ok(restored) => {
            for mut c in state.store.list_containers(&id).await? {
                if c.status != ContainerStatus::Stopped {
                    c.status = ContainerStatus::Stopped;
                    state.store.update_container(&c).await?;
                }
            }
            if let Some((a, summary)) = &restored {
                state
                    .metrics
                    .archive_bytes
                    .get_or_create(&OpLabels {
                        op: "restore".into(),
                    })
                    .inc_by(a.size);
                state
                    .log_command(CommandLogEntry {
                        id: 0,
                        truncated: false,
                        project: id.clone(),
                        ts: Utc::now(),
                        label: "restore".into(),
                        command: format!("extract archive version {} ({})", a.version, a.key),
                        exit_code: Some(0),
                        duration_ms: elapsed.as_millis() as u64,
                        stdout: format!("{} files, {} bytes", summary.files, summary.bytes),
                        stderr: String::new(),
                    })
                    .await;
            }
            set_status(state, p, ProjectStatus::Active).await?;
            tracing::info!(project = %id, ms = elapsed.as_millis() as u64, "project restored");
            Ok(())
        }
        Err(e) => {
            tracing::error!(project = %id, error = %crate::error::Chain(&e), "restore failed; the archive is untouched");
            // Remove whatever was half extracted; the archive still holds
            // everything. Without an archive there is nothing to restore from,
            // so nothing is removed.
            if newest.is_some()
                && let Err(error) = state.runtime.teardown(&id).await
            {
                tracing::error!(project = %id, error = %crate::error::Chain(&error), "cannot clean up after a failed restore");
            }
            state.agents.forget(&id);
            let back = if newest.is_some() {
                ProjectStatus::Hibernated
            } else {
                previous
            };
            let _ = set_status(state, p, back).await;
            state
                .log_command(CommandLogEntry {
                    id: 0,
                    truncated: false,
                    project: id.clone(),
                    ts: Utc::now(),
                    label: "restore".into(),
                    command: "extract newest archive".into(),
                    exit_code: Some(1),
                    duration_ms: elapsed.as_millis() as u64,
                    stdout: String::new(),
                    stderr: e.to_string(),
                })
                .await;
            Err(e)
        }
    }
}

/// Archives the project to the archive store, verifies the archive by
/// reading it back, and only then stops its environment. A failure at any
/// step before the verification leaves the project active and intact.
pub async fn hibernate(state: &AppState, id: &str) -> Result<Project> {
    let _guard = state.locks.lock(id).await;
    let mut p = state.project(id).await?;
    match p.status {
        ProjectStatus::Hibernated => return Ok(p),
        ProjectStatus::Active => {}
        _ => return Err(Error::ProjectNotActive(id.to_owned())),
    }
    let t0 = Instant::now();
    set_status(state, &mut p, ProjectStatus::Hibernating).await?;
    // New file changes now get 409; wait for those in flight to finish.
    let _writes = state.write_gates.exclusive(id).await;
    let archives = state.store.list_archives(id).await?;
    let version = archives.first().map(|a| a.version + 1).unwrap_or(1);
    let key = state.archives.key(id, version);
    progress(
        state,
        id,
        "archive",
        format!(
            "writing archive version {version} to {}",
            state.archives.describe()
        ),
    );
    let result = write_and_verify(state, id, &key).await;
    let elapsed = t0.elapsed();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    state
        .metrics
        .lifecycle_seconds
        .get_or_create(&LifecycleLabels {
            op: "hibernate".into(),
            outcome: outcome.into(),
        })
        .observe(elapsed.as_secs_f64());
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(project = id, error = %crate::error::Chain(&e), "hibernation failed; the project stays active");
            // A half-written object is worth nothing; best effort to remove it.
            if let Err(error) = state.archives.delete(&key).await {
                tracing::debug!(project = id, error = %crate::error::Chain(&error), "cannot remove the failed archive");
            }
            set_status(state, &mut p, ProjectStatus::Active).await?;
            state
                .log_command(CommandLogEntry {
                    id: 0,
                    truncated: false,
                    project: id.to_owned(),
                    ts: Utc::now(),
                    label: "hibernate".into(),
                    command: format!("archive to {key}"),
                    exit_code: Some(1),
                    duration_ms: elapsed.as_millis() as u64,
                    stdout: String::new(),
                    stderr: e.to_string(),
                })
                .await;
            return Err(e);
        }
    };
    let archive = ArchiveVersion {
        project: id.to_owned(),
        version,
        key: key.clone(),
        size: summary.size,
        sha256: summary.sha256.clone(),
        files: summary.files,
        created_at: Utc::now(),
    };
    state.store.add_archive(&archive).await?;
    state
        .metrics
        .archive_bytes
        .get_or_create(&OpLabels {
            op: "hibernate".into(),
        })
        .inc_by(summary.size);
    // Hibernated from here on: the files live in the verified archive. Were
    // the gateway to stop during the teardown below, the next open restores
    // from the archive into a clean environment rather than trusting a
    // half-removed folder.
    p.hibernated_at = Some(Utc::now());
    set_status(state, &mut p, ProjectStatus::Hibernated).await?;
    progress(
        state,
        id,
        "teardown",
        "archive verified; stopping the environment",
    );
    for mut c in state.store.list_containers(id).await? {
        // Remembered, so that an open can start it again (`start_containers`).
        let was_running = matches!(
            c.status,
            ContainerStatus::Running | ContainerStatus::Starting
        );
        let changed =
            c.status != ContainerStatus::Stopped || c.running_at_hibernation != was_running;
        if c.status != ContainerStatus::Stopped {
            if let Err(error) = state.runtime.stop_container(id, &c.name).await {
                tracing::warn!(project = id, container = %c.name, error = %crate::error::Chain(&error), "cannot stop container");
            }
            c.status = ContainerStatus::Stopped;
        }
        if changed {
            c.running_at_hibernation = was_running;
            state.store.update_container(&c).await?;
        }
    }
    if let Err(error) = state.runtime.teardown(id).await {
        // The archive is verified, so nothing is lost; the leftovers are
        // removed before the next restore.
        tracing::error!(project = id, error = %crate::error::Chain(&error), "teardown after hibernation failed");
    }
    state.agents.forget(id);
    state
        .log_command(CommandLogEntry {
            id: 0,
            truncated: false,
            project: id.to_owned(),
            ts: Utc::now(),
            label: "hibernate".into(),
            command: format!("archive to {key}"),
            exit_code: Some(0),
            duration_ms: elapsed.as_millis() as u64,
            stdout: format!(
                "{} files, {} bytes, sha256 {}",
                summary.files, summary.size, summary.sha256
            ),
            stderr: String::new(),
        })
        .await;
    prune_archives(state, id).await;
    tracing::info!(
        project = id,
        version,
        bytes = summary.size,
        ms = elapsed.as_millis() as u64,
        "project hibernated"
    );
    Ok(p)
}

async fn write_and_verify(state: &AppState, id: &str, key: &str) -> Result<ArchiveSummary> {
    let client = state.agent_of_active(id).await?;
    let opts = ArchiveOptions::default();
    let summary = match state.archives.as_ref() {
        ArchiveStore::Folder(_) => {
            let seen: Arc<Mutex<Option<ArchiveSummary>>> = Arc::default();
            let seen2 = seen.clone();
            let data = client
                .create_archive(opts)
                .await?
                .filter_map(move |c| {
                    let seen = seen2.clone();
                    async move {
                        match c {
                            Ok(ArchiveChunk::Data(d)) => Some(Ok(d)),
                            Ok(ArchiveChunk::Summary(s)) => {
                                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                                None
                            }
                            Err(e) => Some(Err(e)),
                        }
                    }
                })
                .boxed();
            let (size, sha256) = state.archives.write_file(key, data).await?;
            let agent_says = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
            let Some(s) = agent_says else {
                return Err(Error::internal("archive stream ended without its summary"));
            };
            if s.size != size || s.sha256 != sha256 {
                return Err(Error::internal(format!(
                    "archive written differs from the agent's: {size} bytes {sha256} vs {} bytes {}",
                    s.size, s.sha256
                )));
            }
            s
        }
        ArchiveStore::S3 { bucket, .. } => {
            state.archives.ensure_bucket().await?;
            client.upload_archive(opts, bucket, key).await?
        }
    };
    progress(state, id, "verify", "reading the archive back");
    let (size, sha256) = state.archives.verify(key).await?;
    if size != summary.size || sha256 != summary.sha256 {
        return Err(Error::internal(format!(
            "archive {key} read back as {size} bytes {sha256}, expected {} bytes {}",
            summary.size, summary.sha256
        )));
    }
    Ok(summary)
}

/// Keeps the newest `archive_keep` versions. Called only after a newer
/// version was verified and recorded.
async fn prune_archives(state: &AppState, id: &str) {
    let keep = state.config.archive_keep as usize;
    let Ok(all) = state.store.list_archives(id).await else {
        return;
    };
    for old in all.into_iter().skip(keep) {
        match state.archives.delete(&old.key).await {
            Ok(()) => {
                if let Err(error) = state.store.delete_archive(id, old.version).await {
                    tracing::warn!(project = id, version = old.version, error = %crate::error::Chain(&error), "cannot forget archive");
                }
            }
            Err(error) => {
                tracing::warn!(project = id, key = %old.key, error = %crate::error::Chain(&error), "cannot remove old archive")
            }
        }
    }
}

/// Removes the project: environment, archives, records.
pub async fn delete(state: &AppState, id: &str) -> Result<()> {
    let _guard = state.locks.lock(id).await;
    state.project(id).await?;
    for c in state.store.list_containers(id).await? {
        if c.status == ContainerStatus::Running || c.status == ContainerStatus::Starting {
            let _ = state.runtime.stop_container(id, &c.name).await;
        }
    }
    state.runtime.teardown(id).await?;
    state.agents.forget(id);
    for a in state.store.list_archives(id).await? {
        if let Err(error) = state.archives.delete(&a.key).await {
            tracing::warn!(project = id, key = %a.key, error = %crate::error::Chain(&error), "cannot remove archive of a deleted project");
        }
    }
    state.store.delete_project(id).await?;
    state.statuses.forget(id);
    state.activity.forget(id);
    state.preview.forget(id);
    state.emit(id, "status", serde_json::json!({"status": "deleted"}));
    tracing::info!(project = id, "project deleted");
    Ok(())
}

/// Starts a container's dev server and records it running.
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

/// After a restart: active projects get their agents back and their running
/// containers restarted; a restore cut short is undone.
pub async fn reconcile(state: AppState) {
    let projects = match state.store.list_projects().await {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(error = %crate::error::Chain(&error), "cannot list projects at start-up");
            return;
        }
    };
    for p in projects {
        let id = p.id.clone();
        let result = async {
            match p.status {
                ProjectStatus::Active | ProjectStatus::Starting | ProjectStatus::Hibernating => {
                    open(&state, &id).await?;
                    for c in state.store.list_containers(&id).await? {
                        if matches!(
                            c.status,
                            ContainerStatus::Running | ContainerStatus::Starting
                        ) {
                            let _guard = state.locks.lock(&id).await;
                            start_container(&state, &id, &c.name).await?;
                        }
                    }
                }
                ProjectStatus::Restoring if !state.store.list_archives(&id).await?.is_empty() => {
                    // A restore cut short: back to hibernated; the next open
                    // clears the leftovers and restores from scratch.
                    let _guard = state.locks.lock(&id).await;
                    state.runtime.teardown(&id).await?;
                    let mut p = p.clone();
                    set_status(&state, &mut p, ProjectStatus::Hibernated).await?;
                }
                _ => {}
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(error) = result {
            tracing::error!(project = %id, error = %crate::error::Chain(&error), "cannot bring the project back at start-up");
        }
    }
}
