//! Idle hibernation: an active project with no file, terminal or preview
//! activity for the configured minutes is hibernated. Activity is recorded
//! in memory by the request paths (`touch`), and a connected terminal holds
//! its project awake (`hold`). With several gateway replicas each sees only
//! its own requests, so the runtime may also keep a shared last-activity
//! time (the Kubernetes runtime: an annotation on the project's namespace,
//! written at most once a minute per replica): a project is idle only when
//! both say so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::state::AppState;
use crate::store::ProjectStatus;

/// How often the shared last-activity time is written per project, at most.
const SHARE_EVERY: Duration = Duration::from_secs(60);

/// Per-project activity seen by this gateway.
pub struct Activity {
    started: Instant,
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
        Activity {
            started: Instant::now(),
            projects: Mutex::default(),
        }
    }
}

/// Keeps a project awake while it lives (a connected terminal).
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
    /// counts as idle since then).
    pub fn started_at(started: Instant) -> Activity {
        Activity {
            started,
            projects: Mutex::default(),
        }
    }

    /// Records activity on a project now; answers whether the shared time
    /// is due for an update (at most once a minute).
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
            .is_none_or(|t| now.duration_since(t) >= SHARE_EVERY);
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

    /// Forgets a project (hibernated or deleted).
    pub fn forget(&self, project: &str) {
        self.lock().remove(project);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Plain field updates: consistent even after a panic elsewhere.
        self.projects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records activity and, once a minute, shares it through the runtime.
pub fn touch(state: &AppState, project: &str) {
    if state.activity.touch(project) {
        let (runtime, project) = (state.runtime.clone(), project.to_owned());
        tokio::spawn(async move {
            if let Err(error) = runtime.record_activity(&project, Utc::now()).await {
                tracing::debug!(error = %crate::error::Chain(&error), project, "cannot share the activity time");
            }
        });
    }
}

/// Hibernates idle active projects every `check` until shutdown; does
/// nothing when `after` is zero.
pub async fn run(state: AppState, after: Duration, check: Duration) {
    if after.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(check) => {}
            () = state.shutdown.cancelled() => return,
        }
        for id in idle_projects(&state, after).await {
            tracing::info!(project = %id, minutes = after.as_secs() / 60, "hibernating idle project");
            match crate::lifecycle::hibernate(&state, &id).await {
                Ok(_) => state.activity.forget(&id),
                Err(error) => {
                    tracing::warn!(error = %crate::error::Chain(&error), project = %id, "idle hibernation failed");
                    // Retried after another idle period, not every minute
                    // (an unreachable archive store would be hammered).
                    state.activity.touch(&id);
                }
            }
        }
    }
}

/// Active projects idle for at least `after`, here and, when the runtime
/// shares activity, everywhere.
pub async fn idle_projects(state: &AppState, after: Duration) -> Vec<String> {
    let projects = match state.store.list_projects().await {
        Ok(p) => p,
        Err(error) => {
            tracing::warn!(error = %crate::error::Chain(&error), "idle check: cannot list projects");
            return Vec::new();
        }
    };
    let mut idle = Vec::new();
    for p in projects
        .into_iter()
        .filter(|p| p.status == ProjectStatus::Active)
    {
        if state.activity.idle_for(&p.id) < after {
            continue;
        }
        match state.runtime.last_activity(&p.id).await {
            Ok(Some(t)) if (Utc::now() - t).to_std().unwrap_or_default() < after => continue,
            Ok(_) => {}
            Err(error) => {
                // Unknown elsewhere: keep the project rather than risk
                // hibernating one another replica serves.
                tracing::warn!(error = %crate::error::Chain(&error), project = %p.id, "idle check: cannot read the shared activity time");
                continue;
            }
        }
        idle.push(p.id);
    }
    idle
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
        drop(hold);
        assert!(a.idle_for("q") < Duration::from_secs(1));
        a.forget("p");
        assert!(a.idle_for("p") <= a.started.elapsed());
    }
}
