//! Named background processes (dev servers on one machine): each runs in its
//! own process group with stdout and stderr on one pipe, so their lines
//! interleave exactly as written, read by a thread into a 1 MiB [`Log`] that
//! clients read and follow by offset.
//!
//! The log is not held: a dev server never blocks on a slow log reader; a
//! reader that falls more than the ring behind sees the offsets jump.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::ring::Log;
use super::spawn;
use crate::error::{Error, Result};

/// Size of each process's log ring.
pub(crate) const RING_BYTES: usize = 1 << 20;
/// Default time between SIGTERM and SIGKILL on stop.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// How long the log may stay open after the leader exited (children still
/// holding the pipe) before the exit is reported anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// What a client asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct StartSpec {
    pub(crate) name: String,
    pub(crate) argv: Vec<String>,
    pub(crate) cwd: PathBuf,
    pub(crate) env: HashMap<String, String>,
}

/// A snapshot of one process.
#[derive(Debug, Clone)]
pub(crate) struct Info {
    pub(crate) name: String,
    pub(crate) pid: u32,
    /// `None` while running.
    pub(crate) exit: Option<i32>,
    pub(crate) started_unix_ms: i64,
    pub(crate) log_end: u64,
}

pub(crate) struct Procs {
    map: Mutex<HashMap<String, Arc<Proc>>>,
    /// Most processes running at once.
    max: usize,
    shutdown: CancellationToken,
}

pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) pid: u32,
    started_unix_ms: i64,
    pub(crate) log: Arc<Log>,
    /// The leader's exit code as soon as it is known.
    leader_exit: watch::Sender<Option<i32>>,
}

impl Procs {
    pub(crate) fn new(max: usize, shutdown: CancellationToken) -> Arc<Procs> {
        Arc::new(Procs {
            map: Mutex::new(HashMap::new()),
            max,
            shutdown,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Proc>>> {
        // Single inserts and removes keep the map consistent across a panic.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `spec`; a running process of that name is `AlreadyExists`,
    /// an ended one is replaced.
    pub(crate) fn start(&self, spec: StartSpec) -> Result<Arc<Proc>> {
        if self.shutdown.is_cancelled() {
            return Err(Error::Unavailable("the agent is shutting down".into()));
        }
        validate_name(&spec.name)?;
        let mut map = self.lock();
        if let Some(p) = map.get(&spec.name)
            && p.running()
        {
            return Err(Error::AlreadyExists(format!(
                "background process {}",
                spec.name
            )));
        }
        let running = map.values().filter(|p| p.running()).count();
        if running >= self.max {
            return Err(Error::LimitReached(format!(
                "{running} background processes are running, the most this agent allows; stop one first"
            )));
        }
        let mut cmd = spawn::command(&spec.argv, &spec.cwd, &spec.env)?;
        // One pipe for both streams keeps their order exactly as written.
        let (reader, writer) = std::io::pipe()?;
        cmd.stdout(writer.try_clone()?)
            .stderr(writer)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| spawn_error(&spec.argv[0], e))?;
        // The command holds our copies of the pipe's write end: close them,
        // or the log would never see its end.
        drop(cmd);
        let pid = child.id().unwrap_or(0);
        let log = Log::new(RING_BYTES, None);
        let proc = Arc::new(Proc {
            name: spec.name.clone(),
            pid,
            started_unix_ms: super::now_unix_ms(),
            log: log.clone(),
            leader_exit: watch::channel(None).0,
        });

        let span = tracing::info_span!("background", name = %spec.name, pid);
        let (read_done_tx, read_done) = oneshot::channel::<()>();
        {
            let span = span.clone();
            let log = log.clone();
            std::thread::Builder::new()
                .name("bg-read".into())
                .spawn(move || {
                    let _g = span.enter();
                    log.pump(reader);
                    let _ = read_done_tx.send(());
                })
                .map_err(Error::Io)?;
        }
        let p = proc.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let code = match child.wait().await {
                    Ok(status) => exit_code(status),
                    Err(error) => {
                        tracing::warn!(%error, "cannot wait for the background process");
                        -1
                    }
                };
                p.leader_exit.send_replace(Some(code));
                if tokio::time::timeout(DRAIN_AFTER_EXIT, read_done)
                    .await
                    .is_err()
                {
                    tracing::debug!(
                        "log still open after exit (children hold it); reporting the exit"
                    );
                }
                p.log.finish(code);
                tracing::info!(code, "background process exited");
            },
            span.clone(),
        ));
        tracing::info!(parent: &span, argv = ?spec.argv, "background process started");
        map.insert(spec.name, proc.clone());
        Ok(proc)
    }

    pub(crate) fn get(&self, name: &str) -> Result<Arc<Proc>> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("background process {name}")))
    }

    pub(crate) fn list(&self) -> Vec<Info> {
        let mut v: Vec<Info> = self.lock().values().map(|p| p.info()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Stops `name`: SIGTERM to its whole group, SIGKILL after `grace`;
    /// answers once the leader exited and the group is gone (or killed).
    pub(crate) async fn stop(&self, name: &str, grace: Duration) -> Result<Info> {
        let p = self.get(name)?;
        p.stop(grace).await;
        Ok(p.info())
    }

    /// Stops every process (agent shutdown).
    pub(crate) async fn stop_all(&self, grace: Duration) {
        let all: Vec<Arc<Proc>> = self.lock().values().cloned().collect();
        futures::future::join_all(all.iter().map(|p| p.stop(grace))).await;
    }
}

impl Proc {
    pub(crate) fn running(&self) -> bool {
        self.leader_exit.borrow().is_none()
    }

    pub(crate) fn info(&self) -> Info {
        Info {
            name: self.name.clone(),
            pid: self.pid,
            exit: self.log.exit().or(*self.leader_exit.borrow()),
            started_unix_ms: self.started_unix_ms,
            log_end: self.log.bounds().1,
        }
    }

    async fn stop(&self, grace: Duration) {
        if !self.running() && !spawn::group_alive(self.pid) {
            return;
        }
        let _ = spawn::signal_group(self.pid, libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        // The group outlives its leader when children ignore SIGTERM; poll
        // for it (there is no event for "process group empty").
        while (self.running() || spawn::group_alive(self.pid))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.running() || spawn::group_alive(self.pid) {
            tracing::info!(name = %self.name, "still running after SIGTERM; SIGKILL");
            let _ = spawn::signal_group(self.pid, libc::SIGKILL);
        }
        let mut exit = self.leader_exit.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), exit.wait_for(|e| e.is_some())).await;
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT * 2, self.log.finished()).await;
    }
}

/// Names are keys in URLs and logs: printable, no slashes, at most 128 bytes.
fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(Error::InvalidArgument(format!(
            "bad background process name {name:?}: 1 to 128 printable characters, no '/'"
        )));
    }
    Ok(())
}

/// The exit code, or -1 when a signal ended the process.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(-1)
}

/// Maps a spawn failure: a missing program is the client's mistake.
pub(crate) fn spawn_error(program: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::InvalidArgument(format!("program not found: {program}"))
        }
        std::io::ErrorKind::PermissionDenied => {
            Error::InvalidArgument(format!("program not executable: {program}"))
        }
        _ => Error::Io(e),
    }
}
