//! What every long-lived WebSocket of the gateway shares (terminals, file
//! watch): a ping every 30 s so idle sockets survive load balancers, a peer
//! silent for too long taken as gone, a small read buffer, close frames.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};

/// How often every WebSocket of the gateway gets a ping, so idle sockets
/// survive load balancers and dead peers are noticed.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);

/// A peer that sent nothing (not even a pong) for this long is taken as gone.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(75);

/// Read buffer of the gateway's own WebSockets. tungstenite zero-fills its
/// whole read buffer (128 KiB by default) on the first read, which would make
/// 1,000 idle terminals cost 128 MB; keystrokes and control messages are
/// small, and a large paste is still read whole, in chunks of this size.
pub const READ_BUFFER: usize = 8 * 1024;

/// A ping interval whose first tick is one period from now.
pub fn ping_interval() -> tokio::time::Interval {
    let mut i =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// A close message with a code and a reason.
pub fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }))
}

/// When a peer was last heard from, shared by a socket's reader and writer.
#[derive(Clone)]
pub struct Liveness {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Liveness {
    pub fn new() -> Liveness {
        Liveness {
            epoch: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records that the peer sent something.
    pub fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the peer last sent anything.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

impl Default for Liveness {
    fn default() -> Liveness {
        Liveness::new()
    }
}
