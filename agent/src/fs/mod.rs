//! The Filesystem service: stat, list, read, write, mkdir, remove, move and
//! watch, every path through the one resolver ([`devgate_fs::Root`]).
//!
//! Small operations run inline on the runtime: a 4 KiB read is an `openat2`,
//! an `fstat` and a `pread`, cheaper than a hop to the blocking pool. Work
//! that can take long (big reads, fsync, recursive list and remove) runs on
//! the blocking pool.

pub(crate) mod entry;
pub(crate) mod write;

use proto::v1::{self as pb, filesystem_server::Filesystem};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use devgate_fs::read::{READ_CHUNK, read_full_at, read_range, read_window};
use devgate_fs::{Root, Stat};

use self::entry::to_entry;
use self::write::{AtomicWrite, WriteOptions};
use crate::State;
use crate::error::{Error, Result};

pub(crate) struct FsService {
    state: State,
}

impl FsService {
    pub(crate) fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Filesystem for FsService {
    async fn stat(
        &self,
        req: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        let rel = Root::clean(&req.get_ref().path).map_err(Error::from)?;
        let entry = stat_entry(&self.state.root, &rel)?;
        Ok(Response::new(pb::StatResponse { entry: Some(entry) }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let req = req.into_inner();
        let rel = Root::clean(&req.path).map_err(Error::from)?;
        let root = self.state.root.clone();
        let entries = blocking(move || list(&root, &rel, req.depth.max(1))).await?;
        Ok(Response::new(pb::ListResponse { entries }))
    }

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<BoxStream<pb::ReadResponse>>, Status> {
        let req = req.into_inner();
        let rel = Root::clean(&req.path).map_err(Error::from)?;
        let file = self
            .state
            .root
            .open_read(&rel)
            .map_err(Error::from)?
            .into_std();
        let meta = file.metadata().map_err(Error::Io)?;
        if meta.is_dir() {
            return Err(Error::IsDirectory(rel).into());
        }
        if !meta.is_file() {
            return Err(Error::InvalidArgument(format!("{rel}: not a regular file")).into());
        }
        let stat = Stat::from(&meta);
        let (start, end) = read_window(stat.size, req.offset, req.length);
        let first = pb::ReadResponse {
            event: Some(pb::read_response::Event::Start(pb::ReadStart {
                entry: Some(to_entry(&stat, &rel, None)),
            })),
        };
        let total = end - start;
        if total <= READ_CHUNK as u64 {
            // One chunk: read inline and answer with a ready-made stream.
            let mut buf = vec![0u8; total as usize];
            let n = read_full_at(&file, &mut buf, start).map_err(Error::Io)?;
            buf.truncate(n);
            let mut msgs = vec![Ok(first)];
            if n > 0 {
                msgs.push(Ok(data_msg(buf)));
            }
            return Ok(Response::new(Box::pin(futures::stream::iter(msgs))));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // The first message cannot fail: the channel is new and has room.
        let _ = tx.try_send(Ok(first));
        tokio::task::spawn_blocking(move || {
            read_range(&file, start, end, |chunk| {
                let msg = chunk.map(data_msg).map_err(|e| Status::from(Error::Io(e)));
                // A send error means the client went away: stop reading.
                tx.blocking_send(msg).is_ok()
            });
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn write(
        &self,
        req: Request<Streaming<pb::WriteRequest>>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let body = crate::cancel::body_state(&req);
        let stream = req.into_inner();
        // Tracked so that shutdown lets an in-flight write finish.
        let entry = self
            .state
            .tasks
            .track_future(write(self.state.clone(), stream, body))
            .await?;
        Ok(Response::new(pb::WriteResponse { entry: Some(entry) }))
    }

    async fn make_dir(
        &self,
        req: Request<pb::MakeDirRequest>,
    ) -> Result<Response<pb::MakeDirResponse>, Status> {
        let req = req.into_inner();
        let rel = Root::clean(&req.path).map_err(Error::from)?;
        let root = &self.state.root;
        if rel.is_empty() {
            if !req.parents {
                return Err(Error::AlreadyExists(String::new()).into());
            }
        } else if req.parents {
            root.dir()
                .create_dir_all(&rel)
                .map_err(|e| crate::error::io_error(&rel, e))?;
        } else {
            root.dir()
                .create_dir(&rel)
                .map_err(|e| crate::error::io_error(&rel, e))?;
        }
        let meta = root.metadata(&rel).map_err(Error::from)?;
        if !meta.is_dir() {
            return Err(Error::AlreadyExists(rel).into());
        }
        Ok(Response::new(pb::MakeDirResponse {
            entry: Some(to_entry(&Stat::from(&meta), &rel, None)),
        }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let req = req.into_inner();
        let rel = Root::clean(&req.path).map_err(Error::from)?;
        if rel.is_empty() {
            return Err(Error::InvalidArgument("the root cannot be removed".into()).into());
        }
        let root = self.state.root.clone();
        // The final component is never followed: removing a symlink removes
        // the link, whatever it points to.
        let meta = root.symlink_metadata(&rel).map_err(Error::from)?;
        if meta.is_dir() {
            if req.recursive {
                blocking(move || {
                    root.dir()
                        .remove_dir_all(&rel)
                        .map_err(|e| crate::error::io_error(&rel, e))
                })
                .await?;
            } else {
                root.dir()
                    .remove_dir(&rel)
                    .map_err(|e| crate::error::io_error(&rel, e))?;
            }
        } else {
            root.dir()
                .remove_file(&rel)
                .map_err(|e| crate::error::io_error(&rel, e))?;
        }
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn r#move(
        &self,
        req: Request<pb::MoveRequest>,
    ) -> Result<Response<pb::MoveResponse>, Status> {
        let req = req.into_inner();
        let from = Root::clean(&req.from).map_err(Error::from)?;
        let to = Root::clean(&req.to).map_err(Error::from)?;
        if from.is_empty() || to.is_empty() {
            return Err(
                Error::InvalidArgument("the root cannot be moved or replaced".into()).into(),
            );
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(Error::InvalidArgument(format!("cannot move {from} into itself")).into());
        }
        let root = &self.state.root;
        if from != to {
            let (from_dir, from_name) = root.open_parent(&from, false).map_err(Error::from)?;
            let (to_dir, to_name) = root.open_parent(&to, false).map_err(Error::from)?;
            write::rename(&from_dir, &from_name, &to_dir, &to_name, req.overwrite).map_err(
                |e| match e.kind() {
                    std::io::ErrorKind::NotFound => Error::NotFound(from.clone()),
                    _ => crate::error::io_error(&to, e),
                },
            )?;
        }
        let entry = stat_entry(root, &to)?;
        Ok(Response::new(pb::MoveResponse { entry: Some(entry) }))
    }

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<BoxStream<pb::WatchResponse>>, Status> {
        let stream = crate::watch::subscribe(&self.state, req.into_inner()).await?;
        Ok(Response::new(stream))
    }
}

/// Receives a write stream (`start`, then `data`) and commits it atomically.
async fn write(
    state: State,
    mut stream: Streaming<pb::WriteRequest>,
    body: crate::cancel::BodyState,
) -> Result<pb::Entry, Status> {
    use pb::write_request::Msg;
    let start = match stream.message().await? {
        Some(pb::WriteRequest {
            msg: Some(Msg::Start(s)),
        }) => s,
        _ => {
            return Err(
                Error::InvalidArgument("a write stream must begin with `start`".into()).into(),
            );
        }
    };
    let rel = Root::clean(&start.path).map_err(Error::from)?;
    let opts = WriteOptions {
        expected_etag: start.expected_etag,
        create_only: start.create_only,
        make_parents: start.make_parents,
        mode: start.mode,
    };
    let mut w = AtomicWrite::begin(&state.root, &rel, opts)?;
    while let Some(msg) = stream.message().await? {
        match msg.msg {
            Some(Msg::Data(data)) => w.write_all(&data)?,
            Some(Msg::Start(_)) => {
                return Err(
                    Error::InvalidArgument("`start` sent twice in one write".into()).into(),
                );
            }
            None => {}
        }
    }
    if body.cancelled() {
        // Dropping `w` removes the temporary file: nothing was written.
        return Err(Status::cancelled("the client cancelled the write"));
    }
    let rel = w.rel().to_owned();
    let kind = if w.existed() {
        pb::EventKind::Modified
    } else {
        pb::EventKind::Created
    };
    let stat = blocking(move || w.commit()).await?;
    state.watcher.changed(kind, &rel);
    tracing::debug!(path = %rel, size = stat.size, "file written");
    Ok(to_entry(&stat, &rel, None))
}

/// The entry at `rel` itself (a symlink is reported as one, with its target).
fn stat_entry(root: &Root, rel: &str) -> Result<pb::Entry> {
    let meta = root.symlink_metadata(rel).map_err(Error::from)?;
    let target = if meta.file_type().is_symlink() {
        read_link(root.dir(), rel)
    } else {
        None
    };
    Ok(to_entry(&Stat::from(&meta), rel, target))
}

fn read_link(dir: &cap_std::fs::Dir, name: &str) -> Option<String> {
    dir.read_link_contents(name)
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// Entries under the directory `rel`, `depth` levels down, sorted by path.
/// Symlinked directories are listed but not descended into.
fn list(root: &Root, rel: &str, depth: u32) -> Result<Vec<pb::Entry>> {
    let meta = root.metadata(rel).map_err(Error::from)?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory(rel.to_owned()));
    }
    let dir = root.resolve_dir(rel).map_err(Error::from)?;
    let mut out = Vec::new();
    walk(&dir, rel, depth, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(dir: &cap_std::fs::Dir, rel: &str, depth: u32, out: &mut Vec<pb::Entry>) -> Result<()> {
    for ent in dir.entries().map_err(|e| crate::error::io_error(rel, e))? {
        let ent = ent.map_err(|e| crate::error::io_error(rel, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        // A write's temporary file is not part of the tree.
        if devgate_fs::temp::is_temporary(&name) {
            continue;
        }
        let path = devgate_fs::join(rel, &name);
        // An entry removed while we walk is simply not listed.
        let Ok(meta) = ent.metadata() else { continue };
        let stat = Stat::from(&meta);
        let target = if meta.file_type().is_symlink() {
            read_link(dir, &name)
        } else {
            None
        };
        out.push(to_entry(&stat, &path, target));
        if meta.is_dir()
            && depth > 1
            && let Ok(sub) = ent.open_dir()
        {
            walk(&sub, &path, depth - 1, out)?;
        }
    }
    Ok(())
}

fn data_msg(buf: Vec<u8>) -> pb::ReadResponse {
    pb::ReadResponse {
        event: Some(pb::read_response::Event::Data(buf)),
    }
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}
