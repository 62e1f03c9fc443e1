//! What one snapshot operation may make the gateway sign. The agent runs
//! as the project's user and may be hostile, so the URLs it gets are
//! bounded by the operation:
//! - a restore gets GET URLs for the packs of the manifest being restored,
//!   and no others;
//! - a create gets PUT URLs for at most `--snapshot-max-bytes` of packs:
//!   the packs signed so far are measured in the store (each pack once it
//!   is there), those not uploaded yet count [`PACK_TARGET`] each; once the
//!   total reaches the cap, or more than [`OUTSTANDING_MAX`] signed packs
//!   are not uploaded yet, or the operation has had one URL per MiB of the
//!   cap (at least [`OUTSTANDING_MAX`]), further URLs are refused (413
//!   `payload_too_large`) and the snapshot fails, recording nothing. The
//!   verification after the agent is done checks the packs' real total
//!   against the cap again. What a refused operation uploaded is named by
//!   no manifest, and garbage collection removes it after its grace.
//!
//! In a folder store a pack is at most `PACK_MAX` bytes (`PUT /_objects`
//! reads no more), so an operation stores at most the cap plus
//! [`OUTSTANDING_MAX`] packs. An S3 presigned PUT binds no body size, so
//! there the overshoot is [`OUTSTANDING_MAX`] objects of S3's own largest
//! PUT, stopped at the next batch.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use devgate_snapshot::{Id, PACK_TARGET};

use crate::archive_store::Method;
use crate::error::{Error, Result};
use crate::state::AppState;

/// Signed packs of a create that may be not uploaded yet at once.
pub(super) const OUTSTANDING_MAX: usize = 256;

/// What a create has been signed so far.
pub(super) struct Budget {
    max_bytes: u64,
    inner: Mutex<Signed>,
}

#[derive(Default)]
struct Signed {
    /// Packs measured in the store, with their sizes.
    stored: HashMap<Id, u64>,
    /// Packs signed and not found in the store yet.
    outstanding: HashSet<Id>,
    /// URLs signed, repeats included.
    urls: u64,
}

impl Signed {
    fn stored_bytes(&self) -> u64 {
        self.stored.values().sum()
    }

    /// Bytes of the operation: measured, plus an estimate of those not
    /// uploaded yet.
    fn estimate(&self) -> u64 {
        self.stored_bytes()
            .saturating_add(self.outstanding.len() as u64 * PACK_TARGET as u64)
    }
}

impl Budget {
    pub(super) fn new(max_bytes: u64) -> Budget {
        Budget {
            max_bytes,
            inner: Mutex::new(Signed::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Signed> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Most URLs one operation may get: one per MiB of the cap, at least
    /// [`OUTSTANDING_MAX`].
    fn url_cap(&self) -> u64 {
        (self.max_bytes >> 20).max(OUTSTANDING_MAX as u64)
    }

    fn over(&self, what: String) -> Error {
        Error::TooLarge(format!(
            "the snapshot is over --snapshot-max-bytes ({} bytes): {what}",
            self.max_bytes
        ))
    }

    /// Checks that the packs' real total (after the agent is done) is
    /// within the cap.
    pub(super) fn check_total(&self, bytes: u64) -> Result<()> {
        if bytes > self.max_bytes {
            return Err(self.over(format!("its new packs hold {bytes} bytes")));
        }
        Ok(())
    }

    /// Admits a batch of packs to sign, or refuses it (and every later one).
    async fn admit(&self, state: &AppState, project: &str, batch: &[Id]) -> Result<()> {
        let pending: Vec<Id> = self.lock().outstanding.iter().copied().collect();
        let mut found = Vec::new();
        for pack in pending {
            if let Some(n) = state
                .archives
                .size(&state.archives.pack_key(project, &pack))
                .await?
            {
                found.push((pack, n));
            }
        }
        self.take(found, batch)
    }

    /// [`Budget::admit`] once the outstanding packs found in the store
    /// (`found`, with their sizes) are known.
    fn take(&self, found: Vec<(Id, u64)>, batch: &[Id]) -> Result<()> {
        let mut s = self.lock();
        for (pack, n) in found {
            s.outstanding.remove(&pack);
            s.stored.insert(pack, n);
        }
        s.urls += batch.len() as u64;
        if s.urls > self.url_cap() {
            return Err(self.over(format!("more than {} pack URLs", self.url_cap())));
        }
        if s.estimate() >= self.max_bytes {
            return Err(self.over(format!(
                "{} bytes stored and {} packs on their way",
                s.stored_bytes(),
                s.outstanding.len()
            )));
        }
        for pack in batch {
            if !s.stored.contains_key(pack) {
                s.outstanding.insert(*pack);
            }
        }
        if s.outstanding.len() > OUTSTANDING_MAX {
            return Err(self.over(format!(
                "more than {OUTSTANDING_MAX} signed packs not uploaded"
            )));
        }
        Ok(())
    }
}

/// Which packs an operation may get URLs for.
#[derive(Clone, Copy)]
pub(super) enum Scope<'a> {
    /// A create's new packs, within its budget.
    Create(&'a Budget),
    /// A restore's: the packs its manifest names.
    Restore(&'a HashSet<Id>),
}

/// Signed URLs for a batch of the project's packs, within `scope`.
pub(super) async fn sign_packs(
    state: &AppState,
    project: &str,
    method: Method,
    packs: Vec<String>,
    scope: Scope<'_>,
) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(packs.len());
    for p in packs {
        let pack = Id::parse(&p)
            .map_err(|e| Error::internal(format!("the agent asked for a bad pack: {e}")))?;
        if let Scope::Restore(allowed) = scope
            && !allowed.contains(&pack)
        {
            return Err(Error::internal(format!(
                "the agent asked for pack {pack}, which the snapshot does not name"
            )));
        }
        ids.push(pack);
    }
    if let Scope::Create(budget) = scope {
        budget.admit(state, project, &ids).await?;
    }
    let mut urls = Vec::with_capacity(ids.len());
    for pack in ids {
        let key = state.archives.pack_key(project, &pack);
        urls.push(state.archives.sign_url(method, &key).await?);
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> Id {
        Id::of(&n.to_le_bytes())
    }

    #[test]
    fn a_create_is_refused_past_the_cap_measured_or_estimated() {
        let b = Budget::new(10 << 20);
        b.take(vec![], &[id(1)]).unwrap();
        // Not uploaded yet: counts 4 MiB; a second batch is admitted.
        b.take(vec![], &[id(2)]).unwrap();
        // Both stored, 9 MiB in all: under the cap, admitted.
        b.take(vec![(id(1), 5 << 20), (id(2), 4 << 20)], &[id(3)])
            .unwrap();
        // The third stored too: 13 MiB, refused, and so is every later batch.
        let e = b.take(vec![(id(3), 4 << 20)], &[id(4)]).unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("--snapshot-max-bytes"), "{e}");
        assert!(b.take(vec![], &[id(5)]).is_err());
        b.check_total(10 << 20).unwrap();
        assert!(b.check_total((10 << 20) + 1).is_err());
    }

    #[test]
    fn outstanding_packs_and_urls_are_bounded() {
        // A large cap: an agent asking for URLs it never uses stops at
        // OUTSTANDING_MAX packs not uploaded.
        let b = Budget::new(1 << 40);
        let mut n = 0;
        let refused = loop {
            let batch: Vec<Id> = (n..n + 64).map(id).collect();
            n += 64;
            if let Err(e) = b.take(vec![], &batch) {
                break e;
            }
        };
        assert!(refused.to_string().contains("not uploaded"), "{refused}");
        assert_eq!(n as usize, OUTSTANDING_MAX + 64);
        // One URL per MiB of the cap (at least OUTSTANDING_MAX), repeats
        // included: asking for the same stored pack again and again.
        let b = Budget::new(1 << 20);
        let same = [id(0)];
        b.take(vec![], &same).unwrap();
        let mut urls = 1;
        let refused = loop {
            urls += 1;
            if let Err(e) = b.take(vec![(id(0), 1)], &same) {
                break e;
            }
        };
        assert!(refused.to_string().contains("pack URLs"), "{refused}");
        assert_eq!(urls, OUTSTANDING_MAX as u64 + 1);
    }
}
