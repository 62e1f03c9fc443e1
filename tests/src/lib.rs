//! Builders that start the real binaries (agent, gateway) and real
//! S3-compatible servers (moto, s3s-fs) on loopback, for the end-to-end tests of this
//! crate and the agent's own integration tests. Every process is killed when
//! its handle drops.

pub mod devserver;
pub mod gateway;
pub mod postgres;
pub mod sse;

pub use http::{Fetch, error_of, expect_error};
mod http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

/// Directory holding the workspace's built binaries (`target/debug` or
/// `target/release`): the test executable lives in its `deps/` folder.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins` first (`cargo test --workspace`, the README's test command, builds them)",
        p.display()
    );
    p
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Which S3-compatible server an [`S3Server`] runs. The S3 tests run
/// against both ([`on_both_s3_servers!`]): they are written independently
/// (Python, Rust) and disagree where S3 leaves room, and only s3s-fs checks
/// signatures (presigned URLs included, with their expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    /// moto's server, from PyPI (`pip install 'moto[server]'`). Accepts any
    /// credentials and unsigned requests.
    Moto,
    /// s3s-fs, from crates.io (`cargo install s3s-fs --features binary`,
    /// version pinned in scripts/install-test-deps.sh): objects as files
    /// under a temporary folder; every request must carry a valid SigV4
    /// signature of [`S3_ACCESS_KEY`] / [`S3_SECRET_KEY`].
    S3sFs,
}

/// A real S3-compatible server on loopback (the README's test command
/// installs both kinds).
pub struct S3Server {
    pub kind: S3Kind,
    pub endpoint: String,
    client: aws_sdk_s3::Client,
    _proc: Proc,
    _root: Option<tempfile::TempDir>,
}

pub const S3_ACCESS_KEY: &str = "test";
pub const S3_SECRET_KEY: &str = "test-secret";
pub const S3_REGION: &str = "us-east-1";

impl S3Server {
    /// Starts a server of `kind` on loopback; against a cluster
    /// (`k8s/e2e.sh`), with `E2E_S3_HOST` set to an address of this machine
    /// that pods reach, on every address, named by that one in
    /// [`S3Server::endpoint`] (the URLs the gateway signs for agents).
    pub async fn start(kind: S3Kind) -> Result<S3Server> {
        let port = free_port();
        let public = std::env::var("E2E_S3_HOST").ok().filter(|h| !h.is_empty());
        let bind = if public.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let (child, root) = match kind {
            // `python3 -m` rather than the `moto_server` script: a fresh pyenv
            // install may not have made a shim for the script yet.
            S3Kind::Moto => {
                let child = Command::new("python3")
                    .args(["-m", "moto.server", "-H", bind, "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context(
                        "cannot start moto_server: install it with pip install 'moto[server]'",
                    )?;
                (child, None)
            }
            S3Kind::S3sFs => {
                let root = tempfile::tempdir()?;
                let child = Command::new("s3s-fs")
                    .args(["--host", bind, "--port", &port.to_string()])
                    .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                    .arg(root.path())
                    .env("RUST_LOG", "error")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context(
                        "cannot start s3s-fs: install it with scripts/install-test-deps.sh \
                         (cargo install s3s-fs --features binary --locked --version ...)",
                    )?;
                (child, Some(root))
            }
        };
        let proc = Proc(child);
        let endpoint = format!("http://{}:{port}", public.as_deref().unwrap_or("127.0.0.1"));
        let addr = format!("127.0.0.1:{port}");
        eventually(
            Duration::from_secs(30),
            &format!("{kind:?} to listen"),
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
            },
        )
        .await?;
        let client = aws_sdk_s3::Client::from_conf(
            Self::config(&endpoint)
                .http_client(
                    aws_smithy_http_client::Builder::new()
                        .tls_provider(Provider::Rustls(CryptoMode::Ring))
                        .build_https(),
                )
                .force_path_style(true)
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
                .build(),
        );
        Ok(S3Server {
            kind,
            endpoint,
            client,
            _proc: proc,
            _root: root,
        })
    }

    pub async fn moto() -> Result<S3Server> {
        Self::start(S3Kind::Moto).await
    }

    pub async fn s3s_fs() -> Result<S3Server> {
        Self::start(S3Kind::S3sFs).await
    }

    /// The SDK settings that reach this server with the test credentials
    /// (endpoint, region, credentials; no HTTP client, no addressing).
    pub fn sdk_config(&self) -> aws_sdk_s3::config::Builder {
        Self::config(&self.endpoint)
    }

    fn config(endpoint: &str) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new(S3_REGION))
            .credentials_provider(Credentials::new(
                S3_ACCESS_KEY,
                S3_SECRET_KEY,
                None,
                None,
                "tests",
            ))
    }

    /// The standard AWS variables that point a process at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            ("AWS_REGION", S3_REGION),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// A signed S3 client of this server, path-style.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Creates a bucket.
    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        self.client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .with_context(|| format!("cannot create bucket {bucket}"))?;
        Ok(())
    }

    /// Every key of `bucket` under `prefix`, sorted.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
                .with_context(|| format!("cannot list s3://{bucket}/{prefix}"))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// Writes an object.
    pub async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<()> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .with_context(|| format!("cannot put s3://{bucket}/{key}"))?;
        Ok(())
    }

    /// An object's bytes; `None` when there is none.
    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.body.collect().await?.into_bytes().to_vec())),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("{}", DisplayErrorContext(e)))
                .with_context(|| format!("cannot get s3://{bucket}/{key}")),
        }
    }
}

/// Declares, for each `async fn name(s3: &S3Server)` named, a module `name`
/// with two tests, `name::moto` and `name::s3s_fs`, that run it against a
/// fresh server of each kind.
#[macro_export]
macro_rules! on_both_s3_servers {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn moto() {
                let s3 = $crate::S3Server::moto().await.expect("start moto");
                super::$name(&s3).await;
            }

            #[tokio::test]
            async fn s3s_fs() {
                let s3 = $crate::S3Server::s3s_fs().await.expect("start s3s-fs");
                super::$name(&s3).await;
            }
        }
    )+};
}

/// A real `agent` process serving `root` on a Unix socket.
pub struct Agent {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub token: String,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent over `root` with extra environment variables.
    pub async fn start(root: &Path, env: &[(String, String)]) -> Result<Agent> {
        Self::start_with_args(root, env, &[]).await
    }

    pub async fn start_with_args(
        root: &Path,
        env: &[(String, String)],
        args: &[&str],
    ) -> Result<Agent> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("agent.sock");
        let token = format!("tok-{}", rand::random::<u64>());
        let child = Command::new(bin("agent"))
            .arg("--root")
            .arg(root)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .env("AGENT_TOKEN", &token)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .spawn()
            .context("spawn agent")?;
        let agent = Agent {
            root: root.to_path_buf(),
            socket,
            token,
            proc: Proc(child),
            _dir: dir,
        };
        let sock = agent.socket.clone();
        eventually(Duration::from_secs(20), "agent socket", || {
            let sock = sock.clone();
            async move { tokio::net::UnixStream::connect(sock).await.ok().map(|_| ()) }
        })
        .await?;
        Ok(agent)
    }

    /// A channel to the agent over its socket.
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        unix_channel(&self.socket).await
    }

    /// Adds this agent's token to a request.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        authed(msg, &self.token)
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

/// A tonic channel over a Unix socket.
pub async fn unix_channel(path: &Path) -> Result<tonic::transport::Channel> {
    let path = path.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://agent.local")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        proto::AUTH_METADATA_KEY,
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    req
}
