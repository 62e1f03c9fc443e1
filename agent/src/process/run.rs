//! Run to completion: a command with stdin, a timeout and capped output.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use super::background::spawn_error;
use super::spawn;
use crate::error::Result;

pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_MAX_OUTPUT: usize = 1 << 20;
/// How long stdout/stderr may stay open after the process exited (a child it
/// left running still holds them) before we stop reading.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default)]
pub(crate) struct Spec {
    pub(crate) argv: Vec<String>,
    pub(crate) cwd: PathBuf,
    pub(crate) env: HashMap<String, String>,
    pub(crate) stdin: Vec<u8>,
    pub(crate) timeout: Duration,
    pub(crate) max_output: usize,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// -1 when a signal or the timeout ended the process.
    pub(crate) exit_code: i32,
    pub(crate) signal: i32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) stdout_truncated: bool,
    pub(crate) stderr_truncated: bool,
    pub(crate) timed_out: bool,
    pub(crate) duration: Duration,
}

/// Runs `spec` to completion. At the timeout the whole process group gets
/// SIGKILL. Output past the cap is read and discarded, so the process never
/// blocks on a full pipe.
pub(crate) async fn run(
    spec: Spec,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<Outcome> {
    let started = Instant::now();
    let mut cmd = spawn::command(&spec.argv, &spec.cwd, &spec.env)?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if !spec.stdin.is_empty() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| spawn_error(&spec.argv[0], e))?;
    let pgid = child.id().unwrap_or(0);
    // A client that goes away mid-run (cancel, deadline) drops this future:
    // the guard then kills the whole group, not just the leader.
    let mut group = spawn::GroupGuard::new(child.id());

    let stdin_task = child.stdin.take().map(|mut w| {
        let data = spec.stdin;
        tokio::spawn(async move {
            // A process that exits without reading its input is not an error.
            let _ = w.write_all(&data).await;
            let _ = w.shutdown().await;
        })
    });
    let out_buf = Shared::default();
    let err_buf = Shared::default();
    let out = tokio::spawn(read_capped(
        child.stdout.take(),
        spec.max_output,
        out_buf.clone(),
    ));
    let err = tokio::spawn(read_capped(
        child.stderr.take(),
        spec.max_output,
        err_buf.clone(),
    ));

    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut timed_out = false;
    let status = tokio::select! {
        s = child.wait() => Some(s?),
        _ = tokio::time::sleep_until(deadline) => { timed_out = true; None }
        _ = shutdown.cancelled() => None,
    };
    let status = match status {
        Some(s) => s,
        None => {
            let _ = spawn::signal_group(pgid, libc::SIGKILL);
            child.wait().await?
        }
    };
    // The leader ended (by itself or killed above); what it left running on
    // purpose (`cmd &`) is the caller's business.
    group.disarm();
    if let Some(t) = stdin_task {
        t.abort();
    }
    // Output written just before the exit is already in the pipes; only a
    // left-over child holding them open delays their end.
    let drain_until = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
    let (stdout, stdout_truncated) = join_capped(out, out_buf, drain_until).await;
    let (stderr, stderr_truncated) = join_capped(err, err_buf, drain_until).await;

    use std::os::unix::process::ExitStatusExt as _;
    Ok(Outcome {
        exit_code: if timed_out {
            -1
        } else {
            status.code().unwrap_or(-1)
        },
        signal: status.signal().unwrap_or(0),
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        timed_out,
        duration: started.elapsed(),
    })
}

/// What a reader collected: the bytes kept and whether some were cut.
type Shared = std::sync::Arc<std::sync::Mutex<(Vec<u8>, bool)>>;

/// Waits for a reader until `until`, then takes what it collected; a reader
/// still going (a left-over child holds the pipe) is stopped.
async fn join_capped(
    mut task: tokio::task::JoinHandle<()>,
    shared: Shared,
    until: tokio::time::Instant,
) -> (Vec<u8>, bool) {
    if tokio::time::timeout_at(until, &mut task).await.is_err() {
        task.abort();
    }
    let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *g)
}

async fn read_capped<R: AsyncRead + Unpin>(r: Option<R>, cap: usize, shared: Shared) {
    let Some(mut r) = r else { return };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
                let take = cap.saturating_sub(g.0.len()).min(n);
                g.0.extend_from_slice(&buf[..take]);
                if take < n {
                    g.1 = true;
                }
            }
        }
    }
}
