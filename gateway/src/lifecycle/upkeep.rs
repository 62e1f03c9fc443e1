//! Versions of a project besides hibernation, and their upkeep: snapshots
//! of an active project taken now (`POST /snapshots`, reason `manual`) or
//! on a schedule (`--snapshot-interval`, reason `scheduled`), without
//! stopping anything; retention (a version goes only when it is older than
//! `--snapshot-retention-days` and not among the newest `--snapshot-keep`);
//! and garbage collection of the packs and manifests no recorded version
//! references, once older than `--snapshot-gc-grace`. The schedule and the
//! periodic retention and collection run on the elected replica only. Every
//! step holds the project's lock (its store lease), like every lifecycle
//! step, so a collection never runs beside a snapshot of the same project;
//! the grace period covers what a lock cannot: an agent still uploading for
//! a step whose replica stalled past its lease.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use devgate_snapshot::Id;

use super::snapshots::{load_manifest, take_snapshot};
use crate::error::{Error, Result};
use crate::state::{AppState, ProjectGuard};
use crate::store::{ArchiveVersion, CommandLogEntry, ContainerStatus, ProjectStatus};

/// Takes a snapshot of an active project now, without stopping anything
/// (`POST /snapshots`): each file is read consistently (one that changes
/// while it is read is read again), files written meanwhile may or may not
/// be in it. Recorded as the newest version, with `reason`; its
/// `created_at` is when the cut started (its files are from then on).
pub async fn snapshot_now(state: &AppState, id: &str, reason: &str) -> Result<ArchiveVersion> {
    let guard = state.locks.lock(id).await?;
    snapshot_locked(state, id, reason, &guard).await
}

/// [`snapshot_now`], under the project's lock.
async fn snapshot_locked(
    state: &AppState,
    id: &str,
    reason: &str,
    guard: &ProjectGuard,
) -> Result<ArchiveVersion> {
    let p = state.project(id).await?;
    if p.status != ProjectStatus::Active {
        return Err(Error::ProjectNotActive(id.to_owned()));
    }
    let (t0, started) = (Instant::now(), Utc::now());
    let versions = state.store.list_archives(id).await?;
    let version = versions.first().map(|a| a.version + 1).unwrap_or(1);
    let previous = versions.iter().find(|a| a.snapshot.is_some()).cloned();
    let mut result = take_snapshot(state, id, previous.as_ref()).await;
    if result.is_ok() && guard.lost() {
        result = Err(Error::Unavailable(
            "the project's lease was lost during the snapshot".into(),
        ));
    }
    state
        .log_command(
            CommandLogEntry::new(
                id,
                "snapshot",
                format!("snapshot version {version} ({reason})"),
            )
            .took(t0.elapsed())
            .outcome(&result, |t| {
                format!(
                    "snapshot {}: {} files, {} bytes, {} bytes uploaded",
                    t.id, t.files, t.bytes, t.uploaded_bytes
                )
            }),
        )
        .await;
    let taken = result?;
    let v = ArchiveVersion {
        project: id.to_owned(),
        version,
        key: taken.key,
        size: taken.bytes,
        sha256: String::new(),
        files: taken.files,
        created_at: started,
        snapshot: Some(taken.id),
        reason: reason.to_owned(),
        uploaded_bytes: taken.uploaded_bytes,
    };
    state.store.add_archive(&v).await?;
    retain(state, id).await;
    Ok(v)
}

/// On the elected replica, every `--activity-interval` until shutdown:
/// snapshots the active projects that are due (`--snapshot-interval`, not
/// when `off`), and every `--snapshot-gc-interval` applies retention and
/// collects unreferenced pack data in every project.
pub async fn run(state: AppState) {
    let check = state.config.activity_interval;
    let interval = state.config.snapshot_interval;
    let mut last_gc: Option<Instant> = None;
    // Projects whose scheduled snapshot failed, and when: retried after a
    // while, not at every check (an unreachable store would be hammered).
    let mut failed: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(check) => {}
            () = state.shutdown.cancelled() => return,
        }
        if !state.leader.load(Ordering::SeqCst) {
            continue;
        }
        if !interval.is_zero() {
            let retry = retry_after(interval);
            failed.retain(|_, at| at.elapsed() < retry);
            scheduled(&state, interval, &mut failed).await;
        }
        if last_gc.is_none_or(|t| t.elapsed() >= state.config.snapshot_gc_interval) {
            last_gc = Some(Instant::now());
            upkeep(&state).await;
        }
    }
}

/// How long a project whose scheduled snapshot failed is left alone (the
/// failure's time may be set ahead to leave it longer).
fn retry_after(interval: Duration) -> Duration {
    interval.min(Duration::from_secs(15 * 60))
}

/// Whether this replica should stop its pass (shutdown, or no longer elected).
fn stopping(state: &AppState) -> bool {
    state.shutdown.is_cancelled() || !state.leader.load(Ordering::SeqCst)
}

/// One pass of scheduled snapshots over the active projects.
async fn scheduled(state: &AppState, interval: Duration, failed: &mut HashMap<String, Instant>) {
    let projects = match state.store.list_projects().await {
        Ok(p) => p,
        Err(error) => {
            tracing::warn!(error = %crate::error::Chain(&error), "scheduled snapshots: cannot list projects");
            return;
        }
    };
    for p in projects {
        if stopping(state) {
            return;
        }
        if p.status != ProjectStatus::Active || failed.contains_key(&p.id) {
            continue;
        }
        match due(state, &p.id, interval).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::debug!(project = %p.id, error = %crate::error::Chain(&error), "scheduled snapshots: cannot tell whether due");
                continue;
            }
        }
        // A project busy with another step (an open, a container's
        // install, a hibernation) is left for the next check.
        let Some(guard) = state.locks.try_lock(&p.id).await else {
            continue;
        };
        // Checked again under the lock: another replica may have taken
        // one, or hibernated the project, meanwhile.
        if !matches!(due(state, &p.id, interval).await, Ok(true)) {
            continue;
        }
        match snapshot_locked(state, &p.id, "scheduled", &guard).await {
            Ok(v) => tracing::info!(
                project = %p.id,
                version = v.version,
                snapshot = v.snapshot.as_deref().unwrap_or_default(),
                uploaded = v.uploaded_bytes,
                "scheduled snapshot taken"
            ),
            Err(Error::ProjectNotActive(_)) => {}
            Err(error) => {
                tracing::warn!(project = %p.id, error = %crate::error::Chain(&error), "scheduled snapshot failed");
                // Over --snapshot-max-bytes: the project does not shrink by
                // itself, so it is tried again after a whole interval, not
                // after the retry delay (each try uploads up to the cap).
                let now = Instant::now();
                let at = match error {
                    Error::TooLarge(_) => now
                        .checked_add(interval.saturating_sub(retry_after(interval)))
                        .unwrap_or(now),
                    _ => now,
                };
                failed.insert(p.id.clone(), at);
            }
        }
    }
}

/// Whether an active project's scheduled snapshot is due: its newest
/// version is older than `interval` (or it has none), and something may
/// have changed since. Nothing changed when no activity was recorded after
/// that version (file, exec and terminal routes record it; an attached
/// terminal or watch refreshes it), this replica saw none either, no dev
/// server runs, and the agent runs no background process or terminal.
async fn due(state: &AppState, id: &str, interval: Duration) -> Result<bool> {
    if state.project(id).await?.status != ProjectStatus::Active {
        return Ok(false);
    }
    let versions = state.store.list_archives(id).await?;
    let Some(newest) = versions.first() else {
        return Ok(true);
    };
    let age = (Utc::now() - newest.created_at)
        .to_std()
        .unwrap_or_default();
    if age < interval {
        return Ok(false);
    }
    let active_since = state
        .store
        .last_activity(id)
        .await?
        .is_some_and(|t| t >= newest.created_at);
    if active_since || state.activity.idle_for(id) < age {
        return Ok(true);
    }
    let running = state.store.list_containers(id).await?.iter().any(|c| {
        matches!(
            c.status,
            ContainerStatus::Running | ContainerStatus::Starting
        )
    });
    if running {
        return Ok(true);
    }
    let endpoint = match state.runtime.agent(id).await {
        Ok(e) => e,
        // No agent: nothing of the project runs.
        Err(Error::ProjectNotActive(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    let client = state.agents.get(id, &endpoint)?;
    let background = client.list_background().await?.iter().any(|p| p.running);
    let terminals = client.list_pty().await?.iter().any(|s| !s.exited);
    Ok(background || terminals)
}

/// Retention, then collection, of every project, each under its lock
/// (a project busy with another step is left for the next pass).
async fn upkeep(state: &AppState) {
    let projects = match state.store.list_projects().await {
        Ok(p) => p,
        Err(error) => {
            tracing::warn!(error = %crate::error::Chain(&error), "snapshot upkeep: cannot list projects");
            return;
        }
    };
    for p in projects {
        if stopping(state) {
            return;
        }
        let Some(_guard) = state.locks.try_lock(&p.id).await else {
            continue;
        };
        retain(state, &p.id).await;
    }
}

/// Applies retention to a project's versions, then collects its
/// unreferenced pack data. The caller holds the project's lock, and a
/// newer version was verified and recorded before any is removed.
pub(super) async fn retain(state: &AppState, id: &str) {
    prune(state, id).await;
    match collect(state, id).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            project = id,
            removed = n,
            "unreferenced snapshot objects removed"
        ),
        Err(error) => {
            tracing::warn!(project = id, error = %crate::error::Chain(&error), "snapshot collection skipped")
        }
    }
}

/// Removes the versions older than the retention that are not among the
/// newest `--snapshot-keep`: the record first, then its manifest (or zip).
/// A manifest left behind by a failed removal is an orphan for
/// [`collect`]; a record whose manifest was gone would stop collection.
async fn prune(state: &AppState, id: &str) {
    let keep = state.config.snapshot_keep();
    let Some(cutoff) = chrono::Duration::from_std(state.config.snapshot_retention())
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
    else {
        return;
    };
    let versions = match state.store.list_archives(id).await {
        Ok(v) => v,
        Err(error) => {
            tracing::warn!(project = id, error = %crate::error::Chain(&error), "retention: cannot list versions");
            return;
        }
    };
    for old in versions.iter().skip(keep).filter(|a| a.created_at < cutoff) {
        if let Err(error) = state.store.delete_archive(id, old.version).await {
            tracing::warn!(project = id, version = old.version, error = %crate::error::Chain(&error), "retention: cannot forget a version");
            continue;
        }
        if let Err(error) = state.archives.delete(&old.key).await {
            tracing::warn!(project = id, key = %old.key, error = %crate::error::Chain(&error), "retention: cannot remove a version's manifest; collection will");
        }
        tracing::info!(
            project = id,
            version = old.version,
            reason = %old.reason,
            "version removed by retention"
        );
    }
}

/// Removes the project's packs that no recorded snapshot references, the
/// manifests no version records, and temporary files of folder writes cut
/// short that no writer holds, each only once it is older than
/// `--snapshot-gc-grace`. The references
/// are read now, under the caller's lock of the project; when one recorded
/// manifest cannot be read, nothing is removed. Answers how many objects
/// went.
pub async fn collect(state: &AppState, id: &str) -> Result<usize> {
    let grace = state.config.snapshot_gc_grace;
    let mut live: HashSet<Id> = HashSet::new();
    let mut recorded: HashSet<String> = HashSet::new();
    for a in state.store.list_archives(id).await? {
        if let Some(sid) = &a.snapshot {
            live.extend(packs_of(state, id, &a.key, sid).await?.iter().copied());
            recorded.insert(a.key.clone());
        }
    }
    let prefix = state.archives.project_prefix(id);
    let now = SystemTime::now();
    let mut removed = 0;
    for (key, written) in state.archives.list_objects(id).await? {
        // A time ahead of this clock counts as young.
        if now.duration_since(written).map_or(true, |age| age < grace) {
            continue;
        }
        let Some(rest) = key.strip_prefix(&prefix) else {
            continue;
        };
        // Anything else (a folder put's temporary file) is the sweep's, below.
        let dead = if let Some(name) = rest.strip_prefix("packs/") {
            Id::parse(name).is_ok_and(|pack| !live.contains(&pack))
        } else if let Some(name) = rest.strip_prefix("snapshots/") {
            Id::parse(name).is_ok() && !recorded.contains(&key)
        } else {
            false
        };
        if dead {
            state.archives.delete(&key).await?;
            tracing::debug!(project = id, key, "unreferenced snapshot object removed");
            removed += 1;
        }
    }
    // Temporary files of folder puts cut short, past the grace and held by
    // no writer (the same sweep as at start-up, for this project only).
    let before = now.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    removed += state.archives.sweep_temporaries(Some(id), before).await?;
    Ok(removed)
}

/// How many manifests' pack ids [`AppState::manifest_packs`] keeps. A
/// manifest's key names its content's hash, so an entry never goes stale;
/// the map is emptied when it grows past this many.
const PACKS_CACHED: usize = 4096;

/// The packs snapshot `sid` (manifest at `key`) references, read and
/// checked once per process.
async fn packs_of(state: &AppState, id: &str, key: &str, sid: &str) -> Result<Arc<Vec<Id>>> {
    let cache = || {
        state
            .manifest_packs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    };
    if let Some(p) = cache().get(key) {
        return Ok(p.clone());
    }
    let loaded = load_manifest(state, id, key, sid).await?;
    let packs: Arc<Vec<Id>> = Arc::new(loaded.packs().collect());
    remember_packs(state, key, packs.clone());
    Ok(packs)
}

/// Caches the packs of the snapshot whose manifest is at `key` (a snapshot
/// just written, so that the collection after it need not read it back).
pub(super) fn remember_packs(state: &AppState, key: &str, packs: Arc<Vec<Id>>) {
    let mut c = state
        .manifest_packs
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if c.len() >= PACKS_CACHED {
        c.clear();
    }
    c.insert(key.to_owned(), packs);
}
