//! Git and archive calls of the agent client: clone a repository, stream
//! a zip of a folder out, extract an uploaded zip.

// `.into()` between proto byte fields and `Bytes`/`Vec<u8>` keeps compiling
// whichever of the two the generated code uses.
#![allow(clippy::useless_conversion)]

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _};
use proto::v1 as pb;

use super::{
    AgentClient, ArchiveChunk, ArchiveOptions, ArchiveSummary, CloneResult, ExtractCaps,
    ExtractSummary, drive, pump, upstream,
};
use crate::error::{Error, Result};

impl AgentClient {
    /// Clones `url` at `git_ref` into `dir` (absent or empty).
    pub async fn clone_repo(
        &self,
        url: &str,
        git_ref: &str,
        dir: &str,
        drop_git_dir: bool,
        shallow: bool,
    ) -> Result<CloneResult> {
        let mut git = self.git();
        // `GitClient::clone` the RPC, not `Clone::clone`.
        let mut s = pb::git_client::GitClient::clone(
            &mut git,
            self.req(pb::CloneRequest {
                url: url.to_owned(),
                r#ref: git_ref.to_owned(),
                dir: dir.to_owned(),
                shallow,
                drop_git_dir,
            }),
        )
        .await?
        .into_inner();
        let mut out = CloneResult::default();
        while let Some(m) = s.message().await? {
            match m.event {
                Some(pb::clone_response::Event::Progress(p)) => out.progress.push(p),
                Some(pb::clone_response::Event::Done(d)) => {
                    out.commit = d.commit;
                    out.files = d.files;
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// A zip of `opts.path`, streamed: data chunks, then the summary.
    pub async fn create_archive(
        &self,
        opts: ArchiveOptions,
    ) -> Result<BoxStream<'static, Result<ArchiveChunk>>> {
        let s = self
            .archive()
            .create(self.req(pb::CreateArchiveRequest {
                options: Some(archive_options(opts)),
            }))
            .await?
            .into_inner();
        Ok(s.filter_map(|m| async move {
            use pb::create_archive_response::Event;
            match m {
                Ok(pb::CreateArchiveResponse {
                    event: Some(Event::Data(d)),
                }) => Some(Ok(ArchiveChunk::Data(Bytes::from(d)))),
                Ok(pb::CreateArchiveResponse {
                    event: Some(Event::Summary(s)),
                }) => Some(Ok(ArchiveChunk::Summary(summary(s)))),
                Ok(_) => None,
                Err(status) => Some(Err(Error::from(status))),
            }
        })
        .boxed())
    }

    /// Extracts a zip streamed from `body` into `path`; every entry is checked
    /// before anything is written. A body over `limit` bytes cancels the call.
    pub async fn extract(
        &self,
        path: &str,
        body: BoxStream<'static, Result<Bytes>>,
        limit: u64,
        caps: Option<ExtractCaps>,
    ) -> Result<ExtractSummary> {
        let start = pb::ExtractRequest {
            msg: Some(pb::extract_request::Msg::Start(pb::ExtractStart {
                path: path.to_owned(),
                limits: caps.map(|c| pb::ExtractLimits {
                    max_entries: c.max_entries,
                    max_bytes: c.max_bytes,
                    max_ratio: c.max_ratio,
                }),
            })),
        };
        let (tx, msgs) = upstream(start);
        let mut ac = self.archive();
        let rpc = ac.extract(self.req(msgs));
        let r = drive(
            rpc,
            pump(body, tx, limit, |d| pb::ExtractRequest {
                msg: Some(pb::extract_request::Msg::Data(d.into())),
            }),
        )
        .await?;
        Ok(ExtractSummary {
            files: r.files,
            bytes: r.bytes,
        })
    }
}

fn archive_options(o: ArchiveOptions) -> pb::ArchiveOptions {
    pb::ArchiveOptions {
        path: o.path,
        exclude: o.exclude,
        no_default_excludes: o.all,
        keep_outside_links: o.all,
    }
}

fn summary(s: pb::ArchiveSummary) -> ArchiveSummary {
    ArchiveSummary {
        size: s.size,
        sha256: s.sha256,
        files: s.files,
    }
}
