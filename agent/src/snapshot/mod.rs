//! The Snapshot service: cut a snapshot of the whole root, or restore one,
//! in the format of `devgate-snapshot`. The agent holds no storage
//! credentials: it asks the gateway, on the same stream, for signed URLs of
//! the pack objects of this one operation, a batch at a time, and moves the
//! bytes itself (`http`). Manifests travel on the stream.

mod create;
mod http;
mod restore;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use devgate_snapshot::{Id, MANIFEST_MAX, Manifest, PACK_MAX};
use futures::{StreamExt as _, TryStreamExt as _};
use proto::v1::snapshot_server::Snapshot;
use proto::v1::{
    NeedUrls, PackUrls, SnapshotControl, SnapshotDone, SnapshotEvent, snapshot_control,
    snapshot_event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::State;
use crate::error::{Error, Result};

/// Packs asked for in one batch of URLs.
const URL_BATCH: usize = 16;
/// Pack transfers in flight at once.
const TRANSFERS: usize = 4;
/// How long the gateway may take to answer a batch of URLs.
const URL_WAIT: Duration = Duration::from_secs(60);
/// Size of each manifest piece on the stream.
const MANIFEST_PIECE: usize = 1024 * 1024;

pub(crate) struct SnapshotService {
    state: State,
    /// Stamps of the files of the snapshot this agent last cut or
    /// restored: the next cut from that snapshot reads only the files
    /// whose stamp moved.
    stamps: Arc<std::sync::Mutex<Option<create::Stamps>>>,
}

impl SnapshotService {
    pub(crate) fn new(state: State) -> Self {
        Self {
            state,
            stamps: Arc::default(),
        }
    }
}

/// Takes the stamps when they describe snapshot `id`.
fn take_stamps(
    stamps: &std::sync::Mutex<Option<create::Stamps>>,
    id: &Id,
) -> Option<Vec<Option<create::Stamp>>> {
    let mut guard = stamps.lock().unwrap_or_else(|p| p.into_inner());
    match guard.take() {
        Some(s) if s.manifest == *id => Some(s.by_entry),
        _ => None,
    }
}

fn keep_stamps(stamps: &std::sync::Mutex<Option<create::Stamps>>, new: create::Stamps) {
    *stamps.lock().unwrap_or_else(|p| p.into_inner()) = Some(new);
}

type Events = mpsc::Sender<std::result::Result<SnapshotEvent, Status>>;

/// The gateway's side of the stream after `start`: URL batches.
struct Urls {
    rx: mpsc::Receiver<PackUrls>,
}

impl Urls {
    /// Asks for the URLs of `packs` (of these `sizes`, for uploads; empty
    /// for downloads) and waits for them.
    async fn ask(&mut self, events: &Events, packs: &[Id], sizes: Vec<u64>) -> Result<Vec<String>> {
        let msg = SnapshotEvent {
            event: Some(snapshot_event::Event::NeedUrls(NeedUrls {
                packs: packs.iter().map(Id::to_hex).collect(),
                sizes,
            })),
        };
        events
            .send(Ok(msg))
            .await
            .map_err(|_| Error::Unavailable("the gateway went away".into()))?;
        let answer = tokio::time::timeout(URL_WAIT, self.rx.recv())
            .await
            .map_err(|_| Error::Unavailable("the gateway sent no urls in time".into()))?
            .ok_or_else(|| Error::Unavailable("the gateway went away".into()))?;
        packs
            .iter()
            .map(|id| {
                let hex = id.to_hex();
                answer
                    .urls
                    .iter()
                    .find(|u| u.pack == hex)
                    .map(|u| u.url.clone())
                    .ok_or_else(|| Error::InvalidArgument(format!("no url for pack {hex}")))
            })
            .collect()
    }
}

/// Reads the stream up to `start`: the manifest sent before it, checked
/// against the id, and a receiver of the URL batches that follow.
async fn begin(mut stream: Streaming<SnapshotControl>) -> Result<(Option<(Id, Manifest)>, Urls)> {
    let mut bytes = Vec::new();
    let start = loop {
        let msg = stream
            .message()
            .await
            .map_err(|s| Error::Unavailable(format!("request stream: {}", s.message())))?
            .ok_or_else(|| Error::InvalidArgument("the stream ended before `start`".into()))?;
        match msg.msg {
            Some(snapshot_control::Msg::Manifest(piece)) => {
                if (bytes.len() + piece.len()) as u64 > MANIFEST_MAX {
                    return Err(Error::InvalidArgument("manifest too large".into()));
                }
                bytes.extend_from_slice(&piece);
            }
            Some(snapshot_control::Msg::Start(s)) => break s,
            _ => return Err(Error::InvalidArgument("urls before `start`".into())),
        }
    };
    let manifest = if start.id.is_empty() {
        None
    } else {
        let id = Id::parse(&start.id).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let m = tokio::task::spawn_blocking(move || Manifest::decode(&bytes, &id))
            .await
            .map_err(|e| Error::Internal(format!("manifest task failed: {e}")))?
            .map_err(|e| Error::FailedPrecondition(format!("snapshot {}: {e}", start.id)))?;
        Some((id, m))
    };
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        while let Ok(Some(msg)) = stream.message().await {
            if let Some(snapshot_control::Msg::Urls(u)) = msg.msg
                && tx.send(u).await.is_err()
            {
                return;
            }
        }
    });
    Ok((manifest, Urls { rx }))
}

#[tonic::async_trait]
impl Snapshot for SnapshotService {
    async fn create(
        &self,
        request: Request<Streaming<SnapshotControl>>,
    ) -> Result<Response<BoxStream<SnapshotEvent>>, Status> {
        let (previous, urls) = begin(request.into_inner()).await?;
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        let stamps = self.stamps.clone();
        self.state.tasks.spawn(async move {
            let prior = previous
                .as_ref()
                .and_then(|(id, _)| take_stamps(&stamps, id));
            let res = run_create(&state, previous.map(|(_, m)| m), prior, urls, &tx)
                .await
                .map(|(done, new)| {
                    keep_stamps(&stamps, new);
                    done
                });
            match res {
                Ok(done) => {
                    let _ = tx
                        .send(Ok(SnapshotEvent {
                            event: Some(snapshot_event::Event::Done(done)),
                        }))
                        .await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "snapshot failed");
                    let _ = tx.send(Err(Status::from(e))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn restore(
        &self,
        request: Request<Streaming<SnapshotControl>>,
    ) -> Result<Response<BoxStream<SnapshotEvent>>, Status> {
        let (manifest, urls) = begin(request.into_inner()).await?;
        let Some((id, manifest)) = manifest else {
            return Err(Error::InvalidArgument("no manifest to restore".into()).into());
        };
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        let stamps = self.stamps.clone();
        self.state.tasks.spawn(async move {
            let res = run_restore(&state, id, Arc::new(manifest), urls, &tx)
                .await
                .map(|(done, new)| {
                    keep_stamps(&stamps, new);
                    done
                });
            let msg = match res {
                Ok(done) => Ok(SnapshotEvent {
                    event: Some(snapshot_event::Event::Done(done)),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, snapshot = %id, "restore failed");
                    Err(Status::from(e))
                }
            };
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn run_create(
    state: &State,
    previous: Option<Manifest>,
    prior: Option<Vec<Option<create::Stamp>>>,
    mut urls: Urls,
    events: &Events,
) -> Result<(SnapshotDone, create::Stamps)> {
    let t0 = std::time::Instant::now();
    let (pack_tx, mut pack_rx) = mpsc::channel::<create::NewPack>(2);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let stop = stop.clone();
        let root = state.root.dir().try_clone()?;
        tokio::task::spawn_blocking(move || {
            create::cut(&root, previous.as_ref(), prior.as_deref(), pack_tx, &stop)
        })
    };
    let uploads = async {
        let mut uploaded = 0u64;
        let mut count = 0u64;
        while let Some(first) = pack_rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < URL_BATCH {
                match pack_rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let ids: Vec<Id> = batch.iter().map(|p| p.id).collect();
            let sizes = batch.iter().map(|p| p.bytes.len() as u64).collect();
            let targets = urls.ask(events, &ids, sizes).await?;
            uploaded += batch.iter().map(|p| p.bytes.len() as u64).sum::<u64>();
            count += batch.len() as u64;
            futures::stream::iter(batch.into_iter().zip(targets))
                .map(|(p, url)| async move { http::put(&url, Bytes::from(p.bytes)).await })
                .buffer_unordered(TRANSFERS)
                .try_collect::<Vec<()>>()
                .await?;
            devgate_pause::at("snapshot-upload").await;
        }
        Ok::<_, Error>((uploaded, count))
    };
    let uploaded = uploads.await;
    if uploaded.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    drop(pack_rx);
    let manifest = producer
        .await
        .map_err(|e| Error::Internal(format!("snapshot task failed: {e}")))?;
    let (uploaded, count) = uploaded?;
    let (manifest, by_entry) = manifest?;
    // Walk, chunks and uploads (they overlap).
    let walked = t0.elapsed();
    let (files, bytes) = manifest.totals();
    let (id, encoded) = tokio::task::spawn_blocking(move || manifest.encode())
        .await
        .map_err(|e| Error::Internal(format!("manifest task failed: {e}")))?
        .map_err(|e| Error::Internal(e.to_string()))?;
    for piece in encoded.chunks(MANIFEST_PIECE) {
        events
            .send(Ok(SnapshotEvent {
                event: Some(snapshot_event::Event::Manifest(piece.to_vec())),
            }))
            .await
            .map_err(|_| Error::Unavailable("the gateway went away".into()))?;
    }
    tracing::info!(
        snapshot = %id,
        files,
        bytes,
        uploaded,
        packs = count,
        manifest_bytes = encoded.len(),
        cut_ms = walked.as_millis() as u64,
        manifest_ms = (t0.elapsed() - walked).as_millis() as u64,
        "snapshot cut"
    );
    Ok((
        SnapshotDone {
            id: id.to_hex(),
            files,
            bytes,
            uploaded_bytes: uploaded,
            packs_uploaded: count,
        },
        create::Stamps {
            manifest: id,
            by_entry,
        },
    ))
}

async fn run_restore(
    state: &State,
    id: Id,
    manifest: Arc<Manifest>,
    mut urls: Urls,
    events: &Events,
) -> Result<(SnapshotDone, create::Stamps)> {
    let t0 = std::time::Instant::now();
    let root = state.root.dir().try_clone()?;
    let (staging, packs) = {
        let root = root.try_clone()?;
        let m = manifest.clone();
        tokio::task::spawn_blocking(move || restore::prepare(&root, &m))
            .await
            .map_err(|e| Error::Internal(format!("restore task failed: {e}")))??
    };
    let prepared = t0.elapsed();
    let staging = Arc::new(staging);
    let name = staging.name.clone();
    // URLs are asked for a batch at a time, the next batch while the packs
    // of the previous ones download: up to TRANSFERS packs are in flight at
    // any time, with no pause between batches.
    let fetched = async {
        let (url_tx, url_rx) = mpsc::channel::<(usize, String)>(URL_BATCH);
        let ask = async {
            let url_tx = url_tx;
            for batch in packs.chunks(URL_BATCH) {
                let ids: Vec<Id> = batch.iter().map(|&i| manifest.packs[i].id).collect();
                let targets = urls.ask(events, &ids, Vec::new()).await?;
                for pair in batch.iter().copied().zip(targets) {
                    if url_tx.send(pair).await.is_err() {
                        // The downloads failed; their error is the answer.
                        return Ok(());
                    }
                }
            }
            Ok::<_, Error>(())
        };
        let download = ReceiverStream::new(url_rx)
            .map(|(i, url)| fetch_pack(id, staging.clone(), manifest.clone(), i, url))
            .buffer_unordered(TRANSFERS)
            .try_fold(0usize, |written, n| async move {
                devgate_pause::at("restore-download").await;
                Ok(written + n)
            });
        let ((), written) = futures::try_join!(ask, download)?;
        if written != restore::placements(&staging) {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {id}: {} chunk placements expected, {written} written",
                restore::placements(&staging)
            )));
        }
        Ok::<_, Error>(())
    };
    if let Err(e) = fetched.await {
        let root = root.try_clone()?;
        let _ = tokio::task::spawn_blocking(move || restore::discard(&root, &name)).await;
        return Err(e);
    }
    let downloaded = t0.elapsed();
    let staging = Arc::try_unwrap(staging)
        .map_err(|_| Error::Internal("restore staging still shared".into()))?;
    let m = manifest.clone();
    let by_entry = tokio::task::spawn_blocking(move || {
        restore::finish(&root, staging, &m)?;
        Ok::<_, Error>(restore::stamps(&root, &m))
    })
    .await
    .map_err(|e| Error::Internal(format!("restore task failed: {e}")))??;
    let (files, bytes) = manifest.totals();
    tracing::info!(
        snapshot = %id,
        files,
        bytes,
        packs = packs.len(),
        prepare_ms = prepared.as_millis() as u64,
        download_ms = (downloaded - prepared).as_millis() as u64,
        finish_ms = (t0.elapsed() - downloaded).as_millis() as u64,
        "snapshot restored"
    );
    Ok((
        SnapshotDone {
            id: id.to_hex(),
            files,
            bytes,
            uploaded_bytes: 0,
            packs_uploaded: 0,
        },
        create::Stamps {
            manifest: id,
            by_entry,
        },
    ))
}

/// Downloads pack `i` of the manifest, checks it, and writes its chunks.
async fn fetch_pack(
    id: Id,
    staging: Arc<restore::Staging>,
    m: Arc<Manifest>,
    i: usize,
    url: String,
) -> Result<usize> {
    let pref = &m.packs[i];
    let pack_id = pref.id;
    let size = pref.size;
    let bytes = http::get(&url, size.min(PACK_MAX)).await?;
    if bytes.len() as u64 != size {
        return Err(Error::FailedPrecondition(format!(
            "snapshot {id}: pack {pack_id} has {} bytes, the manifest says {size}",
            bytes.len()
        )));
    }
    tokio::task::spawn_blocking(move || {
        restore::apply_pack(&staging, &m, &pack_id, Vec::from(bytes))
    })
    .await
    .map_err(|e| Error::Internal(format!("restore task failed: {e}")))?
    .map_err(|e| match e {
        Error::FailedPrecondition(m) => Error::FailedPrecondition(format!("snapshot {id}: {m}")),
        other => other,
    })
}
