//! Leases in the state store: a named lock with an expiry, held by one
//! replica and renewed while held. Project locks (`state::ProjectLocks`)
//! and the election of the replica that runs the idle loop and GC are
//! leases. A replica that dies stops renewing, so its leases expire within
//! `--lease-secs`; one that stalls past the expiry loses them (the guard
//! says so) and the compare-and-set of every status change
//! (`Store::transition`) keeps its late steps from undoing another's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;

use crate::error::Result;
use crate::store::Store;

/// Takes leases for this replica.
#[derive(Clone)]
pub struct Leases {
    store: Arc<dyn Store>,
    replica: Arc<str>,
    ttl: Duration,
}

impl Leases {
    /// Leases of `replica` (a name unique to this process) lasting `ttl`
    /// past their last renewal.
    pub fn new(store: Arc<dyn Store>, replica: &str, ttl: Duration) -> Leases {
        Leases {
            store,
            replica: replica.into(),
            ttl: ttl.max(Duration::from_secs(1)),
        }
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// How long a lease outlives its last renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The lease `name` if it is free now.
    pub async fn try_acquire(&self, name: &str) -> Result<Option<LeaseGuard>> {
        // Each acquisition holds it under a name of its own, so that the
        // release of a previous guard of this replica (sent when it dropped)
        // cannot remove the next one's lease.
        let holder = format!(
            "{}/{}",
            self.replica,
            hex::encode(rand::random::<[u8; 6]>())
        );
        if self.take(name, &holder).await? {
            Ok(Some(self.guard(name, holder)))
        } else {
            Ok(None)
        }
    }

    /// Waits for the lease `name` (polling; a holder that died lets it go
    /// within the lease time).
    pub async fn acquire(&self, name: &str) -> Result<LeaseGuard> {
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(g) = self.try_acquire(name).await? {
                return Ok(g);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    async fn take(&self, name: &str, holder: &str) -> Result<bool> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(self.ttl).unwrap_or_default();
        self.store.acquire_lease(name, holder, until, now).await
    }

    fn guard(&self, name: &str, holder: String) -> LeaseGuard {
        let lost = Arc::new(AtomicBool::new(false));
        let renew = tokio::spawn({
            let (leases, name, holder, lost) =
                (self.clone(), name.to_owned(), holder.clone(), lost.clone());
            async move {
                let mut last_ok = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(leases.ttl / 3).await;
                    match leases.take(&name, &holder).await {
                        Ok(true) => last_ok = tokio::time::Instant::now(),
                        Ok(false) => {
                            tracing::error!(lease = %name, "lease lost: another replica holds it");
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(error) => {
                            tracing::warn!(%error, lease = %name, "cannot renew the lease");
                            if last_ok.elapsed() >= leases.ttl {
                                lost.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                }
            }
        });
        LeaseGuard {
            name: name.to_owned(),
            holder,
            store: self.store.clone(),
            renew,
            lost,
        }
    }
}

/// A held lease, renewed every third of its time until dropped; dropping
/// it releases the lease.
pub struct LeaseGuard {
    name: String,
    holder: String,
    store: Arc<dyn Store>,
    renew: tokio::task::JoinHandle<()>,
    lost: Arc<AtomicBool>,
}

impl LeaseGuard {
    /// Whether the lease was lost (not renewed in time, or taken over).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The name the lease is held under (`replica/random`).
    pub fn holder(&self) -> &str {
        &self.holder
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renew.abort();
        let (store, name, holder) = (self.store.clone(), self.name.clone(), self.holder.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(error) = store.release_lease(&name, &holder).await {
                    // It expires on its own.
                    tracing::debug!(%error, lease = %name, "cannot release the lease");
                }
            });
        }
    }
}
