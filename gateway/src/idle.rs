//! Idle hibernation: an active project with no file, terminal, watch or
//! preview activity for the configured time is hibernated. Activity is
//! recorded in memory by the request paths (`touch`) and shared through the
//! state store, at most once per `--activity-interval` per project and
//! replica; a connected terminal or watch holds its project awake (`hold`),
//! and every replica refreshes the store's time of the projects it holds at
//! that interval. One replica, elected through a store lease (`elect`),
//! runs the idle loop; it hibernates a project only when the store's time
//! and its own agree, and checks again under the project's lock right
//! before the hibernation starts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::state::AppState;

/// The lease of the replica that runs the idle loop and GC.
pub const LEADER_LEASE: &str = "leader";

/// Per-project activity seen by this gateway.
pub struct Activity {
    started: Instant,
    share_every: Duration,
    projects: Mutex<HashMap<String, Entry>>,
}

#[derive(Default)]
struct Entry {
    last: Option<Instant>,
    shared: Option<Instant>,
    holds: usize,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new(Instant::now(), Duration::from_secs(60))
    }
}

/// Keeps a project awake while it lives (a connected terminal or watch).
pub struct Hold {
    activity: Arc<Activity>,
    project: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut map = self.activity.lock();
        if let Some(e) = map.get_mut(&self.project) {
            e.holds = e.holds.saturating_sub(1);
            e.last = Some(Instant::now());
        }
    }
}

impl Activity {
    /// A tracker whose gateway started at `started` (no activity seen
    /// counts as idle since then), sharing at most once per `share_every`.
    pub fn new(started: Instant, share_every: Duration) -> Activity {
        Activity {
            started,
            share_every,
            projects: Mutex::default(),
        }
    }

    /// A tracker whose gateway started at `started`, sharing once a minute.
    pub fn started_at(started: Instant) -> Activity {
        Activity::new(started, Duration::from_secs(60))
    }

    /// Records activity on a project now; answers whether the shared time
    /// is due for an update (at most once per interval).
    pub fn touch(&self, project: &str) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        // Looked up before inserting: this runs on every file, terminal and
        // preview request, and the owned key is only needed the first time.
        if !map.contains_key(project) {
            map.insert(project.to_owned(), Default::default());
        }
        let Some(e) = map.get_mut(project) else {
            return false;
        };
        e.last = Some(now);
        let due = e
            .shared
            .is_none_or(|t| now.duration_since(t) >= self.share_every);
        if due {
            e.shared = Some(now);
        }
        due
    }

    /// Keeps the project awake until the returned guard drops.
    pub fn hold(self: &Arc<Self>, project: &str) -> Hold {
        self.touch(project);
        self.lock().entry(project.to_owned()).or_default().holds += 1;
        Hold {
            activity: self.clone(),
            project: project.to_owned(),
        }
    }

    /// How long this gateway has seen no activity on the project (since its
    /// own start when it saw none); zero while something holds it.
    pub fn idle_for(&self, project: &str) -> Duration {
        let map = self.lock();
        match map.get(project) {
            Some(e) if e.holds > 0 => Duration::ZERO,
            Some(Entry { last: Some(t), .. }) => t.elapsed(),
            _ => self.started.elapsed(),
        }
    }

    /// The projects whose activity is due in the store now: those held (a
    /// terminal or watch attached), and those with activity since their
    /// last share; each with how long ago it was last active. Marks them
    /// shared.
    pub fn due(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut due = Vec::new();
        for (project, e) in self.lock().iter_mut() {
            let unshared = match (e.last, e.shared) {
                (Some(last), Some(shared)) => last > shared,
                (Some(_), None) => true,
                _ => false,
            };
            if e.holds > 0 {
                due.push((project.clone(), Duration::ZERO));
            } else if unshared && let Some(last) = e.last {
                due.push((project.clone(), last.elapsed()));
            } else {
                continue;
            }
            e.shared = Some(now);
        }
        due
    }

    /// Forgets a project (hibernated or deleted).
    pub fn forget(&self, project: &str) {
        self.lock().remove(project);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Plain field updates: consistent even after a panic elsewhere.
        self.projects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records activity and, once per interval, shares it through the store.
pub fn touch(state: &AppState, project: &str) {
    if state.activity.touch(project) {
        let (store, project) = (state.store.clone(), project.to_owned());
        tokio::spawn(async move {
            if let Err(error) = store.touch_project(&project, Utc::now()).await {
                tracing::debug!(error = %crate::error::Chain(&error), project, "cannot share the activity time");
            }
        });
    }
}

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
                    touch(&state, &id);
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

/// Whether the project has been idle for `after`, here and in the store
/// (its last activity, or its last status change when none was recorded).
pub async fn is_idle(state: &AppState, project: &str, after: Duration) -> crate::Result<bool> {
    if state.activity.idle_for(project) < after {
        return Ok(false);
    }
    let p = state.project(project).await?;
    let last = state
        .store
        .last_activity(project)
        .await?
        .map_or(p.updated_at, |t| t.max(p.updated_at));
    Ok((Utc::now() - last).to_std().unwrap_or_default() >= after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_holds_and_sharing() {
        let a = Arc::new(Activity::default());
        assert!(a.touch("p"), "the first touch is shared");
        assert!(!a.touch("p"), "then at most once a minute");
        assert!(a.idle_for("p") < Duration::from_secs(1));
        let hold = a.hold("q");
        assert_eq!(a.idle_for("q"), Duration::ZERO);
        // Held projects are due at every share; `p` once, for its touch
        // after the shared one.
        let mut due: Vec<String> = a.due().into_iter().map(|(p, _)| p).collect();
        due.sort();
        assert_eq!(due, ["p", "q"]);
        let due: Vec<String> = a.due().into_iter().map(|(p, _)| p).collect();
        assert_eq!(due, ["q"], "still held: due again");
        drop(hold);
        assert!(a.idle_for("q") < Duration::from_secs(1));
        // Released: its last activity is due once more, then nothing.
        assert_eq!(a.due().len(), 1);
        assert!(a.due().is_empty());
        a.forget("p");
        assert!(a.idle_for("p") <= a.started.elapsed());
    }
}
