//! Interactive PTY sessions that outlive their clients.
//!
//! The PTY master is non-blocking and driven by the Tokio reactor, with no
//! thread per idle session: a reader task reads it (up to 64 KiB at a time)
//! into the session's [`Log`] (a held 1 MiB ring: output reaching an attached
//! client is never dropped; when the ring is full the rest waits for the
//! slowest client on a blocking thread), and hands bulk output (a wake-up
//! that fills its buffer) to a blocking thread until it goes quiet, so that
//! reading and sending run in parallel; client input is written on the task
//! that received it (waiting for the terminal to take it, which is the
//! backpressure), and a supervisor task turns the child's exit into the log's
//! end and ends the session when nobody was attached for the keep window.
//! With no thread hand-off on either side, a keystroke's echo pays no extra
//! wake-up. Clients attach with a [`Cursor`] on the log, so any number of
//! them can follow the same session, each at its own pace.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use filedescriptor::FileDescriptor;
use portable_pty::{MasterPty, PtySize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::ring::{Cursor, Log};
use super::spawn;
use crate::error::{Error, Result};

/// Size of each session's output ring.
pub(crate) const RING_BYTES: usize = 1 << 20;
/// How long a session's output may lag its shell's exit (a background job
/// still holding the terminal open) before the exit is reported anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Between SIGHUP and SIGKILL when a session is ended.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

/// What a client asks for when starting a session.
#[derive(Debug, Clone, Default)]
pub(crate) struct StartSpec {
    pub(crate) argv: Vec<String>,
    pub(crate) cwd: std::path::PathBuf,
    pub(crate) env: HashMap<String, String>,
    pub(crate) cols: u16,
    pub(crate) rows: u16,
}

/// A snapshot of a session, for listings and `started` messages.
#[derive(Debug, Clone)]
pub(crate) struct Info {
    pub(crate) id: String,
    pub(crate) pid: u32,
    pub(crate) argv: Vec<String>,
    pub(crate) cols: u16,
    pub(crate) rows: u16,
    pub(crate) created_unix_ms: i64,
    pub(crate) exit: Option<i32>,
    pub(crate) output_start: u64,
    pub(crate) output_end: u64,
    pub(crate) attached: u32,
}

/// All sessions of the agent.
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    keep: Duration,
    /// Most sessions whose program still runs.
    max: usize,
    shutdown: CancellationToken,
}

pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) pid: u32,
    argv: Vec<String>,
    created_unix_ms: i64,
    size: Mutex<(u16, u16)>,
    /// The master side; resize and foreground-group lookups go through it.
    master: Mutex<Box<dyn MasterPty + Send>>,
    /// A non-blocking duplicate of the master on the reactor, for output
    /// and input.
    io: Arc<AsyncFd<FileDescriptor>>,
    /// Input is written one message at a time in arrival order (the async
    /// mutex is fair), so keystrokes keep their order.
    input_order: tokio::sync::Mutex<()>,
    log: Arc<Log>,
    attached: watch::Sender<u32>,
    /// The child's exit code, as soon as it is known (before the output is
    /// drained); the log's own exit comes after the last byte.
    child_exit: watch::Sender<Option<i32>>,
    /// Why the session was ended (KillPty's reason), for the exit event.
    end_reason: std::sync::OnceLock<String>,
}

impl Sessions {
    pub(crate) fn new(keep: Duration, max: usize, shutdown: CancellationToken) -> Arc<Sessions> {
        Arc::new(Sessions {
            map: Mutex::new(HashMap::new()),
            keep,
            max,
            shutdown,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        // The map stays consistent across a panic (single inserts/removes).
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session: the program on a new PTY, in its own session and
    /// process group, with its helpers.
    pub(crate) fn start(self: &Arc<Self>, spec: StartSpec) -> Result<Arc<Session>> {
        if self.shutdown.is_cancelled() {
            return Err(Error::Unavailable("the agent is shutting down".into()));
        }
        let running = self
            .lock()
            .values()
            .filter(|s| s.child_exit.borrow().is_none())
            .count();
        if running >= self.max {
            return Err(Error::LimitReached(format!(
                "{running} terminal sessions are running, the most this agent allows; end one first"
            )));
        }
        let argv = if spec.argv.is_empty() {
            vec![spawn::default_shell()]
        } else {
            spec.argv
        };
        let cmd = spawn::pty_command(&argv, &spec.cwd, &spec.env)?;
        let size = PtySize {
            rows: spec.rows,
            cols: spec.cols,
            pixel_width: 0,
            pixel_height: 0,
        };
        let pair = portable_pty::native_pty_system()
            .openpty(size)
            .map_err(|e| Error::Internal(format!("cannot open a pty: {e:#}")))?;
        let child =
            pair.slave
                .spawn_command(cmd)
                .map_err(|e| match e.downcast::<std::io::Error>() {
                    Ok(io) if io.kind() == std::io::ErrorKind::NotFound => {
                        Error::InvalidArgument(format!("program not found: {}", argv[0]))
                    }
                    Ok(io) => Error::Io(io),
                    Err(e) => Error::Internal(format!("cannot start {}: {e:#}", argv[0])),
                })?;
        // Our copy of the slave side must close, or the master never sees
        // the end of the session's output.
        drop(pair.slave);
        let pid = child.process_id().unwrap_or(0);
        let io = Arc::new(nonblocking_master(pair.master.as_ref())?);

        let id = uuid::Uuid::new_v4().simple().to_string();
        let log = Log::new(RING_BYTES, Some(super::ring::STALL_LIMIT));
        let session = Arc::new(Session {
            id: id.clone(),
            pid,
            argv,
            created_unix_ms: super::now_unix_ms(),
            size: Mutex::new((spec.cols, spec.rows)),
            master: Mutex::new(pair.master),
            io: io.clone(),
            input_order: tokio::sync::Mutex::new(()),
            log: log.clone(),
            attached: watch::channel(0).0,
            child_exit: watch::channel(None).0,
            end_reason: std::sync::OnceLock::new(),
        });

        let (read_done_tx, read_done) = oneshot::channel::<()>();
        let span = tracing::info_span!("pty", session = %id, pid);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                read_output(&io, &log).await;
                let _ = read_done_tx.send(());
            },
            span.clone(),
        ));
        let (exit_tx, exit_rx) = oneshot::channel::<i32>();
        // portable-pty's own status loses the signal; its unix child is a
        // std child, whose status keeps it.
        let child: Box<dyn portable_pty::Child> = child;
        let child = child
            .downcast::<std::process::Child>()
            .map_err(|_| Error::Internal("unexpected pty child type".into()))?;
        match pidfd_waiter(pid) {
            Ok(wait) => {
                // The std handle is not needed: dropping it neither kills
                // nor reaps; the pidfd waiter reaps the child.
                drop(child);
                tokio::spawn(async move {
                    let code = wait.await.unwrap_or_else(|error| {
                        tracing::warn!(%error, "cannot wait for the pty child");
                        -1
                    });
                    let _ = exit_tx.send(code);
                });
            }
            Err(error) => {
                // Kernels before 5.3 have no pidfd: a thread waits instead.
                tracing::debug!(%error, "no pidfd; waiting in a thread");
                spawn_thread("pty-wait", span.clone(), move || {
                    let _ = exit_tx.send(wait_child(*child));
                })?;
            }
        }

        self.lock().insert(id.clone(), session.clone());
        tracing::info!(parent: &span, argv = ?session.argv, "pty session started");
        let sessions = self.clone();
        let s = session.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move { sessions.supervise(s, exit_rx, read_done).await },
            span,
        ));
        Ok(session)
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<Session>> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("pty session {id}")))
    }

    pub(crate) fn list(&self) -> Vec<Info> {
        let mut v: Vec<Info> = self.lock().values().map(|s| s.info()).collect();
        v.sort_by_key(|i| i.created_unix_ms);
        v
    }

    /// Ends a session: `signal` 0 = SIGHUP, then SIGKILL after a grace
    /// period, answering once it exited (attached clients get `reason` with
    /// the exit, when not empty); another signal is only sent. A session
    /// that already exited is forgotten.
    pub(crate) async fn kill(&self, id: &str, signal: i32, reason: &str) -> Result<Info> {
        let s = self.get(id)?;
        if s.exit().is_some() {
            self.lock().remove(id);
            return Ok(s.info());
        }
        if signal != 0 {
            s.signal_group(signal)?;
            return Ok(s.info());
        }
        if !reason.is_empty() {
            let _ = s.end_reason.set(reason.to_owned());
        }
        s.end().await;
        Ok(s.info())
    }

    /// Ends every session (agent shutdown); attached clients get the exit.
    pub(crate) async fn end_all(&self) {
        let all: Vec<Arc<Session>> = self.lock().values().cloned().collect();
        futures::future::join_all(all.iter().map(|s| s.end())).await;
    }

    /// Turns the child's exit into the log's end, then removes the session
    /// once nobody was attached for the keep window (killing it first if it
    /// still runs).
    async fn supervise(
        self: Arc<Self>,
        s: Arc<Session>,
        exit_rx: oneshot::Receiver<i32>,
        read_done: oneshot::Receiver<()>,
    ) {
        let exit_watch = {
            let s = s.clone();
            async move {
                let code = exit_rx.await.unwrap_or(-1);
                s.child_exit.send_replace(Some(code));
                // The last output may still be in the PTY: wait for the
                // reader to hit its end, within reason.
                if tokio::time::timeout(DRAIN_AFTER_EXIT, read_done)
                    .await
                    .is_err()
                {
                    tracing::debug!("output still open after exit; reporting the exit anyway");
                    s.log.release();
                }
                s.log.finish(code);
                tracing::info!(code, "pty session exited");
            }
        };
        let mut exit_task = tokio::spawn(exit_watch);
        // A JoinHandle must not be polled again once it returned.
        let mut exit_done = false;
        let mut attached = s.attached.subscribe();
        loop {
            if *attached.borrow_and_update() == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(self.keep) => {
                        if *attached.borrow() == 0 {
                            break;
                        }
                    }
                    _ = attached.changed() => {}
                    // The exit restarts the keep window: a detached client
                    // gets the whole window to come back for the exit code.
                    _ = &mut exit_task, if !exit_done => exit_done = true,
                }
            } else if attached.changed().await.is_err() {
                break;
            }
        }
        if s.exit().is_none() {
            tracing::info!("nobody attached for the keep window; ending the session");
            s.end().await;
        }
        if !exit_done {
            let _ = exit_task.await;
        }
        let mut map = self.lock();
        if map.get(&s.id).is_some_and(|x| Arc::ptr_eq(x, &s)) {
            map.remove(&s.id);
        }
    }
}

impl Session {
    pub(crate) fn info(&self) -> Info {
        let (output_start, output_end) = self.log.bounds();
        let (cols, rows) = *self.size.lock().unwrap_or_else(|p| p.into_inner());
        Info {
            id: self.id.clone(),
            pid: self.pid,
            argv: self.argv.clone(),
            cols,
            rows,
            created_unix_ms: self.created_unix_ms,
            exit: self.exit(),
            output_start,
            output_end,
            attached: *self.attached.borrow(),
        }
    }

    /// Why the session was ended, if KillPty said ("" otherwise).
    pub(crate) fn end_reason(&self) -> String {
        self.end_reason.get().cloned().unwrap_or_default()
    }

    /// The exit code once the session's output is complete.
    pub(crate) fn exit(&self) -> Option<i32> {
        self.log.exit()
    }

    /// Registers a client: a cursor at `offset` (`None` = the oldest byte
    /// held) and an attach guard that counts it for the keep window.
    pub(crate) fn attach(self: &Arc<Self>, offset: Option<u64>) -> Result<(Attached, u64, bool)> {
        let (_, end) = self.log.bounds();
        if let Some(o) = offset
            && o > end
        {
            return Err(Error::InvalidArgument(format!(
                "offset {o} is past the session's output ({end} bytes)"
            )));
        }
        let (cursor, from, truncated) = self.log.cursor(offset);
        self.attached.send_modify(|n| *n += 1);
        Ok((
            Attached {
                session: self.clone(),
                cursor,
            },
            from,
            truncated,
        ))
    }

    /// Writes client keystrokes to the terminal, after any earlier input;
    /// waits while the program does not read its input (backpressure to
    /// the client).
    pub(crate) async fn input(&self, data: Vec<u8>) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let _order = self.input_order.lock().await;
        let ended = || Error::FailedPrecondition("the session has ended".into());
        let mut rest = &data[..];
        while !rest.is_empty() {
            let mut ready = self.io.writable().await.map_err(|_| ended())?;
            match ready.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), rest)?)) {
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => return Err(ended()),
                // Not ready after all: `try_io` cleared the readiness; wait again.
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Resizes the terminal; the caller checked the bounds.
    pub(crate) fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        let master = self.master.lock().unwrap_or_else(|p| p.into_inner());
        master
            .resize(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|e| Error::Internal(format!("resize: {e:#}")))?;
        *self.size.lock().unwrap_or_else(|p| p.into_inner()) = (cols, rows);
        Ok(())
    }

    /// Sends `signal` to the terminal's foreground process group (what a
    /// key like Ctrl-C reaches), falling back to the session's own group.
    pub(crate) fn signal_foreground(&self, signal: i32) -> Result<()> {
        let fg = {
            let master = self.master.lock().unwrap_or_else(|p| p.into_inner());
            master.process_group_leader()
        };
        match fg.and_then(|p| u32::try_from(p).ok()) {
            Some(pgid) => spawn::signal_group(pgid, signal),
            None => self.signal_group(signal),
        }
    }

    fn signal_group(&self, signal: i32) -> Result<()> {
        spawn::signal_group(self.pid, signal)
    }

    /// SIGHUP to the session's and the foreground group, SIGKILL after the
    /// grace period; returns once the output is complete.
    async fn end(&self) {
        let mut child_exit = self.child_exit.subscribe();
        if child_exit.borrow().is_none() {
            let _ = self.signal_foreground(libc::SIGHUP);
            let _ = self.signal_group(libc::SIGHUP);
            let exited =
                tokio::time::timeout(KILL_GRACE, child_exit.wait_for(|e| e.is_some())).await;
            if exited.is_err() {
                let _ = self.signal_foreground(libc::SIGKILL);
                let _ = self.signal_group(libc::SIGKILL);
            }
        }
        // Nobody has to wait for slow readers any more: drain and finish.
        self.log.release();
        let _ = tokio::time::timeout(KILL_GRACE + DRAIN_AFTER_EXIT, self.log.finished()).await;
    }
}

/// One attached client: its cursor, and its place in the attach count.
pub(crate) struct Attached {
    session: Arc<Session>,
    pub(crate) cursor: Cursor,
}

impl Attached {
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.session
            .attached
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

fn spawn_thread(name: &str, span: tracing::Span, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _g = span.enter();
            f()
        })
        .map(|_| ())
        .map_err(Error::Io)
}

/// A non-blocking duplicate of `master`, registered with the reactor.
/// `O_NONBLOCK` belongs to the open file description, which the duplicate
/// shares with portable-pty's handle (kept for resizes and the foreground
/// group, neither of which reads or writes).
fn nonblocking_master(master: &(dyn MasterPty + Send)) -> Result<AsyncFd<FileDescriptor>> {
    /// portable-pty lends the master only as a descriptor number.
    struct Number(RawFd);
    impl AsRawFd for Number {
        fn as_raw_fd(&self) -> RawFd {
            self.0
        }
    }
    let raw = master
        .as_raw_fd()
        .ok_or_else(|| Error::Internal("the pty master has no descriptor".into()))?;
    let fd = FileDescriptor::dup(&Number(raw))
        .and_then(|mut fd| fd.set_non_blocking(true).map(|()| fd))
        .map_err(|e| Error::Internal(format!("cannot set up the pty master: {e:#}")))?;
    Ok(super::reactor::register(
        fd,
        tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
    )?)
}

/// Reads the master into `log` until the slave side is closed by every
/// process (EIO) or the master fails. The buffer starts at 4 KiB, so an idle
/// session costs little memory, and doubles up to 64 KiB whenever a wake-up
/// fills it, so a busy one is read in large chunks (then by [`read_bulk`]).
async fn read_output(io: &AsyncFd<FileDescriptor>, log: &Arc<Log>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok(mut ready) = io.readable().await else {
            return;
        };
        let (filled, ended) = drain(io.get_ref(), &mut buf);
        if filled < buf.len() && !ended {
            // `drain` stopped at EAGAIN.
            ready.clear_ready();
        }
        let taken = log.try_push(&buf[..filled]);
        if taken < filled {
            // A held ring is full: wait for the slowest client on a blocking
            // thread (stalled clients are dropped there after the limit).
            let rest = buf[taken..filled].to_vec();
            let log = log.clone();
            if tokio::task::spawn_blocking(move || log.push(&rest))
                .await
                .is_err()
            {
                return;
            }
        }
        if ended {
            return;
        }
        if filled == buf.len() {
            // Bulk output (a build log, `cat` of a file): read it on a
            // blocking thread while it lasts, in parallel with the workers
            // that send it on. Keystroke echoes stay on the reactor, with no
            // hand-off between threads.
            let Ok(fd) = io.get_ref().try_clone() else {
                return;
            };
            let log = log.clone();
            let mut taken = std::mem::take(&mut buf);
            grow(&mut taken);
            match tokio::task::spawn_blocking(move || {
                let ended = read_bulk(&fd, &log, &mut taken);
                (ended, taken)
            })
            .await
            {
                Ok((false, back)) => buf = back,
                Ok((true, _)) | Err(_) => return,
            }
        }
    }
}

/// Largest read buffer of a session's output.
const MAX_READ: usize = 64 * 1024;

/// Doubles a read buffer that a wake-up filled, up to [`MAX_READ`].
fn grow(buf: &mut Vec<u8>) {
    if buf.len() < MAX_READ {
        buf.resize(buf.len() * 2, 0);
    }
}

/// Reads the non-blocking master into `buf` until it is full, nothing is
/// left (EAGAIN) or the terminal closed. One chunk for all of it: a PTY hands
/// out at most 4 KiB per read, and one push means one message downstream.
/// Returns the bytes read and whether the terminal closed (EIO once every
/// process closed it).
fn drain(fd: &FileDescriptor, buf: &mut [u8]) -> (usize, bool) {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::read(fd, &mut buf[filled..]) {
            Ok(0) => return (filled, true),
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => break,
            Err(error) => {
                tracing::debug!(%error, "output read ended");
                return (filled, true);
            }
        }
    }
    (filled, false)
}

/// How long the bulk reader waits for more output before handing the
/// session back to the reactor.
const BULK_IDLE_MS: i64 = 20;

/// Reads the master into `log` on a blocking thread while output keeps
/// coming: all there is, then `poll` for more, until nothing came for
/// [`BULK_IDLE_MS`] (`false`) or the terminal closed (`true`).
fn read_bulk(fd: &FileDescriptor, log: &Log, buf: &mut Vec<u8>) -> bool {
    let idle = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: BULK_IDLE_MS * 1_000_000,
    };
    loop {
        let (filled, ended) = drain(fd, buf);
        if filled > 0 {
            log.push(&buf[..filled]);
        }
        if ended {
            return true;
        }
        if filled == buf.len() {
            grow(buf);
            continue;
        }
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&idle)) {
            Ok(0) => return false,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(error) => {
                tracing::debug!(%error, "output poll failed");
                return true;
            }
        }
    }
}

/// A future that resolves to the exit code of our child `pid` once it
/// exited (reaping it), driven by a pidfd on the Tokio reactor: no thread.
fn pidfd_waiter(pid: u32) -> std::io::Result<impl Future<Output = std::io::Result<i32>> + Send> {
    use rustix::process::{Pid, PidfdFlags, WaitOptions};
    let p = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("bad pid {pid}")))?;
    let fd = rustix::process::pidfd_open(p, PidfdFlags::empty())?;
    let fd = super::reactor::register(fd, tokio::io::Interest::READABLE)?;
    Ok(async move {
        loop {
            let mut ready = fd.readable().await?;
            match rustix::process::waitpid(Some(p), WaitOptions::NOHANG)? {
                Some((_, status)) => {
                    return Ok(status
                        .exit_status()
                        .or_else(|| status.terminating_signal().map(|s| 128 + s))
                        .unwrap_or(-1));
                }
                None => ready.clear_ready(),
            }
        }
    })
}

/// Waits for the child and maps its status to one exit code: the code, or
/// 128 + the signal that ended it (the shell convention).
fn wait_child(mut child: std::process::Child) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match child.wait() {
        Ok(status) => status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1),
        Err(error) => {
            tracing::warn!(%error, "cannot wait for the pty child");
            -1
        }
    }
}
