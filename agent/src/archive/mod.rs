//! The Archive service: zip a directory of the root to the caller, and
//! extract a zip from the caller after checking every entry (uploads, and
//! projects hibernated as zips before snapshots). `create` writes zips,
//! `extract` reads them; this module speaks gRPC.

mod big;
pub(crate) mod create;
pub(crate) mod extract;
mod mtime;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use proto::v1::archive_server::Archive;
use proto::v1::{
    ArchiveOptions, ArchiveSummary, CreateArchiveRequest, CreateArchiveResponse, ExtractRequest,
    ExtractSummary, create_archive_response, extract_request,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

pub(crate) use extract::link_escapes;

use crate::State;
use crate::error::{Error, Result};
use devgate_fs::Root;

/// Chunk size of an archive streamed to the caller.
const STREAM_CHUNK: usize = 1024 * 1024;
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
                    event: Some(create_archive_response::Event::Summary(summary(&s))),
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

fn summary(s: &create::Summary) -> ArchiveSummary {
    ArchiveSummary {
        size: s.size,
        sha256: s.sha256.clone(),
        files: s.files,
    }
}
