//! The output log of a PTY session or background process: a fixed-size ring
//! buffer addressed by absolute byte offsets, one producer thread, and any
//! number of async cursors that follow it.
//!
//! Offsets count every byte the process ever produced, so a client that
//! names the offset it already has gets exactly the bytes after it, or learns
//! that the ring no longer reaches back that far. Readers never get a copy of
//! their own: each cursor reads straight from the ring by offset, so a slow
//! client only makes its own stream lag, it never makes the agent buffer
//! without bound.
//!
//! A log may be *held*: then a registered cursor's unread bytes are never
//! overwritten; the producer waits (as a real terminal's flow control would
//! stall the program) until the slowest attached cursor made room, and
//! evicts a cursor that made no progress for [`STALL_LIMIT`]. PTY sessions
//! hold their log, so terminal output reaching an attached client is never
//! lost; background processes do not, so a dev server never blocks on a log
//! reader.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long the producer of a held log waits for a cursor that makes no
/// progress at all before it evicts that cursor and moves on.
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(30);

/// Largest single read of a producer.
pub(crate) const MAX_READ: usize = 64 * 1024;

/// A fixed-capacity byte ring addressed by absolute offsets.
#[derive(Debug)]
pub(crate) struct Ring {
    buf: Box<[u8]>,
    /// Offset of the oldest byte held.
    start: u64,
    /// Offset one past the newest byte (= total bytes ever pushed).
    end: u64,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> Ring {
        assert!(capacity > 0, "ring capacity must be positive");
        Ring {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Appends `data`, dropping the oldest bytes when full.
    pub(crate) fn push(&mut self, mut data: &[u8]) {
        let cap = self.buf.len();
        if data.len() > cap {
            // Only the last `cap` bytes can survive; account for the rest.
            let skip = data.len() - cap;
            self.end += skip as u64;
            data = &data[skip..];
        }
        let mut at = (self.end % cap as u64) as usize;
        let mut rest = data;
        while !rest.is_empty() {
            let n = rest.len().min(cap - at);
            self.buf[at..at + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            at = (at + n) % cap;
        }
        self.end += data.len() as u64;
        self.start = self.start.max(self.end.saturating_sub(cap as u64));
    }

    /// Copies up to `max` bytes from offset `from` (clamped to the oldest
    /// byte held). Returns the offset of the first byte copied and the bytes;
    /// empty when `from` is at or past the end.
    pub(crate) fn read(&self, from: u64, max: usize) -> (u64, Vec<u8>) {
        let from = from.max(self.start);
        if from >= self.end {
            return (from, Vec::new());
        }
        let cap = self.buf.len();
        let len = ((self.end - from) as usize).min(max);
        let mut out = Vec::with_capacity(len);
        let at = (from % cap as u64) as usize;
        let first = len.min(cap - at);
        out.extend_from_slice(&self.buf[at..at + first]);
        out.extend_from_slice(&self.buf[..len - first]);
        (from, out)
    }
}

/// What a cursor gets next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Bytes starting at `offset`.
    Data { offset: u64, data: Vec<u8> },
    /// The producer is done and every byte was read: the process's exit code.
    Exit(i32),
    /// This cursor fell behind a held log for too long and was dropped.
    Evicted,
}

/// A ring shared by one producer and many cursors.
#[derive(Debug)]
pub(crate) struct Log {
    inner: Mutex<Inner>,
    /// Wakes a producer waiting for room in a held log.
    room: Condvar,
    /// Rung after each push and at the end, for async cursors.
    bell: watch::Sender<()>,
    /// `Some(stall limit)` for a held log.
    hold: Option<Duration>,
}

#[derive(Debug)]
struct Inner {
    ring: Ring,
    /// Set once all output is in the ring and the exit code is known.
    exit: Option<i32>,
    /// Positions of the registered cursors of a held log.
    cursors: HashMap<u64, CursorState>,
    next_id: u64,
    /// The producer stops waiting for cursors (shutdown, kill).
    released: bool,
}

#[derive(Debug)]
struct CursorState {
    pos: u64,
    evicted: bool,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding this lock leaves the ring consistent (every
    // update is a plain copy followed by offset updates), so keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Log {
    /// A log of `capacity` bytes. With `hold` (a stall limit, normally
    /// [`STALL_LIMIT`]) the producer waits for slow cursors.
    pub(crate) fn new(capacity: usize, hold: Option<Duration>) -> Arc<Log> {
        Arc::new(Log {
            inner: Mutex::new(Inner {
                ring: Ring::new(capacity),
                exit: None,
                cursors: HashMap::new(),
                next_id: 0,
                released: false,
            }),
            room: Condvar::new(),
            bell: watch::channel(()).0,
            hold,
        })
    }

    /// (oldest offset held, total bytes produced).
    pub(crate) fn bounds(&self) -> (u64, u64) {
        let g = lock(&self.inner);
        (g.ring.start(), g.ring.end())
    }

    pub(crate) fn exit(&self) -> Option<i32> {
        lock(&self.inner).exit
    }

    /// Appends output. Blocking (call it from the producer's thread): in a
    /// held log it waits until no registered cursor would lose unread bytes.
    pub(crate) fn push(&self, data: &[u8]) {
        self.append(data, true);
    }

    /// Appends as much of `data` as fits without waiting for a cursor (all
    /// of it unless a held log is full) and returns how many bytes that was.
    /// Never blocks: for producers on an async task, which hand the rest to
    /// [`Log::push`] on a blocking thread.
    pub(crate) fn try_push(&self, data: &[u8]) -> usize {
        self.append(data, false)
    }

    fn append(&self, mut data: &[u8], wait: bool) -> usize {
        let total = data.len();
        let mut g = lock(&self.inner);
        let cap = g.ring.capacity() as u64;
        let mut stalled_since: Option<(u64, Instant)> = None;
        while !data.is_empty() {
            if g.exit.is_some() {
                // Output after the end was reported (a background job that
                // kept the terminal open) would come after the exit: drop it.
                return total;
            }
            let room = if self.hold.is_some() && !g.released {
                match g
                    .cursors
                    .values()
                    .filter(|c| !c.evicted)
                    .map(|c| c.pos)
                    .min()
                {
                    Some(min) => cap - (g.ring.end() - min.max(g.ring.start())).min(cap),
                    None => cap,
                }
            } else {
                cap
            };
            if room == 0 {
                if !wait {
                    return total - data.len();
                }
                let min = g
                    .cursors
                    .values()
                    .filter(|c| !c.evicted)
                    .map(|c| c.pos)
                    .min();
                let now = Instant::now();
                match stalled_since {
                    Some((pos, since)) if Some(pos) == min => {
                        let limit = self.hold.unwrap_or(STALL_LIMIT);
                        if now.duration_since(since) >= limit {
                            for c in g.cursors.values_mut().filter(|c| Some(c.pos) == min) {
                                c.evicted = true;
                            }
                            tracing::warn!(
                                "a terminal client made no progress for {limit:?}; dropped it"
                            );
                            self.bell.send_replace(());
                            stalled_since = None;
                            continue;
                        }
                    }
                    _ => stalled_since = min.map(|m| (m, now)),
                }
                g = self
                    .room
                    .wait_timeout(g, Duration::from_millis(500))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            let n = (room as usize).min(data.len());
            g.ring.push(&data[..n]);
            data = &data[n..];
            // Ring while still holding the lock is fine: send_replace never blocks.
            self.bell.send_replace(());
        }
        total
    }

    /// Reads `reader` to its end into the log, blocking (call it on the
    /// producer's own thread). The buffer starts at 4 KiB, so an idle
    /// session costs little memory, and doubles up to [`MAX_READ`] whenever a
    /// read fills it, so a busy one is read in large chunks.
    pub(crate) fn pump(&self, mut reader: impl std::io::Read) {
        let mut buf = vec![0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.push(&buf[..n]);
                    if n == buf.len() && buf.len() < MAX_READ {
                        buf.resize(buf.len() * 2, 0);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::debug!(%error, "output read ended");
                    break;
                }
            }
        }
    }

    /// Marks the end of output with the process's exit code; cursors that
    /// read everything then get [`Next::Exit`].
    pub(crate) fn finish(&self, code: i32) {
        let mut g = lock(&self.inner);
        if g.exit.is_none() {
            g.exit = Some(code);
        }
        g.released = true;
        drop(g);
        self.room.notify_all();
        self.bell.send_replace(());
    }

    /// Waits until the log is finished and returns the exit code.
    pub(crate) async fn finished(&self) -> i32 {
        let mut bell = self.bell.subscribe();
        loop {
            bell.borrow_and_update();
            if let Some(code) = self.exit() {
                return code;
            }
            if bell.changed().await.is_err() {
                return -1;
            }
        }
    }

    /// Stops a held log from waiting for its cursors (kill, shutdown), so the
    /// producer can drain what is left of the process's output.
    pub(crate) fn release(&self) {
        lock(&self.inner).released = true;
        self.room.notify_all();
    }

    /// A cursor at `offset` (`None` = the oldest byte held), registered so a
    /// held log keeps its unread bytes. Returns the cursor, the offset it
    /// really starts at, and whether bytes between `offset` and that start
    /// are gone.
    pub(crate) fn cursor(self: &Arc<Self>, offset: Option<u64>) -> (Cursor, u64, bool) {
        let mut g = lock(&self.inner);
        let (start, end) = (g.ring.start(), g.ring.end());
        let wanted = offset.unwrap_or(start).min(end);
        let truncated = wanted < start;
        let pos = wanted.max(start);
        let id = g.next_id;
        g.next_id += 1;
        g.cursors.insert(
            id,
            CursorState {
                pos,
                evicted: false,
            },
        );
        drop(g);
        let cursor = Cursor {
            log: self.clone(),
            id,
            pos,
            bell: self.bell.subscribe(),
        };
        (cursor, pos, truncated)
    }
}

/// A reader's position in a [`Log`]; unregisters itself on drop.
#[derive(Debug)]
pub(crate) struct Cursor {
    log: Arc<Log>,
    id: u64,
    pos: u64,
    bell: watch::Receiver<()>,
}

impl Cursor {
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Waits for and returns the next bytes (at most `max`), or the exit
    /// once everything was read. If the ring moved past this cursor (an
    /// unheld log), the returned offset jumps forward: the gap is visible.
    pub(crate) async fn next(&mut self, max: usize) -> Next {
        loop {
            // Mark the bell seen *before* looking, so a push after the look
            // still wakes us.
            self.bell.borrow_and_update();
            {
                let mut g = lock(&self.log.inner);
                let state = g.cursors.get(&self.id).map(|c| c.evicted);
                if state == Some(true) {
                    return Next::Evicted;
                }
                let (offset, data) = g.ring.read(self.pos, max);
                if !data.is_empty() {
                    self.pos = offset + data.len() as u64;
                    let producer_waits = self.log.hold.is_some();
                    if let Some(c) = g.cursors.get_mut(&self.id) {
                        c.pos = self.pos;
                    }
                    drop(g);
                    if producer_waits {
                        self.log.room.notify_all();
                    }
                    return Next::Data { offset, data };
                }
                if let Some(code) = g.exit {
                    return Next::Exit(code);
                }
            }
            if self.bell.changed().await.is_err() {
                // The log itself is gone; cannot happen while we hold an Arc
                // to it, but end the stream rather than spin.
                return Next::Exit(-1);
            }
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        lock(&self.log.inner).cursors.remove(&self.id);
        self.log.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_wraps_and_reads_by_offset() {
        let mut r = Ring::new(8);
        r.push(b"abcdef");
        assert_eq!(r.read(0, 100), (0, b"abcdef".to_vec()));
        r.push(b"ghij");
        assert_eq!((r.start(), r.end()), (2, 10));
        assert_eq!(r.read(0, 100), (2, b"cdefghij".to_vec()));
        assert_eq!(r.read(5, 3), (5, b"fgh".to_vec()));
        assert_eq!(r.read(10, 3), (10, Vec::new()));
        r.push(b"0123456789xy");
        assert_eq!((r.start(), r.end()), (14, 22));
        assert_eq!(r.read(0, 100), (14, b"456789xy".to_vec()));
    }

    #[tokio::test]
    async fn cursor_reads_everything_then_exit() {
        let log = Log::new(16, None);
        log.push(b"hello ");
        let (mut c, from, truncated) = log.cursor(Some(2));
        assert_eq!((from, truncated), (2, false));
        assert_eq!(
            c.next(100).await,
            Next::Data {
                offset: 2,
                data: b"llo ".to_vec()
            }
        );
        let l2 = log.clone();
        let t = tokio::spawn(async move { c.next(100).await });
        l2.push(b"world");
        assert_eq!(
            t.await.unwrap(),
            Next::Data {
                offset: 6,
                data: b"world".to_vec()
            }
        );
        log.finish(3);
        let (mut c, from, _) = log.cursor(Some(11));
        assert_eq!(from, 11);
        assert_eq!(c.next(100).await, Next::Exit(3));
    }

    #[tokio::test]
    async fn truncated_when_the_ring_moved_on() {
        let log = Log::new(4, None);
        log.push(b"abcdefgh");
        let (mut c, from, truncated) = log.cursor(Some(1));
        assert_eq!((from, truncated), (4, true));
        assert_eq!(
            c.next(100).await,
            Next::Data {
                offset: 4,
                data: b"efgh".to_vec()
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_log_waits_for_a_slow_cursor() {
        let log = Log::new(4, Some(STALL_LIMIT));
        let (mut c, _, _) = log.cursor(Some(0));
        let producer = {
            let log = log.clone();
            std::thread::spawn(move || log.push(b"0123456789"))
        };
        let mut got = Vec::new();
        while got.len() < 10 {
            match c.next(3).await {
                Next::Data { offset, data } => {
                    assert_eq!(offset, got.len() as u64, "no gap, no repeat");
                    got.extend(data);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        producer.join().unwrap();
        assert_eq!(got, b"0123456789");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_cursor_is_evicted_and_others_go_on() {
        let log = Log::new(4, Some(Duration::from_millis(200)));
        let (mut stalled, _, _) = log.cursor(Some(0));
        let (mut live, _, _) = log.cursor(Some(0));
        let producer = {
            let log = log.clone();
            std::thread::spawn(move || log.push(b"0123456789"))
        };
        let mut got = Vec::new();
        while got.len() < 10 {
            match live.next(16).await {
                Next::Data { data, .. } => got.extend(data),
                other => panic!("unexpected {other:?}"),
            }
        }
        producer.join().unwrap();
        assert_eq!(got, b"0123456789");
        assert_eq!(stalled.next(16).await, Next::Evicted);
    }

    #[tokio::test]
    async fn pump_reads_everything_in_growing_chunks() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let log = Log::new(1 << 20, None);
        log.pump(&data[..]);
        assert_eq!(log.bounds(), (0, data.len() as u64));
        let (mut c, _, _) = log.cursor(Some(0));
        match c.next(1 << 20).await {
            Next::Data {
                offset: 0,
                data: got,
            } => assert_eq!(got, data),
            other => panic!("unexpected {other:?}"),
        }
    }
}
