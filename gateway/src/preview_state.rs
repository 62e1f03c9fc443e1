//! What the preview proxy keeps between requests, held in `AppState`: the
//! keep-alive pool to dev servers ([`pool`]), container records cached for a
//! second, the last wake of each project by a request without credentials,
//! share links in use, and the byte counters. The types and their
//! bookkeeping live here, below `state`, so that `state` never imports the
//! proxy (`preview`), which serves requests with them.

pub mod pool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::metrics::{DirectionLabels, Metrics};
use crate::store::Share;

/// What the proxy keeps between requests: the dev-server connection pool,
/// container records, the last wake by a request without credentials per
/// project, share links in use, and the byte counters.
pub struct PreviewState {
    pub(crate) pool: Arc<pool::Pool>,
    pub(crate) records: RecordCache,
    public_wakes: Mutex<HashMap<String, Instant>>,
    /// Share links in use on this replica (see [`Shares`]).
    pub shares: Shares,
    pub(crate) up: Counter,
    pub(crate) down: Counter,
    /// Requests answered by the fast path.
    pub(crate) fast: Counter,
}

impl PreviewState {
    pub fn new(metrics: &Metrics) -> PreviewState {
        let counter = |d: &str| {
            metrics
                .proxied_bytes
                .get_or_create(&DirectionLabels {
                    direction: d.to_owned(),
                })
                .clone()
        };
        PreviewState {
            pool: Arc::default(),
            records: RecordCache::default(),
            public_wakes: Mutex::default(),
            shares: Shares::default(),
            up: counter("upstream"),
            down: counter("downstream"),
            fast: metrics.preview_fast.clone(),
        }
    }

    /// Forgets what is kept about a deleted project.
    pub fn forget(&self, project: &str) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project);
        self.public_wakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project);
    }

    /// Takes the project's one wake by a request without credentials for
    /// this interval: `Err(seconds to wait)` when it was taken already.
    pub(crate) fn take_public_wake(
        &self,
        project: &str,
        interval: Duration,
    ) -> std::result::Result<(), u64> {
        let mut wakes = self.public_wakes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = wakes.get(project)
            && at.elapsed() < interval
        {
            return Err((interval - at.elapsed()).as_secs().max(1));
        }
        if wakes.len() > 10_000 {
            wakes.retain(|_, at| at.elapsed() < interval);
        }
        wakes.insert(project.to_owned(), Instant::now());
        Ok(())
    }
}

/// The parts of a container's record the proxy needs, cached briefly.
#[derive(Clone)]
pub(crate) struct Record {
    pub(crate) public: bool,
    pub(crate) port: u16,
    pub(crate) ports: Vec<u16>,
}

/// project → container → the record (`None`: no such container) and when it
/// was read (nested so a lookup needs no owned key). Misses are cached too,
/// so made-up container names cost one store read a second, not one each.
pub(crate) type RecordCache = Mutex<HashMap<String, HashMap<String, (Option<Record>, Instant)>>>;

/// Share links in use on this replica: their validity, cached briefly, and
/// the cancellation of every upgraded connection (WebSocket) opened through
/// each, so that revoking or expiring a link closes them. A revocation here
/// closes them at once; one on another replica is seen by `preview::access::watch` within
/// its period.
#[derive(Default)]
pub struct Shares {
    pub(crate) valid: Mutex<HashMap<String, (Option<Share>, Instant)>>,
    live: Mutex<HashMap<String, Vec<CancellationToken>>>,
}

impl Shares {
    /// A cancellation for one upgraded connection opened through share `id`.
    pub fn track(&self, id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let list = live.entry(id.to_owned()).or_default();
        list.retain(|t| !t.is_cancelled());
        list.push(token.clone());
        token
    }

    /// Share `id` was revoked: forget it and close its connections now.
    pub fn revoke(&self, id: &str) {
        self.valid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let tokens = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        for t in tokens.into_iter().flatten() {
            t.cancel();
        }
    }

    /// Share ids with open connections (dropping those whose connections all ended).
    pub(crate) fn live_ids(&self) -> Vec<String> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, list| {
            list.retain(|t| !t.is_cancelled());
            !list.is_empty()
        });
        live.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_shares_are_cancelled_on_revoke() {
        let shares = Shares::default();
        let a = shares.track("s1");
        let b = shares.track("s1");
        let other = shares.track("s2");
        assert_eq!(shares.live_ids().len(), 2);
        shares.revoke("s1");
        assert!(a.is_cancelled() && b.is_cancelled() && !other.is_cancelled());
        assert_eq!(shares.live_ids(), ["s2"]);
    }
}
