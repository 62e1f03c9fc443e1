//! The one S3 client of the agent (built lazily from the standard AWS
//! environment, shared by every RPC) and the two transfers the archive service
//! needs: a multipart upload fed part by part, and a parallel ranged download.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};

use crate::error::{Error, Result};

/// Size of each ranged GET of a download.
pub(crate) const DOWNLOAD_PART: u64 = 8 * 1024 * 1024;
/// Ranged GETs in flight at once during a download.
pub(crate) const DOWNLOAD_CONCURRENCY: usize = 8;

static CLIENT: tokio::sync::OnceCell<Client> = tokio::sync::OnceCell::const_new();

/// The shared client, built on first use from `AWS_*` variables (region,
/// credentials, `AWS_ENDPOINT_URL`). With an explicit endpoint the client uses
/// path-style addressing, which MinIO, moto and most S3-compatible servers need.
pub(crate) async fn client() -> &'static Client {
    CLIENT
        .get_or_init(|| async {
            let shared = aws_config::from_env()
                .http_client(http_client())
                .load()
                .await;
            let mut builder = aws_sdk_s3::config::Builder::from(&shared)
                // Checksums beyond what S3 requires cost CPU on every part and
                // are not understood by every S3-compatible server; the archive
                // carries its own sha256.
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                );
            if endpoint_is_set() {
                builder = builder.force_path_style(true);
            }
            Client::from_conf(builder.build())
        })
        .await
}

/// The HTTPS client under the SDK (for S3 and for the credential providers:
/// STS, IMDS): hyper on rustls with ring, the workspace's one crypto library.
/// The SDK's default client would link aws-lc, a second and much larger one.
pub(crate) fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

fn endpoint_is_set() -> bool {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// Checks a bucket and key given by a client.
pub(crate) fn check_location(loc: Option<&proto::v1::S3Location>) -> Result<(String, String)> {
    let loc = loc.ok_or_else(|| Error::InvalidArgument("an s3 location is required".into()))?;
    if loc.bucket.is_empty() || loc.key.is_empty() {
        return Err(Error::InvalidArgument(
            "the s3 location needs a bucket and a key".into(),
        ));
    }
    Ok((loc.bucket.clone(), loc.key.clone()))
}

/// Maps an SDK error to the agent's error, by HTTP status and S3 error code.
fn s3_error<E, R>(what: &str, bucket: &str, key: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = err
        .as_service_error()
        .and_then(|e| e.code())
        .map(str::to_owned);
    let detail = DisplayErrorContext(&err).to_string();
    match code.as_deref() {
        Some("NoSuchKey" | "NoSuchBucket" | "NotFound" | "NoSuchUpload") => Error::NotFound(
            format!("s3://{bucket}/{key}: {what}: {}", code.unwrap_or_default()),
        ),
        _ if matches!(err, SdkError::ServiceError(_)) => {
            Error::FailedPrecondition(format!("s3://{bucket}/{key}: {what}: {detail}"))
        }
        _ => Error::Unavailable(format!("s3://{bucket}/{key}: {what}: {detail}")),
    }
}

/// A multipart upload in progress. It becomes an object only through
/// [`MultipartUpload::complete`]; every other ending must call
/// [`MultipartUpload::abort`] so no part lingers and nothing ever appears
/// under the key.
pub(crate) struct MultipartUpload {
    client: &'static Client,
    pub(crate) bucket: String,
    pub(crate) key: String,
    upload_id: String,
}

impl MultipartUpload {
    pub(crate) async fn create(bucket: &str, key: &str) -> Result<MultipartUpload> {
        let client = client().await;
        let out = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type("application/zip")
            .send()
            .await
            .map_err(|e| s3_error("create multipart upload", bucket, key, e))?;
        let upload_id = out
            .upload_id()
            .ok_or_else(|| Error::Unavailable("s3 gave no upload id".into()))?
            .to_owned();
        Ok(MultipartUpload {
            client,
            bucket: bucket.into(),
            key: key.into(),
            upload_id,
        })
    }

    /// Uploads one part (numbered from 1) and returns it for `complete`.
    pub(crate) async fn upload_part(&self, number: i32, body: Bytes) -> Result<CompletedPart> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error("upload part", &self.bucket, &self.key, e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_owned))
            .build())
    }

    /// Makes the object visible, from the parts in any order; `size` is the
    /// total of the parts.
    pub(crate) async fn complete(&self, mut parts: Vec<CompletedPart>, size: u64) -> Result<()> {
        parts.sort_by_key(|p| p.part_number());
        let res = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Some S3-compatible servers (moto among them) answer 200 with a
            // body the SDK cannot parse: the object exists. Confirm by size
            // rather than report a completed upload as failed.
            Err(SdkError::ServiceError(e)) if e.raw().status().is_success() => {
                match object_size(&self.bucket, &self.key).await {
                    Ok(got) if got == size => Ok(()),
                    _ => Err(s3_error(
                        "complete multipart upload",
                        &self.bucket,
                        &self.key,
                        SdkError::ServiceError(e),
                    )),
                }
            }
            Err(e) => Err(s3_error(
                "complete multipart upload",
                &self.bucket,
                &self.key,
                e,
            )),
        }
    }

    /// Drops the upload and its parts. Errors are logged, not returned: the
    /// caller is already failing for another reason, and an unfinished upload
    /// never becomes visible under the key anyway.
    pub(crate) async fn abort(&self) {
        let res = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        match res {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, key = %self.key, "multipart upload aborted")
            }
            Err(e) => {
                let error = DisplayErrorContext(&e);
                tracing::warn!(%error, bucket = %self.bucket, key = %self.key, "cannot abort multipart upload");
            }
        }
    }
}

/// The object's size in bytes.
pub(crate) async fn object_size(bucket: &str, key: &str) -> Result<u64> {
    let out = client()
        .await
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| s3_error("head object", bucket, key, e))?;
    Ok(out.content_length().unwrap_or(0).max(0) as u64)
}

/// Downloads `size` bytes of an object with parallel ranged GETs, handing each
/// part to `sink(offset, bytes)` as it arrives (in any order).
pub(crate) async fn download<F>(bucket: &str, key: &str, size: u64, mut sink: F) -> Result<()>
where
    F: FnMut(u64, Bytes) -> Result<()>,
{
    let client = client().await;
    let ranges = (0..size.div_ceil(DOWNLOAD_PART)).map(|i| {
        let start = i * DOWNLOAD_PART;
        let end = (start + DOWNLOAD_PART).min(size) - 1;
        (start, end)
    });
    let mut parts = futures::stream::iter(ranges)
        .map(|(start, end)| async move {
            let out = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .range(format!("bytes={start}-{end}"))
                .send()
                .await
                .map_err(|e| s3_error("get object", bucket, key, e))?;
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| Error::Unavailable(format!("s3://{bucket}/{key}: read body: {e}")))?
                .into_bytes();
            if body.len() as u64 != end - start + 1 {
                return Err(Error::Unavailable(format!(
                    "s3://{bucket}/{key}: short range read at {start}: the object changed?"
                )));
            }
            Ok::<_, Error>((start, body))
        })
        .buffer_unordered(DOWNLOAD_CONCURRENCY);
    while let Some((offset, bytes)) = parts.try_next().await? {
        sink(offset, bytes)?;
    }
    Ok(())
}
