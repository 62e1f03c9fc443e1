//! Where hibernation archives live: a folder or an S3 bucket. The agent writes
//! to S3 itself (Upload); for a folder the gateway writes the agent's archive
//! stream to a file atomically. Either way the gateway verifies an archive by
//! reading it back from the store (size and sha256) before trusting it.

use std::path::PathBuf;

use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::config::ArchiveLocation;
use crate::error::{Error, Result};

/// The configured archive store.
pub enum ArchiveStore {
    Folder(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
        client: tokio::sync::OnceCell<aws_sdk_s3::Client>,
        /// Set once the bucket is known to exist.
        bucket_ready: std::sync::atomic::AtomicBool,
    },
}

impl ArchiveStore {
    pub fn new(location: ArchiveLocation) -> ArchiveStore {
        match location {
            ArchiveLocation::Folder(p) => ArchiveStore::Folder(p),
            ArchiveLocation::S3 { bucket, prefix } => ArchiveStore::S3 {
                bucket,
                prefix,
                client: tokio::sync::OnceCell::new(),
                bucket_ready: std::sync::atomic::AtomicBool::new(false),
            },
        }
    }

    /// A human-readable description, for logs.
    pub fn describe(&self) -> String {
        match self {
            ArchiveStore::Folder(p) => p.display().to_string(),
            ArchiveStore::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// The key of a project's archive version (relative to the folder or bucket).
    pub fn key(&self, project: &str, version: i64) -> String {
        let name = format!("{project}/{version:08}.zip");
        match self {
            ArchiveStore::S3 { prefix, .. } if !prefix.is_empty() => format!("{prefix}/{name}"),
            _ => name,
        }
    }

    async fn s3(&self) -> Result<(&aws_sdk_s3::Client, &str)> {
        match self {
            ArchiveStore::S3 { bucket, client, .. } => {
                let c = client
                    .get_or_init(|| async {
                        // An HTTPS client on rustls + ring: the SDK's default
                        // one would link aws-lc beside kube's ring.
                        let http = aws_smithy_http_client::Builder::new()
                            .tls_provider(Provider::Rustls(CryptoMode::Ring))
                            .build_https();
                        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
                            .http_client(http)
                            .load()
                            .await;
                        let path_style = std::env::var_os("AWS_ENDPOINT_URL").is_some();
                        let s3conf = aws_sdk_s3::config::Builder::from(&conf)
                            .force_path_style(path_style)
                            .build();
                        aws_sdk_s3::Client::from_conf(s3conf)
                    })
                    .await;
                Ok((c, bucket.as_str()))
            }
            ArchiveStore::Folder(_) => Err(Error::internal("not an s3 archive store")),
        }
    }

    /// Writes a folder archive from a stream: to a temporary file, fsynced, then
    /// renamed into place. Answers size and sha256 of what was written. A
    /// stream error leaves nothing behind.
    pub async fn write_file(
        &self,
        key: &str,
        mut data: BoxStream<'static, Result<Bytes>>,
    ) -> Result<(u64, String)> {
        let ArchiveStore::Folder(dir) = self else {
            return Err(Error::internal("not a folder archive store"));
        };
        let path = dir.join(key);
        let parent = path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.clone());
        tokio::fs::create_dir_all(&parent).await?;
        let tmp = parent.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
        let result = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            let mut hash = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = data.next().await {
                let chunk = chunk?;
                hash.update(&chunk);
                size += chunk.len() as u64;
                f.write_all(&chunk).await?;
            }
            f.flush().await?;
            f.sync_all().await?;
            drop(f);
            tokio::fs::rename(&tmp, &path).await?;
            // The rename is durable only once the directory is synced.
            if let Ok(d) = tokio::fs::File::open(&parent).await {
                let _ = d.sync_all().await;
            }
            Ok::<_, Error>((size, hex::encode(hash.finalize())))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Reads an archive back from the store: its size and sha256.
    pub async fn verify(&self, key: &str) -> Result<(u64, String)> {
        let mut s = self.read(key).await?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = s.next().await {
            let chunk = chunk?;
            hash.update(&chunk);
            size += chunk.len() as u64;
        }
        Ok((size, hex::encode(hash.finalize())))
    }

    /// An archive's bytes.
    pub async fn read(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        match self {
            ArchiveStore::Folder(dir) => {
                let f = tokio::fs::File::open(dir.join(key)).await.map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Error::NotFound(format!("archive {key} not found"))
                    } else {
                        Error::Io(e)
                    }
                })?;
                Ok(tokio_util::io::ReaderStream::with_capacity(f, 256 << 10)
                    .map(|r| r.map_err(Error::Io))
                    .boxed())
            }
            ArchiveStore::S3 { .. } => {
                let (client, bucket) = self.s3().await?;
                let obj = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| {
                        Error::Unavailable(format!(
                            "cannot read s3://{bucket}/{key}: {}",
                            aws_sdk_s3::error::DisplayErrorContext(&e)
                        ))
                    })?;
                let body = obj.body;
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

    /// Removes an archive; an absent one is fine.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self {
            ArchiveStore::Folder(dir) => match tokio::fs::remove_file(dir.join(key)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::Io(e)),
            },
            ArchiveStore::S3 { .. } => {
                let (client, bucket) = self.s3().await?;
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| {
                        Error::Unavailable(format!(
                            "cannot delete s3://{bucket}/{key}: {}",
                            aws_sdk_s3::error::DisplayErrorContext(&e)
                        ))
                    })?;
                Ok(())
            }
        }
    }

    /// Creates the S3 bucket when it does not exist (a fresh MinIO or moto);
    /// an existing one is left alone. A folder store has nothing to do.
    pub async fn ensure_bucket(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let ArchiveStore::S3 { bucket_ready, .. } = self else {
            return Ok(());
        };
        if bucket_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (client, bucket) = self.s3().await?;
        match client.head_bucket().bucket(bucket).send().await {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                let mut req = client.create_bucket().bucket(bucket);
                let region = client.config().region().map(|r| r.as_ref().to_owned());
                if let Some(region) = region.filter(|r| r != "us-east-1") {
                    req = req.create_bucket_configuration(
                        aws_sdk_s3::types::CreateBucketConfiguration::builder()
                            .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                                region.as_str(),
                            ))
                            .build(),
                    );
                }
                req.send().await.map_err(|e| {
                    Error::Unavailable(format!(
                        "cannot create bucket {bucket}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    ))
                })?;
                tracing::info!(bucket, "archive bucket created");
            }
            // Any other answer (403 for a role without s3:ListBucket, say):
            // the upload itself will tell.
            Err(e) if e.as_service_error().is_some() => {
                tracing::debug!(bucket, error = %aws_sdk_s3::error::DisplayErrorContext(&e), "cannot inspect the bucket");
            }
            Err(e) => {
                return Err(Error::Unavailable(format!(
                    "cannot reach bucket {bucket}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )));
            }
        }
        bucket_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Checks the store can be reached (folder exists or can be made).
    pub async fn ready(&self) -> Result<()> {
        match self {
            ArchiveStore::Folder(dir) => {
                tokio::fs::create_dir_all(dir).await?;
                Ok(())
            }
            ArchiveStore::S3 { .. } => Ok(()),
        }
    }
}
