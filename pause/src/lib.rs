//! A fault hook for the crash tests (`tests/tests/crash.rs`), shared by the
//! agent and the gateway, inert unless the environment asks: with
//! `DEVGATE_TEST_PAUSE_AT=<step>[,<step>…]`, the named step stops where
//! [`at`] is called: it logs `paused at <step>`, creates the file `<step>`
//! (holding the process id) in `DEVGATE_TEST_PAUSE_DIR` when that is set,
//! and sleeps for an hour, so that a test can SIGKILL the process at exactly
//! that point. The agent inherits the variable from the gateway that starts
//! it. Without the variable a call costs one environment read.
//!
//! Only debug builds (the ones the end-to-end tests start) have the hook: in
//! a build without `debug_assertions` (release) both calls do nothing and
//! the variables are not read.

#[cfg(debug_assertions)]
use std::time::Duration;

/// Stops here when `step` is named in `DEVGATE_TEST_PAUSE_AT`.
pub async fn at(step: &str) {
    #[cfg(debug_assertions)]
    if wanted(step) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

/// [`at`] for a blocking thread.
pub fn at_blocking(step: &str) {
    #[cfg(debug_assertions)]
    if wanted(step) {
        std::thread::sleep(Duration::from_secs(3600));
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

#[cfg(debug_assertions)]
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
