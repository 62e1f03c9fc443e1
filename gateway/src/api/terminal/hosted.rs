//! Terminal sessions this gateway keeps itself, for shells a runtime runs
//! directly (a pod exec on Kubernetes) rather than as agent PTYs. They behave
//! like the agent's: an id, a ring of recent output addressed by absolute
//! offsets (reattach replays exactly what follows the client's offset), a
//! keep window after the last client leaves, and the exit code at the end.
//!
//! The ring is *held* like the agent's: while an attached client is more than
//! the ring behind, the pump stops reading the shell's output (its channel
//! fills, the exec stream backs up to the pod), so a slow client loses
//! nothing; a client that makes no progress for [`STALL_LIMIT`] is let go.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::{Notify, mpsc, watch};

use super::Attached;
use crate::agent_client::{PtyEvent, PtyInput, PtySession};
use crate::error::{Error, Result};
use crate::runtime::ShellSession;

/// Output kept for replay.
pub const RING_BYTES: usize = 1 << 20;
/// How long a session lives with no client attached.
pub const KEEP_WINDOW: Duration = Duration::from_secs(5 * 60);
/// How long the pump waits for an attached client that makes no progress.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);
/// Largest output event sent to a client.
const CHUNK: usize = 64 * 1024;

/// The sessions of this gateway, by id; cheap to clone.
#[derive(Clone, Default)]
pub struct Sessions {
    map: Arc<Mutex<HashMap<String, Arc<Session>>>>,
}

struct Session {
    project: String,
    input: mpsc::Sender<Bytes>,
    resize: mpsc::Sender<(u16, u16)>,
    log: Mutex<Log>,
    /// Bumped whenever output arrives or the session ends.
    grew: watch::Sender<u64>,
    /// Signalled whenever a client moves on (or leaves), so the pump may go on.
    drained: Notify,
}

struct Log {
    buf: VecDeque<u8>,
    /// Offset of `buf[0]`.
    start: u64,
    /// `Some` once the shell ended: its exit code (-1 when it was lost).
    exit: Option<i32>,
    /// Attached clients: id → the offset each has been sent up to.
    cursors: HashMap<u64, u64>,
    next_cursor: u64,
    /// Cursors evicted for stalling; their streams end with an error.
    evicted: Vec<u64>,
    /// When the last client left (or the session began).
    idle_since: Instant,
}

impl Log {
    fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }
}

impl Session {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Sessions {
    /// Takes over a runtime's shell; answers the new session's id.
    pub fn insert(&self, project: &str, shell: ShellSession) -> String {
        let id = format!("g{}", uuid::Uuid::new_v4().simple());
        let (grew, _) = watch::channel(0);
        let session = Arc::new(Session {
            project: project.to_owned(),
            input: shell.input,
            resize: shell.resize,
            log: Mutex::new(Log {
                buf: VecDeque::new(),
                start: 0,
                exit: None,
                cursors: HashMap::new(),
                next_cursor: 0,
                evicted: Vec::new(),
                idle_since: Instant::now(),
            }),
            grew,
            drained: Notify::new(),
        });
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), session.clone());
        tokio::spawn(pump(session.clone(), shell.output, shell.exit));
        tokio::spawn(reap(self.clone(), id.clone(), session));
        id
    }

    /// Whether `id` is a session of this gateway for `project`.
    pub fn contains(&self, project: &str, id: &str) -> bool {
        self.get(project, id).is_some()
    }

    fn get(&self, project: &str, id: &str) -> Option<Arc<Session>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|s| s.project == project).cloned()
    }

    /// Attaches from `offset` (None: the oldest byte held).
    pub fn attach(&self, project: &str, id: &str, offset: Option<u64>) -> Result<Attached> {
        let session = self
            .get(project, id)
            .ok_or_else(|| Error::NotFound(format!("terminal session {id} not found")))?;
        let (cursor, from, truncated) = {
            let mut log = session.log();
            let end = log.end();
            let wanted = offset.unwrap_or(log.start).min(end);
            let from = wanted.max(log.start);
            let cursor = log.next_cursor;
            log.next_cursor += 1;
            log.cursors.insert(cursor, from);
            (cursor, from, wanted < log.start)
        };
        let guard = CursorGuard {
            session: session.clone(),
            cursor,
        };
        let events = futures::stream::unfold(
            (guard, from, session.grew.subscribe(), false),
            |(guard, pos, mut grew, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let step = {
                        let s = &guard.session;
                        let log = s.log();
                        if log.evicted.contains(&guard.cursor) || pos < log.start {
                            Some((
                                Err(Error::Unavailable("the client fell too far behind".into())),
                                true,
                                pos,
                            ))
                        } else if pos < log.end() {
                            let skip = (pos - log.start) as usize;
                            let n = (log.buf.len() - skip).min(CHUNK);
                            let data: Vec<u8> = log.buf.range(skip..skip + n).copied().collect();
                            Some((
                                Ok(PtyEvent::Output {
                                    offset: pos,
                                    data: Bytes::from(data),
                                }),
                                false,
                                pos + n as u64,
                            ))
                        } else {
                            log.exit
                                .map(|code| (Ok(PtyEvent::Exit { code, reason: None }), true, pos))
                        }
                    };
                    match step {
                        Some((ev, done, next)) => {
                            guard.advance(next);
                            return Some((ev, (guard, next, grew, done)));
                        }
                        None => {
                            if grew.changed().await.is_err() {
                                return None;
                            }
                        }
                    }
                }
            },
        )
        .boxed();
        let (tx, mut rx) = mpsc::channel::<PtyInput>(64);
        let s = session.clone();
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                let ok = match item {
                    PtyInput::Data(d) => s.input.send(d).await.is_ok(),
                    PtyInput::Resize { cols, rows } => {
                        let size = (
                            u16::try_from(cols).unwrap_or(u16::MAX),
                            u16::try_from(rows).unwrap_or(u16::MAX),
                        );
                        s.resize.send(size).await.is_ok()
                    }
                    // An exec stream carries no signals; Ctrl-C arrives as a keystroke.
                    PtyInput::Signal(_) => true,
                };
                if !ok {
                    break;
                }
            }
        });
        Ok(Attached {
            id: id.to_owned(),
            from_offset: from,
            truncated,
            events,
            input: tx,
        })
    }

    /// What a session looks like, as the agent would describe it.
    pub fn describe(&self, project: &str, id: &str) -> Option<PtySession> {
        let s = self.get(project, id)?;
        let log = s.log();
        Some(PtySession {
            id: id.to_owned(),
            exited: log.exit.is_some(),
            exit_code: log.exit.unwrap_or_default(),
            output_start: log.start,
            output_end: log.end(),
            attached: log.cursors.len() as u32,
            ..Default::default()
        })
    }
}

/// A client's place in the log; leaving removes it and lets the pump go on.
struct CursorGuard {
    session: Arc<Session>,
    cursor: u64,
}

impl CursorGuard {
    fn advance(&self, to: u64) {
        if let Some(pos) = self.session.log().cursors.get_mut(&self.cursor) {
            *pos = to;
        }
        self.session.drained.notify_waiters();
    }
}

impl Drop for CursorGuard {
    fn drop(&mut self) {
        {
            let mut log = self.session.log();
            log.cursors.remove(&self.cursor);
            log.evicted.retain(|c| *c != self.cursor);
            if log.cursors.is_empty() {
                log.idle_since = Instant::now();
            }
        }
        self.session.drained.notify_waiters();
    }
}

/// Moves the shell's output into the ring, waiting for clients that are a
/// whole ring behind, then records the exit code.
async fn pump(
    s: Arc<Session>,
    mut output: mpsc::Receiver<Bytes>,
    exit: tokio::sync::oneshot::Receiver<Option<i32>>,
) {
    while let Some(chunk) = output.recv().await {
        let stalled_since = Instant::now();
        loop {
            let drained = s.drained.notified();
            {
                let mut log = s.log();
                let end = log.end();
                let behind = log
                    .cursors
                    .iter()
                    .filter(|(c, _)| !log.evicted.contains(c))
                    .map(|(_, pos)| end - pos)
                    .max()
                    .unwrap_or(0);
                if behind as usize + chunk.len() <= RING_BYTES.max(chunk.len()) {
                    break;
                }
                if stalled_since.elapsed() > STALL_LIMIT {
                    let lagging: Vec<u64> = log
                        .cursors
                        .iter()
                        .filter(|(_, pos)| (end - **pos) as usize + chunk.len() > RING_BYTES)
                        .map(|(c, _)| *c)
                        .collect();
                    tracing::warn!(
                        clients = lagging.len(),
                        "terminal client stalled; letting it go"
                    );
                    log.evicted.extend(lagging);
                    break;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
        }
        {
            let mut log = s.log();
            log.buf.extend(chunk.iter());
            let excess = log.buf.len().saturating_sub(RING_BYTES);
            if excess > 0 {
                log.buf.drain(..excess);
                log.start += excess as u64;
            }
        }
        s.grew.send_modify(|n| *n += 1);
    }
    let code = exit.await.ok().flatten().unwrap_or(-1);
    s.log().exit = Some(code);
    s.grew.send_modify(|n| *n += 1);
}

/// Forgets a session once it ended or stayed unattached for the keep window;
/// dropping it closes the shell's stdin, which ends the shell.
async fn reap(sessions: Sessions, id: String, s: Arc<Session>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let gone = {
            let log = s.log();
            log.cursors.is_empty()
                && (log.exit.is_some() && log.idle_since.elapsed() > Duration::from_secs(60)
                    || log.idle_since.elapsed() > KEEP_WINDOW)
        };
        if gone {
            sessions
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            tracing::info!(session = %id, "terminal session forgotten");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell made of channels: what a runtime hands over.
    fn shell() -> (
        ShellSession,
        mpsc::Receiver<Bytes>,
        mpsc::Sender<Bytes>,
        tokio::sync::oneshot::Sender<Option<i32>>,
    ) {
        let (in_tx, in_rx) = mpsc::channel(8);
        let (rs_tx, _rs_rx) = mpsc::channel(8);
        let (out_tx, out_rx) = mpsc::channel(8);
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
        std::mem::forget(_rs_rx);
        (
            ShellSession {
                input: in_tx,
                resize: rs_tx,
                output: out_rx,
                exit: exit_rx,
            },
            in_rx,
            out_tx,
            exit_tx,
        )
    }

    async fn collect(a: &mut Attached, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            match a.events.next().await {
                Some(Ok(PtyEvent::Output { data, .. })) => got.extend_from_slice(&data),
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    }

    #[tokio::test]
    async fn replay_from_offset_then_exit() {
        let sessions = Sessions::default();
        let (sh, mut input, out, exit) = shell();
        let id = sessions.insert("p", sh);
        out.send(Bytes::from_static(b"hello ")).await.unwrap();
        let mut a = sessions.attach("p", &id, Some(0)).unwrap();
        assert_eq!(collect(&mut a, 6).await, b"hello ");
        a.input
            .send(PtyInput::Data(Bytes::from_static(b"k")))
            .await
            .unwrap();
        assert_eq!(input.recv().await.unwrap(), Bytes::from_static(b"k"));
        drop(a);
        out.send(Bytes::from_static(b"world")).await.unwrap();
        // Reattach naming the 6 bytes already seen: exactly the rest.
        let mut b = sessions.attach("p", &id, Some(6)).unwrap();
        assert_eq!((b.from_offset, b.truncated), (6, false));
        assert_eq!(collect(&mut b, 5).await, b"world");
        drop(out);
        exit.send(Some(3)).unwrap();
        assert!(matches!(
            b.events.next().await,
            Some(Ok(PtyEvent::Exit {
                code: 3,
                reason: None
            }))
        ));
        assert!(b.events.next().await.is_none());
        // Another project cannot see it.
        assert!(sessions.attach("other", &id, None).is_err());
        assert!(sessions.describe("p", &id).unwrap().exited);
    }

    #[tokio::test]
    async fn a_slow_client_holds_the_shell_back_and_loses_nothing() {
        let sessions = Sessions::default();
        let (sh, _input, out, _exit) = shell();
        let id = sessions.insert("p", sh);
        let mut a = sessions.attach("p", &id, Some(0)).unwrap();
        let total = RING_BYTES * 3;
        let writer = tokio::spawn(async move {
            let chunk = Bytes::from(vec![7u8; 32 * 1024]);
            let mut sent = 0;
            while sent < total {
                out.send(chunk.clone()).await.unwrap();
                sent += chunk.len();
            }
            out
        });
        // The writer cannot get far ahead of this reader: the ring is held.
        let mut got = 0usize;
        let mut next = 0u64;
        while got < total {
            match a.events.next().await {
                Some(Ok(PtyEvent::Output { offset, data })) => {
                    assert_eq!(offset, next, "no gap, no repeat");
                    next += data.len() as u64;
                    got += data.len();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, total);
        let _out = writer.await.unwrap();
        let d = sessions.describe("p", &id).unwrap();
        assert_eq!(d.output_end, total as u64);
        assert!(d.output_start > 0, "the ring moved on");
    }
}
