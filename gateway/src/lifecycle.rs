//! Project lifecycle above the runtime, the same for every runtime: create,
//! open (restoring the newest snapshot when hibernated), hibernate (a
//! snapshot cut by the agent, verified in the archive store, only then tear
//! down), delete, and the start-up pass that gives active projects their
//! agents back. Every step of a project holds its lock (in this process and
//! the store lease, so replicas never interleave either), and every status
//! change is a compare-and-set from the status read under that lock
//! (`Store::transition`): a replica that lost its lease cannot undo
//! another's step.

use std::time::Instant;

use chrono::Utc;

use crate::error::{Error, Result};
use crate::metrics::{LifecycleLabels, OpLabels};
use crate::state::AppState;
use crate::store::{
    ArchiveVersion, CommandLogEntry, ContainerStatus, Project, ProjectStatus, Transition,
};

pub mod containers;
mod recovery;
mod signing;
mod snapshots;
pub mod upkeep;

pub use containers::start_container;
pub use recovery::reconcile;
use snapshots::{restore_snapshot, step_agent, take_snapshot};
pub use upkeep::snapshot_now;

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

/// Moves the project from the status `p` holds (read under its lock) to
/// `status`, by compare-and-set in the store; `Error::Conflict` when the
/// store holds another status (another replica moved it meanwhile), and
/// `p` then holds nothing new.
async fn set_status(state: &AppState, p: &mut Project, status: ProjectStatus) -> Result<()> {
    // Forget first: while the store write is in flight nobody may trust the old status.
    state.statuses.forget(&p.id);
    match state
        .store
        .transition(&p.id, &[p.status], status, Utc::now())
        .await?
    {
        Transition::Done(now) => {
            *p = now;
            state.statuses.put(&p.id, status);
            state.emit(
                &p.id,
                "status",
                serde_json::json!({"status": status.as_str()}),
            );
            Ok(())
        }
        Transition::Refused(actual) => {
            tracing::warn!(project = %p.id, expected = p.status.as_str(), actual = actual.as_str(), to = status.as_str(), "status changed elsewhere; step refused");
            Err(Error::Conflict(format!(
                "project {} is {} now, not {}",
                p.id,
                actual.as_str(),
                p.status.as_str()
            )))
        }
    }
}

fn progress(state: &AppState, project: &str, step: &str, message: impl Into<String>) {
    state.emit(
        project,
        "progress",
        serde_json::json!({"step": step, "message": message.into()}),
    );
}

/// What `POST /open` may ask for besides making the project active.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Start again the containers that were running when the project was
    /// hibernated.
    pub start_containers: bool,
    /// Restore this snapshot (an id) rather than the newest one; only for a
    /// hibernated project.
    pub snapshot: Option<String>,
}

/// Makes the project active, then does what `opts` asks.
pub async fn open_with(state: &AppState, id: &str, opts: OpenOptions) -> Result<Project> {
    let p = open_at(state, id, opts.snapshot.as_deref()).await?;
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
    let _guard = state.locks.lock(id).await?;
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
    open_at(state, id, None).await
}

/// [`open`], restoring snapshot `snapshot` (an id) rather than the newest
/// when one is named: only a hibernated project can go back to an older
/// snapshot (409 otherwise), and an unknown id is 404.
async fn open_at(state: &AppState, id: &str, snapshot: Option<&str>) -> Result<Project> {
    // Fast path, without the project's lock (a container's install may hold
    // it for minutes): an active project only needs its agent up.
    let p = state.project(id).await?;
    if p.status == ProjectStatus::Active && snapshot.is_none() {
        state.runtime.ensure(id).await?;
        return Ok(p);
    }
    let _guard = state.locks.lock(id).await?;
    open_locked(state, id, snapshot).await
}

/// [`open_at`]'s work, under the project's lock.
async fn open_locked(state: &AppState, id: &str, snapshot: Option<&str>) -> Result<Project> {
    let mut p = state.project(id).await?;
    if let Some(sid) = snapshot {
        if !matches!(
            p.status,
            ProjectStatus::Hibernated | ProjectStatus::Restoring | ProjectStatus::Failed
        ) {
            return Err(Error::Conflict(format!(
                "project {id} is {}: hibernate it before opening an older snapshot",
                p.status.as_str()
            )));
        }
        let versions = state.store.list_archives(id).await?;
        if !versions.iter().any(|a| a.snapshot.as_deref() == Some(sid)) {
            return Err(Error::NotFound(format!(
                "project {id} has no snapshot {sid}"
            )));
        }
    }
    match p.status {
        ProjectStatus::Active => {
            // The agent may have died with a previous gateway: bring it back.
            state.runtime.ensure(id).await?;
            Ok(p)
        }
        ProjectStatus::Hibernated | ProjectStatus::Restoring => {
            restore(state, &mut p, snapshot).await?;
            Ok(p)
        }
        ProjectStatus::Failed if !state.store.list_archives(id).await?.is_empty() => {
            restore(state, &mut p, snapshot).await?;
            Ok(p)
        }
        ProjectStatus::Created
        | ProjectStatus::Starting
        | ProjectStatus::Hibernating
        | ProjectStatus::Failed => {
            // Hibernating here, under the project's lock (which a live
            // hibernation holds from start to end, on whichever replica),
            // means the hibernating replica died and its lease expired: the
            // environment is only torn down after a verified archive and
            // the `hibernated` mark, so the files are still in place.
            let previous = p.status;
            set_status(state, &mut p, ProjectStatus::Starting).await?;
            progress(state, id, "environment", "starting the environment");
            if let Err(e) = state.runtime.ensure(id).await {
                tracing::warn!(project = id, error = %crate::error::Chain(&e), "cannot start the environment");
                // A failed request changes nothing: back to where it was;
                // but an environment stuck for good is `failed`, so that
                // the project says so until an operator clears it.
                let back = match e {
                    Error::EnvironmentStuck(_) => ProjectStatus::Failed,
                    _ => previous,
                };
                let _ = set_status(state, &mut p, back).await;
                return Err(e);
            }
            set_status(state, &mut p, ProjectStatus::Active).await?;
            tracing::info!(project = id, "project active");
            Ok(p)
        }
    }
}

/// Restores the newest version, or snapshot `wanted`.
async fn restore(state: &AppState, p: &mut Project, wanted: Option<&str>) -> Result<()> {
    let id = p.id.clone();
    let t0 = Instant::now();
    let previous = p.status;
    set_status(state, p, ProjectStatus::Restoring).await?;
    let versions = state.store.list_archives(&id).await?;
    let newest = match wanted {
        Some(sid) => versions
            .into_iter()
            .find(|a| a.snapshot.as_deref() == Some(sid)),
        None => versions.into_iter().next(),
    };
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
        let summary = match &a.snapshot {
            Some(sid) => {
                progress(
                    state,
                    &id,
                    "restore",
                    format!("restoring snapshot {sid} (version {})", a.version),
                );
                restore_snapshot(state, &id, &client, &a.key, sid).await?
            }
            None => {
                // A zip of a version hibernated before snapshots: read by
                // the gateway, extracted by the agent.
                progress(
                    state,
                    &id,
                    "extract",
                    format!("extracting archive version {}", a.version),
                );
                let data = state.archives.read(&a.key).await?;
                client.extract("", data, u64::MAX, None).await?
            }
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
            devgate_pause::at("restore-files").await;
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
                    .log_command(
                        CommandLogEntry::new(
                            &id,
                            "restore",
                            match &a.snapshot {
                                Some(sid) => {
                                    format!("restore snapshot {sid} (version {})", a.version)
                                }
                                None => {
                                    format!("extract archive version {} ({})", a.version, a.key)
                                }
                            },
                        )
                        .took(elapsed)
                        .succeeded(format!("{} files, {} bytes", summary.files, summary.bytes)),
                    )
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
            // A stuck environment is not cleaned again (that would wait
            // out the same bound a second time): the project is `failed`,
            // and opening it once an operator has cleared the environment
            // restores the same snapshot.
            let stuck = matches!(e, Error::EnvironmentStuck(_));
            if newest.is_some()
                && !stuck
                && let Err(error) = state.runtime.teardown(&id).await
            {
                tracing::error!(project = %id, error = %crate::error::Chain(&error), "cannot clean up after a failed restore");
            }
            state.agents.forget(&id);
            let back = if stuck {
                ProjectStatus::Failed
            } else if newest.is_some() {
                ProjectStatus::Hibernated
            } else {
                previous
            };
            let _ = set_status(state, p, back).await;
            state
                .log_command(
                    CommandLogEntry::new(&id, "restore", "restore newest snapshot")
                        .took(elapsed)
                        .failed(&e),
                )
                .await;
            Err(e)
        }
    }
}

/// Archives the project to the archive store, verifies the archive by
/// reading it back, and only then stops its environment. A failure at any
/// step before the verification leaves the project active and intact.
pub async fn hibernate(state: &AppState, id: &str) -> Result<Project> {
    hibernate_unless_busy(state, id, None)
        .await?
        .ok_or_else(|| Error::internal("hibernation skipped without an idleness check"))
}

/// Hibernates the project if it has been idle for `idle_for` (checked
/// under its lock, right before the hibernation starts: the last activity
/// in the store and this replica's own); `None` when it was not idle.
/// Without `idle_for`, as [`hibernate`].
pub async fn hibernate_unless_busy(
    state: &AppState,
    id: &str,
    idle_for: Option<std::time::Duration>,
) -> Result<Option<Project>> {
    let guard = state.locks.lock(id).await?;
    let mut p = state.project(id).await?;
    match p.status {
        ProjectStatus::Hibernated if idle_for.is_none() => return Ok(Some(p)),
        ProjectStatus::Active => {}
        _ if idle_for.is_some() => return Ok(None),
        _ => return Err(Error::ProjectNotActive(id.to_owned())),
    }
    if let Some(after) = idle_for
        && !state.is_idle(id, after).await?
    {
        return Ok(None);
    }
    let t0 = Instant::now();
    set_status(state, &mut p, ProjectStatus::Hibernating).await?;
    // New file changes now get 409, here and on every replica; wait for
    // those in flight to finish.
    let writes = match state.write_gates.exclusive(id).await {
        Ok(w) => w,
        Err(e) => {
            set_status(state, &mut p, ProjectStatus::Active).await?;
            return Err(e);
        }
    };
    devgate_pause::at("hibernate-quiesce").await;
    let phase = Instant::now();
    if let Err(e) = quiesce(state, id).await {
        tracing::error!(project = id, error = %crate::error::Chain(&e), "cannot stop the project's processes; the project stays active");
        drop(writes);
        set_status(state, &mut p, ProjectStatus::Active).await?;
        return Err(e);
    }
    let archives = state.store.list_archives(id).await?;
    let version = archives.first().map(|a| a.version + 1).unwrap_or(1);
    let previous = archives.iter().find(|a| a.snapshot.is_some()).cloned();
    progress(
        state,
        id,
        "snapshot",
        format!(
            "taking snapshot version {version} into {}",
            state.archives.describe()
        ),
    );
    let quiesce_ms = phase.elapsed().as_millis() as u64;
    let phase = Instant::now();
    let mut result = take_snapshot(state, id, previous.as_ref()).await;
    let snapshot_ms = phase.elapsed().as_millis() as u64;
    if result.is_ok() {
        // Still the only one: the lease and the write gate held throughout
        // (a replica that stalled past its lease, or lost its store
        // session, may have let another step or change in).
        if guard.lost() {
            result = Err(Error::Unavailable(
                "the project's lease was lost during the hibernation".into(),
            ));
        } else if !writes.still_closed().await.unwrap_or(false) {
            result = Err(Error::Unavailable(
                "the write gate was lost during the hibernation".into(),
            ));
        }
    }
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
    let taken = match result {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(project = id, error = %crate::error::Chain(&e), "hibernation failed; the project stays active");
            // Packs already uploaded stay: they are named by their content,
            // so one may be shared with a snapshot that references it; no
            // manifest references the others, and retention removes them.
            set_status(state, &mut p, ProjectStatus::Active).await?;
            state
                .log_command(
                    CommandLogEntry::new(id, "hibernate", format!("snapshot version {version}"))
                        .took(elapsed)
                        .failed(&e),
                )
                .await;
            return Err(e);
        }
    };
    let archive = ArchiveVersion {
        project: id.to_owned(),
        version,
        key: taken.key.clone(),
        size: taken.bytes,
        sha256: String::new(),
        files: taken.files,
        created_at: Utc::now(),
        snapshot: Some(taken.id.clone()),
        reason: "hibernate".into(),
        uploaded_bytes: taken.uploaded_bytes,
    };
    state.store.add_archive(&archive).await?;
    devgate_pause::at("hibernate-record").await;
    state
        .metrics
        .archive_bytes
        .get_or_create(&OpLabels {
            op: "hibernate".into(),
        })
        .inc_by(taken.uploaded_bytes);
    // Hibernated from here on: the files live in the verified snapshot. Were
    // the gateway to stop during the teardown below, the next open restores
    // from the archive into a clean environment rather than trusting a
    // half-removed folder.
    set_status(state, &mut p, ProjectStatus::Hibernated).await?;
    devgate_pause::at("hibernate-teardown").await;
    progress(
        state,
        id,
        "teardown",
        "snapshot verified; stopping the environment",
    );
    let phase = Instant::now();
    for mut c in state.store.list_containers(id).await? {
        // Remembered, so that an open can start it again (`start_containers`);
        // `quiesce` already stopped and marked those that ran.
        let was_running = c.running_at_hibernation
            || matches!(
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
    let teardown_ms = phase.elapsed().as_millis() as u64;
    state
        .log_command(
            CommandLogEntry::new(id, "hibernate", format!("snapshot version {version}"))
                .took(elapsed)
                .succeeded(format!(
                    "snapshot {}: {} files, {} bytes, {} bytes uploaded",
                    taken.id, taken.files, taken.bytes, taken.uploaded_bytes
                )),
        )
        .await;
    let phase = Instant::now();
    upkeep::retain(state, id).await;
    tracing::info!(
        project = id,
        version,
        snapshot = %taken.id,
        bytes = taken.bytes,
        uploaded = taken.uploaded_bytes,
        ms = elapsed.as_millis() as u64,
        quiesce_ms,
        snapshot_ms,
        teardown_ms,
        retain_ms = phase.elapsed().as_millis() as u64,
        "project hibernated"
    );
    drop(writes);
    Ok(Some(p))
}

/// Why a hibernation ends a terminal session: the `reason` of its exit frame.
pub const HIBERNATED: &str = "hibernated";

/// Ends the terminal sessions of the agent that runs a container's shells
/// with the reason `hibernated`, before the container stops (on Kubernetes
/// that agent is the dev pod's, which goes with it; locally it is the
/// project's, whose sessions all end below anyway). Best effort: the stop
/// that follows ends them regardless, only without the reason.
async fn end_container_terminals(state: &AppState, id: &str, name: &str) {
    let ended = async {
        let crate::runtime::ShellTarget::Agent { endpoint, .. } = state
            .runtime
            .container_shell(id, name, &std::collections::BTreeMap::new())
            .await?;
        let client = state.agents.get_for_container(id, name, &endpoint)?;
        end_terminals(&client).await.map(|_| ())
    };
    if let Err(error) = ended.await {
        tracing::info!(project = id, container = name, error = %crate::error::Chain(&error), "cannot end the container's terminals before its stop");
    }
}

/// Stops everything that runs in the project before its files are cut: dev
/// servers (recorded stopped, and marked `running_at_hibernation` so an open
/// can start them again), the agent's other background processes, then
/// every terminal session (each attached client gets the exit with the
/// reason `hibernated`). Each stop returns once the process group is gone,
/// so nothing of the project writes while it is archived; new file changes
/// are already refused (409) by the write gate. A failure stops the
/// hibernation, with the project left active.
async fn quiesce(state: &AppState, id: &str) -> Result<()> {
    progress(
        state,
        id,
        "quiesce",
        "stopping dev servers, processes and terminals",
    );
    for mut c in state.store.list_containers(id).await? {
        if !matches!(
            c.status,
            ContainerStatus::Running | ContainerStatus::Starting
        ) {
            // A mark left by an earlier hibernation: this one did not see it
            // run.
            if c.running_at_hibernation {
                c.running_at_hibernation = false;
                state.store.update_container(&c).await?;
            }
            continue;
        }
        end_container_terminals(state, id, &c.name).await;
        state.runtime.stop_container(id, &c.name).await?;
        c.status = ContainerStatus::Stopped;
        c.running_at_hibernation = true;
        state.store.update_container(&c).await?;
    }
    let client = step_agent(state, id).await?;
    for p in client.list_background().await? {
        if p.running {
            match client.stop_background(&p.name, 5000).await {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let terminals = end_terminals(&client).await?;
    tracing::info!(project = id, terminals, "project quiesced");
    Ok(())
}

/// Ends every live terminal session of an agent with the reason
/// `hibernated` (one already gone is fine); answers how many it had.
async fn end_terminals(client: &crate::agent_client::AgentClient) -> Result<usize> {
    let sessions = client.list_pty().await?;
    let ends = sessions
        .iter()
        .filter(|s| !s.exited)
        .map(|s| client.end_pty(&s.id, HIBERNATED));
    for res in futures::future::join_all(ends).await {
        match res {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sessions.len())
}

/// Removes the project: environment, archives, records.
pub async fn delete(state: &AppState, id: &str) -> Result<()> {
    let _guard = state.locks.lock(id).await?;
    state.project(id).await?;
    for c in state.store.list_containers(id).await? {
        if c.status == ContainerStatus::Running || c.status == ContainerStatus::Starting {
            let _ = state.runtime.stop_container(id, &c.name).await;
        }
    }
    state.runtime.teardown(id).await?;
    state.agents.forget(id);
    if let Err(error) = state.archives.delete_project(id).await {
        tracing::warn!(project = id, error = %crate::error::Chain(&error), "cannot remove the snapshots of a deleted project");
    }
    state.store.delete_project(id).await?;
    state.statuses.forget(id);
    state.activity.forget(id);
    state.preview.forget(id);
    state
        .recent_manifests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .forget(id);
    state.emit(id, "status", serde_json::json!({"status": "deleted"}));
    tracing::info!(project = id, "project deleted");
    Ok(())
}

/// Makes sure a project is active, restoring it first when it is
/// hibernated (terminals and previews wake their project). Other states
/// answer 409 `project_not_active`; an unknown project 404.
pub async fn ensure_active(state: &AppState, project: &str) -> Result<()> {
    let p = state.project(project).await?;
    match p.status {
        ProjectStatus::Active => Ok(()),
        ProjectStatus::Hibernated => {
            tracing::info!(project, "waking a hibernated project");
            open(state, project).await?;
            Ok(())
        }
        _ => Err(Error::ProjectNotActive(project.to_owned())),
    }
}
