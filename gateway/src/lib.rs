//! The gateway: the public HTTP/WebSocket API of devgate (shared/API.md).
//! Browsers and product backends talk only to it; it speaks gRPC to each
//! project's agent, proxies preview hosts to dev servers, and drives the
//! project lifecycle through a [`runtime::Runtime`].

pub mod activity;
pub mod agent_client;
pub mod agent_types;
pub mod api;
pub mod archive_store;
pub mod auth;
pub mod config;
pub mod conn;
pub mod error;
pub mod events;
pub mod idle;
pub mod ids;
pub mod lease;
pub mod lifecycle;
pub mod local_files;
pub mod metrics;
pub mod preview;
pub mod preview_state;
pub mod runtime;
pub mod s3;
pub mod server;
pub mod state;
pub mod store;
pub mod templates;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use config::{Config, init_tracing};
pub use error::{Error, Result};

use crate::config::RuntimeKind;
use crate::state::AppState;
use crate::store::Store;

/// Builds the state (store, runtime, secret, templates) and serves on
/// `listener` until `shutdown` resolves, then drains within the grace period.
/// Prints `listening on http://ADDR` once it accepts connections.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let state = build_state(&config).await?;
    let addr = listener.local_addr()?;
    state
        .listen_port
        .store(addr.port(), std::sync::atomic::Ordering::Relaxed);
    // Agents of a folder archive store move packs through this listener.
    state
        .archives
        .set_base_url(config.objects_base_url(addr.port()));

    // Active projects get their agents back; in the background, since a
    // request for one of them brings its agent up on its own anyway.
    tokio::spawn(lifecycle::reconcile(state.clone()));
    // One replica, elected through a store lease, runs the idle loop and GC.
    tokio::spawn(idle::elect(state.clone()));
    tokio::spawn(prune_logs_forever(state.clone()));
    tokio::spawn(preview::access::watch(state.clone()));
    tokio::spawn(idle::share(state.clone(), config.activity_interval));
    tokio::spawn(idle::run(
        state.clone(),
        config.idle_hibernate_minutes,
        config.activity_interval,
    ));
    // Scheduled snapshots, retention and pack collection, on the elected replica.
    tokio::spawn(lifecycle::upkeep::run(state.clone()));

    // Preview hosts are dispatched ahead of the API's router and middleware.
    let app = api::router(state.clone());
    let front: server::Front = Arc::new(preview::front(state.clone()));
    let fast: Option<server::Fast> = config
        .preview_fast_path
        .then(|| Arc::new(preview::fast(state.clone())) as server::Fast);
    let cancel = state.shutdown.clone();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down");
            cancel.cancel();
        }
    });
    let limits = server::Limits {
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
        max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
        max_connections_per_ip: usize::try_from(config.max_connections_per_ip)
            .unwrap_or(usize::MAX),
        trusted_proxies: config.trusted_proxies.clone(),
        refused: state
            .metrics
            .refused
            .get_or_create(&metrics::ReasonLabels {
                reason: "connections".into(),
            })
            .clone(),
        open: state.metrics.open_connections.clone(),
    };
    let grace = Duration::from_secs(config.grace_secs);
    let threads = match config.http_threads {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let server = tokio::spawn(server::serve(
        listener,
        server::Services { app, front, fast },
        limits,
        cancel,
        grace,
        threads,
    ));
    announce(&config, &state, addr);
    let threads = server
        .await
        .context("server task failed")?
        .context("cannot start the serving threads")?;
    state.runtime.shutdown().await;
    // What requests left on the serving threads (agent clients, pooled
    // connections) was used up to here.
    threads.release().await;
    Ok(())
}

/// Prints the `listening on` line and, in local mode, the demo URL with an admin token.
fn announce(config: &Config, state: &AppState, addr: std::net::SocketAddr) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{addr}");
    if config.runtime == RuntimeKind::Local {
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            addr.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        // 30 days, or the longest lifetime the gateway accepts.
        let ttl = config
            .max_token_ttl
            .map_or(30 * 24 * 3600, |max| max.as_secs().min(30 * 24 * 3600));
        match state.keys.sign("admin", &["*"], ttl) {
            Ok(token) => {
                let _ = writeln!(out, "demo: http://{host}:{}/?token={token}", addr.port());
            }
            Err(error) => tracing::error!(%error, "cannot sign the admin token"),
        }
    }
    let _ = out.flush();
}

/// Everything the handlers share, from the config.
pub async fn build_state(config: &Config) -> anyhow::Result<AppState> {
    build_state_with(config, None).await
}

/// [`build_state`], with `runtime` instead of the one the config names when
/// given: the fast test tier drives the router in process against a fake
/// runtime (`gateway/tests/router.rs`).
pub async fn build_state_with(
    config: &Config,
    runtime: Option<Arc<dyn runtime::Runtime>>,
) -> anyhow::Result<AppState> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let configured = match &config.secret_file {
        Some(path) => Some(auth::read_secret_file(path)?),
        None => config.secret.clone(),
    };
    let secret = auth::load_or_create_secret(configured.as_deref(), &config.data_dir)?;
    let (store, postgres): (Arc<dyn Store>, _) = match &config.database_url {
        Some(url) => {
            let pg = Arc::new(store::postgres::PostgresStore::connect(url).await?);
            (pg.clone(), Some((pg, url)))
        }
        None => (
            Arc::new(
                store::sqlite::SqliteStore::open(&config.data_dir.join("state.sqlite3"))
                    .context("cannot open the state store")?,
            ),
            None,
        ),
    };
    restrict_data_dir(&config.data_dir)?;
    let runtime = match runtime {
        Some(runtime) => runtime,
        None => configured_runtime(config, &secret).await?,
    };
    let archives = archive_store::ArchiveStore::new(config.archive_location(), &secret)?;
    archives
        .ready()
        .await
        .context("cannot prepare the archive store")?;
    let templates = match config.templates_dir() {
        Some(dir) => {
            let data_dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || templates::build(&dir, &data_dir)).await??
        }
        None => Vec::new(),
    };
    let metrics = Arc::new(metrics::Metrics::new());
    // A name of this process alone, for its leases: the pod's name (or the
    // machine's) and a random part, since a restarted pod keeps its name.
    let replica = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into()),
        hex::encode(rand::random::<[u8; 4]>())
    );
    let leases = lease::Leases::new(
        store.clone(),
        &replica,
        Duration::from_secs(config.lease_secs),
    );
    let write_gates = state::WriteGates::new(store.clone());
    let shutdown = tokio_util::sync::CancellationToken::new();
    // Replicas on one database see each other's project events.
    let events = match postgres {
        Some((pg, url)) => events::Events::relayed(pg, url, &replica, shutdown.clone()),
        None => events::Events::default(),
    };
    Ok(AppState::new(state::Shared {
        preview: Arc::new(preview_state::PreviewState::new(&metrics)),
        manifest_packs: Arc::default(),
        recent_manifests: Arc::default(),
        metrics,
        config: Arc::new(config.clone()),
        keys: auth::Keys::new(&secret, config.max_token_ttl),
        store,
        runtime,
        agents: agent_client::AgentPool::default(),
        events,
        locks: state::ProjectLocks::new(leases.clone()),
        leases,
        leader: Arc::default(),
        archives: Arc::new(archives),
        templates: Arc::new(templates),
        shutdown,
        listen_port: Arc::default(),
        activity: Arc::new(activity::Activity::new(
            std::time::Instant::now(),
            config.activity_interval,
        )),
        statuses: state::StatusCache::default(),
        write_gates,
    }))
}

/// The runtime the config names.
async fn configured_runtime(
    config: &Config,
    secret: &[u8],
) -> anyhow::Result<Arc<dyn runtime::Runtime>> {
    Ok(match config.runtime {
        RuntimeKind::Local => Arc::new(
            runtime::local::LocalRuntime::new(
                &config.data_dir,
                config.agent_bin(),
                config.isolate_projects,
                config.project_uid_base,
            )
            .context("cannot prepare the local runtime")?
            .with_terminal_keep_secs(config.terminal_keep_secs)
            .with_local_reads(config.local_reads),
        ),
        RuntimeKind::Kubernetes => {
            let mut settings = runtime::kubernetes::Settings::new(
                &config.kubernetes,
                &config.k8s_namespace_prefix,
                &config.agent_image,
                secret,
            )
            .map_err(anyhow::Error::msg)?;
            settings.gateway_port = config.listen.port();
            Arc::new(runtime::kubernetes::KubernetesRuntime::connect(settings).await?)
        }
    })
}

/// The data dir holds the secret, the state store and every local project:
/// only the gateway's user may enter it (0700), and the state store's files
/// are 0600 (SQLite creates them with the umask's mode).
fn restrict_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let private = std::fs::Permissions::from_mode(0o700);
    std::fs::set_permissions(dir, private.clone())
        .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
    // Made by earlier versions with the umask's 0755; the binary now runs
    // with umask 077, but folders already there keep their mode.
    for name in ["archives", "templates"] {
        let path = dir.join(name);
        if path.is_dir() {
            std::fs::set_permissions(&path, private.clone())
                .with_context(|| format!("cannot restrict {}", path.display()))?;
        }
    }
    for name in ["state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm"] {
        let path = dir.join(name);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
        }
    }
    Ok(())
}

/// Removes command-log entries older than the retention, and expired share
/// links and preview codes, hourly, on the elected replica.
async fn prune_logs_forever(state: AppState) {
    let keep = chrono::Duration::days(state.config.log_retention_days as i64);
    let mut last: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = state.shutdown.cancelled() => return,
        }
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
        if !due || !state.leader.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        last = Some(std::time::Instant::now());
        match state.store.prune_logs(chrono::Utc::now() - keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "command log pruned"),
            Err(error) => {
                tracing::warn!(error = %crate::error::Chain(&error), "cannot prune the command log")
            }
        }
        if let Err(error) = state.store.prune_previews(chrono::Utc::now()).await {
            tracing::warn!(error = %crate::error::Chain(&error), "cannot prune expired share links and preview codes");
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
