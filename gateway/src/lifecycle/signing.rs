//! What one snapshot operation may make the gateway sign. The agent runs
//! as the project's user and may be hostile, so the URLs it gets are
//! bounded by the operation:
//! - a restore gets GET URLs for the packs of the manifest being restored,
//!   and no others;
//! - a create gets PUT URLs for at most `--snapshot-max-bytes` of packs.
//!   The agent names each pack's size, at most `PACK_MAX`, and the URL
//!   binds it: S3 signs `content-length`, a folder URL's HMAC covers it
//!   and `PUT /_objects` takes exactly that many bytes. So the sizes the
//!   budget counts are the sizes stored: packs measured in the store once
//!   there, signed ones not uploaded yet by their named size. Once the
//!   total passes the cap, or more than [`OUTSTANDING_MAX`] signed packs
//!   are not uploaded yet, or the operation has had one URL per MiB of the
//!   cap (at least [`OUTSTANDING_MAX`]), further URLs are refused (413
//!   `payload_too_large`) and the snapshot fails, recording nothing. The
//!   verification after the agent is done checks the packs' real total
//!   against the cap again. What a refused operation uploaded is named by
//!   no manifest, and garbage collection removes it after its grace.
//!
//! A pack named again must keep its size (else the batch is refused), so an
//! operation stores at most the cap.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use devgate_snapshot::{Id, PACK_MAX};

use crate::archive_store::Op;
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
    /// Packs signed and not found in the store yet, with their named sizes.
    outstanding: HashMap<Id, u64>,
    /// URLs signed, repeats included.
    urls: u64,
}

impl Signed {
    fn stored_bytes(&self) -> u64 {
        self.stored.values().sum()
    }

    /// Bytes of the operation: measured, plus the named sizes of those not
    /// uploaded yet (their URLs take no other size).
    fn estimate(&self) -> u64 {
        self.stored_bytes()
            .saturating_add(self.outstanding.values().sum::<u64>())
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
    async fn admit(&self, state: &AppState, project: &str, batch: &[(Id, u64)]) -> Result<()> {
        let pending: Vec<Id> = self.lock().outstanding.keys().copied().collect();
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
    fn take(&self, found: Vec<(Id, u64)>, batch: &[(Id, u64)]) -> Result<()> {
        let mut s = self.lock();
        for (pack, n) in found {
            s.outstanding.remove(&pack);
            s.stored.insert(pack, n);
        }
        // A pack named again keeps its size: a URL for another size would
        // store bytes the budget never counted.
        for (pack, n) in batch {
            if let Some(&before) = s.stored.get(pack).or_else(|| s.outstanding.get(pack))
                && before != *n
            {
                return Err(self.over(format!(
                    "pack {pack} named again with {n} bytes, {before} before"
                )));
            }
        }
        s.urls += batch.len() as u64;
        if s.urls > self.url_cap() {
            return Err(self.over(format!("more than {} pack URLs", self.url_cap())));
        }
        let adding: u64 = batch
            .iter()
            .filter(|(pack, _)| !s.stored.contains_key(pack) && !s.outstanding.contains_key(pack))
            .map(|(_, n)| n)
            .sum();
        if s.estimate().saturating_add(adding) > self.max_bytes {
            return Err(self.over(format!(
                "{} bytes stored, {} bytes signed and not uploaded yet, {adding} more asked for",
                s.stored_bytes(),
                s.outstanding.values().sum::<u64>()
            )));
        }
        for (pack, n) in batch {
            if !s.stored.contains_key(pack) {
                s.outstanding.insert(*pack, *n);
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

/// Signed URLs for a batch of the project's packs, within `scope`: GET
/// URLs for a restore, PUT URLs of the named `sizes` for a create.
pub(super) async fn sign_packs(
    state: &AppState,
    project: &str,
    packs: Vec<String>,
    sizes: Vec<u64>,
    scope: Scope<'_>,
) -> Result<Vec<String>> {
    if let Scope::Create(_) = scope {
        if sizes.len() != packs.len() {
            return Err(Error::internal(
                "the agent named no size for each pack to upload (an agent older than the gateway?)",
            ));
        }
        if let Some(n) = sizes.iter().find(|&&n| n == 0 || n > PACK_MAX) {
            return Err(Error::internal(format!(
                "the agent named a pack of {n} bytes (1 to {PACK_MAX})"
            )));
        }
    }
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
    let ops: Vec<Op> = match scope {
        Scope::Create(budget) => {
            let batch: Vec<(Id, u64)> = ids.iter().copied().zip(sizes.iter().copied()).collect();
            budget.admit(state, project, &batch).await?;
            sizes.into_iter().map(Op::Put).collect()
        }
        Scope::Restore(_) => vec![Op::Get; ids.len()],
    };
    let mut urls = Vec::with_capacity(ids.len());
    for (pack, op) in ids.into_iter().zip(ops) {
        let key = state.archives.pack_key(project, &pack);
        urls.push(state.archives.sign_url(op, &key).await?);
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
    fn a_create_is_refused_past_the_cap_measured_or_named() {
        const MIB: u64 = 1 << 20;
        let b = Budget::new(10 * MIB);
        b.take(vec![], &[(id(1), 5 * MIB)]).unwrap();
        // Not uploaded yet: counts its named 5 MiB; 4 more fit.
        b.take(vec![], &[(id(2), 4 * MIB)]).unwrap();
        // 2 MiB more would pass the cap, though nothing is stored yet.
        let e = b.take(vec![], &[(id(3), 2 * MIB)]).unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("--snapshot-max-bytes"), "{e}");
        // Measured in the store as named: 9 MiB, and 1 MiB still fits exactly.
        let b = Budget::new(10 * MIB);
        b.take(vec![], &[(id(1), 5 * MIB), (id(2), 4 * MIB)])
            .unwrap();
        b.take(vec![(id(1), 5 * MIB), (id(2), 4 * MIB)], &[(id(3), MIB)])
            .unwrap();
        // The next byte is refused, and so is every later batch.
        assert!(b.take(vec![(id(3), MIB)], &[(id(4), 1)]).is_err());
        assert!(b.take(vec![], &[(id(5), 1)]).is_err());
        b.check_total(10 * MIB).unwrap();
        assert!(b.check_total(10 * MIB + 1).is_err());
    }

    #[test]
    fn a_pack_named_again_keeps_its_size() {
        const MIB: u64 = 1 << 20;
        let b = Budget::new(MIB);
        b.take(vec![], &[(id(1), 1)]).unwrap();
        // The same size again (a retried upload) is fine...
        b.take(vec![], &[(id(1), 1)]).unwrap();
        // ...a larger one is refused, outstanding or stored.
        assert!(b.take(vec![], &[(id(1), 64 * MIB)]).is_err());
        let b = Budget::new(MIB);
        b.take(vec![], &[(id(2), 1)]).unwrap();
        assert!(b.take(vec![(id(2), 1)], &[(id(2), 64 * MIB)]).is_err());
    }

    #[test]
    fn outstanding_packs_and_urls_are_bounded() {
        // A large cap: an agent asking for URLs it never uses stops at
        // OUTSTANDING_MAX packs not uploaded.
        let b = Budget::new(1 << 40);
        let mut n = 0;
        let refused = loop {
            let batch: Vec<(Id, u64)> = (n..n + 64).map(|i| (id(i), 1)).collect();
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
        let same = [(id(0), 1)];
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
