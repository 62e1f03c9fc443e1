//! The gateway's client of project agents: the one module that converts
//! between the agent's protobuf messages and the gateway's own types. It
//! connects over a Unix socket (local runtime) or TCP (Kubernetes) with the
//! agent's token, and [`AgentPool`] caches one client per project.
//!
//! A client holds one HTTP/2 connection to its agent, dialed on first use:
//! from a serving thread (see `server`: each runs a single-threaded
//! runtime), on the gateway's own runtime (`conn::shared_runtime`), so that
//! it outlives the thread; from anywhere else, on the caller's runtime. A
//! terminal's attach, a stream that lives as long as the browser's socket,
//! instead goes over a connection of the serving thread that holds that
//! socket, dialed there the first time that thread attaches a terminal of
//! this agent: its connection's tasks then run on the same runtime as the
//! socket, so a keystroke and its echo cross no other gateway thread.

// `.into()` between proto byte fields and `Bytes`/`Vec<u8>` keeps compiling
// whichever of the two the generated code uses.
#![allow(clippy::useless_conversion)]

mod archive;
mod files;
mod process;
mod types;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _};
use proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::agent_types::{AgentAddress, AgentEndpoint};
use crate::error::{Error, Result};
pub use types::{
    ArchiveChunk, ArchiveOptions, ArchiveSummary, BackgroundProcess, CloneResult, Entry, EntryKind,
    ExtractCaps, ExtractSummary, FsEvent, FsEventKind, PtyEvent, PtyInput, PtySession, PtySpec,
    WriteOptions, quote_etag,
};

/// Largest gRPC message accepted from an agent.
const MAX_MESSAGE: usize = 64 << 20;

/// A connection to one agent; cheap to clone.
#[derive(Clone)]
pub struct AgentClient {
    dialer: Arc<Dialer>,
    /// The connection of every call but terminal attaches made on a serving
    /// thread; dialed on first use.
    shared: Arc<OnceLock<Channel>>,
    /// Terminal connections, by the id of the serving thread that made each.
    terminals: Arc<Mutex<Vec<(std::thread::ThreadId, Channel)>>>,
    token: Arc<str>,
}

/// Where an agent listens, checked when the client is made.
enum Dialer {
    Unix(std::path::PathBuf),
    Tcp(Box<Endpoint>),
}

impl AgentClient {
    /// A lazily connected client: the first call dials.
    pub fn connect_lazy(endpoint: &AgentEndpoint) -> Result<AgentClient> {
        let dialer = match &endpoint.address {
            AgentAddress::Unix(path) => Dialer::Unix(path.clone()),
            AgentAddress::Tcp(uri) => Dialer::Tcp(Box::new(base_endpoint(
                Endpoint::from_shared(uri.clone())
                    .map_err(|e| Error::internal(format!("bad agent uri {uri}: {e}")))?,
            ))),
        };
        Ok(AgentClient {
            dialer: Arc::new(dialer),
            shared: Arc::default(),
            terminals: Arc::default(),
            token: Arc::from(endpoint.token.as_str()),
        })
    }

    /// A lazily connected channel whose tasks run on the current runtime.
    fn dial(&self) -> Channel {
        match &*self.dialer {
            Dialer::Unix(path) => {
                let path = path.clone();
                base_endpoint(Endpoint::from_static("http://agent.local"))
                    .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                        }
                    }))
            }
            Dialer::Tcp(endpoint) => Endpoint::clone(endpoint).connect_lazy(),
        }
    }

    /// The shared connection, dialed on the runtime of the gateway's own
    /// tasks (from a serving thread, that runtime is entered to dial).
    fn channel(&self) -> Channel {
        self.shared
            .get_or_init(|| match crate::conn::shared_runtime() {
                Some(rt) => {
                    let _on = rt.enter();
                    self.dial()
                }
                None => self.dial(),
            })
            .clone()
    }

    /// The connection for a terminal attach: the caller's serving thread's
    /// own, else the shared one.
    fn terminal_channel(&self) -> Channel {
        let Some(id) = crate::conn::serving_thread() else {
            return self.channel();
        };
        let mut terminals = self.terminals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = terminals.iter().find(|(t, _)| *t == id) {
            return c.clone();
        }
        let c = self.dial();
        terminals.push((id, c.clone()));
        c
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        // The token was checked to be header-safe when the endpoint was made;
        // a bad one would only make the agent answer 401, never panic here.
        if let Ok(v) = format!("Bearer {}", self.token).parse() {
            req.metadata_mut().insert(proto::AUTH_METADATA_KEY, v);
        }
        req
    }

    fn fs(&self) -> pb::filesystem_client::FilesystemClient<Channel> {
        pb::filesystem_client::FilesystemClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn process(&self) -> pb::process_client::ProcessClient<Channel> {
        pb::process_client::ProcessClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// The process service over [`Self::terminal_channel`].
    fn terminal(&self) -> pb::process_client::ProcessClient<Channel> {
        pb::process_client::ProcessClient::new(self.terminal_channel())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn git(&self) -> pb::git_client::GitClient<Channel> {
        pb::git_client::GitClient::new(self.channel()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn archive(&self) -> pb::archive_client::ArchiveClient<Channel> {
        pb::archive_client::ArchiveClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    // ---- snapshots ----

    fn snapshot(&self) -> pb::snapshot_client::SnapshotClient<Channel> {
        pb::snapshot_client::SnapshotClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// Cuts a snapshot of the whole project. `previous` is the newest
    /// snapshot (its id and stored manifest), whose chunks are not uploaded
    /// again. `sign` answers the agent's requests for upload URLs of new
    /// packs. Answers the agent's summary and the new manifest's bytes.
    pub async fn snapshot_create(
        &self,
        previous: Option<(String, Bytes)>,
        sign: &PackSigner<'_>,
    ) -> Result<(SnapshotDone, Bytes)> {
        let (id, manifest) = previous.unwrap_or_default();
        self.snapshot_call(true, id, manifest, sign).await
    }

    /// Restores snapshot `id` (its stored manifest `manifest`) into the
    /// project, which must be empty. `sign` answers the agent's requests for
    /// download URLs.
    pub async fn snapshot_restore(
        &self,
        id: String,
        manifest: Bytes,
        sign: &PackSigner<'_>,
    ) -> Result<SnapshotDone> {
        Ok(self.snapshot_call(false, id, manifest, sign).await?.0)
    }

    async fn snapshot_call(
        &self,
        create: bool,
        id: String,
        manifest: Bytes,
        sign: &PackSigner<'_>,
    ) -> Result<(SnapshotDone, Bytes)> {
        use pb::snapshot_control::Msg;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotControl>(4);
        let control = |m: Msg| pb::SnapshotControl { msg: Some(m) };
        let mut first = Vec::new();
        for piece in manifest.chunks(1 << 20) {
            first.push(control(Msg::Manifest(piece.to_vec())));
        }
        first.push(control(Msg::Start(pb::SnapshotStart { id })));
        let sender = tx.clone();
        let feed = tokio::spawn(async move {
            for m in first {
                if sender.send(m).await.is_err() {
                    return;
                }
            }
        });
        let mut client = self.snapshot();
        let req = self.req(ReceiverStream::new(rx));
        let call = if create {
            client.create(req).await
        } else {
            client.restore(req).await
        };
        let mut events = call.map_err(snapshot_status)?.into_inner();
        let mut out = Vec::new();
        let mut done = None;
        while let Some(ev) = events.message().await.map_err(snapshot_status)? {
            match ev.event {
                Some(pb::snapshot_event::Event::NeedUrls(n)) => {
                    if n.packs.is_empty() || n.packs.len() > 64 {
                        return Err(Error::internal("the agent asked for a bad batch of urls"));
                    }
                    let urls = sign(n.packs.clone(), n.sizes).await?;
                    let urls = n
                        .packs
                        .into_iter()
                        .zip(urls)
                        .map(|(pack, url)| pb::PackUrl { pack, url })
                        .collect();
                    if tx
                        .send(control(Msg::Urls(pb::PackUrls { urls })))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Some(pb::snapshot_event::Event::Manifest(piece)) => {
                    if (out.len() + piece.len()) as u64 > devgate_snapshot::MANIFEST_MAX {
                        return Err(Error::internal("the agent's manifest is too large"));
                    }
                    out.extend_from_slice(&piece);
                }
                Some(pb::snapshot_event::Event::Done(d)) => {
                    done = Some(SnapshotDone {
                        id: d.id,
                        files: d.files,
                        bytes: d.bytes,
                        uploaded_bytes: d.uploaded_bytes,
                        packs_uploaded: d.packs_uploaded,
                    });
                }
                None => {}
            }
        }
        feed.abort();
        let done =
            done.ok_or_else(|| Error::internal("the snapshot stream ended without its summary"))?;
        Ok((done, Bytes::from(out)))
    }
}

/// Signs URLs for a batch of pack ids (hex), one per id, in order; the
/// second list holds the packs' sizes (uploads) or nothing (downloads).
pub type PackSigner<'a> = dyn Fn(Vec<String>, Vec<u64>) -> futures::future::BoxFuture<'a, Result<Vec<String>>>
    + Send
    + Sync
    + 'a;

/// What the agent reports at the end of a snapshot or a restore.
#[derive(Debug, Clone, Default)]
pub struct SnapshotDone {
    pub id: String,
    pub files: u64,
    pub bytes: u64,
    pub uploaded_bytes: u64,
    pub packs_uploaded: u64,
}

/// A snapshot call's failure: the agent's integrity and format errors
/// (failed precondition) name the snapshot and say what is wrong, and are
/// kept as such; anything else maps as usual.
fn snapshot_status(s: tonic::Status) -> Error {
    if s.code() == tonic::Code::FailedPrecondition {
        Error::SnapshotUnusable(s.message().to_owned())
    } else {
        Error::from(s)
    }
}

/// How long a unary call (stat, list, mkdir, ...) may take before the request
/// fails with 504, so a hung agent cannot hang requests forever.
const UNARY_TIMEOUT: Duration = Duration::from_secs(30);

/// A unary call with [`UNARY_TIMEOUT`].
async fn unary<T>(
    call: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(UNARY_TIMEOUT, call).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::Timeout("the agent did not answer in time".into())),
    }
}

fn base_endpoint(e: Endpoint) -> Endpoint {
    e.connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
}

/// The message stream of a client-streaming call: `first`, then what is sent on the sender.
fn upstream<Req: Send + 'static>(
    first: Req,
) -> (tokio::sync::mpsc::Sender<Req>, ReceiverStream<Req>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Req>(4);
    // A new channel has room, so the first message is queued at once.
    let _ = tx.try_send(first);
    (tx, ReceiverStream::new(rx))
}

/// Sends the body's chunks, then drops the sender (half-closing the call's
/// stream, which commits it). Fails on a body error or past `limit` bytes.
async fn pump<Req>(
    mut body: BoxStream<'static, Result<Bytes>>,
    tx: tokio::sync::mpsc::Sender<Req>,
    limit: u64,
    wrap: fn(Bytes) -> Req,
) -> Result<()> {
    let mut total: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(Error::PayloadTooLarge(limit));
        }
        if tx.send(wrap(chunk)).await.is_err() {
            // The call ended early; its own result says why.
            break;
        }
    }
    drop(tx);
    Ok(())
}

/// Drives a client-streaming call beside its [`pump`]. When the pump fails,
/// the call is dropped, which cancels its stream so the agent discards what
/// it got and nothing is committed.
async fn drive<Resp, F, P>(rpc: F, pump: P) -> Result<Resp>
where
    F: std::future::Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    P: std::future::Future<Output = Result<()>>,
{
    tokio::pin!(rpc);
    tokio::pin!(pump);
    tokio::select! {
        r = &mut rpc => return r.map(|r| r.into_inner()).map_err(Error::from),
        p = &mut pump => p?,
    }
    rpc.await.map(|r| r.into_inner()).map_err(Error::from)
}

/// One cached client per key (a project, or `{project}/{container}` for the
/// agent of a container's dev pod), replaced when the endpoint changes (a
/// restarted agent has a new token).
#[derive(Clone, Default)]
pub struct AgentPool {
    clients: Arc<Mutex<HashMap<String, (AgentEndpoint, AgentClient)>>>,
}

impl AgentPool {
    /// The client for `project` at `endpoint`, reusing a cached channel.
    pub fn get(&self, project: &str, endpoint: &AgentEndpoint) -> Result<AgentClient> {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ep, c)) = map.get(project)
            && ep == endpoint
        {
            return Ok(c.clone());
        }
        let c = AgentClient::connect_lazy(endpoint)?;
        map.insert(project.to_owned(), (endpoint.clone(), c.clone()));
        Ok(c)
    }

    /// The client of the agent that runs container `container`'s shells at
    /// `endpoint` (on Kubernetes, its dev pod's), cached apart from the
    /// project agent's.
    pub fn get_for_container(
        &self,
        project: &str,
        container: &str,
        endpoint: &AgentEndpoint,
    ) -> Result<AgentClient> {
        self.get(&format!("{project}/{container}"), endpoint)
    }

    /// Forgets a project's clients (its agents stopped): the project
    /// agent's and those of its containers' agents (`{project}/{container}`).
    pub fn forget(&self, project: &str) {
        let prefix = format!("{project}/");
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| key != project && !key.starts_with(&prefix));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// An "agent" that accepts connections and never answers: reports each.
    fn silent_agent(dir: &std::path::Path) -> (AgentEndpoint, mpsc::Receiver<()>) {
        let path = dir.join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming() {
                held.push(s);
                let _ = tx.send(());
            }
        });
        let endpoint = AgentEndpoint {
            address: AgentAddress::Unix(path),
            token: "t".into(),
        };
        (endpoint, rx)
    }

    /// Starts a call of either kind and gives up on it: true when it was
    /// still waiting for the (silent) agent, false when it failed at once
    /// (its connection's tasks gone with their runtime).
    async fn call(c: &AgentClient, terminal: bool) -> bool {
        let wait = Duration::from_millis(300);
        if terminal {
            let input = futures::stream::pending::<PtyInput>();
            tokio::time::timeout(wait, c.attach_pty("s", None, input))
                .await
                .is_err()
        } else {
            tokio::time::timeout(wait, c.list_pty()).await.is_err()
        }
    }

    /// Runs `f`'s future on a new serving thread (its own single-threaded
    /// runtime) of a gateway whose own runtime is `shared`, and waits for it.
    fn on_serving_thread<T, F>(
        shared: &tokio::runtime::Runtime,
        f: impl FnOnce() -> F + Send + 'static,
    ) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = T>,
    {
        let on = shared.handle().clone();
        std::thread::spawn(move || {
            crate::conn::set_serving_thread(on);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .join()
        .unwrap()
    }

    /// Terminal attaches from a serving thread go over that thread's own
    /// connection, dialed once and kept; every other call, from any
    /// thread, over one shared connection whose tasks run on the gateway's
    /// own runtime, even when a serving thread dialed it.
    #[test]
    fn terminals_get_a_connection_per_serving_thread_the_rest_share_one() {
        let dir = tempfile::tempdir().unwrap();
        let (endpoint, accepts) = silent_agent(dir.path());
        let accepted = || accepts.recv_timeout(Duration::from_secs(10)).is_ok();
        let shared = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let c = AgentClient::connect_lazy(&endpoint).unwrap();
        // The first call of all, from a serving thread that then ends.
        let first = c.clone();
        let waited = on_serving_thread(&shared, move || async move { call(&first, false).await });
        assert!(waited, "the shared connection's call waited for the agent");
        assert!(accepted(), "the shared connection");
        // Its tasks outlived that thread's runtime: a call from another
        // serving thread, and one from outside, still wait on it.
        for i in 0..2 {
            let c = c.clone();
            let waited = on_serving_thread(&shared, move || async move {
                let shared_ok = call(&c, false).await;
                let terminal_ok = call(&c, true).await && call(&c, true).await;
                (shared_ok, terminal_ok)
            });
            assert_eq!(waited, (true, true), "serving thread {i}");
            assert!(accepted(), "serving thread {i}'s terminal connection");
        }
        assert!(shared.block_on(call(&c, false)));
        assert!(shared.block_on(call(&c, true)), "outside: the shared one");
        assert_eq!(c.terminals.lock().unwrap().len(), 2);
        assert!(
            accepts.recv_timeout(Duration::from_millis(300)).is_err(),
            "no connection beyond the shared one and one per serving thread"
        );
    }
}
