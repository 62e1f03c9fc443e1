//! Where snapshots live: a folder or an S3 bucket (`s3://bucket/prefix`).
//! Every object of a project is under `{prefix}/{project}/`: manifests at
//! `snapshots/{id}`, packs at `packs/{id}`, and the zip archives of versions
//! hibernated before snapshots at `{version:08}.zip`.
//!
//! Agents hold no credentials: the gateway signs short-lived URLs for the
//! pack objects of one operation. For S3 they are presigned URLs; for a
//! folder they point at the gateway's own `/_objects/{key}` route with an
//! HMAC over method, key and expiry (`sign_url`, `check_url`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use devgate_snapshot::Id;
use futures::stream::{BoxStream, StreamExt as _};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::config::ArchiveLocation;
use crate::error::{Error, Result};

/// How long a signed URL stays valid.
pub const URL_TTL: Duration = Duration::from_secs(15 * 60);

/// The configured archive store.
pub struct ArchiveStore {
    kind: Kind,
    /// The key of folder URL signatures (derived from the gateway's secret).
    url_key: Vec<u8>,
    /// `http://host:port` of this gateway, for folder URLs.
    base: OnceLock<String>,
    bucket_ready: std::sync::atomic::AtomicBool,
}

enum Kind {
    Folder(PathBuf),
    S3 { bucket: String, prefix: String },
}

/// What a signed URL allows: one `GET`, or one `PUT` of a body of exactly
/// this many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Put(u64),
}

/// HMAC-SHA256 keyed with `key` (HMAC takes keys of any length, so the
/// error cannot happen; it is carried rather than unwrapped).
fn keyed(key: &[u8]) -> Result<Hmac<Sha256>> {
    <Hmac<Sha256>>::new_from_slice(key).map_err(|e| Error::internal(format!("hmac key: {e}")))
}

impl ArchiveStore {
    pub fn new(location: ArchiveLocation, secret: &[u8]) -> Result<ArchiveStore> {
        let mut mac = keyed(secret)?;
        mac.update(b"devgate object urls v1");
        let url_key = mac.finalize().into_bytes().to_vec();
        let kind = match location {
            ArchiveLocation::Folder(p) => Kind::Folder(p),
            ArchiveLocation::S3 { bucket, prefix } => Kind::S3 { bucket, prefix },
        };
        Ok(ArchiveStore {
            kind,
            url_key,
            base: OnceLock::new(),
            bucket_ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Where agents reach this gateway's object route (`http://host:port`).
    pub fn set_base_url(&self, base: String) {
        let _ = self.base.set(base);
    }

    pub fn is_folder(&self) -> bool {
        matches!(self.kind, Kind::Folder(_))
    }

    /// A human-readable description, for logs.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Folder(p) => p.display().to_string(),
            Kind::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// The key of everything of a project, with a trailing slash.
    pub fn project_prefix(&self, project: &str) -> String {
        match &self.kind {
            Kind::S3 { prefix, .. } if !prefix.is_empty() => format!("{prefix}/{project}/"),
            _ => format!("{project}/"),
        }
    }

    pub fn pack_key(&self, project: &str, id: &Id) -> String {
        format!("{}packs/{id}", self.project_prefix(project))
    }

    pub fn manifest_key(&self, project: &str, id: &Id) -> String {
        format!("{}snapshots/{id}", self.project_prefix(project))
    }

    /// A URL the agent may `method` the object `key` at, for [`URL_TTL`].
    pub async fn sign_url(&self, op: Op, key: &str) -> Result<String> {
        match &self.kind {
            Kind::S3 { bucket, .. } => {
                let put = match op {
                    Op::Get => None,
                    Op::Put(len) => Some(len),
                };
                crate::s3::presign(put, bucket, key, URL_TTL).await
            }
            Kind::Folder(_) => {
                let base = self.base.get().ok_or_else(|| {
                    Error::internal("the object route's address is not known yet")
                })?;
                let exp = now_secs() + URL_TTL.as_secs();
                let sig = hex::encode(self.mac(op, key, exp)?.finalize().into_bytes());
                Ok(match op {
                    Op::Get => format!("{base}/_objects/{key}?exp={exp}&sig={sig}"),
                    Op::Put(len) => format!("{base}/_objects/{key}?exp={exp}&len={len}&sig={sig}"),
                })
            }
        }
    }

    fn mac(&self, op: Op, key: &str, exp: u64) -> Result<Hmac<Sha256>> {
        let mut mac = keyed(&self.url_key)?;
        match op {
            Op::Get => mac.update(format!("GET\n{key}\n{exp}").as_bytes()),
            Op::Put(len) => mac.update(format!("PUT\n{key}\n{exp}\n{len}").as_bytes()),
        }
        Ok(mac)
    }

    /// Whether a folder URL's signature is good and unexpired.
    pub fn check_url(&self, op: Op, key: &str, exp: u64, sig: &str) -> bool {
        let now = now_secs();
        if exp < now || exp > now + URL_TTL.as_secs() {
            return false;
        }
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        // Constant-time comparison.
        self.mac(op, key, exp)
            .is_ok_and(|mac| mac.verify_slice(&sig).is_ok())
    }

    fn folder_path(&self, key: &str) -> Result<PathBuf> {
        match &self.kind {
            Kind::Folder(dir) => Ok(dir.join(key)),
            Kind::S3 { .. } => Err(Error::internal("not a folder archive store")),
        }
    }

    /// Writes an object: for a folder, to a temporary file, fsynced, then
    /// renamed into place (`write_atomic`).
    pub async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        match &self.kind {
            Kind::S3 { bucket, .. } => crate::s3::put(bucket, key, body).await,
            Kind::Folder(_) => {
                let path = self.folder_path(key)?;
                tokio::task::spawn_blocking(move || write_atomic(&path, &body))
                    .await
                    .map_err(Error::internal)?
            }
        }
    }

    /// Removes the temporary files of folder puts that never finished (the
    /// gateway was killed): those written before `before` whose writer is
    /// gone (a live writer holds a lock on its file, whichever process it
    /// is), in the whole folder or only under `project`'s prefix. Answers
    /// how many were removed; an S3 store has none (a PUT is whole or
    /// absent). The start-up recovery sweeps everything; the snapshot GC
    /// sweeps each project it collects.
    pub async fn sweep_temporaries(
        &self,
        project: Option<&str>,
        before: std::time::SystemTime,
    ) -> Result<usize> {
        let Kind::Folder(dir) = &self.kind else {
            return Ok(0);
        };
        let (dir, depth) = match project {
            Some(p) => (dir.join(self.project_prefix(p)), 1),
            None => (dir.clone(), 0),
        };
        tokio::task::spawn_blocking(move || sweep_dir(&dir, before, depth))
            .await
            .map_err(Error::internal)
    }

    /// An object's bytes, at most `limit`.
    pub async fn get(&self, key: &str, limit: u64) -> Result<Bytes> {
        match &self.kind {
            Kind::S3 { bucket, .. } => crate::s3::get(bucket, key, limit).await,
            Kind::Folder(_) => {
                let path = self.folder_path(key)?;
                let meta = tokio::fs::metadata(&path)
                    .await
                    .map_err(|e| not_found(key, e))?;
                if meta.len() > limit {
                    return Err(Error::internal(format!(
                        "{key} is larger than {limit} bytes"
                    )));
                }
                Ok(Bytes::from(
                    tokio::fs::read(&path)
                        .await
                        .map_err(|e| not_found(key, e))?,
                ))
            }
        }
    }

    /// An object's size; `None` when there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>> {
        match &self.kind {
            Kind::S3 { bucket, .. } => crate::s3::size(bucket, key).await,
            Kind::Folder(_) => match tokio::fs::metadata(self.folder_path(key)?).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::Io(e)),
            },
        }
    }

    /// A zip archive's bytes as a stream (versions hibernated before snapshots).
    pub async fn read(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        match &self.kind {
            Kind::Folder(_) => {
                let f = tokio::fs::File::open(self.folder_path(key)?)
                    .await
                    .map_err(|e| not_found(key, e))?;
                Ok(tokio_util::io::ReaderStream::with_capacity(f, 256 << 10)
                    .map(|r| r.map_err(Error::Io))
                    .boxed())
            }
            Kind::S3 { bucket, .. } => {
                let body = crate::s3::stream(bucket, key).await?;
                let s = futures::stream::unfold(body, |mut body| async move {
                    match body.next().await {
                        Some(Ok(b)) => Some((Ok(b), body)),
                        Some(Err(e)) => Some((
                            Err(Error::Unavailable(format!("s3 read failed: {e}"))),
                            body,
                        )),
                        None => None,
                    }
                });
                Ok(s.boxed())
            }
        }
    }

    /// Removes an object; an absent one is fine.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match &self.kind {
            Kind::Folder(_) => match tokio::fs::remove_file(self.folder_path(key)?).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::Io(e)),
            },
            Kind::S3 { bucket, .. } => crate::s3::delete(bucket, key).await,
        }
    }

    /// Removes every object of a project.
    pub async fn delete_project(&self, project: &str) -> Result<()> {
        let prefix = self.project_prefix(project);
        match &self.kind {
            Kind::Folder(dir) => match tokio::fs::remove_dir_all(dir.join(&prefix)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::Io(e)),
            },
            Kind::S3 { bucket, .. } => {
                for key in crate::s3::list(bucket, &prefix).await? {
                    crate::s3::delete(bucket, &key).await?;
                }
                Ok(())
            }
        }
    }

    /// A project's manifests and packs (and, in a folder, the temporary
    /// files of writes cut short), each with its key and the time it was
    /// last written (a file's mtime, an S3 object's `LastModified`).
    pub async fn list_objects(&self, project: &str) -> Result<Vec<(String, SystemTime)>> {
        let prefix = self.project_prefix(project);
        match &self.kind {
            Kind::S3 { bucket, .. } => crate::s3::list_with_times(bucket, &prefix).await,
            Kind::Folder(dir) => {
                let mut out = Vec::new();
                for sub in ["packs", "snapshots"] {
                    let mut rd = match tokio::fs::read_dir(dir.join(&prefix).join(sub)).await {
                        Ok(rd) => rd,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(Error::Io(e)),
                    };
                    while let Some(e) = rd.next_entry().await? {
                        let meta = match e.metadata().await {
                            Ok(m) if m.is_file() => m,
                            Ok(_) => continue,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(Error::Io(e)),
                        };
                        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                            continue;
                        };
                        out.push((format!("{prefix}{sub}/{name}"), meta.modified()?));
                    }
                }
                Ok(out)
            }
        }
    }

    /// Creates the S3 bucket when it does not exist; a folder store has
    /// nothing to do.
    pub async fn ensure_bucket(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let Kind::S3 { bucket, .. } = &self.kind else {
            return Ok(());
        };
        if self.bucket_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        crate::s3::ensure_bucket(bucket).await?;
        self.bucket_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Checks the store can be reached (folder exists or can be made).
    pub async fn ready(&self) -> Result<()> {
        match &self.kind {
            Kind::Folder(dir) => {
                tokio::fs::create_dir_all(dir).await?;
                Ok(())
            }
            Kind::S3 { .. } => Ok(()),
        }
    }
}

/// Writes `body` at `path` through a temporary file beside it (`.{uuid}.tmp`),
/// fsynced, then renamed into place. The temporary file is locked while it
/// is written, so that a sweep never removes the file of a live writer.
fn write_atomic(path: &Path, body: &[u8]) -> Result<()> {
    let parent = path
        .parent()
        .ok_or_else(|| Error::internal("object key without a parent"))?;
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".{}{TMP_SUFFIX}", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut f = std::fs::File::create_new(&tmp)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(std::io::Error::from)?;
        f.write_all(body)?;
        f.sync_all()?;
        devgate_pause::at_blocking("archive-rename");
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
        Ok::<_, Error>(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The end of the name of a folder put's temporary file.
const TMP_SUFFIX: &str = ".tmp";

/// Objects lie at most this deep in the folder (`{project}/packs/{id}`).
const DEPTH: u32 = 3;

/// [`ArchiveStore::sweep_temporaries`] in `dir`, `depth` levels down.
fn sweep_dir(dir: &Path, before: std::time::SystemTime, depth: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let name = e.file_name();
        let name = name.to_string_lossy();
        if ft.is_dir() && depth + 1 < DEPTH {
            removed += sweep_dir(&e.path(), before, depth + 1);
        } else if ft.is_file()
            && name.starts_with('.')
            && name.ends_with(TMP_SUFFIX)
            && abandoned(&e.path(), before)
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Whether a temporary file is older than `before` and no writer holds it.
fn abandoned(path: &Path, before: std::time::SystemTime) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let old = f
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|t| t < before);
    old && rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
}

fn not_found(key: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::NotFound(format!("object {key} not found"))
    } else {
        Error::Io(e)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_takes_only_abandoned_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let packs = dir.path().join("p1/packs");
        std::fs::create_dir_all(&packs).unwrap();
        let dead = packs.join(".dead.tmp");
        let live = packs.join(".live.tmp");
        let object = packs.join("00ff");
        for f in [&dead, &live, &object] {
            std::fs::write(f, "x").unwrap();
        }
        // A writer that still runs holds its lock (any process: flock is
        // per open file, so this one counts as another writer).
        let writer = std::fs::File::open(&live).unwrap();
        rustix::fs::flock(
            &writer,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        assert_eq!(
            sweep_dir(dir.path(), std::time::UNIX_EPOCH, 0),
            0,
            "newer than the sweep"
        );
        assert_eq!(sweep_dir(dir.path(), later, 0), 1);
        assert!(!dead.exists() && live.exists() && object.exists());
        drop(writer);
        assert_eq!(sweep_dir(dir.path(), later, 0), 1);
        assert!(!live.exists() && object.exists());
        // A put leaves no temporary behind.
        write_atomic(&packs.join("0100"), b"data").unwrap();
        assert_eq!(std::fs::read_dir(&packs).unwrap().count(), 2);
    }

    #[test]
    fn folder_signatures_bind_method_length_key_and_expiry() {
        let s = ArchiveStore::new(ArchiveLocation::Folder("/x".into()), b"secret").unwrap();
        let other = ArchiveStore::new(ArchiveLocation::Folder("/x".into()), b"other").unwrap();
        let key = "a/packs/00";
        let exp = now_secs() + 60;
        let sig = hex::encode(s.mac(Op::Put(5), key, exp).unwrap().finalize().into_bytes());
        assert!(s.check_url(Op::Put(5), key, exp, &sig));
        assert!(!s.check_url(Op::Get, key, exp, &sig));
        assert!(!s.check_url(Op::Put(5), "b/packs/00", exp, &sig));
        assert!(!s.check_url(Op::Put(5), key, exp + 1, &sig));
        assert!(!other.check_url(Op::Put(5), key, exp, &sig));
        // Another length than signed.
        assert!(!s.check_url(Op::Put(6), key, exp, &sig));
        assert!(!s.check_url(Op::Put(0), key, exp, &sig));
        let old = now_secs() - 1;
        let sig = hex::encode(s.mac(Op::Put(5), key, old).unwrap().finalize().into_bytes());
        assert!(!s.check_url(Op::Put(5), key, old, &sig), "expired");
        let far = now_secs() + 10 * URL_TTL.as_secs();
        let sig = hex::encode(s.mac(Op::Put(5), key, far).unwrap().finalize().into_bytes());
        assert!(!s.check_url(Op::Put(5), key, far, &sig), "too far ahead");
    }
}
