//! The agent's one HTTP client, for the pack objects of snapshots: plain
//! PUTs and GETs on URLs the gateway signed (S3 presigned URLs, or the
//! gateway's own object route). HTTPS is rustls with ring; no storage
//! credentials are involved.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::{Error, Result};

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// How long one object transfer may take.
const TIMEOUT: Duration = Duration::from_secs(120);

fn client() -> Result<&'static Client<Https, Full<Bytes>>> {
    static CLIENT: OnceLock<Client<Https, Full<Bytes>>> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Private S3 endpoints (MinIO with the cluster's CA) are trusted through
    // the system's store as well.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Internal(format!("tls setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let c = Client::builder(TokioExecutor::new()).build(https);
    Ok(CLIENT.get_or_init(|| c))
}

/// Where an error message may name a URL: without its query (signature).
fn redact(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// PUTs `body` at `url`.
pub(crate) async fn put(url: &str, body: Bytes) -> Result<()> {
    let len = body.len();
    let req = http::Request::put(url)
        .header(http::header::CONTENT_LENGTH, len)
        .body(Full::new(body))
        .map_err(|e| Error::InvalidArgument(format!("bad object url {}: {e}", redact(url))))?;
    let res = tokio::time::timeout(TIMEOUT, client()?.request(req))
        .await
        .map_err(|_| Error::Unavailable(format!("PUT {}: timed out", redact(url))))?
        .map_err(|e| Error::Unavailable(format!("PUT {}: {e}", redact(url))))?;
    let status = res.status();
    if !status.is_success() {
        let body = read_limited(res.into_body(), 4096)
            .await
            .unwrap_or_default();
        return Err(Error::Unavailable(format!(
            "PUT {}: {status}: {}",
            redact(url),
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(())
}

/// GETs the object at `url`, at most `limit` bytes.
pub(crate) async fn get(url: &str, limit: u64) -> Result<Bytes> {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Error::InvalidArgument(format!("bad object url {}: {e}", redact(url))))?;
    let fetch = async {
        let res = client()?
            .request(req)
            .await
            .map_err(|e| Error::Unavailable(format!("GET {}: {e}", redact(url))))?;
        let status = res.status();
        if !status.is_success() {
            return Err(Error::Unavailable(format!("GET {}: {status}", redact(url))));
        }
        read_limited(res.into_body(), limit as usize)
            .await
            .map_err(|e| Error::Unavailable(format!("GET {}: {e}", redact(url))))
    };
    tokio::time::timeout(TIMEOUT, fetch)
        .await
        .map_err(|_| Error::Unavailable(format!("GET {}: timed out", redact(url))))?
}

async fn read_limited(
    body: hyper::body::Incoming,
    limit: usize,
) -> std::result::Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Limited::new(body, limit).collect().await?.to_bytes())
}
