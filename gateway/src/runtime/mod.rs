//! The project lifecycle behind one object-safe trait, held as
//! `Arc<dyn Runtime>`: [`local::LocalRuntime`] (projects are folders, each
//! agent a child process on a Unix socket, dev servers the agent's background
//! processes) or the Kubernetes runtime (namespaces, pods; the only module
//! that imports kube-rs). Hibernate and restore are orchestrated above this
//! trait (`crate::lifecycle`), the same for both runtimes.

pub mod isolation;
pub mod kubernetes;
mod listeners;
pub mod local;

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::stream::BoxStream;

pub use crate::agent_types::{AgentAddress, AgentEndpoint, ExecOutput, ExecSpec};
use crate::error::Result;

/// What starting a container needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    /// The declared port.
    pub port: u16,
    /// Other ports it declared (reachable as `{port}-{name}` preview hosts).
    pub ports: Vec<u16>,
    /// The start command, run with `sh -c` in `/{name}`.
    pub start: String,
    pub env: BTreeMap<String, String>,
}

/// Where the preview proxy dials a container's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRoute {
    /// Host name or IP address.
    pub host: String,
    pub port: u16,
}

impl ContainerRoute {
    /// `host:port`, for a connector or a `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Where an interactive shell for a container runs: a PTY session of an
/// agent (local: the project's; Kubernetes: the one that is PID 1 of the
/// container's dev pod), started with this cwd and env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellTarget {
    Agent {
        endpoint: AgentEndpoint,
        cwd: String,
        env: BTreeMap<String, String>,
    },
}

/// The agent-relative working directory of a command in container `name`:
/// `{name}` joined with the client's `cwd` (its slashes trimmed).
pub(crate) fn container_cwd(name: &str, cwd: &str) -> String {
    let cwd = cwd.trim_matches('/');
    if cwd.is_empty() {
        name.to_owned()
    } else {
        format!("{name}/{cwd}")
    }
}

/// What the runtime knows of a dev server's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    /// Ended by itself, with this exit code (-1: killed by a signal).
    Exited(i32),
    /// Never started, or stopped.
    Absent,
}

/// A stream of raw output bytes (a dev server's log).
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// The lifecycle of projects' environments. Implementations hold no project
/// state that the store does not also know, except what they can rebuild
/// (running agents, assigned ports) after a gateway restart.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `"local"` or `"kubernetes"`, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Creates or converges the project's environment (folder or namespace,
    /// volume) and starts its agent, waiting until it answers. Idempotent: an
    /// environment already up is returned as is.
    async fn ensure(&self, project: &str) -> Result<AgentEndpoint>;

    /// The endpoint of the project's running agent, without starting anything;
    /// `Error::ProjectNotActive` when it is not up.
    async fn agent(&self, project: &str) -> Result<AgentEndpoint>;

    /// Starts a container's dev server from its files in `/{name}/` (already
    /// there) and answers where the preview proxy dials it. The port may differ
    /// from the declared one when that one is taken (local runtime).
    async fn start_container(&self, project: &str, spec: &ContainerSpec) -> Result<ContainerRoute>;

    /// Stops a container's dev server (its process group or pods); its files stay.
    /// Stopping a stopped container is not an error.
    async fn stop_container(&self, project: &str, name: &str) -> Result<()>;

    /// Where to dial a running container: its main port when `port` is `None`,
    /// else that other port of it. `Error::Unavailable` when it is not running.
    async fn container_route(
        &self,
        project: &str,
        name: &str,
        port: Option<u16>,
    ) -> Result<ContainerRoute>;

    /// Where an interactive shell inside a running container runs: a PTY of
    /// the agent that runs the container's dev server (local: the project's
    /// agent; Kubernetes: the dev pod's), cwd `/{name}`, the container's env.
    async fn container_shell(
        &self,
        project: &str,
        name: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<ShellTarget>;

    /// Runs a one-shot command inside a container through the agent that runs
    /// its dev server, cwd `/{name}` joined with `spec.cwd`, the container's
    /// env under `spec.env`.
    async fn container_exec(&self, project: &str, name: &str, spec: ExecSpec)
    -> Result<ExecOutput>;

    /// A container's dev-server output from the start; with `follow`, the stream
    /// stays open for new output until the server ends.
    async fn container_logs(&self, project: &str, name: &str, follow: bool) -> Result<ByteStream>;

    /// Whether a container's dev server still runs, and its exit code when it
    /// ended; `None` when the runtime cannot tell cheaply (the stored status
    /// stands).
    async fn container_state(&self, _project: &str, _name: &str) -> Result<Option<ContainerState>> {
        Ok(None)
    }

    /// Stops the agent and removes the environment; the project's files are gone.
    /// Tearing down a project that has no environment is not an error.
    async fn teardown(&self, project: &str) -> Result<()>;

    /// Checks the runtime can act (for `/readyz`).
    async fn ready(&self) -> Result<()>;

    /// A handle on the folder holding a project's files, when it is on this
    /// gateway's machine (local runtime): file reads then skip the agent and
    /// go through the agent's resolver here (`local_files`). `None` (the
    /// default): every file operation goes to the agent.
    fn local_files(&self, project: &str) -> Option<Result<std::sync::Arc<devgate_fs::Root>>> {
        let _ = project;
        None
    }

    /// Called once when the gateway stops: release what the runtime holds
    /// (local: agents end with the gateway).
    async fn shutdown(&self) {}
}
