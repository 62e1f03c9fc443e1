//! Per-project events (`GET /api/projects/{p}/events`): a broadcast channel
//! per project in this process, and, with PostgreSQL, a relay through
//! `LISTEN`/`NOTIFY` so that a client streaming from one replica sees what
//! every replica does (a hibernation, a container started, a command run).
//!
//! Each replica publishes its events on the channel [`CHANNEL`] as
//! `{"origin", "project", "event", "data"}` and delivers what it hears from
//! the other replicas (its own, by `origin`, it already delivered). A
//! payload over PostgreSQL's limit loses the middle of its `stdout` and
//! `stderr` (a command-log line: `GET /logs` has the whole entry); one
//! still over it, and every event missed while the listening connection was
//! down, reaches subscribers as a `lagged` event, which tells a client to
//! read the project again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::store::postgres::PostgresStore;
use crate::store::postgres::relay::{self, Heard, MAX_PAYLOAD};

/// The PostgreSQL notification channel of project events.
pub const CHANNEL: &str = "devgate_events";

/// Events waiting to be published or delivered; past it, new ones are
/// dropped (and logged) rather than held without bound.
const QUEUE: usize = 4096;

/// The event kinds this gateway sends (a relayed name is checked against
/// them: it becomes an SSE `event:` line).
const KNOWN_EVENTS: &[&str] = &["status", "progress", "log", "container", "lagged"];

/// One server-sent event of a project.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectEvent {
    /// SSE event name: `status`, `progress`, `log`, `container` or `lagged`.
    pub event: String,
    pub data: serde_json::Value,
}

impl ProjectEvent {
    /// Tells a subscriber it missed events and should read the project again.
    pub fn lagged() -> ProjectEvent {
        ProjectEvent {
            event: "lagged".to_owned(),
            data: serde_json::json!({}),
        }
    }
}

/// Per-project broadcast of [`ProjectEvent`]s; cheap to clone.
#[derive(Clone, Default)]
pub struct Events {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<ProjectEvent>>>>,
    relay: Option<Relay>,
}

/// Where this replica publishes its events for the others.
#[derive(Clone)]
struct Relay {
    origin: String,
    out: mpsc::Sender<String>,
    /// An event could not be published (queue full, store error): the next
    /// publication is preceded by a `lagged` for every project.
    lost: Arc<std::sync::atomic::AtomicBool>,
}

/// The `project` of a wire event meant for every project (a `lagged`).
const EVERY_PROJECT: &str = "*";

/// An event on the wire between replicas.
#[derive(Serialize, Deserialize)]
struct Wire {
    origin: String,
    project: String,
    event: String,
    data: serde_json::Value,
}

impl Events {
    /// Events shared with every replica on `store`'s database: published
    /// with `NOTIFY` through the store, heard on a connection of their own
    /// to `url` until `stop`. `origin` names this replica.
    pub fn relayed(
        store: Arc<PostgresStore>,
        url: &str,
        origin: &str,
        stop: CancellationToken,
    ) -> Events {
        let (out, mut queued) = mpsc::channel::<String>(QUEUE);
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let events = Events {
            channels: Arc::default(),
            relay: Some(Relay {
                origin: origin.to_owned(),
                out,
                lost: lost.clone(),
            }),
        };
        // One publisher, so one replica's events stay in order.
        let lag_all = wire_payload(origin, EVERY_PROJECT, &ProjectEvent::lagged());
        tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            while let Some(payload) = queued.recv().await {
                if lost.swap(false, Ordering::Relaxed)
                    && store.notify(CHANNEL, &lag_all).await.is_err()
                {
                    lost.store(true, Ordering::Relaxed);
                }
                if let Err(error) = store.notify(CHANNEL, &payload).await {
                    lost.store(true, Ordering::Relaxed);
                    tracing::warn!(error = %crate::error::Chain(&error), "cannot relay a project event to the other replicas");
                }
            }
        });
        let (heard_tx, mut heard) = mpsc::channel(QUEUE);
        relay::listen(url.to_owned(), CHANNEL.to_owned(), heard_tx, stop);
        let receiver = events.clone();
        tokio::spawn(async move {
            while let Some(h) = heard.recv().await {
                match h {
                    Heard::Message(payload) => receiver.heard(&payload),
                    Heard::Gap => receiver.lag_all(),
                }
            }
        });
        events
    }

    /// Subscribes to a project's events.
    pub fn subscribe(&self, project: &str) -> broadcast::Receiver<ProjectEvent> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(project.to_owned())
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }

    /// Sends to the project's subscribers on every replica; none is fine.
    pub fn send(&self, project: &str, event: ProjectEvent) {
        if let Some(relay) = &self.relay {
            let payload = wire_payload(&relay.origin, project, &event);
            if relay.out.try_send(payload).is_err() {
                relay.lost.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(project, event = %event.event, "the event relay is behind; an event reaches this replica's subscribers only");
            }
        }
        self.deliver(project, event);
    }

    /// Sends to this replica's subscribers of the project.
    fn deliver(&self, project: &str, event: ProjectEvent) {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(project)
            && tx.send(event).is_err()
        {
            // Nobody listens any more: drop the channel.
            map.remove(project);
        }
    }

    /// A payload another replica (or this one) published.
    fn heard(&self, payload: &str) {
        let Ok(w) = serde_json::from_str::<Wire>(payload) else {
            tracing::warn!(
                bytes = payload.len(),
                "an event relayed by another replica does not parse; ignored"
            );
            return;
        };
        let own = self.relay.as_ref().is_some_and(|r| r.origin == w.origin);
        if !KNOWN_EVENTS.contains(&w.event.as_str()) {
            tracing::warn!(event = %w.event, "an event of an unknown kind was relayed; ignored");
            return;
        }
        if !own && w.project == EVERY_PROJECT {
            self.lag_all();
        } else if !own {
            self.deliver(
                &w.project,
                ProjectEvent {
                    event: w.event,
                    data: w.data,
                },
            );
        }
    }

    /// Tells every subscriber of this replica that events may be missing.
    fn lag_all(&self) {
        let projects: Vec<String> = {
            let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            map.keys().cloned().collect()
        };
        for p in projects {
            self.deliver(&p, ProjectEvent::lagged());
        }
    }
}

/// The relay payload of an event, within PostgreSQL's limit: `stdout` and
/// `stderr` are cut to their head and tail when needed, and an event still
/// too large travels as `lagged`.
fn wire_payload(origin: &str, project: &str, event: &ProjectEvent) -> String {
    let encode = |event: &str, data: &serde_json::Value| {
        serde_json::to_string(&Wire {
            origin: origin.to_owned(),
            project: project.to_owned(),
            event: event.to_owned(),
            data: data.clone(),
        })
        .unwrap_or_default()
    };
    let whole = encode(&event.event, &event.data);
    if whole.len() <= MAX_PAYLOAD {
        return whole;
    }
    let mut data = event.data.clone();
    if let Some(obj) = data.as_object_mut() {
        let mut cut = false;
        for key in ["stdout", "stderr"] {
            if let Some(serde_json::Value::String(text)) = obj.get_mut(key) {
                let (short, was_cut) = head_and_tail(text, MAX_PAYLOAD / 4);
                cut |= was_cut;
                *text = short;
            }
        }
        if cut {
            obj.insert("truncated".to_owned(), serde_json::Value::Bool(true));
        }
    }
    let shorter = encode(&event.event, &data);
    if shorter.len() <= MAX_PAYLOAD {
        return shorter;
    }
    let lagged = ProjectEvent::lagged();
    encode(&lagged.event, &lagged.data)
}

/// `text` cut to at most about `cap` bytes: its first and last halves
/// around a line saying how much was left out (cuts fall on character
/// boundaries); `true` when something was cut.
pub fn head_and_tail(text: &str, cap: usize) -> (String, bool) {
    if text.len() <= cap {
        return (text.to_owned(), false);
    }
    let half = cap / 2;
    let mut head = half;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - half;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    let cut = tail - head;
    (
        format!(
            "{}\n[... {cut} bytes left out ...]\n{}",
            &text[..head],
            &text[tail..]
        ),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stdout: &str) -> ProjectEvent {
        ProjectEvent {
            event: "log".into(),
            data: serde_json::json!({"command": "ls", "stdout": stdout, "stderr": "", "truncated": false}),
        }
    }

    #[test]
    fn small_events_travel_whole() {
        let p = wire_payload("r1", "demo", &event("hello"));
        let w: Wire = serde_json::from_str(&p).unwrap();
        assert_eq!(
            (w.origin.as_str(), w.project.as_str(), w.event.as_str()),
            ("r1", "demo", "log")
        );
        assert_eq!(w.data["stdout"], "hello");
        assert_eq!(w.data["truncated"], false);
    }

    #[test]
    fn large_output_is_cut_to_fit_and_marked() {
        let big = format!("BEGIN{}END", "x".repeat(100_000));
        let p = wire_payload("r1", "demo", &event(&big));
        assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
        let w: Wire = serde_json::from_str(&p).unwrap();
        let out = w.data["stdout"].as_str().unwrap();
        assert!(
            out.starts_with("BEGIN") && out.ends_with("END"),
            "{}",
            &out[..20]
        );
        assert!(out.contains("bytes left out"));
        assert_eq!(w.data["truncated"], true);
        assert_eq!(w.event, "log");
    }

    #[test]
    fn an_event_that_cannot_fit_travels_as_lagged() {
        let e = ProjectEvent {
            event: "status".into(),
            data: serde_json::json!({"blob": "y".repeat(20_000)}),
        };
        let p = wire_payload("r1", "demo", &e);
        let w: Wire = serde_json::from_str(&p).unwrap();
        assert_eq!((w.event.as_str(), w.project.as_str()), ("lagged", "demo"));
    }

    #[tokio::test]
    async fn own_events_are_not_delivered_twice_and_others_are() {
        let (out, _keep) = mpsc::channel(4);
        let events = Events {
            channels: Arc::default(),
            relay: Some(Relay {
                origin: "me".into(),
                out,
                lost: Arc::default(),
            }),
        };
        let mut rx = events.subscribe("demo");
        events.heard(&wire_payload("me", "demo", &event("mine")));
        events.heard(&wire_payload("other", "demo", &event("theirs")));
        events.heard("not json");
        let got = rx.recv().await.unwrap();
        assert_eq!(got.data["stdout"], "theirs");
        assert!(rx.try_recv().is_err());
        events.lag_all();
        assert_eq!(rx.recv().await.unwrap().event, "lagged");
        // Another replica's "every project lagged", and a kind nobody sends.
        events.heard(&wire_payload(
            "other",
            EVERY_PROJECT,
            &ProjectEvent::lagged(),
        ));
        assert_eq!(rx.recv().await.unwrap().event, "lagged");
        let odd = ProjectEvent {
            event: "x\nevent: status".into(),
            data: serde_json::json!({}),
        };
        events.heard(&wire_payload("other", "demo", &odd));
        assert!(rx.try_recv().is_err());
    }
}
