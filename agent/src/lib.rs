//! The agent: one gRPC server with the Filesystem, Process, Git, Archive,
//! Snapshot and Health services over a directory root (the project volume). The library
//! exposes only what `main.rs` needs: the config, tracing, the init,
//! `copy_self` (the init-container step) and `serve`; every module is private, so the compiler reports dead code.

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

pub use config::{Config, copy_self, init_tracing};

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

/// Extracts `zip` into the directory `root` with the upload caps of a
/// default gateway (50,000 entries, 1 GiB, ratio 100), as `POST /archive`
/// does; `Ok` with the files written, or the error's text. For the fuzz
/// target (`fuzz/fuzz_targets/zip.rs`) only.
#[cfg(feature = "fuzzing")]
pub fn fuzz_extract(root: &std::path::Path, zip: Vec<u8>) -> Result<u64, String> {
    let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority())
        .map_err(|e| e.to_string())?;
    let limits = archive::extract::Limits {
        max_entries: 50_000,
        max_bytes: 1 << 30,
        max_ratio: 100,
    };
    archive::extract::extract(
        &dir,
        "",
        archive::extract::Spool::Memory(bytes::Bytes::from(zip)),
        limits,
    )
    .map(|s| s.files)
    .map_err(|e| e.to_string())
}

/// Validates the config, binds the listener, and serves until SIGTERM/SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    config::serve(config).await
}
