//! The one S3 client of the platform (only the gateway holds storage
//! credentials): built once from the standard `AWS_*` variables, path-style
//! addressing when an endpoint is set (MinIO, moto, s3s-fs), checksums only where S3
//! requires them, HTTPS on rustls with ring. Besides plain object calls it
//! presigns the short-lived URLs agents move snapshot packs with.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use bytes::Bytes;

use crate::error::{Error, Result};

static CLIENT: tokio::sync::OnceCell<Client> = tokio::sync::OnceCell::const_new();

/// The shared client, from the standard `AWS_*` variables.
pub async fn client() -> &'static Client {
    CLIENT
        .get_or_init(|| async {
            let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .http_client(https())
                .load()
                .await;
            let path_style = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                .iter()
                .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
            configure(aws_sdk_s3::config::Builder::from(&conf), path_style)
        })
        .await
}

/// An HTTPS client on rustls + ring: the SDK's default one would link
/// aws-lc beside kube's ring.
fn https() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// A client with this module's one set of settings over `builder` (which
/// holds the endpoint, region and credentials): path-style addressing when
/// `path_style` (an endpoint is set: MinIO, moto, s3s-fs), checksums only
/// where S3 requires them. [`client`] is built with it, and so is the client
/// the end-to-end tests presign with against their own servers.
pub fn configure(builder: aws_sdk_s3::config::Builder, path_style: bool) -> Client {
    let s3conf = builder
        .http_client(https())
        .force_path_style(path_style)
        // Objects carry their own hashes (blake3 names); extra
        // checksums would also end up in presigned URLs as headers
        // the agent does not send.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(s3conf)
}

fn unavailable(what: &str, bucket: &str, key: &str, e: impl std::error::Error) -> Error {
    Error::Unavailable(format!(
        "s3://{bucket}/{key}: {what}: {}",
        DisplayErrorContext(e)
    ))
}

/// A presigned URL for one `GET` of `key`, or one `PUT` of a body of
/// exactly `put` bytes (`content-length` is signed), valid for `ttl`.
pub async fn presign(put: Option<u64>, bucket: &str, key: &str, ttl: Duration) -> Result<String> {
    presign_with(client().await, put, bucket, key, ttl).await
}

/// [`presign`] with the client `c`.
pub async fn presign_with(
    c: &Client,
    put: Option<u64>,
    bucket: &str,
    key: &str,
    ttl: Duration,
) -> Result<String> {
    let cfg = PresigningConfig::expires_in(ttl).map_err(Error::internal)?;
    let req = if let Some(len) = put {
        let len = i64::try_from(len).map_err(Error::internal)?;
        c.put_object()
            .bucket(bucket)
            .key(key)
            .content_length(len)
            .presigned(cfg)
            .await
            .map_err(|e| unavailable("presign", bucket, key, e))?
    } else {
        c.get_object()
            .bucket(bucket)
            .key(key)
            .presigned(cfg)
            .await
            .map_err(|e| unavailable("presign", bucket, key, e))?
    };
    Ok(req.uri().to_owned())
}

pub async fn put(bucket: &str, key: &str, body: Bytes) -> Result<()> {
    client()
        .await
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| unavailable("put", bucket, key, e))?;
    Ok(())
}

/// An object's bytes, at most `limit`.
pub async fn get(bucket: &str, key: &str, limit: u64) -> Result<Bytes> {
    let out = client()
        .await
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                Error::NotFound(format!("s3://{bucket}/{key} not found"))
            } else {
                unavailable("get", bucket, key, e)
            }
        })?;
    if out.content_length().unwrap_or(0).max(0) as u64 > limit {
        return Err(Error::internal(format!(
            "s3://{bucket}/{key} is larger than {limit} bytes"
        )));
    }
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| Error::Unavailable(format!("s3://{bucket}/{key}: read body: {e}")))?;
    Ok(body.into_bytes())
}

/// An object's body as a stream (zip archives of earlier versions).
pub async fn stream(bucket: &str, key: &str) -> Result<ByteStream> {
    let out = client()
        .await
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| unavailable("get", bucket, key, e))?;
    Ok(out.body)
}

/// An object's size; `None` when there is none.
pub async fn size(bucket: &str, key: &str) -> Result<Option<u64>> {
    match client()
        .await
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
    {
        Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
        Err(e) => Err(unavailable("head", bucket, key, e)),
    }
}

pub async fn delete(bucket: &str, key: &str) -> Result<()> {
    client()
        .await
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| unavailable("delete", bucket, key, e))?;
    Ok(())
}

/// Every key under `prefix`.
pub async fn list(bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut pages = client()
        .await
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| unavailable("list", bucket, prefix, e))?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    Ok(keys)
}

/// Every key under `prefix`, with its `LastModified` time.
pub async fn list_with_times(
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, std::time::SystemTime)>> {
    let mut keys = Vec::new();
    let mut pages = client()
        .await
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| unavailable("list", bucket, prefix, e))?;
        for o in page.contents() {
            let (Some(key), Some(at)) = (o.key(), o.last_modified()) else {
                continue;
            };
            let at = std::time::SystemTime::try_from(*at).map_err(|e| {
                Error::Unavailable(format!("s3 list {bucket}/{prefix}: {key}'s time: {e}"))
            })?;
            keys.push((key.to_owned(), at));
        }
    }
    Ok(keys)
}

/// Creates the bucket when it does not exist (a fresh MinIO, moto or s3s-fs); an
/// existing one is left alone.
pub async fn ensure_bucket(bucket: &str) -> Result<()> {
    let client = client().await;
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
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
            req.send()
                .await
                .map_err(|e| unavailable("create bucket", bucket, "", e))?;
            tracing::info!(bucket, "archive bucket created");
            Ok(())
        }
        // Any other answer (403 for a role without s3:ListBucket, say):
        // the writes themselves will tell.
        Err(e) if e.as_service_error().is_some() => {
            tracing::debug!(bucket, error = %DisplayErrorContext(&e), "cannot inspect the bucket");
            Ok(())
        }
        Err(e) => Err(unavailable("head bucket", bucket, "", e)),
    }
}
