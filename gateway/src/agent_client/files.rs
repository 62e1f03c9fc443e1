//! File calls of the agent client: stat, list, read, write, mkdir,
//! remove, rename and watch.

// `.into()` between proto byte fields and `Bytes`/`Vec<u8>` keeps compiling
// whichever of the two the generated code uses.
#![allow(clippy::useless_conversion)]

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _};
use proto::v1 as pb;

use super::{AgentClient, Entry, FsEvent, FsEventKind, WriteOptions, drive, pump, unary, upstream};
use crate::error::{Error, Result};

impl AgentClient {
    /// One entry.
    pub async fn stat(&self, path: &str) -> Result<Entry> {
        let r = unary(self.fs().stat(self.req(pb::StatRequest {
            path: path.to_owned(),
        })))
        .await?;
        entry(r.into_inner().entry)
    }

    /// A directory's entries, `depth` levels down (0 and 1: its own entries).
    pub async fn list(&self, path: &str, depth: u32) -> Result<Vec<Entry>> {
        let r = unary(self.fs().list(self.req(pb::ListRequest {
            path: path.to_owned(),
            depth,
        })))
        .await?;
        Ok(r.into_inner()
            .entries
            .into_iter()
            .map(Entry::from)
            .collect())
    }

    /// A file's entry and its bytes from `offset`, at most `length` (0 = to the end).
    pub async fn read(
        &self,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<(Entry, BoxStream<'static, Result<Bytes>>)> {
        let mut s = self
            .fs()
            .read(self.req(pb::ReadRequest {
                path: path.to_owned(),
                offset,
                length,
            }))
            .await?
            .into_inner();
        let first = s
            .message()
            .await?
            .ok_or_else(|| Error::internal("read stream ended before its start"))?;
        let e = match first.event {
            Some(pb::read_response::Event::Start(st)) => entry(st.entry)?,
            _ => return Err(Error::internal("read stream did not begin with start")),
        };
        // Each chunk is handed out only once the next message (or the end of
        // the call, with its trailers) has arrived. A response with a
        // Content-Length stops polling its body after the last byte; without
        // this look-ahead the gRPC call would be dropped before its trailers,
        // every read would reset its HTTP/2 stream, and after enough resets h2
        // closes the whole connection (ENHANCE_YOUR_CALM), failing the reads in
        // flight on it.
        let data = futures::stream::unfold(
            (s, None::<Bytes>, false),
            |(mut s, mut held, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match s.message().await {
                        Ok(Some(pb::ReadResponse {
                            event: Some(pb::read_response::Event::Data(d)),
                        })) => {
                            if let Some(prev) = held.replace(Bytes::from(d)) {
                                return Some((Ok(prev), (s, held, false)));
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => return held.map(|last| (Ok(last), (s, None, true))),
                        Err(status) => {
                            return Some((Err(Error::from(status)), (s, None, true)));
                        }
                    }
                }
            },
        )
        .boxed();
        Ok((e, data))
    }

    /// Writes a file atomically from a stream of chunks; the agent commits only
    /// when the whole body arrived. A body error or a body over `limit` bytes
    /// cancels the call, and nothing is written.
    pub async fn write(
        &self,
        path: &str,
        opts: WriteOptions,
        body: BoxStream<'static, Result<Bytes>>,
        limit: u64,
    ) -> Result<Entry> {
        let start = pb::WriteRequest {
            msg: Some(pb::write_request::Msg::Start(pb::WriteStart {
                path: path.to_owned(),
                expected_etag: opts.expected_etag,
                create_only: opts.create_only,
                must_exist: opts.must_exist,
                make_parents: opts.make_parents,
                mode: opts.mode,
            })),
        };
        let (tx, msgs) = upstream(start);
        let mut fs = self.fs();
        let rpc = fs.write(self.req(msgs));
        let r = drive(
            rpc,
            pump(body, tx, limit, |d| pb::WriteRequest {
                msg: Some(pb::write_request::Msg::Data(d.into())),
            }),
        )
        .await?;
        entry(r.entry)
    }

    /// Makes a directory (and its parents when asked).
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<Entry> {
        let r = unary(self.fs().make_dir(self.req(pb::MakeDirRequest {
            path: path.to_owned(),
            parents,
        })))
        .await?;
        entry(r.into_inner().entry)
    }

    /// Removes a file or directory (a non-empty one only with `recursive`).
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        unary(self.fs().remove(self.req(pb::RemoveRequest {
            path: path.to_owned(),
            recursive,
        })))
        .await?;
        Ok(())
    }

    /// Renames; an existing `to` is 409 unless `overwrite`.
    pub async fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<Entry> {
        let r = unary(self.fs().r#move(self.req(pb::MoveRequest {
            from: from.to_owned(),
            to: to.to_owned(),
            overwrite,
        })))
        .await?;
        entry(r.into_inner().entry)
    }

    /// Changes under `path`, recursively, as they happen (keep-alives dropped).
    pub async fn watch(&self, path: &str) -> Result<BoxStream<'static, Result<FsEvent>>> {
        let s = self
            .fs()
            .watch(self.req(pb::WatchRequest {
                path: path.to_owned(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(s.filter_map(|m| async move {
            match m {
                Ok(pb::WatchResponse {
                    event: Some(pb::watch_response::Event::Change(c)),
                }) => {
                    let kind = match pb::EventKind::try_from(c.kind) {
                        Ok(pb::EventKind::Created) => FsEventKind::Created,
                        Ok(pb::EventKind::Removed) => FsEventKind::Removed,
                        Ok(pb::EventKind::Renamed) => FsEventKind::Renamed,
                        _ => FsEventKind::Modified,
                    };
                    Some(Ok(FsEvent {
                        kind,
                        path: c.path,
                        to: Some(c.to).filter(|t| !t.is_empty()),
                    }))
                }
                Ok(_) => None,
                Err(status) => Some(Err(Error::from(status))),
            }
        })
        .boxed())
    }
}

fn entry(e: Option<pb::Entry>) -> Result<Entry> {
    e.map(Entry::from)
        .ok_or_else(|| Error::internal("agent answered without an entry"))
}
