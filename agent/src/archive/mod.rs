//! The Archive service: zip a directory of the root to the caller or straight
//! to S3 (a multipart upload fed while the zip is written, no temporary
//! file), and extract a zip from the caller or from S3 after checking every
//! entry. `create` writes zips, `extract` reads them; this module speaks gRPC.

mod big;
pub(crate) mod create;
pub(crate) mod extract;
mod mtime;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use proto::v1::archive_server::Archive;
use proto::v1::{
    ArchiveOptions, ArchiveSummary, CreateArchiveRequest, CreateArchiveResponse,
    ExtractFromS3Request, ExtractRequest, ExtractSummary, S3Location, UploadArchiveRequest,
    create_archive_response, extract_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

pub(crate) use extract::link_escapes;

use crate::State;
use crate::error::{Error, Result};
use crate::s3::MultipartUpload;
use devgate_fs::Root;

/// Chunk size of an archive streamed to the caller.
const STREAM_CHUNK: usize = 1024 * 1024;
/// Part uploads in flight at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// Size of upload part `n` (from 0): 8 MiB, growing by 8 MiB every 1000
/// parts so that S3's limit of 10,000 parts still allows archives of ~400 GiB.
fn part_size(n: usize) -> usize {
    8 * 1024 * 1024 * (1 + n / 1000)
}

pub(crate) struct ArchiveService {
    state: State,
}

impl ArchiveService {
    pub(crate) fn new(state: State) -> Self {
        Self { state }
    }

    fn spec(&self, options: Option<ArchiveOptions>) -> Result<create::Spec> {
        let options = options.unwrap_or_default();
        let base_rel = Root::clean(&options.path).map_err(Error::from)?;
        let base = self
            .state
            .root
            .resolve_dir(&base_rel)
            .map_err(Error::from)?;
        Ok(create::Spec {
            base,
            base_rel,
            excludes: create::excludes(&options.exclude, options.no_default_excludes),
            keep_outside_links: options.keep_outside_links,
        })
    }

    /// How long an upload may still run once shutdown began: a little less
    /// than the grace period, so its abort is sent before the agent exits.
    fn upload_grace(&self) -> Duration {
        Duration::from_secs(self.state.config.grace_secs).saturating_sub(Duration::from_secs(1))
    }
}

#[tonic::async_trait]
impl Archive for ArchiveService {
    async fn create(
        &self,
        request: Request<CreateArchiveRequest>,
    ) -> Result<Response<BoxStream<CreateArchiveResponse>>, Status> {
        let spec = self.spec(request.into_inner().options)?;
        let (chunk_tx, mut chunk_rx) = mpsc::channel::<Bytes>(4);
        let (out_tx, out_rx) = mpsc::channel(4);
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || {
                create::write_zip(
                    &spec,
                    create::ChunkSink::new(chunk_tx, |_| STREAM_CHUNK),
                    &stop,
                )
            })
        };
        tokio::spawn(async move {
            while let Some(chunk) = chunk_rx.recv().await {
                let msg = CreateArchiveResponse {
                    event: Some(create_archive_response::Event::Data(chunk.to_vec())),
                };
                if out_tx.send(Ok(msg)).await.is_err() {
                    // The caller went away: stop compressing.
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
            }
            let msg = match producer.await {
                Ok(Ok(s)) => Ok(CreateArchiveResponse {
                    event: Some(create_archive_response::Event::Summary(summary(&s, None))),
                }),
                Ok(Err(e)) => Err(Status::from(e)),
                Err(e) => Err(Status::from(Error::Internal(format!(
                    "archive task failed: {e}"
                )))),
            };
            let _ = out_tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn upload(
        &self,
        request: Request<UploadArchiveRequest>,
    ) -> Result<Response<ArchiveSummary>, Status> {
        let req = request.into_inner();
        let (bucket, key) = crate::s3::check_location(req.location.as_ref())?;
        let spec = self.spec(req.options)?;
        // The upload runs as a tracked task so that shutdown waits for it; if
        // this handler is dropped (the caller cancelled), the guard cancels it
        // and the upload is aborted.
        let cancel = CancellationToken::new();
        let guard = cancel.clone().drop_guard();
        let shutdown = self.state.shutdown.clone();
        let grace = self.upload_grace();
        let task = self.state.tasks.spawn(async move {
            let mpu = MultipartUpload::create(&bucket, &key).await?;
            let stop = Arc::new(AtomicBool::new(false));
            let out_of_time = async {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            };
            let res = tokio::select! {
                res = upload(&mpu, spec, stop.clone()) => res,
                _ = cancel.cancelled() => Err(Error::Unavailable("upload cancelled".into())),
                _ = out_of_time => Err(Error::Unavailable("agent shutting down: upload not finished within the grace period".into())),
            };
            stop.store(true, Ordering::Relaxed);
            match res {
                Ok(s) => {
                    tracing::info!(bucket = %mpu.bucket, key = %mpu.key, size = s.size, files = s.files, "archive uploaded");
                    Ok(s)
                }
                Err(e) => {
                    tracing::warn!(error = %e, bucket = %mpu.bucket, key = %mpu.key, "archive upload failed");
                    mpu.abort().await;
                    Err(e)
                }
            }
        });
        let res = task.await;
        guard.disarm();
        let s = res.map_err(|e| Error::Internal(format!("upload task failed: {e}")))??;
        let location = S3Location {
            bucket: req
                .location
                .as_ref()
                .map(|l| l.bucket.clone())
                .unwrap_or_default(),
            key: req.location.map(|l| l.key).unwrap_or_default(),
        };
        Ok(Response::new(summary(&s, Some(location))))
    }

    async fn extract(
        &self,
        request: Request<Streaming<ExtractRequest>>,
    ) -> Result<Response<ExtractSummary>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Error::InvalidArgument("empty request stream".into()))?;
        let Some(extract_request::Msg::Start(start)) = first.msg else {
            return Err(Error::InvalidArgument("the first message must be `start`".into()).into());
        };
        let base_rel = Root::clean(&start.path).map_err(Error::from)?;
        let limits = start.limits.map(|l| extract::Limits {
            max_entries: l.max_entries,
            max_bytes: l.max_bytes,
            max_ratio: l.max_ratio,
        });
        let mut spool = extract::SpoolWriter::new();
        while let Some(msg) = stream.message().await? {
            match msg.msg {
                Some(extract_request::Msg::Data(d)) => spool.push(&d)?,
                Some(extract_request::Msg::Start(_)) => {
                    return Err(Error::InvalidArgument("`start` sent twice".into()).into());
                }
                None => {}
            }
        }
        let s = self
            .run_extract(base_rel, spool.finish(), limits.unwrap_or_default())
            .await?;
        Ok(Response::new(ExtractSummary {
            files: s.files,
            bytes: s.bytes,
        }))
    }

    async fn extract_from_s3(
        &self,
        request: Request<ExtractFromS3Request>,
    ) -> Result<Response<ExtractSummary>, Status> {
        let req = request.into_inner();
        let base_rel = Root::clean(&req.path).map_err(Error::from)?;
        let (bucket, key) = crate::s3::check_location(req.location.as_ref())?;
        let size = crate::s3::object_size(&bucket, &key).await?;
        let mut spool = extract::SpoolAt::new(size)?;
        crate::s3::download(&bucket, &key, size, |offset, bytes| {
            spool.put(offset, &bytes)
        })
        .await?;
        // The platform's own archives: no caps beyond the free space.
        let s = self
            .run_extract(base_rel, spool.finish(), extract::Limits::default())
            .await?;
        tracing::info!(%bucket, %key, files = s.files, bytes = s.bytes, "archive extracted from s3");
        Ok(Response::new(ExtractSummary {
            files: s.files,
            bytes: s.bytes,
        }))
    }
}

impl ArchiveService {
    /// Extracts on a blocking thread tracked by shutdown, which lets the
    /// writes finish.
    async fn run_extract(
        &self,
        base_rel: String,
        spool: extract::Spool,
        limits: extract::Limits,
    ) -> Result<extract::Summary> {
        let root = self.state.root.clone();
        let rel = base_rel.clone();
        self.state
            .tasks
            .spawn_blocking(move || extract::extract(root.dir(), &rel, spool, limits))
            .await
            .map_err(|e| Error::Internal(format!("extract task failed: {e}")))?
            .map_err(|e| match e {
                Error::Io(io) => crate::error::io_error(&base_rel, io),
                other => other,
            })
    }
}

/// Writes the zip of `spec` into a multipart upload: the zip writer fills
/// parts on its own thread while earlier parts upload, up to
/// `UPLOAD_CONCURRENCY` at a time. Completes the upload only when everything
/// succeeded; the caller aborts it otherwise.
async fn upload(
    mpu: &MultipartUpload,
    spec: create::Spec,
    stop: Arc<AtomicBool>,
) -> Result<create::Summary> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(2);
    let producer = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            create::write_zip(&spec, create::ChunkSink::new(tx, part_size), &stop)
        })
    };
    let res: Result<Vec<_>> = async {
        let mut inflight = FuturesUnordered::new();
        let mut parts = Vec::new();
        let mut number = 0i32;
        let mut open = true;
        while open || !inflight.is_empty() {
            tokio::select! {
                Some(done) = inflight.next(), if !inflight.is_empty() => parts.push(done?),
                chunk = rx.recv(), if open && inflight.len() < UPLOAD_CONCURRENCY => match chunk {
                    Some(bytes) => {
                        number += 1;
                        inflight.push(mpu.upload_part(number, bytes));
                    }
                    None => open = false,
                },
            }
        }
        Ok(parts)
    }
    .await;
    if res.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    drop(rx);
    let summary = producer
        .await
        .map_err(|e| Error::Internal(format!("archive task failed: {e}")))?;
    let parts = res?;
    let summary = summary?;
    mpu.complete(parts, summary.size).await?;
    Ok(summary)
}

fn summary(s: &create::Summary, location: Option<S3Location>) -> ArchiveSummary {
    ArchiveSummary {
        size: s.size,
        sha256: s.sha256.clone(),
        files: s.files,
        location,
    }
}
