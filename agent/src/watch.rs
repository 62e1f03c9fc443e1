//! File watching: one actor thread owns `notify` (inotify); Watch RPCs
//! subscribe to it by message and get a debounced, filtered event stream.
//!
//! The actor watches each directory with its own non-recursive inotify watch
//! so that it can skip ignored trees (`node_modules`, `.git`) instead of
//! paying a watch per directory inside them, and so that it never follows a
//! symlink out of the root: it walks the tree through the root's directory
//! handle and does not descend into symlinks. It starts watching on the first
//! subscription; the skipped names are those every current subscriber
//! ignores, and a subscriber that wants more makes it add the missing watches.
//!
//! Per subscription, a task filters the changes by directory and ignored
//! names, coalesces them per path over the debounce window, sends a
//! keep-alive after 15 s of silence (`--watch-keepalive-secs`) and ends when the agent shuts down.
//! Writes through the agent are reported by the Filesystem service itself
//! (`created` or `modified` for the target), and the temporary files they use
//! are hidden; a watcher that falls behind (or an inotify queue overflow)
//! ends the stream with `ABORTED` so the client lists again and re-watches.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use notify::event::{CreateKind, EventKind as NK, ModifyKind, RemoveKind, RenameMode};
use notify::{RecursiveMode, Watcher as _};
use proto::v1::{self as pb, EventKind};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tonic::codegen::BoxStream;

use crate::State;
use crate::error::{Error, Result};
use devgate_fs::Root;

/// Names skipped anywhere in the tree unless a request says otherwise.
pub(crate) const DEFAULT_IGNORES: &[&str] = &["node_modules", ".git"];
/// Debounce window when the request gives none.
pub(crate) const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);
/// Longest debounce window a client may ask for.
const MAX_DEBOUNCE: Duration = Duration::from_secs(10);
/// Changes buffered per subscriber before it counts as fallen behind.
const SUBSCRIBER_BUFFER: usize = 8192;
/// How long a rename's first half waits for its second before it is taken
/// as a move out of the watched tree (a removal).
const RENAME_PAIRING: Duration = Duration::from_millis(50);

/// One change, path relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) kind: EventKind,
    pub(crate) path: String,
    /// For a rename: the new path.
    pub(crate) to: String,
}

/// Handle on the watch actor; cheap to clone.
#[derive(Clone)]
pub(crate) struct Watcher {
    tx: std::sync::mpsc::Sender<Command>,
}

impl Watcher {
    /// Starts the actor thread for `root`. Nothing is watched until the
    /// first subscription.
    pub(crate) fn start(root: Arc<Root>) -> std::io::Result<Watcher> {
        let (tx, rx) = std::sync::mpsc::channel();
        let actor = Actor {
            root,
            tx: tx.clone(),
            watcher: None,
            watched: BTreeSet::new(),
            skip: None,
            subs: Vec::new(),
            pending_from: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || actor.run(rx))?;
        Ok(Watcher { tx })
    }

    /// Reports a change the agent made itself (an atomic write, whose own
    /// inotify events are hidden because they name a temporary file).
    pub(crate) fn changed(&self, kind: EventKind, path: &str) {
        let _ = self.tx.send(Command::Local(Change {
            kind,
            path: path.to_owned(),
            to: String::new(),
        }));
    }

    async fn subscribe(&self, base: String, ignore: HashSet<String>) -> Result<Subscription> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Subscribe {
                base,
                ignore,
                reply,
            })
            .map_err(|_| Error::Unavailable("the watcher has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the watcher has stopped".into()))?
    }
}

/// Serves one Watch RPC: checks the directory, subscribes, and returns the
/// stream (`start`, then changes, keep-alives).
pub(crate) async fn subscribe(
    state: &State,
    req: pb::WatchRequest,
) -> Result<BoxStream<pb::WatchResponse>> {
    let rel = Root::clean(&req.path).map_err(Error::from)?;
    if !state.root.metadata(&rel).map_err(Error::from)?.is_dir() {
        return Err(Error::NotADirectory(rel));
    }
    // Events name real paths, so a base reached through a symlink is
    // filtered by where it leads (inside the root: the handle guarantees it).
    let base = if rel.is_empty() {
        rel
    } else {
        let canon = state
            .root
            .dir()
            .canonicalize(&rel)
            .map_err(|e| crate::error::io_error(&rel, e))?;
        canon.to_string_lossy().into_owned()
    };
    let mut ignore: HashSet<String> = req.ignore.into_iter().filter(|s| !s.is_empty()).collect();
    if !req.no_default_ignores {
        ignore.extend(DEFAULT_IGNORES.iter().map(|s| (*s).to_owned()));
    }
    let debounce = match req.debounce_ms {
        0 => DEFAULT_DEBOUNCE,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_DEBOUNCE),
    };
    let sub = state.watcher.subscribe(base, ignore).await?;
    let (tx, rx) = mpsc::channel(16);
    let keepalive = Duration::from_secs(state.config.watch_keepalive_secs);
    tokio::spawn(forward(
        sub,
        tx,
        debounce,
        keepalive,
        state.shutdown.clone(),
    ));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// What the actor hands a new subscriber.
struct Subscription {
    rx: mpsc::Receiver<Change>,
    /// Set by the actor when changes for this subscriber were dropped.
    lost: Arc<AtomicBool>,
}

/// The per-stream task: debounce, keep-alive, shutdown.
async fn forward(
    mut sub: Subscription,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    debounce: Duration,
    keepalive: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let msg = |event| Ok(pb::WatchResponse { event: Some(event) });
    if tx
        .send(msg(pb::watch_response::Event::Start(pb::Empty {})))
        .await
        .is_err()
    {
        return;
    }
    let mut batch = Coalescer::default();
    let mut flush_at: Option<tokio::time::Instant> = None;
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let keepalive_at = last_sent + keepalive;
        let wake = flush_at.map_or(keepalive_at, |f| f.min(keepalive_at));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            change = sub.rx.recv() => match change {
                Some(c) => {
                    batch.push(c);
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + debounce);
                }
                None => {
                    let status = if sub.lost.load(Ordering::Relaxed) {
                        Status::aborted("watch events were lost; list again and watch again")
                    } else {
                        Status::unavailable("the watcher has stopped")
                    };
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            },
            _ = tokio::time::sleep_until(wake) => {
                if flush_at.is_some_and(|f| f <= tokio::time::Instant::now()) {
                    flush_at = None;
                    for c in batch.take() {
                        let ev = pb::FsEvent { kind: c.kind as i32, path: c.path, to: c.to };
                        if tx.send(msg(pb::watch_response::Event::Change(ev))).await.is_err() {
                            return;
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                } else {
                    if tx.send(msg(pb::watch_response::Event::Keepalive(pb::KeepAlive {}))).await.is_err() {
                        return;
                    }
                    last_sent = tokio::time::Instant::now();
                }
            }
        }
    }
}

/// Merges the changes of one debounce window per path, keeping order.
#[derive(Default)]
struct Coalescer {
    events: Vec<Option<Change>>,
    /// Path → index of its pending (non-rename) change. Cleared by a rename,
    /// so that changes after it stay after it.
    index: HashMap<String, usize>,
}

impl Coalescer {
    fn push(&mut self, c: Change) {
        if c.kind == EventKind::Renamed {
            self.index.clear();
            self.events.push(Some(c));
            return;
        }
        if let Some(&i) = self.index.get(&c.path)
            && let Some(prev) = self.events[i].as_mut()
        {
            use EventKind::{Created, Modified, Removed};
            let merged = match (prev.kind, c.kind) {
                // Created and gone within one window: never observable.
                (Created, Removed) => None,
                (Created, _) => Some(Created),
                (Removed, Created | Modified) => Some(Modified),
                (_, k) => Some(k),
            };
            match merged {
                Some(k) => prev.kind = k,
                None => {
                    self.events[i] = None;
                    self.index.remove(&c.path);
                }
            }
            return;
        }
        self.index.insert(c.path.clone(), self.events.len());
        self.events.push(Some(c));
    }

    fn take(&mut self) -> Vec<Change> {
        self.index.clear();
        std::mem::take(&mut self.events)
            .into_iter()
            .flatten()
            .collect()
    }
}

enum Command {
    Subscribe {
        base: String,
        ignore: HashSet<String>,
        reply: oneshot::Sender<Result<Subscription>>,
    },
    Raw(notify::Result<notify::Event>),
    Local(Change),
}

struct Sub {
    base: String,
    ignore: HashSet<String>,
    tx: mpsc::Sender<Change>,
    lost: Arc<AtomicBool>,
}

impl Sub {
    fn sees(&self, path: &str) -> bool {
        let inside = self.base.is_empty()
            || path == self.base
            || path
                .strip_prefix(&self.base)
                .is_some_and(|r| r.starts_with('/'));
        inside && !path.split('/').any(|seg| self.ignore.contains(seg))
    }
}

struct Actor {
    root: Arc<Root>,
    tx: std::sync::mpsc::Sender<Command>,
    watcher: Option<notify::RecommendedWatcher>,
    /// Directories with a watch, relative to the root.
    watched: BTreeSet<String>,
    /// Names not descended into; `None` before the first subscription.
    skip: Option<HashSet<String>>,
    subs: Vec<Sub>,
    /// First halves of renames (inotify cookie → path, when).
    pending_from: HashMap<usize, (String, Instant)>,
}

impl Actor {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Command>) {
        loop {
            let timeout = if self.pending_from.is_empty() {
                Duration::from_secs(3600)
            } else {
                RENAME_PAIRING
            };
            match rx.recv_timeout(timeout) {
                Ok(Command::Subscribe {
                    base,
                    ignore,
                    reply,
                }) => {
                    let res = self.add_subscriber(base, ignore);
                    let _ = reply.send(res);
                }
                Ok(Command::Raw(Ok(event))) => self.on_event(event),
                Ok(Command::Raw(Err(error))) => tracing::warn!(%error, "file watch error"),
                Ok(Command::Local(c)) => self.dispatch(c),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.expire_renames();
            self.subs.retain(|s| !s.tx.is_closed());
        }
    }

    fn add_subscriber(&mut self, base: String, ignore: HashSet<String>) -> Result<Subscription> {
        if self.watcher.is_none() {
            let tx = self.tx.clone();
            let config = notify::Config::default().with_follow_symlinks(false);
            let w = notify::RecommendedWatcher::new(
                move |ev| {
                    let _ = tx.send(Command::Raw(ev));
                },
                config,
            )
            .map_err(|e| Error::Internal(format!("cannot start the file watcher: {e}")))?;
            self.watcher = Some(w);
        }
        // Skip only what every subscriber skips.
        self.subs.retain(|s| !s.tx.is_closed());
        let mut skip = ignore.clone();
        for s in &self.subs {
            skip.retain(|n| s.ignore.contains(n));
        }
        let widened = self.skip.as_ref().is_none_or(|old| !old.is_subset(&skip));
        self.skip = Some(skip);
        if widened {
            self.watch_tree("", false);
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let lost = Arc::new(AtomicBool::new(false));
        self.subs.push(Sub {
            base,
            ignore,
            tx,
            lost: lost.clone(),
        });
        Ok(Subscription { rx, lost })
    }

    /// Watches the directory `rel` and everything below it that is not
    /// skipped; with `report`, every entry found is reported as created
    /// (they appeared before their directory's watch existed).
    fn watch_tree(&mut self, rel: &str, report: bool) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let skip = self.skip.clone().unwrap_or_default();
        let mut found = Vec::new();
        let mut stack = vec![rel.to_owned()];
        while let Some(dir_rel) = stack.pop() {
            let Ok(dir) = self.root.resolve_dir(&dir_rel) else {
                continue;
            };
            if !self.watched.contains(&dir_rel) {
                match watcher.watch(
                    &self.root.path().join(&dir_rel),
                    RecursiveMode::NonRecursive,
                ) {
                    Ok(()) => {
                        self.watched.insert(dir_rel.clone());
                    }
                    Err(error) => {
                        tracing::warn!(%error, path = %dir_rel, "cannot watch directory");
                        continue;
                    }
                }
            }
            let Ok(entries) = dir.entries() else { continue };
            for ent in entries.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                if devgate_fs::temp::is_temporary(&name) {
                    continue;
                }
                let child = devgate_fs::join(&dir_rel, &name);
                let is_dir = ent.file_type().is_ok_and(|t| t.is_dir());
                if report {
                    found.push(child.clone());
                }
                if is_dir && !skip.contains(&name) {
                    stack.push(child);
                }
            }
        }
        for path in found {
            self.dispatch(Change {
                kind: EventKind::Created,
                path,
                to: String::new(),
            });
        }
    }

    /// Drops the watches of `rel` and everything below it (moved or removed).
    fn unwatch_tree(&mut self, rel: &str) {
        let prefix = format!("{rel}/");
        let gone: Vec<String> = self
            .watched
            .iter()
            .filter(|p| *p == rel || p.starts_with(&prefix))
            .cloned()
            .collect();
        for p in gone {
            self.watched.remove(&p);
            if let Some(w) = self.watcher.as_mut() {
                // Already gone when inotify dropped it with the directory.
                let _ = w.unwatch(&self.root.path().join(&p));
            }
        }
    }

    fn rel(&self, p: &Path) -> Option<String> {
        let rel = p.strip_prefix(self.root.path()).ok()?;
        let rel = rel.to_string_lossy().into_owned();
        (!rel.is_empty()).then_some(rel)
    }

    fn is_dir(&self, rel: &str) -> bool {
        self.root.symlink_metadata(rel).is_ok_and(|m| m.is_dir())
    }

    fn on_event(&mut self, event: notify::Event) {
        if event.need_rescan() {
            tracing::warn!("file watch queue overflowed; ending watch streams");
            for s in self.subs.drain(..) {
                s.lost.store(true, Ordering::Relaxed);
            }
            return;
        }
        let paths: Vec<Option<String>> = event.paths.iter().map(|p| self.rel(p)).collect();
        let Some(Some(path)) = paths.first().cloned() else {
            return;
        };
        let created = |path: String| Change {
            kind: EventKind::Created,
            path,
            to: String::new(),
        };
        match event.kind {
            NK::Create(kind) => {
                if is_tmp(&path) {
                    return;
                }
                let dir =
                    kind == CreateKind::Folder || (kind != CreateKind::File && self.is_dir(&path));
                self.dispatch(created(path.clone()));
                if dir && !self.skipped(&path) {
                    self.watch_tree(&path, true);
                }
            }
            NK::Modify(ModifyKind::Name(RenameMode::From)) => {
                // A From without a cookie is inotify's MOVE_SELF on a watched
                // directory; its parent reports the same move with a cookie.
                if let Some(cookie) = event.tracker() {
                    self.pending_from.insert(cookie, (path, Instant::now()));
                }
            }
            NK::Modify(ModifyKind::Name(RenameMode::To)) => {
                // With a known first half, the `Both` that follows reports it.
                if event
                    .tracker()
                    .is_some_and(|c| self.pending_from.contains_key(&c))
                {
                    return;
                }
                if !is_tmp(&path) {
                    self.dispatch(created(path.clone()));
                    if self.is_dir(&path) && !self.skipped(&path) {
                        self.watch_tree(&path, true);
                    }
                }
            }
            NK::Modify(ModifyKind::Name(RenameMode::Both)) => {
                if let Some(c) = event.tracker() {
                    self.pending_from.remove(&c);
                }
                let to = paths.get(1).cloned().flatten();
                self.unwatch_tree(&path);
                match to {
                    // An atomic write by the agent: reported by the write itself.
                    Some(_) if is_tmp(&path) => {}
                    Some(to) => {
                        let is_dir = self.is_dir(&to);
                        self.dispatch(Change {
                            kind: EventKind::Renamed,
                            path,
                            to: to.clone(),
                        });
                        if is_dir && !self.skipped(&to) {
                            self.watch_tree(&to, false);
                        }
                    }
                    None => self.dispatch(Change {
                        kind: EventKind::Removed,
                        path,
                        to: String::new(),
                    }),
                }
            }
            NK::Modify(ModifyKind::Name(_)) => {}
            NK::Modify(_) => {
                if !is_tmp(&path) {
                    self.dispatch(Change {
                        kind: EventKind::Modified,
                        path,
                        to: String::new(),
                    });
                }
            }
            NK::Remove(kind) => {
                if is_tmp(&path) {
                    return;
                }
                if kind != RemoveKind::File {
                    self.unwatch_tree(&path);
                }
                self.dispatch(Change {
                    kind: EventKind::Removed,
                    path,
                    to: String::new(),
                });
            }
            NK::Access(_) | NK::Any | NK::Other => {}
        }
    }

    /// First halves of renames whose second half never came: moved out of
    /// the watched tree, which for a watcher is a removal.
    fn expire_renames(&mut self) {
        let now = Instant::now();
        let expired: Vec<usize> = self
            .pending_from
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= RENAME_PAIRING)
            .map(|(c, _)| *c)
            .collect();
        for c in expired {
            if let Some((path, _)) = self.pending_from.remove(&c) {
                self.unwatch_tree(&path);
                if !is_tmp(&path) {
                    self.dispatch(Change {
                        kind: EventKind::Removed,
                        path,
                        to: String::new(),
                    });
                }
            }
        }
    }

    fn skipped(&self, rel: &str) -> bool {
        let skip = self.skip.as_ref();
        rel.split('/')
            .any(|seg| skip.is_some_and(|s| s.contains(seg)))
    }

    /// Sends a change to every subscriber that sees it. A rename half
    /// outside a subscriber's view becomes a creation or removal for it.
    fn dispatch(&mut self, c: Change) {
        for s in &self.subs {
            let c = if c.kind == EventKind::Renamed {
                match (s.sees(&c.path), s.sees(&c.to)) {
                    (true, true) => c.clone(),
                    (true, false) => Change {
                        kind: EventKind::Removed,
                        path: c.path.clone(),
                        to: String::new(),
                    },
                    (false, true) => Change {
                        kind: EventKind::Created,
                        path: c.to.clone(),
                        to: String::new(),
                    },
                    (false, false) => continue,
                }
            } else if s.sees(&c.path) {
                c.clone()
            } else {
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = s.tx.try_send(c) {
                s.lost.store(true, Ordering::Relaxed);
            }
        }
        // A subscriber that lost changes is dropped: its stream then ends
        // with ABORTED instead of silently missing events.
        let before = self.subs.len();
        self.subs.retain(|s| !s.lost.load(Ordering::Relaxed));
        if self.subs.len() != before {
            tracing::warn!(
                dropped = before - self.subs.len(),
                "watch subscriber fell behind"
            );
        }
    }
}

fn is_tmp(rel: &str) -> bool {
    rel.rsplit('/')
        .next()
        .is_some_and(devgate_fs::temp::is_temporary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(kind: EventKind, path: &str) -> Change {
        Change {
            kind,
            path: path.into(),
            to: String::new(),
        }
    }

    #[test]
    fn coalesces_per_path() {
        use EventKind::*;
        let mut c = Coalescer::default();
        c.push(ch(Created, "a"));
        c.push(ch(Modified, "a"));
        c.push(ch(Modified, "b"));
        c.push(ch(Modified, "b"));
        c.push(ch(Created, "gone"));
        c.push(ch(Removed, "gone"));
        c.push(ch(Removed, "r"));
        c.push(ch(Created, "r"));
        assert_eq!(
            c.take(),
            vec![ch(Created, "a"), ch(Modified, "b"), ch(Modified, "r")]
        );
        assert!(c.take().is_empty());
    }

    #[test]
    fn renames_keep_order() {
        use EventKind::*;
        let mut c = Coalescer::default();
        c.push(ch(Modified, "a"));
        c.push(Change {
            kind: Renamed,
            path: "a".into(),
            to: "b".into(),
        });
        c.push(ch(Modified, "a"));
        let out = c.take();
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].kind, Renamed);
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_dropped_and_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let root = Arc::new(Root::open(dir.path()).unwrap());
        let (tx, _rx) = std::sync::mpsc::channel();
        let mut actor = Actor {
            root,
            tx,
            watcher: None,
            watched: BTreeSet::new(),
            skip: None,
            subs: Vec::new(),
            pending_from: HashMap::new(),
        };
        let (stx, mut srx) = mpsc::channel(1);
        let lost = Arc::new(AtomicBool::new(false));
        actor.subs.push(Sub {
            base: String::new(),
            ignore: HashSet::new(),
            tx: stx,
            lost: lost.clone(),
        });
        actor.dispatch(ch(EventKind::Created, "a"));
        assert!(!lost.load(Ordering::Relaxed));
        actor.dispatch(ch(EventKind::Created, "b"));
        assert!(
            lost.load(Ordering::Relaxed),
            "the second change did not fit"
        );
        assert!(actor.subs.is_empty(), "the subscriber is dropped");
        // Its stream sees what fitted, then the end (which `forward` turns into ABORTED).
        assert_eq!(srx.try_recv().unwrap(), ch(EventKind::Created, "a"));
        assert!(matches!(
            srx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[tokio::test]
    async fn a_lost_subscription_ends_with_aborted() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(ch(EventKind::Modified, "x")).unwrap();
        drop(tx);
        let sub = Subscription {
            rx,
            lost: Arc::new(AtomicBool::new(true)),
        };
        let (out, mut got) = mpsc::channel(16);
        let cancel = tokio_util::sync::CancellationToken::new();
        forward(
            sub,
            out,
            Duration::from_millis(1),
            Duration::from_secs(60),
            cancel,
        )
        .await;
        let mut msgs = Vec::new();
        while let Ok(m) = got.try_recv() {
            msgs.push(m);
        }
        assert_eq!(msgs.len(), 2, "start and the end: {msgs:?}");
        assert_eq!(msgs[1].as_ref().unwrap_err().code(), tonic::Code::Aborted);
    }

    #[test]
    fn subscriber_filter() {
        let (tx, _rx) = mpsc::channel(1);
        let s = Sub {
            base: "src".into(),
            ignore: ["node_modules".to_owned()].into(),
            tx,
            lost: Arc::default(),
        };
        assert!(s.sees("src/a.ts"));
        assert!(s.sees("src"));
        assert!(!s.sees("srcx/a"));
        assert!(!s.sees("src/node_modules/x"));
        assert!(!s.sees("other"));
    }
}
