//! The agent: one gRPC server with the Filesystem, Process, Git, Archive,
//! Snapshot and Health services over a directory root (the project volume). The library
//! exposes only what `main.rs` needs: the config, tracing, the init and
//! `serve`; every module is private, so the compiler reports dead code.

mod archive;
mod cancel;
mod config;
mod error;
mod fs;
mod git;
pub mod init;
mod process;
mod snapshot;
mod watch;

pub use config::{Config, init_tracing};

use std::sync::Arc;

/// Everything the services share.
#[derive(Clone)]
pub(crate) struct State {
    pub(crate) config: Arc<Config>,
    pub(crate) root: Arc<devgate_fs::Root>,
    /// Cancelled when the agent begins shutting down.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    /// In-flight writes, snapshots and restores that shutdown waits for.
    pub(crate) tasks: tokio_util::task::TaskTracker,
    /// The file watcher actor (see `watch`).
    pub(crate) watcher: watch::Watcher,
}

/// Validates the config, binds the listener, and serves until SIGTERM/SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    config::serve(config).await
}
