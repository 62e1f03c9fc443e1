//! Command-line and environment configuration, tracing set-up, and the server
//! loop: listener (TCP or Unix socket), token check, services, shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::State;

/// The file-manager pod's command: serves the project volume over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "agent", version, about)]
pub struct Config {
    /// Directory served as the root; every client path is relative to it.
    #[arg(long, env = "AGENT_ROOT", default_value = "/app")]
    pub root: PathBuf,

    /// TCP address to listen on (e.g. 0.0.0.0:7070). Ignored when --socket is set.
    #[arg(long, env = "AGENT_LISTEN", default_value = "0.0.0.0:7070")]
    pub listen: std::net::SocketAddr,

    /// Unix socket path to listen on instead of TCP.
    #[arg(long, env = "AGENT_SOCKET")]
    pub socket: Option<PathBuf>,

    /// Shared token every RPC must carry as `authorization: Bearer <token>`.
    #[arg(long, env = "AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the shared token (first line), instead of --token; `-`
    /// reads it from standard input (how the local runtime hands it over,
    /// so it is in neither the command line nor the environment).
    #[arg(long, env = "AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Seconds to let in-flight writes and uploads finish after SIGTERM.
    #[arg(long, env = "AGENT_GRACE_SECS", default_value_t = 20)]
    pub grace_secs: u64,

    /// Seconds a detached PTY session is kept before it is ended.
    #[arg(long, env = "AGENT_PTY_KEEP_SECS", default_value_t = 300)]
    pub pty_keep_secs: u64,

    /// Most PTY sessions running at once (each is a process on a terminal);
    /// a start beyond it is refused until one ends.
    #[arg(long, env = "AGENT_MAX_PTY_SESSIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pty_sessions: u64,

    /// Most named background processes (dev servers) running at once.
    #[arg(long, env = "AGENT_MAX_BACKGROUND", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_background: u64,

    /// Seconds of silence after which a watch stream gets a keep-alive message.
    #[arg(long, env = "AGENT_WATCH_KEEPALIVE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub watch_keepalive_secs: u64,

    /// Run as init (reap orphans, forward signals) in front of the server;
    /// automatic when the agent is PID 1.
    #[arg(long, env = "AGENT_INIT")]
    pub init: bool,

    /// Log format: `text` or `json`.
    #[arg(long, env = "AGENT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// End (SIGTERM) when the parent process ends: for an agent that is a
    /// gateway's child process in the local runtime.
    #[arg(long, env = "AGENT_DIE_WITH_PARENT")]
    pub die_with_parent: bool,

    /// A dev server to run from the start as a managed background process
    /// (`sh -c COMMAND`, in its own process group, output in the process's
    /// log, stopped with the agent): how the agent that is PID 1 of a
    /// Kubernetes dev pod runs the container's start command. It, and every
    /// other child of this agent, gets the agent's environment (the
    /// container's) minus `AGENT_*`; without --start, `AWS_*` is withheld
    /// too.
    #[arg(long, env = "AGENT_START", value_name = "COMMAND")]
    pub start: Option<String>,

    /// The background-process name of --start (clients read its logs and
    /// state by this name).
    #[arg(long, env = "AGENT_START_NAME", default_value = "dev")]
    pub start_name: String,

    /// The working directory of --start, relative to --root.
    #[arg(long, env = "AGENT_START_CWD", default_value = "")]
    pub start_cwd: String,

    /// Copy this executable to PATH (mode 0755, atomically) and exit: the
    /// init-container step that puts the static agent into a dev pod's
    /// emptyDir, so the agent runs in any image.
    #[arg(long, env = "AGENT_COPY_TO", value_name = "PATH")]
    pub copy_to: Option<PathBuf>,
}

/// Copies the running executable to `to` (through a temporary file beside
/// it, renamed into place, so a reader never sees half a binary).
pub fn copy_self(to: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let exe = std::env::current_exe().context("cannot find the agent executable")?;
    let dir = to
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(".agent-copy-{}", std::process::id()));
    let copied = std::fs::copy(&exe, &tmp)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, to));
    if let Err(error) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(error)
            .with_context(|| format!("cannot copy {} to {}", exe.display(), to.display()));
    }
    Ok(())
}

impl Config {
    /// The token from --token or --token-file; a missing or empty one is an error.
    pub(crate) fn resolve_token(&self) -> anyhow::Result<String> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) if f.as_os_str() == "-" => {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("cannot read the token from standard input")?;
                line.trim().to_owned()
            }
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read token file {}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            (None, None) => {
                anyhow::bail!("a token is required: --token, AGENT_TOKEN or --token-file")
            }
        };
        anyhow::ensure!(!token.is_empty(), "the token is empty");
        Ok(token)
    }
}

/// Starts `tracing` with `RUST_LOG` (default `info`) in the configured format.
///
/// `RUST_LOG` is a list of `level` and `target=level` directives (`warn`,
/// `info,agent=debug`), parsed by `tracing_subscriber`'s `Targets`: no span or
/// field filters, and no regex engine in the binary. As before, a value that
/// does not parse means `info` and an empty one `error`.
pub fn init_tracing(config: &Config) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if v.trim().is_empty() => Targets::new().with_default(LevelFilter::ERROR),
        Ok(v) => v
            .parse::<Targets>()
            .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO)),
        Err(_) => Targets::new().with_default(LevelFilter::INFO),
    };
    // The builder's own filter lets everything through; `filter` decides.
    // Colours only for a terminal, as the gateway's: escape codes in
    // `kubectl logs` or the local runtime's log files are noise.
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().finish().with(filter).init();
    } else {
        builder.finish().with(filter).init();
    }
}

pub(crate) async fn serve(config: Config) -> anyhow::Result<()> {
    if config.die_with_parent {
        let parent = rustix::process::getppid();
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
            .context("cannot ask for a parent-death signal")?;
        // The parent may have died before the request above: then we were
        // already re-parented and no signal will come.
        if rustix::process::getppid() != parent {
            anyhow::bail!("the parent process ended before the agent started");
        }
    }
    // Handlers first: a SIGTERM during start-up then means "shut down
    // cleanly", not death by the default action.
    let mut signals = Signals::new()?;
    if config.start.is_some() {
        crate::process::spawn::in_dev_pod();
    }
    let token = config.resolve_token()?;
    let root = devgate_fs::Root::open(&config.root)
        .with_context(|| format!("cannot open root {}", config.root.display()))?;
    let root = Arc::new(root);
    // Temporary files of writes cut short by a kill, in the background.
    if let Ok(dir) = root.dir().try_clone() {
        let started = std::time::SystemTime::now();
        tokio::task::spawn_blocking(move || {
            let n = devgate_fs::temp::sweep_temporaries(&dir, started);
            if n > 0 {
                tracing::info!(removed = n, "removed temporary files of unfinished writes");
            }
        });
    }
    let watcher =
        crate::watch::Watcher::start(root.clone()).context("cannot start the file watcher")?;
    let state = State {
        config: Arc::new(config.clone()),
        root,
        shutdown: tokio_util::sync::CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        watcher,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::v1::filesystem_server::FilesystemServer<crate::fs::FsService>>()
        .await;

    let process = crate::process::ProcessService::new(state.clone());
    // `--start` begins once the listener is bound (below): the server then
    // cannot take the agent's port first and be sent the gateway's token.
    let managed = process.clone();
    let auth = Auth(Arc::from(format!("Bearer {token}")));
    let router = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(crate::cancel::layer())
        .add_service(health_service)
        .add_service(
            proto::v1::filesystem_server::FilesystemServer::with_interceptor(
                crate::fs::FsService::new(state.clone()),
                auth.clone(),
            ),
        )
        .add_service(proto::v1::process_server::ProcessServer::with_interceptor(
            process,
            auth.clone(),
        ))
        .add_service(proto::v1::git_server::GitServer::with_interceptor(
            crate::git::GitService::new(state.clone()),
            auth.clone(),
        ))
        .add_service(proto::v1::archive_server::ArchiveServer::with_interceptor(
            crate::archive::ArchiveService::new(state.clone()),
            auth.clone(),
        ))
        .add_service(
            proto::v1::snapshot_server::SnapshotServer::with_interceptor(
                crate::snapshot::SnapshotService::new(state.clone()),
                auth,
            ),
        );

    // The server stops accepting as soon as the shutdown token fires; the
    // same token ends long streams (watch, PTY attach) so that it can drain.
    let stop = state.shutdown.clone().cancelled_owned();
    // Both listeners yield the one connection type `Conn`: the server stack
    // (tonic, hyper, h2) is compiled once, not once per listener type.
    let incoming = if let Some(path) = &config.socket {
        // A stale socket from a previous run would make bind fail.
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        tracing::info!(socket = %path.display(), root = %config.root.display(), "agent listening");
        UnixListenerStream::new(listener).map_ok(Conn::Unix).boxed()
    } else {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(addr = %listener.local_addr()?, root = %config.root.display(), "agent listening");
        // The builder's `tcp_nodelay` applies only to listeners tonic binds
        // itself; sockets handed in need it here, or every small answer waits
        // for Nagle's delayed ACK (~40 ms per request).
        TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map_ok(Conn::Tcp)
            .boxed()
    };
    let mut server = Box::pin(router.serve_with_incoming_shutdown(incoming, stop));
    if let Some(command) = &config.start {
        managed
            .start_managed(&config.start_name, command, &config.start_cwd)
            .with_context(|| format!("cannot start --start {command:?}"))?;
    }

    tokio::select! {
        res = &mut server => {
            res.context("server failed")?;
            return Ok(());
        }
        _ = signals.recv() => {}
    }
    tracing::info!(
        grace_secs = config.grace_secs,
        "shutting down: draining in-flight work"
    );
    state.shutdown.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(config.grace_secs);

    // In-flight RPCs (writes among them) finish on their open connections;
    // writes and uploads are also in `tasks`, which may outlive their RPC.
    state.tasks.close();
    let drain = async {
        if let Err(error) = server.await {
            tracing::warn!(%error, "server error while draining");
        }
        state.tasks.wait().await;
    };
    tokio::select! {
        () = drain => tracing::info!("drained; exiting"),
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!(in_flight = state.tasks.len(), "grace period over with work still in flight");
        }
        _ = signals.recv() => tracing::warn!("second signal: exiting without waiting"),
    }
    crate::fs::write::abandon_all();
    if let Some(path) = &config.socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// SIGTERM and SIGINT, as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Checks the shared token on every request, in constant time.
#[derive(Clone)]
struct Auth(Arc<str>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let given = req
            .metadata()
            .get(proto::AUTH_METADATA_KEY)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, self.0.as_bytes()) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated("missing or wrong token"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An accepted connection of either listener.
enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// No connection info in the requests' extensions: no handler reads the
/// peer's address.
impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Unix(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}
