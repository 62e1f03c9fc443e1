//! The per-project activity this gateway sees (file, terminal, watch and
//! preview requests), in memory: when each project was last active, which
//! ones a connected terminal or watch holds awake, and which are due to be
//! shared through the store. Idle hibernation (`idle`) reads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
