//! Builders that start the real binaries (agent, gateway) and a real
//! S3-compatible server (moto) on loopback, for the end-to-end tests of this
//! crate and the agent's own integration tests. Every process is killed when
//! its handle drops.

pub mod devserver;
pub mod gateway;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

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

/// A real S3-compatible server on loopback: moto's server, from PyPI
/// (`pip install 'moto[server]'`, which the README's test command runs).
pub struct S3Server {
    pub endpoint: String,
    _proc: Proc,
}

pub const S3_ACCESS_KEY: &str = "test";
pub const S3_SECRET_KEY: &str = "test-secret";
pub const S3_REGION: &str = "us-east-1";

impl S3Server {
    pub async fn start() -> Result<S3Server> {
        let port = free_port();
        // `python3 -m` rather than the `moto_server` script: a fresh pyenv
        // install may not have made a shim for the script yet.
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start moto_server: install it with pip install 'moto[server]'")?;
        let proc = Proc(child);
        let endpoint = format!("http://127.0.0.1:{port}");
        let addr = format!("127.0.0.1:{port}");
        eventually(Duration::from_secs(30), "moto_server to listen", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
        })
        .await?;
        Ok(S3Server {
            endpoint,
            _proc: proc,
        })
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

    /// Creates a bucket (moto accepts an unsigned PUT).
    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let status = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{}/{bucket}", self.endpoint)])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "cannot create bucket {bucket}");
        Ok(())
    }
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
