//! What every handler shares: config, token keys, the state store, the
//! runtime, the agent client pool, metrics, per-project event broadcast,
//! per-project lifecycle locks and write gates (in this process, and through
//! the store across replicas).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::agent_client::{AgentClient, AgentPool};
use crate::archive_store::ArchiveStore;
use crate::auth::Keys;
use crate::config::Config;
use crate::error::{Error, Result};
pub use crate::events::{Events, ProjectEvent, head_and_tail};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::store::{CommandLogEntry, Container, Project, ProjectStatus, Store};

/// Shared state of the gateway; cheap to clone (one reference count: the
/// router and its middleware clone it several times per request, and
/// cloning twenty `Arc`s each time took about 2 % of a small file read's
/// CPU in a profile). Its fields are [`Shared`]'s, through `Deref`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }

    /// The fields, to change while setting up (tests put a runtime or an
    /// activity record of their own); `None` once the state has been cloned.
    pub fn setup(&mut self) -> Option<&mut Shared> {
        Arc::get_mut(&mut self.0)
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub config: Arc<Config>,
    pub keys: Keys,
    pub store: Arc<dyn Store>,
    pub runtime: Arc<dyn Runtime>,
    pub agents: AgentPool,
    pub metrics: Arc<Metrics>,
    pub events: Events,
    pub locks: ProjectLocks,
    pub archives: Arc<ArchiveStore>,
    /// Bundled templates: name → `file://` git URL.
    pub templates: Arc<Vec<(String, String)>>,
    /// Cancelled when the gateway begins shutting down; long streams end on it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The port the gateway accepts on (for preview URLs), set once bound.
    pub listen_port: Arc<std::sync::atomic::AtomicU16>,
    /// File, terminal and preview activity per project, for idle hibernation.
    pub activity: Arc<crate::activity::Activity>,
    /// Recent project statuses, so hot file routes skip a store round trip.
    pub statuses: StatusCache,
    /// Routes that change a project's files hold its gate shared; hibernation
    /// holds it exclusively while it archives, so no acknowledged write can
    /// miss the archive, whichever replica took it.
    pub write_gates: WriteGates,
    /// This replica's leases in the store (project locks, the election).
    pub leases: crate::lease::Leases,
    /// Whether this replica holds the election lease: it alone runs the idle
    /// loop and GC.
    pub leader: Arc<std::sync::atomic::AtomicBool>,
    /// The preview proxy's pool, caches, wake limits and share links in use.
    pub preview: Arc<crate::preview_state::PreviewState>,
    /// The snapshot collector's cache: each manifest's pack ids, by manifest
    /// key (a key names its content's hash, so entries never go stale).
    pub manifest_packs: Arc<Mutex<HashMap<String, Arc<Vec<devgate_snapshot::Id>>>>>,
    /// The newest manifest each project's snapshot or restore went through
    /// on this replica, for the next hibernation's dedup.
    pub recent_manifests: Arc<Mutex<RecentManifests>>,
}

/// A manifest as the next snapshot of its project needs it: the whole
/// manifest for the agent, the packs of its chunks, and where its pieces
/// are. Named by the snapshot id (its hash), so never stale.
pub struct RecentManifest {
    pub snapshot: String,
    pub bytes: bytes::Bytes,
    pub packs: Vec<devgate_snapshot::Id>,
    pub split: Option<devgate_snapshot::SplitIndex>,
}

/// [`RecentManifest`]s by project, at most [`RecentManifests::MAX_BYTES`]
/// of manifests in all (any others go when a new one would pass it).
#[derive(Default)]
pub struct RecentManifests {
    by_project: HashMap<String, Arc<RecentManifest>>,
    bytes: usize,
}

impl RecentManifests {
    pub const MAX_BYTES: usize = 64 << 20;

    /// The project's recent manifest when it is snapshot `snapshot`'s.
    pub fn get(&self, project: &str, snapshot: &str) -> Option<Arc<RecentManifest>> {
        self.by_project
            .get(project)
            .filter(|m| m.snapshot == snapshot)
            .cloned()
    }

    pub fn put(&mut self, project: &str, m: RecentManifest) {
        self.forget(project);
        if m.bytes.len() > Self::MAX_BYTES {
            return;
        }
        while self.bytes + m.bytes.len() > Self::MAX_BYTES {
            let Some(k) = self.by_project.keys().next().cloned() else {
                break;
            };
            self.forget(&k);
        }
        self.bytes += m.bytes.len();
        self.by_project.insert(project.to_owned(), Arc::new(m));
    }

    pub fn forget(&mut self, project: &str) {
        if let Some(old) = self.by_project.remove(project) {
            self.bytes -= old.bytes.len();
        }
    }
}

/// The token extractors (`auth::Claims`, `auth::QueryClaims`) take the keys
/// from the state.
impl axum::extract::FromRef<AppState> for Keys {
    fn from_ref(state: &AppState) -> Keys {
        state.keys.clone()
    }
}

impl AppState {
    /// Records activity on a project and, once per interval, shares it
    /// through the store (for idle hibernation, `idle`).
    pub fn touch(&self, project: &str) {
        if self.activity.touch(project) {
            let (store, project) = (self.store.clone(), project.to_owned());
            tokio::spawn(async move {
                if let Err(error) = store.touch_project(&project, chrono::Utc::now()).await {
                    tracing::debug!(error = %crate::error::Chain(&error), project, "cannot share the activity time");
                }
            });
        }
    }

    /// Whether the project has been idle for `after`, here and in the store
    /// (its last activity, or its last status change when none was recorded).
    pub async fn is_idle(&self, project: &str, after: std::time::Duration) -> Result<bool> {
        if self.activity.idle_for(project) < after {
            return Ok(false);
        }
        let p = self.project(project).await?;
        let last = self
            .store
            .last_activity(project)
            .await?
            .map_or(p.updated_at, |t| t.max(p.updated_at));
        Ok((chrono::Utc::now() - last).to_std().unwrap_or_default() >= after)
    }

    /// The project, or 404.
    pub async fn project(&self, id: &str) -> Result<Project> {
        self.store
            .get_project(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("project {id} not found")))
    }

    /// The container, or 404.
    pub async fn container(&self, project: &str, name: &str) -> Result<Container> {
        self.store
            .get_container(project, name)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("container {name} not found in project {project}"))
            })
    }

    /// A client of the project's agent; 404 for an unknown project, 409
    /// `project_not_active` unless it is active.
    pub async fn active_agent(&self, project: &str) -> Result<AgentClient> {
        self.require_active(project).await?;
        self.agent_of_active(project).await
    }

    /// 404 for an unknown project, 409 `project_not_active` unless it is
    /// active; counts as activity on it.
    pub async fn require_active(&self, project: &str) -> Result<()> {
        let status = match self.statuses.get(project) {
            Some(ProjectStatus::Active) => ProjectStatus::Active,
            // Not active here: read the store again, since another replica
            // may have opened it within the cache's TTL (refusals are the
            // rare path; the hot one stays without a round trip).
            Some(_) => {
                let p = self.project(project).await?;
                self.statuses.put(project, p.status);
                p.status
            }
            None => {
                let p = self.project(project).await?;
                // A status this gateway set while the read was in flight (a
                // hibernation began) is newer than what was read: keep it.
                self.statuses.put_if_absent(project, p.status)
            }
        };
        if status != ProjectStatus::Active {
            return Err(Error::ProjectNotActive(project.to_owned()));
        }
        // Every file, exec and terminal route comes through here.
        self.touch(project);
        Ok(())
    }

    /// A client of the agent of a project known to be active.
    pub async fn agent_of_active(&self, project: &str) -> Result<AgentClient> {
        let endpoint = match self.runtime.agent(project).await {
            Ok(e) => e,
            // The agent is gone. If the store (read now, not the cache: another
            // replica may have hibernated the project within the cache's TTL)
            // still says active, it crashed or the machine rebooted: bring it
            // back rather than fail the request. Never revive an environment
            // a hibernation took down.
            Err(Error::ProjectNotActive(_)) => {
                if self.project(project).await?.status != ProjectStatus::Active {
                    return Err(Error::ProjectNotActive(project.to_owned()));
                }
                self.runtime.ensure(project).await?
            }
            Err(e) => return Err(e),
        };
        self.agents.get(project, &endpoint)
    }

    /// Sends an event to the project's `/events` subscribers.
    pub fn emit(&self, project: &str, event: &str, data: impl Serialize) {
        let data = serde_json::to_value(data).unwrap_or(serde_json::Value::Null);
        self.events.send(
            project,
            ProjectEvent {
                event: event.to_owned(),
                data,
            },
        );
    }

    /// Records a command in the project's log and streams it to subscribers,
    /// with its `stdout` and `stderr` cut to `--log-output-cap` bytes each
    /// (head and tail kept). A store failure is logged, not returned: the
    /// command itself already ran.
    pub async fn log_command(&self, mut entry: CommandLogEntry) {
        let cap = usize::try_from(self.config.log_output_cap).unwrap_or(usize::MAX);
        let (out, cut_out) = head_and_tail(&entry.stdout, cap);
        let (err, cut_err) = head_and_tail(&entry.stderr, cap);
        if cut_out || cut_err {
            entry.stdout = out;
            entry.stderr = err;
            entry.truncated = true;
        }
        if let Err(error) = self.store.append_log(&entry).await {
            tracing::error!(error = %crate::error::Chain(&error), project = %entry.project, "cannot record command");
        }
        let project = entry.project.clone();
        self.emit(&project, "log", &entry);
    }
}

/// The write gate of every project: see [`AppState::write_gates`]. Two
/// layers: a read-write lock per project in this process (a hibernation
/// here waits for the changes in flight here), and the store's gate
/// ([`Store::enter_write`]), which makes a hibernation on any replica wait
/// for changes in flight on every other, and reads the project's status
/// from the store in the same step (not a cache of this process).
#[derive(Clone)]
pub struct WriteGates {
    gates: Arc<Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>>,
    store: Arc<dyn Store>,
}

/// How long a hibernation waits for file changes in flight on other
/// replicas before it gives up (the project stays active).
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

impl WriteGates {
    pub fn new(store: Arc<dyn Store>) -> WriteGates {
        WriteGates {
            gates: Arc::default(),
            store,
        }
    }

    fn gate(&self, project: &str) -> Arc<tokio::sync::RwLock<()>> {
        per_project(&self.gates, project)
    }

    /// Held by a request that changes files. While a hibernation (on any
    /// replica) holds the gate or waits for it, or the project is not
    /// active in the store, the request is refused at once with 409
    /// `project_not_active` rather than left waiting for the whole archive;
    /// 404 for an unknown project. Call [`WriteGuard::finish`] before
    /// acknowledging the change.
    pub async fn enter(&self, project: &str) -> Result<WriteGuard> {
        // Locally first: a waiting hibernation (the lock is fair: a waiting
        // writer keeps new readers out) refuses without a store round trip.
        let local = self
            .gate(project)
            .try_read_owned()
            .map_err(|_| Error::ProjectNotActive(project.to_owned()))?;
        let entry = self.store.enter_write(project).await?;
        if !entry.allowed {
            return Err(match entry.status {
                None => Error::NotFound(format!("project {project} not found")),
                Some(_) => Error::ProjectNotActive(project.to_owned()),
            });
        }
        Ok(WriteGuard {
            project: project.to_owned(),
            session: entry.session,
            store: Some(self.store.clone()),
            _local: local,
        })
    }

    /// Held by a hibernation from before it archives until the environment
    /// is gone: waits for the file changes in flight here, then on the
    /// other replicas (at most [`DRAIN_LIMIT`]).
    pub async fn exclusive(&self, project: &str) -> Result<ExclusiveGuard> {
        let local = self.gate(project).write_owned().await;
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
        let mut pause = std::time::Duration::from_millis(10);
        loop {
            if let Some(session) = self.store.close_writes(project).await? {
                return Ok(ExclusiveGuard {
                    project: project.to_owned(),
                    session,
                    store: self.store.clone(),
                    _local: local,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "file changes of project {project} still in flight on another replica"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(200));
        }
    }
}

/// A file change's hold on its project's gate.
pub struct WriteGuard {
    project: String,
    session: u64,
    store: Option<Arc<dyn Store>>,
    _local: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl WriteGuard {
    /// Leaves the gate; an error when the store's hold was lost meanwhile
    /// (a hibernation elsewhere may have missed the change), so that the
    /// change is not acknowledged.
    pub async fn finish(mut self) -> Result<()> {
        let Some(store) = self.store.take() else {
            return Ok(());
        };
        if store.leave_write(&self.project, self.session).await? {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "the state store connection was lost during the change; its outcome is unknown"
                    .into(),
            ))
        }
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        // Not finished (an error answer, a client gone): leave in the
        // background.
        if let Some(store) = self.store.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (project, session) = (std::mem::take(&mut self.project), self.session);
            rt.spawn(async move {
                if let Err(error) = store.leave_write(&project, session).await {
                    tracing::warn!(error = %crate::error::Chain(&error), project, "cannot leave the write gate");
                }
            });
        }
    }
}

/// A hibernation's exclusive hold on its project's gate; opened again when
/// dropped.
pub struct ExclusiveGuard {
    project: String,
    session: u64,
    store: Arc<dyn Store>,
    _local: tokio::sync::OwnedRwLockWriteGuard<()>,
}

impl ExclusiveGuard {
    /// Whether the store still holds the gate closed (its session lives).
    pub async fn still_closed(&self) -> Result<bool> {
        self.store
            .writes_still_closed(&self.project, self.session)
            .await
    }
}

impl Drop for ExclusiveGuard {
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, project, session) = (
                self.store.clone(),
                std::mem::take(&mut self.project),
                self.session,
            );
            rt.spawn(async move {
                if let Err(error) = store.open_writes(&project, session).await {
                    tracing::warn!(error = %crate::error::Chain(&error), project, "cannot open the write gate");
                }
            });
        }
    }
}

/// Project statuses read from the store in the last [`StatusCache::TTL`], or
/// set by this gateway since. Status changes made here update it at once;
/// another replica's change (PostgreSQL store) is seen within the TTL, and a
/// request that slips through meanwhile finds no agent and gets 409 after a
/// fresh store read (see [`AppState::agent_of_active`]).
#[derive(Clone, Default)]
pub struct StatusCache {
    map: Arc<Mutex<HashMap<String, (ProjectStatus, std::time::Instant)>>>,
}

impl StatusCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(1);

    /// A fresh cached status.
    pub fn get(&self, project: &str) -> Option<ProjectStatus> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(project)
            .filter(|(_, t)| t.elapsed() < Self::TTL)
            .map(|(s, _)| *s)
    }

    /// Records a status just read or written.
    pub fn put(&self, project: &str, status: ProjectStatus) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (_, t)| t.elapsed() < Self::TTL);
        }
        map.insert(project.to_owned(), (status, std::time::Instant::now()));
    }

    /// Records a status just read unless a fresh one is already known (set
    /// by this gateway meanwhile); answers the status that holds.
    pub fn put_if_absent(&self, project: &str, status: ProjectStatus) -> ProjectStatus {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (_, t)| t.elapsed() < Self::TTL);
        }
        if let Some((known, t)) = map.get(project)
            && t.elapsed() < Self::TTL
        {
            return *known;
        }
        map.insert(project.to_owned(), (status, std::time::Instant::now()));
        status
    }

    /// Forgets a project (deleted).
    pub fn forget(&self, project: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project);
    }
}

/// One lock per project, so open, hibernate, restore, delete and container
/// changes of a project never interleave, on this replica or any other: an
/// async mutex in this process (a fast local layer: tasks here queue on it
/// without asking the store), then the store lease `project:{id}`.
#[derive(Clone)]
pub struct ProjectLocks {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    leases: crate::lease::Leases,
}

/// A project's lock, held until dropped.
pub struct ProjectGuard {
    // Dropped in this order: the lease, then the local lock, so that the
    // next local task finds the lease released (or releasing).
    lease: crate::lease::LeaseGuard,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl ProjectGuard {
    /// Whether the store lease was lost while held (this replica stalled
    /// past its expiry): the caller must not go on with destructive steps.
    pub fn lost(&self) -> bool {
        self.lease.lost()
    }
}

impl ProjectLocks {
    pub fn new(leases: crate::lease::Leases) -> ProjectLocks {
        ProjectLocks {
            locks: Arc::default(),
            leases,
        }
    }

    fn local(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        per_project(&self.locks, project)
    }

    /// Waits for the project's lock.
    pub async fn lock(&self, project: &str) -> Result<ProjectGuard> {
        let local = self.local(project).lock_owned().await;
        let lease = self.leases.acquire(&lease_name(project)).await?;
        Ok(ProjectGuard {
            lease,
            _local: local,
        })
    }

    /// The project's lock if nobody holds it now, here or elsewhere.
    pub async fn try_lock(&self, project: &str) -> Option<ProjectGuard> {
        let local = self.local(project).try_lock_owned().ok()?;
        match self.leases.try_acquire(&lease_name(project)).await {
            Ok(Some(lease)) => Some(ProjectGuard {
                lease,
                _local: local,
            }),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(error = %crate::error::Chain(&error), project, "cannot take the project's lease");
                None
            }
        }
    }
}

/// Past this many entries, a per-project lock map drops the locks nobody
/// holds or waits for, so the maps do not grow with every project ever
/// touched (deleted ones included).
const PRUNE_AT: usize = 1024;

/// The project's entry of a map of per-project locks, made when missing.
/// An entry only the map holds (no guard, no waiter: both hold a clone) is
/// free to drop: whoever comes next makes a new one, and nobody can hold
/// the old one.
fn per_project<T: Default>(map: &Mutex<HashMap<String, Arc<T>>>, project: &str) -> Arc<T> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= PRUNE_AT && !map.contains_key(project) {
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
    }
    map.entry(project.to_owned()).or_default().clone()
}

/// The store lease of a project's lock.
pub fn lease_name(project: &str) -> String {
    format!("project:{project}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_head_and_tail() {
        assert_eq!(head_and_tail("short", 10), ("short".to_owned(), false));
        let text = format!("{}{}", "a".repeat(100), "z".repeat(100));
        let (cut, truncated) = head_and_tail(&text, 20);
        assert!(truncated);
        assert!(cut.starts_with("aaaaaaaaaa\n[... 180 bytes left out ...]\n"));
        assert!(cut.ends_with("zzzzzzzzzz"));
        // Never inside a character: é is two bytes.
        let (cut, _) = head_and_tail(&"é".repeat(50), 11);
        assert!(cut.starts_with("éé\n") && cut.ends_with("\néé"), "{cut}");
    }

    #[tokio::test]
    async fn per_project_locks_do_not_grow_without_bound() {
        let map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>> = Mutex::default();
        // Held ones stay (with their identity), free ones go once the map is full.
        let held = per_project(&map, "held").lock_owned().await;
        for i in 0..3 * PRUNE_AT {
            let _guard = per_project(&map, &format!("p{i}")).lock_owned().await;
        }
        let len = map.lock().unwrap().len();
        assert!(len <= PRUNE_AT + 1, "{len}");
        assert!(
            per_project(&map, "held").try_lock().is_err(),
            "a held lock was dropped"
        );
        drop(held);
        assert!(per_project(&map, "held").try_lock().is_ok());
    }

    #[test]
    fn a_status_read_does_not_overwrite_a_newer_one() {
        let c = StatusCache::default();
        // A request read "active" from the store while a hibernation began.
        c.put("p", ProjectStatus::Hibernating);
        assert_eq!(
            c.put_if_absent("p", ProjectStatus::Active),
            ProjectStatus::Hibernating
        );
        assert_eq!(c.get("p"), Some(ProjectStatus::Hibernating));
        assert_eq!(
            c.put_if_absent("q", ProjectStatus::Active),
            ProjectStatus::Active
        );
    }

    #[tokio::test]
    async fn writes_are_refused_while_a_hibernation_holds_or_awaits_the_gate() {
        let store = Arc::new(crate::store::sqlite::SqliteStore::in_memory().unwrap());
        for id in ["p", "other"] {
            let now = chrono::Utc::now();
            store
                .create_project(&Project {
                    id: id.into(),
                    name: id.into(),
                    status: ProjectStatus::Active,
                    created_at: now,
                    updated_at: now,
                    hibernated_at: None,
                })
                .await
                .unwrap();
        }
        let g = WriteGates::new(store.clone());
        let writing = g.enter("p").await.unwrap();
        // The hibernation waits for the write in flight...
        let gates = g.clone();
        let hibernation = tokio::spawn(async move { gates.exclusive("p").await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // ...and a new write is refused at once rather than queued behind it.
        assert!(matches!(
            g.enter("p").await,
            Err(Error::ProjectNotActive(_))
        ));
        assert!(g.enter("other").await.is_ok());
        assert!(matches!(g.enter("ghost").await, Err(Error::NotFound(_))));
        writing.finish().await.unwrap();
        let held = hibernation.await.unwrap().unwrap();
        assert!(matches!(
            g.enter("p").await,
            Err(Error::ProjectNotActive(_))
        ));
        drop(held);
        assert!(g.enter("p").await.is_ok());
        // The status in the store counts, not only this process's gate.
        store
            .transition(
                "p",
                &[ProjectStatus::Active],
                ProjectStatus::Hibernating,
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        assert!(matches!(
            g.enter("p").await,
            Err(Error::ProjectNotActive(_))
        ));
    }
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    fn m(snapshot: &str, len: usize) -> RecentManifest {
        RecentManifest {
            snapshot: snapshot.into(),
            bytes: bytes::Bytes::from(vec![0u8; len]),
            packs: vec![],
            split: None,
        }
    }

    #[test]
    fn recent_manifests_are_bounded_in_bytes_and_named_by_snapshot() {
        let mut r = RecentManifests::default();
        r.put("a", m("s1", 40 << 20));
        assert!(r.get("a", "s1").is_some());
        assert!(r.get("a", "s2").is_none(), "another snapshot of a");
        r.put("b", m("s2", 40 << 20));
        assert!(r.get("a", "s1").is_none(), "a went to make room");
        assert!(r.get("b", "s2").is_some());
        assert_eq!(r.bytes, 40 << 20);
        r.put("b", m("s3", 1));
        assert_eq!(r.bytes, 1, "replaced, not added");
        r.put("c", m("s4", RecentManifests::MAX_BYTES + 1));
        assert!(r.get("c", "s4").is_none(), "too big to keep");
        r.forget("b");
        assert_eq!(r.bytes, 0);
    }
}
