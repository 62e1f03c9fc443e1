//! The start-up pass (`reconcile`): what a gateway killed at any step left
//! behind is brought back to a status the project can be used from.
//!
//! - `active`: the agent is started again, and the containers that ran.
//! - `starting` or `hibernating` (killed while opening or hibernating, on
//!   any step up to and including recording the new version): the folder is
//!   whole, since it is only torn down after the `hibernated` mark, so the
//!   project is made `active` again on it.
//! - `restoring` (killed while the snapshot was fetched, staged or moved in,
//!   or after the files were in place but before `active`): whatever was
//!   made is removed and the project is `hibernated` again; the next open
//!   restores from scratch.
//! - `hibernated` with a folder left over (killed during the teardown): the
//!   next restore removes it first.
//!
//! A step is a leftover only once nobody holds the project's lock: the lease
//! of a killed gateway runs out within `--lease-secs`, so each project in a
//! transient status is retried until its lease is free or its status
//! changed (a live replica finished the step). The folder archive store's
//! temporary files of puts cut short are swept as well.

use std::time::Duration;

use super::{open, open_locked, set_status, start_container};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::{ContainerStatus, ProjectStatus};

/// After a restart: active projects get their agents back and their running
/// containers restarted; a step cut short is settled (see the module).
pub async fn reconcile(state: AppState) {
    // Beside the projects' pass: a large folder store takes a while to walk.
    tokio::spawn(sweep(state.clone()));
    let projects = match state.store.list_projects().await {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(error = %crate::error::Chain(&error), "cannot list projects at start-up");
            return;
        }
    };
    for p in projects {
        let id = p.id.clone();
        let result = match p.status {
            ProjectStatus::Active => resume(&state, &id).await,
            s if transient(s) => {
                // In the background: waiting for a dead holder's lease must
                // not hold up the other projects.
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(error) = settle(&state, &id).await {
                        tracing::error!(project = %id, error = %crate::error::Chain(&error), "cannot settle a step cut short");
                    }
                });
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(error) = result {
            tracing::error!(project = %p.id, error = %crate::error::Chain(&error), "cannot bring the project back at start-up");
        }
    }
}

/// The folder archive store's temporary files of puts cut short.
async fn sweep(state: AppState) {
    match state
        .archives
        .sweep_temporaries(None, std::time::SystemTime::now())
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            "removed temporary files of unfinished archive writes"
        ),
        Err(error) => {
            tracing::warn!(error = %crate::error::Chain(&error), "cannot sweep the archive store's temporary files");
        }
    }
}

/// A status that only a step in progress holds.
fn transient(s: ProjectStatus) -> bool {
    matches!(
        s,
        ProjectStatus::Starting | ProjectStatus::Hibernating | ProjectStatus::Restoring
    )
}

/// An active project: its agent, and the containers recorded running.
async fn resume(state: &AppState, id: &str) -> Result<()> {
    open(state, id).await?;
    for c in state.store.list_containers(id).await? {
        if matches!(
            c.status,
            ContainerStatus::Running | ContainerStatus::Starting
        ) {
            let _guard = state.locks.lock(id).await?;
            start_container(state, id, &c.name).await?;
        }
    }
    Ok(())
}

/// Settles a project found in a transient status: waits until its lock is
/// free (a killed holder's lease expired) or its status is no longer
/// transient (a live holder finished), polling the store.
async fn settle(state: &AppState, id: &str) -> Result<()> {
    let pause = (state.leases.ttl() / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        if state.shutdown.is_cancelled() || !transient(state.project(id).await?.status) {
            return Ok(());
        }
        if let Some(_guard) = state.locks.try_lock(id).await {
            return settle_locked(state, id).await;
        }
        tokio::time::sleep(pause).await;
    }
}

async fn settle_locked(state: &AppState, id: &str) -> Result<()> {
    let mut p = state.project(id).await?;
    let archived = !state.store.list_archives(id).await?.is_empty();
    match p.status {
        ProjectStatus::Restoring if archived => {
            tracing::warn!(project = id, "a restore was cut short; back to hibernated");
            state.runtime.teardown(id).await?;
            state.agents.forget(id);
            set_status(state, &mut p, ProjectStatus::Hibernated).await
        }
        s if transient(s) => {
            tracing::warn!(
                project = id,
                status = s.as_str(),
                "a step was cut short; the project is active again on its folder"
            );
            open_locked(state, id, None).await.map(|_| ())
        }
        _ => Ok::<_, Error>(()),
    }
}
