//! Exec into a pod's container over the Kubernetes WebSocket protocol
//! (kube-rs offers `v5.channel.k8s.io` first and falls back to `v4`): an
//! interactive TTY session with resize and the exit code, or a one-shot
//! command whose output is read to the end after its stdin was closed.

use std::time::Instant;

use bytes::Bytes;
use futures::SinkExt as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Api;
use kube::api::{AttachParams, TerminalSize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use super::pods::Kube;
use crate::error::{Error, Result};
use crate::runtime::{ExecOutput, ShellSession};

/// Chunk size of output reads; also bounds each output message.
const CHUNK: usize = 32 * 1024;

/// Opens a TTY exec session running `argv` (a login shell when empty).
pub(crate) async fn open_shell(
    kube: &Kube,
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    argv: Vec<String>,
    cols: u16,
    rows: u16,
) -> Result<ShellSession> {
    let argv = if argv.is_empty() {
        // bash when the image has it, else sh; both as login shells in the
        // container's working directory.
        vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "command -v bash >/dev/null && exec bash -l || exec sh -l".to_owned(),
        ]
    } else {
        argv
    };
    let params = AttachParams::interactive_tty().container(container);
    let mut proc = kube
        .call(&format!("exec into {pod}"), pods.exec(pod, argv, &params))
        .await?;
    let mut stdin = proc
        .stdin()
        .ok_or_else(|| Error::internal("exec gave no stdin"))?;
    let mut stdout = proc
        .stdout()
        .ok_or_else(|| Error::internal("exec gave no stdout"))?;
    let mut sizes = proc
        .terminal_size()
        .ok_or_else(|| Error::internal("exec gave no tty"))?;
    let status = proc
        .take_status()
        .ok_or_else(|| Error::internal("exec gave no status"))?;

    // The first size goes out before any keystroke, so the shell draws its
    // prompt for the right width.
    let _ = sizes
        .send(TerminalSize {
            width: cols,
            height: rows,
        })
        .await;

    let (input_tx, mut input_rx) = mpsc::channel::<Bytes>(64);
    let (resize_tx, mut resize_rx) = mpsc::channel::<(u16, u16)>(8);
    let (output_tx, output_rx) = mpsc::channel::<Bytes>(64);
    let (exit_tx, exit_rx) = oneshot::channel();

    tokio::spawn(async move {
        while let Some(keys) = input_rx.recv().await {
            if stdin.write_all(&keys).await.is_err() {
                return;
            }
        }
        // The browser is gone for good: close stdin (a v5 CLOSE frame); the
        // output keeps being read until the process ends.
        let _ = stdin.shutdown().await;
    });
    tokio::spawn(async move {
        while let Some((cols, rows)) = resize_rx.recv().await {
            if sizes
                .send(TerminalSize {
                    width: cols,
                    height: rows,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // A full queue waits: the gateway reads as fast as the
                    // browser takes output, and so does the exec stream.
                    if output_tx
                        .send(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        drop(output_tx);
        let code = exit_code(status.await.as_ref());
        let _ = exit_tx.send(code);
        // Keeps the exec connection's task alive until here.
        drop(proc);
    });

    Ok(ShellSession {
        input: input_tx,
        resize: resize_tx,
        output: output_rx,
        exit: exit_rx,
    })
}

/// Runs a command to its end: stdin written then closed, stdout and stderr
/// collected, killed (by closing the connection) after `timeout_ms`.
// Eight plain arguments at its one call site; this pod-exec path goes away
// when dev pods run the agent (issue 11), so no struct is made for it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    kube: &Kube,
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    argv: Vec<String>,
    input: Vec<u8>,
    timeout_ms: u32,
    max_output: u64,
) -> Result<ExecOutput> {
    let started = Instant::now();
    // stdin is attached only when there is input. Closing it races with a
    // process that already ended: kube-rs then may drop the exit status
    // (FIXME: reported as -1); without input there is nothing to close.
    let with_stdin = !input.is_empty();
    let params = AttachParams::default()
        .container(container)
        .stdin(with_stdin)
        .stdout(true)
        .stderr(true);
    let mut proc = kube
        .call(&format!("exec into {pod}"), pods.exec(pod, argv, &params))
        .await?;
    let mut stdin = proc.stdin();
    let mut stdout = proc
        .stdout()
        .ok_or_else(|| Error::internal("exec gave no stdout"))?;
    let mut stderr = proc
        .stderr()
        .ok_or_else(|| Error::internal("exec gave no stderr"))?;
    let status = proc
        .take_status()
        .ok_or_else(|| Error::internal("exec gave no status"))?;

    let work = async {
        let feed = async {
            if let Some(stdin) = stdin.as_mut() {
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
        };
        let (_, out, err) = tokio::join!(
            feed,
            read_capped(&mut stdout, max_output),
            read_capped(&mut stderr, max_output)
        );
        let (out, out_cut) = out?;
        let (err, err_cut) = err?;
        let code = exit_code(status.await.as_ref());
        Ok::<_, Error>((code, out, err, out_cut || err_cut))
    };
    let deadline = std::time::Duration::from_millis(u64::from(timeout_ms.max(1)));
    let result = if timeout_ms == 0 {
        Ok(work.await)
    } else {
        tokio::time::timeout(deadline, work).await
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(Ok((code, stdout, stderr, truncated))) => Ok(ExecOutput {
            exit_code: code.unwrap_or(-1),
            stdout,
            stderr,
            duration_ms,
            timed_out: false,
            truncated,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            proc.abort();
            Ok(ExecOutput {
                exit_code: -1,
                duration_ms,
                timed_out: true,
                ..ExecOutput::default()
            })
        }
    }
}

/// Reads `r` to its end, keeping at most `max` bytes (the rest is read and
/// dropped, so the process never blocks on a full pipe); `true` when cut.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max: u64,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    (&mut *r).take(max).read_to_end(&mut kept).await?;
    let dropped = tokio::io::copy(r, &mut tokio::io::sink()).await?;
    Ok((kept, dropped > 0))
}

/// The exit code in the status the API server sends on the error channel:
/// `Success` is 0; `NonZeroExitCode` carries it in a cause `ExitCode`.
pub(crate) fn exit_code(status: Option<&Status>) -> Option<i32> {
    let status = status?;
    if status.status.as_deref() == Some("Success") {
        return Some(0);
    }
    if status.reason.as_deref() == Some("NonZeroExitCode") {
        return status
            .details
            .as_ref()?
            .causes
            .iter()
            .flatten()
            .find(|c| c.reason.as_deref() == Some("ExitCode"))
            .and_then(|c| c.message.as_deref()?.parse().ok());
    }
    None
}
