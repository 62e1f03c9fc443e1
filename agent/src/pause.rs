//! A fault hook for the crash tests (`tests/tests/crash.rs`), inert unless
//! the environment asks: with `DEVGATE_TEST_PAUSE_AT=<step>[,<step>…]`, the
//! named step stops where [`at`] is called: it logs `paused at <step>`,
//! creates the file `<step>` (holding the process id) in
//! `DEVGATE_TEST_PAUSE_DIR` when that is set, and sleeps for an hour, so that
//! a test can SIGKILL the process at exactly that point. Without the variable
//! it costs one environment read per call. The gateway has the same hook
//! for its steps; the agent inherits the variable from it.

use std::time::Duration;

/// Stops here when `step` is named in `DEVGATE_TEST_PAUSE_AT`.
pub(crate) async fn at(step: &str) {
    if wanted(step) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// [`at`] for a blocking thread.
pub(crate) fn at_blocking(step: &str) {
    if wanted(step) {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn wanted(step: &str) -> bool {
    let Some(steps) = std::env::var_os("DEVGATE_TEST_PAUSE_AT") else {
        return false;
    };
    if !steps.to_string_lossy().split(',').any(|s| s == step) {
        return false;
    }
    tracing::warn!(step, "paused at {step} (DEVGATE_TEST_PAUSE_AT)");
    if let Some(dir) = std::env::var_os("DEVGATE_TEST_PAUSE_DIR") {
        let path = std::path::Path::new(&dir).join(step);
        if let Err(error) = std::fs::write(&path, std::process::id().to_string()) {
            tracing::warn!(%error, "cannot write the pause marker {}", path.display());
        }
    }
    true
}
