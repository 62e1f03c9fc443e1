//! The snapshot half of a hibernation and of a restore, as the gateway sees
//! it: the agent cuts or restores the snapshot on URLs signed for it, one
//! batch at a time and within what `signing.rs` allows the operation, and
//! the gateway checks the manifest and the packs in the store before a
//! hibernation trusts them.

use std::collections::HashSet;

use bytes::Bytes;
use devgate_snapshot::{Id, MANIFEST_MAX, Manifest};
use futures::FutureExt as _;

use super::progress;
use super::signing::{Budget, Scope, sign_packs};
use crate::agent_client::{AgentClient, ExtractSummary};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::ArchiveVersion;

/// The agent of a project this replica is hibernating or snapshotting, under
/// its lock. Not `agent_of_active`: the project may be `hibernating`, and its
/// agent may run for another replica (the local runtime, or a restarted
/// gateway), so this one may have no endpoint yet.
pub(super) async fn step_agent(state: &AppState, id: &str) -> Result<AgentClient> {
    let endpoint = match state.runtime.agent(id).await {
        Ok(e) => e,
        Err(Error::ProjectNotActive(_)) => state.runtime.ensure(id).await?,
        Err(e) => return Err(e),
    };
    state.agents.get(id, &endpoint)
}

/// A snapshot taken and verified.
pub(super) struct Taken {
    pub(super) id: String,
    pub(super) key: String,
    pub(super) files: u64,
    pub(super) bytes: u64,
    pub(super) uploaded_bytes: u64,
}

/// Has the agent cut a snapshot of the whole project (chunks of the newest
/// snapshot, `previous`, are not uploaded again: dedup within this project
/// only), then checks it in the store before trusting it: the manifest
/// hashes to its id and follows the format's rules, every new pack it
/// names is in the store with its size, and the manifest stored reads back
/// the same.
pub(super) async fn take_snapshot(
    state: &AppState,
    id: &str,
    previous: Option<&ArchiveVersion>,
) -> Result<Taken> {
    let client = step_agent(state, id).await?;
    state.archives.ensure_bucket().await?;
    let mut prev = None;
    let mut known_packs = HashSet::new();
    if let Some(a) = previous
        && let Some(sid) = &a.snapshot
    {
        match load_manifest(state, &a.key, sid).await {
            Ok((bytes, m)) => {
                known_packs = m.packs.iter().map(|p| p.id).collect();
                prev = Some((sid.clone(), bytes));
            }
            Err(error) => {
                tracing::warn!(project = id, snapshot = %sid, error = %crate::error::Chain(&error), "cannot read the previous snapshot; every chunk is uploaded again");
            }
        }
    }
    let budget = Budget::new(state.config.snapshot_max_bytes);
    let sign = |packs, sizes| sign_packs(state, id, packs, sizes, Scope::Create(&budget)).boxed();
    let (done, manifest) = client.snapshot_create(prev, &sign).await?;
    devgate_pause::at("hibernate-verify").await;
    progress(state, id, "verify", "checking the snapshot in the store");
    let sid = Id::parse(&done.id)
        .map_err(|e| Error::internal(format!("the agent's snapshot id: {e}")))?;
    let m = decode_manifest(manifest.clone(), sid)
        .await
        .map_err(|e| Error::internal(format!("the agent's manifest: {e}")))?;
    let mut new_bytes = 0;
    for p in m.packs.iter().filter(|p| !known_packs.contains(&p.id)) {
        new_bytes += p.size;
        budget.check_total(new_bytes)?;
        let key = state.archives.pack_key(id, &p.id);
        match state.archives.size(&key).await? {
            Some(n) if n == p.size => {}
            other => {
                return Err(Error::internal(format!(
                    "pack {key} is {other:?} bytes in the store, the manifest says {}",
                    p.size
                )));
            }
        }
    }
    let key = state.archives.manifest_key(id, &sid);
    state.archives.put(&key, manifest.clone()).await?;
    let back = state.archives.get(&key, MANIFEST_MAX).await?;
    if Id::of(&back) != sid {
        return Err(Error::internal(format!(
            "manifest {key} reads back differently"
        )));
    }
    devgate_pause::at("hibernate-manifest").await;
    let (files, bytes) = m.totals();
    Ok(Taken {
        id: done.id,
        key,
        files,
        bytes,
        uploaded_bytes: done.uploaded_bytes + manifest.len() as u64,
    })
}

/// Restores snapshot `sid` (manifest at `key`) into the project's empty
/// folder. The agent gets URLs for the packs this manifest names, and no
/// others.
pub(super) async fn restore_snapshot(
    state: &AppState,
    id: &str,
    client: &AgentClient,
    key: &str,
    sid: &str,
) -> Result<ExtractSummary> {
    let (bytes, m) = load_manifest(state, key, sid).await?;
    let allowed: HashSet<Id> = m.packs.iter().map(|p| p.id).collect();
    let sign = |packs, sizes| sign_packs(state, id, packs, sizes, Scope::Restore(&allowed)).boxed();
    let done = client
        .snapshot_restore(sid.to_owned(), bytes, &sign)
        .await?;
    Ok(ExtractSummary {
        files: done.files,
        bytes: done.bytes,
    })
}

/// A stored manifest, checked against its id and the format's rules.
pub(super) async fn load_manifest(
    state: &AppState,
    key: &str,
    sid: &str,
) -> Result<(Bytes, Manifest)> {
    let unusable = |e: String| Error::SnapshotUnusable(format!("snapshot {sid}: {e}"));
    let id = Id::parse(sid).map_err(|e| unusable(e.to_string()))?;
    let bytes = state
        .archives
        .get(key, MANIFEST_MAX)
        .await
        .map_err(|e| match e {
            Error::NotFound(_) => unusable(format!("its manifest {key} is missing")),
            other => other,
        })?;
    let m = decode_manifest(bytes.clone(), id)
        .await
        .map_err(|e| unusable(e.to_string()))?;
    Ok((bytes, m))
}

async fn decode_manifest(bytes: Bytes, id: Id) -> Result<Manifest, devgate_snapshot::Error> {
    tokio::task::spawn_blocking(move || Manifest::decode(&bytes, &id))
        .await
        .map_err(|e| devgate_snapshot::Error::Io(std::io::Error::other(e)))?
}
