//! A real `gateway` process on loopback for end-to-end tests: a temp data
//! dir, a known secret (so tests can sign their own tokens), an optional
//! archive location and extra environment (S3), started and awaited until it
//! prints `listening on http://ADDR`; killed on drop.
//!
//! Against a cluster (`k8s/e2e.sh`): with `E2E_NAMESPACE_PREFIX` set, each
//! gateway gets a namespace prefix of its own under it, so tests that use
//! the same project ids never meet in one namespace; with
//! `E2E_GATEWAY_URL` (and `E2E_GATEWAY_SECRET`), a gateway with default
//! settings is the one already running there (the in-cluster shape) instead
//! of a process of the test's.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde::Serialize;

use crate::{Proc, bin};

/// How to start a gateway.
#[derive(Clone, Default)]
pub struct GatewayBuilder {
    env: Vec<(String, String)>,
    args: Vec<String>,
    archive: Option<String>,
    listen: Option<std::net::SocketAddr>,
    data_dir: Option<PathBuf>,
    stderr: Option<PathBuf>,
    no_secret: bool,
    secret: Option<String>,
    bins: Option<PathBuf>,
}

impl GatewayBuilder {
    /// An extra environment variable (e.g. the S3 server's `AWS_*`).
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Several extra environment variables.
    pub fn envs(mut self, vars: &[(String, String)]) -> Self {
        self.env.extend(vars.iter().cloned());
        self
    }

    /// An extra command-line argument.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Extra command-line arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `--archive`: a folder or `s3://bucket/prefix`.
    pub fn archive(mut self, location: impl Into<String>) -> Self {
        self.archive = Some(location.into());
        self
    }

    /// Listens on this address instead of a free port picked by the gateway
    /// (the Kubernetes runtime puts the port in project NetworkPolicies).
    pub fn listen(mut self, addr: std::net::SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Uses this data dir instead of a new temp dir (it is not removed).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Uses this secret (replicas that must accept each other's tokens).
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// Starts without `--secret`, so the gateway makes (or reuses) the one in
    /// its data dir; tokens are then signed with that one.
    pub fn without_secret(mut self) -> Self {
        self.no_secret = true;
        self
    }

    /// Starts the `gateway` and `agent` binaries of this folder (another
    /// build, for a benchmark's A/B) instead of the workspace's.
    pub fn bins(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bins = Some(dir.into());
        self
    }

    /// Writes the gateway's log (stderr) to this file instead of the test's stderr.
    pub fn stderr_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr = Some(path.into());
        self
    }

    /// Starts the gateway and waits for its `listening on` line.
    pub async fn start(self) -> Result<Gateway> {
        if let Some(url) = std::env::var("E2E_GATEWAY_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            let secret = std::env::var("E2E_GATEWAY_SECRET").context(
                "E2E_GATEWAY_URL needs E2E_GATEWAY_SECRET (the gateway's GATEWAY_SECRET)",
            )?;
            let wipe = std::env::var("E2E_GATEWAY_WIPE").is_ok_and(|w| w == "yes");
            return self.external(&url, secret, wipe).await;
        }
        let (temp, data_dir) = match &self.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir()?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let secret = self
            .secret
            .clone()
            .unwrap_or_else(|| format!("test-secret-{:032x}", rand::random::<u128>()));
        let mut gw = Gateway {
            base: String::new(),
            addr: match self.listen {
                Some(a) => a,
                None => "127.0.0.1:0".parse()?,
            },
            secret,
            data_dir,
            proc: None,
            stdout: Arc::default(),
            http: reqwest::Client::builder().no_proxy().build()?,
            builder: self,
            uid_base: 300_000 + rand::random_range(0..100_000u32) * 2048,
            namespace_prefix: std::env::var("E2E_NAMESPACE_PREFIX")
                .ok()
                .filter(|p| !p.is_empty())
                .map(|p| format!("{p}{:04x}-", rand::random::<u16>())),
            external: false,
            _temp: temp,
        };
        gw.spawn().await?;
        Ok(gw)
    }

    /// The gateway at `url` (`http://IP:PORT`, e.g. a `kubectl port-forward`
    /// of the in-cluster gateway's Service), whose secret is `secret`
    /// (`E2E_GATEWAY_SECRET`). Only a gateway with default settings can be
    /// that one: a test that asks for settings of its own fails with a
    /// message. Every project on it is deleted first, so each test starts
    /// from none, as with a gateway of its own (run these tests one at a
    /// time); only when `wipe` (`E2E_GATEWAY_WIPE=yes`) says they may go: a
    /// gateway holding projects fails the test otherwise, naming them, and
    /// keeps them.
    pub async fn external(self, url: &str, secret: String, wipe: bool) -> Result<Gateway> {
        let custom = !self.env.is_empty()
            || !self.args.is_empty()
            || self.archive.is_some()
            || self.listen.is_some()
            || self.data_dir.is_some()
            || self.bins.is_some()
            || self.no_secret
            || self.secret.is_some();
        ensure!(
            !custom,
            "this test starts a gateway with settings of its own, which the in-cluster \
             shape (E2E_GATEWAY_URL) cannot give it"
        );
        let base = url.trim_end_matches('/').to_owned();
        let addr = base
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("E2E_GATEWAY_URL {url:?} is not http://IP:PORT"))?;
        let temp = tempfile::tempdir()?;
        let gw = Gateway {
            base,
            addr,
            secret,
            data_dir: temp.path().to_path_buf(),
            proc: None,
            stdout: Arc::default(),
            http: reqwest::Client::builder().no_proxy().build()?,
            builder: self,
            uid_base: 0,
            namespace_prefix: None,
            external: true,
            _temp: Some(temp),
        };
        let ids = gw.project_ids().await?;
        ensure!(
            wipe || ids.is_empty(),
            "the gateway at {url} holds {} project(s) ({}{}): a test deletes every project on \
             it first, so it is not run there unless E2E_GATEWAY_WIPE=yes says they may go \
             (k8s/e2e.sh: E2E_WIPE=yes, on a cluster of the tests' own)",
            ids.len(),
            ids.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            if ids.len() > 5 { ", ..." } else { "" },
        );
        for id in ids {
            gw.delete(&format!("/api/projects/{id}"))
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("cannot delete project {id} left on {url}"))?;
        }
        Ok(gw)
    }
}

/// A running gateway.
pub struct Gateway {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub secret: String,
    pub data_dir: PathBuf,
    proc: Option<Proc>,
    stdout: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
    builder: GatewayBuilder,
    /// `--project-uid-base`: random, kept across restarts.
    uid_base: u32,
    /// `GATEWAY_K8S_NAMESPACE_PREFIX` against a cluster, kept across restarts.
    namespace_prefix: Option<String>,
    /// The gateway of `E2E_GATEWAY_URL`, not a process of this test.
    external: bool,
    _temp: Option<tempfile::TempDir>,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    projects: Vec<String>,
    exp: i64,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Gateway {
    /// A builder for a gateway with non-default settings.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// A gateway with defaults: temp data dir, archives in it.
    pub async fn start() -> Result<Gateway> {
        Self::builder().start().await
    }

    async fn spawn(&mut self) -> Result<()> {
        ensure!(
            !self.external,
            "the gateway of E2E_GATEWAY_URL cannot be restarted by a test"
        );
        let bin = |name: &str| match &self.builder.bins {
            Some(dir) => dir.join(name),
            None => bin(name),
        };
        let mut cmd = Command::new(bin("gateway"));
        cmd.arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--agent-bin")
            .arg(bin("agent"));
        // The secret goes in the environment, never on the command line,
        // which every process on the machine can read.
        if !self.builder.no_secret {
            cmd.env("GATEWAY_SECRET", &self.secret);
        }
        if let Some(a) = &self.builder.archive {
            cmd.arg("--archive").arg(a);
        }
        // Gateways of one test run each give their projects uids of their
        // own (as root), as two gateways on one machine must.
        // (Not for another build's binaries: older gateways lack the flag.)
        if self.builder.bins.is_none()
            && !self.builder.args.iter().any(|a| a == "--project-uid-base")
        {
            cmd.arg("--project-uid-base").arg(self.uid_base.to_string());
        }
        if let Some(prefix) = &self.namespace_prefix
            && !self
                .builder
                .env
                .iter()
                .any(|(k, _)| k == "GATEWAY_K8S_NAMESPACE_PREFIX")
        {
            cmd.env("GATEWAY_K8S_NAMESPACE_PREFIX", prefix);
        }
        cmd.args(&self.builder.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(
                self.builder
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        match &self.builder.stderr {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?;
                cmd.stderr(f);
            }
            None => {
                // Passed on to the test's stderr as it comes, the last lines
                // kept for the error when the gateway ends before listening.
                cmd.stderr(Stdio::piped());
            }
        }
        let mut child = cmd.spawn().context("spawn gateway")?;
        let out = child.stdout.take().context("gateway stdout")?;
        let last_lines: Arc<Mutex<std::collections::VecDeque<String>>> = Arc::default();
        if let Some(err) = child.stderr.take() {
            let last_lines = last_lines.clone();
            std::thread::spawn(move || {
                use std::io::Write as _;
                let mut reader = std::io::BufReader::new(err);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    // Straight to fd 2, as an inherited stderr would be.
                    let _ = std::io::stderr().lock().write_all(&line);
                    let mut kept = last_lines.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.len() == 40 {
                        kept.pop_front();
                    }
                    kept.push_back(String::from_utf8_lossy(&line).trim_end().to_owned());
                    line.clear();
                }
            });
        }
        let mut proc = Proc(child);
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let lines = self.stdout.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.to_owned());
                }
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let addr =
            match tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
                .await?
            {
                Ok(addr) => addr,
                Err(error) => {
                    // Ended (stdout closed) or still silent: say how, with its
                    // last words.
                    let what = match error {
                        std::sync::mpsc::RecvTimeoutError::Disconnected => match proc.0.wait() {
                            Ok(status) => format!("ended ({status}) before it printed"),
                            Err(_) => "closed its stdout before it printed".to_owned(),
                        },
                        std::sync::mpsc::RecvTimeoutError::Timeout => {
                            "did not print within 60 s".to_owned()
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let said = last_lines
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n");
                    bail!("the gateway {what} `listening on`; its last lines on stderr:\n{said}");
                }
            };
        self.addr = addr
            .parse()
            .with_context(|| format!("bad listen address {addr}"))?;
        self.base = format!("http://{addr}");
        self.proc = Some(proc);
        if self.builder.no_secret {
            self.secret = std::fs::read_to_string(self.data_dir.join("secret"))
                .context("the gateway kept no secret in its data dir")?
                .trim()
                .to_owned();
        }
        Ok(())
    }

    /// Kills the gateway (SIGKILL, as a crash would) and starts it again on
    /// the same port with the same data dir and secret.
    ///
    /// A gateway that could not bind its port (taken by another process of
    /// the run between the kill and the start) is started again, twice at
    /// most, on a port of the system's choosing unless the test named one;
    /// any other failure to start fails, with the gateway's last lines.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        let mut tries = 0;
        loop {
            self.stdout
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(error)
                    if tries < 2
                        && self.builder.listen.is_none()
                        && format!("{error:#}").contains("gateway: cannot listen on") =>
                {
                    tries += 1;
                    // Straight to fd 2: in the log whether the test passes or not.
                    use std::io::Write as _;
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "the restarted gateway could not bind {} (try {tries}); on another port: {error:#}",
                        self.addr
                    );
                    self.addr.set_port(0);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Kills the gateway process (SIGKILL); its agents end with it.
    pub fn kill(&mut self) {
        self.proc.take();
    }

    /// The gateway's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.0.id())
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of the
    /// next start ([`Gateway::restart`]).
    pub fn set_env(&mut self, k: &str, v: Option<&str>) {
        self.builder.env.retain(|(name, _)| name != k);
        if let Some(v) = v {
            self.builder.env.push((k.to_owned(), v.to_owned()));
        }
    }

    /// Lines the gateway printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A token for these projects, valid for an hour.
    pub fn token(&self, projects: &[&str]) -> String {
        self.token_with("test-user", projects, now() + 3600)
    }

    /// A token for every project.
    pub fn admin_token(&self) -> String {
        self.token(&["*"])
    }

    /// A token with any expiry (unix seconds), for expired-token tests.
    pub fn token_with(&self, sub: &str, projects: &[&str], exp: i64) -> String {
        sign(&self.secret, sub, projects, exp)
    }

    /// The HTTP client (no proxy).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request with the admin token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(self.admin_token())
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::POST, path)
    }

    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::PUT, path)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.req(reqwest::Method::DELETE, path)
    }

    /// Creates and opens a project with the admin token; answers the opened project.
    pub async fn open_project(&self, id: &str) -> Result<serde_json::Value> {
        let r = self
            .post("/api/projects")
            .json(&serde_json::json!({"id": id}))
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            bail!("create {id}: {} {}", r.status(), r.text().await?);
        }
        let r = self
            .post(&format!("/api/projects/{id}/open"))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("open {id}: {} {}", r.status(), r.text().await?);
        }
        Ok(r.json().await?)
    }

    /// Runs `sh -c script` in the project (`POST /api/projects/{p}/exec`):
    /// the JSON answer (exit code, stdout, stderr, ...).
    pub async fn exec(&self, project: &str, script: &str) -> Result<serde_json::Value> {
        Ok(self
            .post(&format!("/api/projects/{project}/exec"))
            .json(&serde_json::json!({"argv": ["sh", "-c", script]}))
            .send()
            .await?
            .json()
            .await?)
    }

    /// [`exec`](Self::exec) of a script that must exit 0: its stdout.
    pub async fn exec_ok(&self, project: &str, script: &str) -> Result<String> {
        let v = self.exec(project, script).await?;
        ensure!(v["exit_code"] == 0, "{script}: {v}");
        v["stdout"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{script}: no stdout in {v}"))
    }

    /// The project as `GET /api/projects/{p}` answers it (200 or an error).
    pub async fn project(&self, project: &str) -> Result<serde_json::Value> {
        let r = self.get(&format!("/api/projects/{project}")).send().await?;
        anyhow::ensure!(
            r.status().is_success(),
            "GET project {project}: {} {}",
            r.status(),
            r.text().await?
        );
        Ok(r.json().await?)
    }

    /// The ids of every project the gateway holds (`GET /api/projects`),
    /// in its order.
    pub async fn project_ids(&self) -> Result<Vec<String>> {
        let list: serde_json::Value = self
            .get("/api/projects")
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let list = list
            .as_array()
            .or_else(|| list["projects"].as_array())
            .cloned()
            .unwrap_or_default();
        Ok(list
            .iter()
            .filter_map(|p| p["id"].as_str().map(str::to_owned))
            .collect())
    }

    /// The project's status (`GET /api/projects/{p}`).
    pub async fn status(&self, project: &str) -> Result<String> {
        let v = self.project(project).await?;
        Ok(v["status"].as_str().unwrap_or_default().to_owned())
    }

    /// `POST /api/projects/{p}/{action}` (`hibernate`, `open`, ...) with a
    /// JSON body (none when `body` is null), which must answer 200: the
    /// JSON answer.
    pub async fn call(
        &self,
        project: &str,
        action: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let mut req = self.post(&format!("/api/projects/{project}/{action}"));
        if !body.is_null() {
            req = req.json(body);
        }
        let r = req.send().await?;
        let code = r.status();
        let text = r.text().await?;
        ensure!(code == 200, "{action} {project}: {code} {text}");
        Ok(serde_json::from_str(&text)?)
    }

    /// Writes a file (`PUT /api/projects/{p}/files/{path}`, no
    /// precondition), which must answer 200: the entry written.
    pub async fn put_file(
        &self,
        project: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<serde_json::Value> {
        let r = self
            .put(&format!("/api/projects/{project}/files/{path}"))
            .body(body)
            .send()
            .await?;
        let code = r.status();
        let text = r.text().await?;
        ensure!(code == 200, "PUT {path}: {code} {text}");
        Ok(serde_json::from_str(&text)?)
    }

    /// `POST /api/projects/{p}/{action}` (`open`, `hibernate`, ...) without
    /// a body: the response, whatever its status.
    pub async fn action(&self, project: &str, action: &str) -> Result<reqwest::Response> {
        Ok(self
            .post(&format!("/api/projects/{project}/{action}"))
            .send()
            .await?)
    }

    /// [`action`](Self::action) `open`.
    pub async fn open(&self, project: &str) -> Result<reqwest::Response> {
        self.action(project, "open").await
    }

    /// Hibernates the project, which must end `hibernated`: the project.
    pub async fn hibernate(&self, project: &str) -> Result<serde_json::Value> {
        let v = self
            .call(project, "hibernate", &serde_json::Value::Null)
            .await?;
        ensure!(v["status"] == "hibernated", "hibernate {project}: {v}");
        Ok(v)
    }

    /// The project's versions, newest first (`GET /api/projects/{p}/snapshots`).
    pub async fn snapshots(&self, project: &str) -> Result<Vec<serde_json::Value>> {
        let r = self
            .get(&format!("/api/projects/{project}/snapshots"))
            .send()
            .await?;
        let code = r.status();
        ensure!(
            code == 200,
            "snapshots of {project}: {code} {}",
            r.text().await?
        );
        Ok(r.json().await?)
    }

    /// The pid of a project's agent (the parent of a command it runs),
    /// checked to be an `agent` process.
    pub async fn agent_pid(&self, project: &str) -> Result<u32> {
        let v: serde_json::Value = self
            .post(&format!("/api/projects/{project}/exec"))
            .json(&serde_json::json!({"argv": ["sh", "-c", "echo -n $PPID"]}))
            .send()
            .await?
            .json()
            .await?;
        let pid: u32 = v["stdout"].as_str().unwrap_or_default().parse()?;
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))?;
        if !cmdline.contains("agent") {
            bail!("pid {pid} is not an agent: {cmdline}");
        }
        Ok(pid)
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .http()
            .get(self.url("/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Where the local runtime keeps a project's files.
    pub fn project_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("projects").join(id)
    }

    /// Sends `request` verbatim over a new connection (for paths a URL
    /// library would normalise, like `%2e%2e/`) and answers the status and body.
    pub async fn raw(&self, request: &[u8]) -> Result<(u16, String)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(self.addr).await?;
        s.write_all(request).await?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await??;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status line in {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// A raw HTTP/1.1 request line + headers with the admin token, `Connection: close`.
    pub fn raw_request(&self, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            self.admin_token(),
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }
}

/// Signs an HS256 token like the gateway's.
pub fn sign(secret: &str, sub: &str, projects: &[&str], exp: i64) -> String {
    let claims = Claims {
        sub,
        projects: projects.iter().map(|s| s.to_string()).collect(),
        exp,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail with an in-memory key")
}

/// The path of a file relative to `dir`, for assertions on the local runtime's folders.
pub fn path_in(dir: &Path, rel: &str) -> PathBuf {
    dir.join(rel)
}
