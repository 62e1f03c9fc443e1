//! The snapshot half of a hibernation and of a restore, as the gateway sees
//! it: the agent cuts or restores the snapshot on URLs signed for it, one
//! batch at a time and within what `signing.rs` allows the operation, and
//! the gateway checks the manifest and the packs in the store before a
//! hibernation trusts them.

use std::collections::HashSet;

use bytes::Bytes;
use std::collections::HashMap;

use devgate_snapshot::{Id, MANIFEST_MAX, Manifest, PACK_MAX, Pack, SplitIndex};
use futures::FutureExt as _;

use super::progress;
use super::signing::{Budget, Scope, sign_packs};
use crate::agent_client::{AgentClient, ExtractSummary};
use crate::error::{Error, Result};
use crate::state::{AppState, RecentManifest};
use crate::store::ArchiveVersion;
use std::sync::Arc;

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
    let t = std::time::Instant::now();
    let client = step_agent(state, id).await?;
    state.archives.ensure_bucket().await?;
    let mut prev = None;
    let mut prev_split = None;
    let mut known_packs = HashSet::new();
    if let Some(a) = previous
        && let Some(sid) = &a.snapshot
    {
        match recent_or_load(state, id, &a.key, sid).await {
            Ok(recent) => {
                known_packs = recent.packs.iter().copied().collect();
                prev = Some((sid.clone(), recent.bytes.clone()));
                prev_split = recent.split.clone();
            }
            Err(error) => {
                tracing::warn!(project = id, snapshot = %sid, error = %crate::error::Chain(&error), "cannot read the previous snapshot; every chunk is uploaded again");
            }
        }
    }
    let budget = Budget::new(state.config.snapshot_max_bytes);
    let sign = |packs, sizes| sign_packs(state, id, packs, sizes, Scope::Create(&budget)).boxed();
    let previous_ms = t.elapsed().as_millis() as u64;
    let t = std::time::Instant::now();
    let (done, manifest) = client.snapshot_create(prev, &sign).await?;
    let create_ms = t.elapsed().as_millis() as u64;
    let t = std::time::Instant::now();
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
    // A snapshot id is the hash of a manifest naming its own cut time: one
    // already stored is a replay, never written over.
    let key = state.archives.manifest_key(id, &sid);
    if state.archives.size(&key).await?.is_some() {
        return Err(Error::internal(format!(
            "the agent's snapshot {sid} is already stored"
        )));
    }
    // The manifest goes in pieces: the frames the previous snapshot's
    // manifest did not have, packed, then the index under the snapshot's
    // name. One framed otherwise (an older agent's single frame) is stored
    // whole, as before.
    let split = {
        let bytes = manifest.clone();
        tokio::task::spawn_blocking(move || SplitIndex::write(sid, &bytes, prev_split.as_ref()))
            .await
            .map_err(Error::internal)?
    };
    let split = match split {
        Ok(s) => Some(s),
        Err(devgate_snapshot::Error::Invalid(why)) => {
            tracing::info!(project = id, snapshot = %sid, why, "manifest stored whole");
            None
        }
        Err(e) => return Err(Error::internal(format!("the agent's manifest: {e}"))),
    };
    let mut manifest_bytes = 0u64;
    let (stored, split_index) = match split {
        Some(split) => {
            for (pid, bytes) in split.new_packs {
                let len = bytes.len() as u64;
                manifest_bytes += len;
                budget.check_total(new_bytes + manifest_bytes)?;
                let key = state.archives.pack_key(id, &pid);
                state.archives.put(&key, Bytes::from(bytes)).await?;
                if state.archives.size(&key).await? != Some(len) {
                    return Err(Error::internal(format!(
                        "pack {key} of the manifest reads back with another size"
                    )));
                }
            }
            let index = split
                .index
                .encode()
                .map_err(|e| Error::internal(e.to_string()))?;
            (Bytes::from(index), Some(split.index))
        }
        None => (manifest.clone(), None),
    };
    state.archives.put(&key, stored.clone()).await?;
    let back = state.archives.get(&key, MANIFEST_MAX).await?;
    if back != stored {
        return Err(Error::internal(format!(
            "manifest {key} reads back differently"
        )));
    }
    let data_packs: Vec<Id> = m.packs.iter().map(|p| p.id).collect();
    let all = data_packs.iter().copied();
    let all = all.chain(split_index.iter().flat_map(|s| s.pack_ids().copied()));
    super::upkeep::remember_packs(state, &key, std::sync::Arc::new(all.collect()));
    remember_manifest(
        state,
        id,
        done.id.clone(),
        manifest.clone(),
        data_packs,
        split_index,
    );
    devgate_pause::at("hibernate-manifest").await;
    tracing::info!(
        project = id,
        previous_ms,
        create_ms,
        verify_ms = t.elapsed().as_millis() as u64,
        manifest_bytes = manifest.len(),
        manifest_uploaded = manifest_bytes + stored.len() as u64,
        "snapshot taken"
    );
    let (files, bytes) = m.totals();
    Ok(Taken {
        id: done.id,
        key,
        files,
        bytes,
        uploaded_bytes: done.uploaded_bytes + manifest_bytes + stored.len() as u64,
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
    let loaded = load_manifest(state, id, key, sid).await?;
    let allowed: HashSet<Id> = loaded.manifest.packs.iter().map(|p| p.id).collect();
    let sign = |packs, sizes| sign_packs(state, id, packs, sizes, Scope::Restore(&allowed)).boxed();
    let done = client
        .snapshot_restore(sid.to_owned(), loaded.bytes.clone(), &sign)
        .await?;
    let packs = loaded.manifest.packs.iter().map(|p| p.id).collect();
    remember_manifest(state, id, sid.to_owned(), loaded.bytes, packs, loaded.split);
    Ok(ExtractSummary {
        files: done.files,
        bytes: done.bytes,
    })
}

/// Keeps what the project's next snapshot needs of manifest `sid`.
fn remember_manifest(
    state: &AppState,
    project: &str,
    sid: String,
    bytes: Bytes,
    packs: Vec<Id>,
    split: Option<SplitIndex>,
) {
    state
        .recent_manifests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .put(
            project,
            RecentManifest {
                snapshot: sid,
                bytes,
                packs,
                split,
            },
        );
}

/// What the next snapshot needs of snapshot `sid`: kept from this
/// replica's last snapshot or restore of the project, else read.
async fn recent_or_load(
    state: &AppState,
    project: &str,
    key: &str,
    sid: &str,
) -> Result<Arc<RecentManifest>> {
    let kept = state
        .recent_manifests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(project, sid);
    if let Some(m) = kept {
        return Ok(m);
    }
    let loaded = load_manifest(state, project, key, sid).await?;
    Ok(Arc::new(RecentManifest {
        snapshot: sid.to_owned(),
        bytes: loaded.bytes,
        packs: loaded.manifest.packs.iter().map(|p| p.id).collect(),
        split: loaded.split,
    }))
}

/// A stored manifest, put together and checked.
pub(super) struct Loaded {
    /// The whole manifest (its blake3 is the snapshot id).
    pub(super) bytes: Bytes,
    pub(super) manifest: Manifest,
    /// Where its pieces are, when stored in pieces (older snapshots are
    /// stored whole).
    pub(super) split: Option<SplitIndex>,
}

impl Loaded {
    /// Every pack the snapshot needs: its data and its manifest's pieces.
    pub(super) fn packs(&self) -> impl Iterator<Item = Id> + '_ {
        let pieces = self.split.iter().flat_map(|s| s.pack_ids().copied());
        self.manifest.packs.iter().map(|p| p.id).chain(pieces)
    }
}

/// Reads snapshot `sid` of `project` (stored at `key`): the manifest whole,
/// or its split index and the packs of its pieces; checked against its id
/// and the format's rules.
pub(super) async fn load_manifest(
    state: &AppState,
    project: &str,
    key: &str,
    sid: &str,
) -> Result<Loaded> {
    let unusable = |e: String| Error::SnapshotUnusable(format!("snapshot {sid}: {e}"));
    let id = Id::parse(sid).map_err(|e| unusable(e.to_string()))?;
    let stored = state
        .archives
        .get(key, MANIFEST_MAX)
        .await
        .map_err(|e| match e {
            Error::NotFound(_) => unusable(format!("its manifest {key} is missing")),
            other => other,
        })?;
    let (bytes, split) = if Id::of(&stored) == id {
        (stored, None)
    } else {
        let index = SplitIndex::decode(&stored, &id).map_err(|e| unusable(e.to_string()))?;
        // A few packs (a writer keeps them at about 8), read one by one.
        let mut packs: HashMap<Id, Pack> = HashMap::new();
        for p in &index.packs {
            let pkey = state.archives.pack_key(project, &p.id);
            let body = state
                .archives
                .get(&pkey, PACK_MAX)
                .await
                .map_err(|e| match e {
                    Error::NotFound(_) => {
                        unusable(format!("pack {pkey} of its manifest is missing"))
                    }
                    other => other,
                })?;
            if body.len() as u64 != p.size {
                return Err(unusable(format!(
                    "pack {pkey} of its manifest is {} bytes, the index says {}",
                    body.len(),
                    p.size
                )));
            }
            let pid = p.id;
            let pack = tokio::task::spawn_blocking(move || Pack::open(body.to_vec(), &pid))
                .await
                .map_err(Error::internal)?
                .map_err(|e| unusable(e.to_string()))?;
            packs.insert(pid, pack);
        }
        let whole = index
            .assemble(&packs)
            .map_err(|e| unusable(e.to_string()))?;
        (Bytes::from(whole), Some(index))
    };
    let manifest = decode_manifest(bytes.clone(), id)
        .await
        .map_err(|e| unusable(e.to_string()))?;
    Ok(Loaded {
        bytes,
        manifest,
        split,
    })
}

async fn decode_manifest(bytes: Bytes, id: Id) -> Result<Manifest, devgate_snapshot::Error> {
    tokio::task::spawn_blocking(move || Manifest::decode(&bytes, &id))
        .await
        .map_err(|e| devgate_snapshot::Error::Io(std::io::Error::other(e)))?
}
