//! The agent: one gRPC server with the Filesystem, Process, Git, Archive and
//! Health services over a directory root (the project volume).

pub mod archive;
pub mod cancel;
pub mod config;
pub mod error;
pub mod fs;
pub mod git;
pub mod init;
pub mod paths;
pub mod process;
pub mod s3;
pub mod watch;

pub use config::{Config, init_tracing};

use std::sync::Arc;

/// Everything the services share.
#[derive(Clone)]
pub struct State {
    pub config: Arc<Config>,
    pub root: Arc<paths::Root>,
    /// Cancelled when the agent begins shutting down.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// In-flight writes and uploads that shutdown waits for.
    pub tasks: tokio_util::task::TaskTracker,
    /// The file watcher actor (see `watch`).
    pub watcher: watch::Watcher,
}

/// Validates the config, binds the listener, and serves until SIGTERM/SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    config::serve(config).await
}
