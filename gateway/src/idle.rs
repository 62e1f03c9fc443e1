//! Idle hibernation: an active project with no file, terminal, watch or
//! preview activity for the configured time is hibernated. Activity is
//! recorded in memory by the request paths (`AppState::touch`, into the
//! tracker of `activity`) and shared through the state store, at most once
//! per `--activity-interval` per project and replica; a connected terminal
//! or watch holds its project awake (`Activity::hold`), and every replica
//! refreshes the store's time of the projects it holds at that interval. One replica, elected through a store lease (`elect`),
//! runs the idle loop; it hibernates a project only when the store's time
//! and its own agree, and checks again under the project's lock right
//! before the hibernation starts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;

use crate::state::AppState;

/// The lease of the replica that runs the idle loop and GC.
pub const LEADER_LEASE: &str = "leader";

/// On every replica, every `every` until shutdown: writes to the store the
/// activity of the projects this replica holds awake (terminals, watches)
/// and the activity it has not shared yet.
pub async fn share(state: AppState, every: Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = state.shutdown.cancelled() => return,
        }
        for (project, ago) in state.activity.due() {
            let at = Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default();
            if let Err(error) = state.store.touch_project(&project, at).await {
                tracing::debug!(error = %crate::error::Chain(&error), project, "cannot share the activity time");
            }
        }
    }
}

/// Holds the election lease while it can, renewing it; `AppState::leader`
/// says whether this replica holds it. Released at shutdown.
pub async fn elect(state: AppState) {
    let mut held: Option<crate::lease::LeaseGuard> = None;
    loop {
        if held.as_ref().is_some_and(|g| g.lost()) {
            tracing::warn!("lost the election lease");
            held = None;
        }
        if held.is_none() {
            match state.leases.try_acquire(LEADER_LEASE).await {
                Ok(Some(g)) => {
                    tracing::info!(
                        replica = state.leases.replica(),
                        "elected: this replica runs the idle loop and GC"
                    );
                    held = Some(g);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(error = %crate::error::Chain(&error), "cannot take part in the election")
                }
            }
        }
        state.leader.store(held.is_some(), Ordering::SeqCst);
        tokio::select! {
            () = tokio::time::sleep(state.leases.ttl() / 3) => {}
            () = state.shutdown.cancelled() => {
                state.leader.store(false, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Hibernates idle active projects every `check` until shutdown, while this
/// replica is the elected one; does nothing when `after` is zero.
pub async fn run(state: AppState, after: Duration, check: Duration) {
    if after.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(check) => {}
            () = state.shutdown.cancelled() => return,
        }
        if !state.leader.load(Ordering::SeqCst) {
            continue;
        }
        for id in idle_projects(&state, after).await {
            match crate::lifecycle::hibernate_unless_busy(&state, &id, Some(after)).await {
                Ok(Some(_)) => {
                    tracing::info!(project = %id, secs = after.as_secs(), "hibernated an idle project");
                    state.activity.forget(&id);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(error = %crate::error::Chain(&error), project = %id, "idle hibernation failed");
                    // Retried after another idle period, not every minute
                    // (an unreachable archive store would be hammered).
                    state.touch(&id);
                }
            }
        }
    }
}

/// Active projects idle for at least `after` in the store (every replica's
/// shared activity) and here.
pub async fn idle_projects(state: &AppState, after: Duration) -> Vec<String> {
    let before = Utc::now() - chrono::Duration::from_std(after).unwrap_or_default();
    match state.store.idle_projects(before).await {
        Ok(ids) => ids
            .into_iter()
            .filter(|id| state.activity.idle_for(id) >= after)
            .collect(),
        Err(error) => {
            tracing::warn!(error = %crate::error::Chain(&error), "idle check: cannot list idle projects");
            Vec::new()
        }
    }
}
