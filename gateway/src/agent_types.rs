//! What the runtime and the agent client both speak of, below both: where a
//! project's agent listens and the token it takes, and a one-shot command
//! with what it did. The runtime hands these out (`Runtime::ensure`,
//! `container_exec`), the agent client dials and runs them; neither imports
//! the other for them.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// How to reach a project's agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentEndpoint {
    pub address: AgentAddress,
    /// The agent's shared token, sent as `authorization: Bearer <token>`.
    pub token: String,
}

/// An agent's listening address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AgentAddress {
    /// A Unix socket path (local runtime).
    Unix(PathBuf),
    /// An `http://host:port` URI (Kubernetes: the file-manager Service).
    Tcp(String),
}

/// A one-shot command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// Relative to the project root; empty = the root.
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    pub stdin: Vec<u8>,
    pub timeout_ms: u32,
    /// Cap for each of stdout and stderr; 0 = the agent's default (1 MiB).
    pub max_output_bytes: u64,
}

/// What a one-shot command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// -1 when killed by a signal or the timeout.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration_ms: u64,
    pub timed_out: bool,
    /// Whether stdout or stderr was cut at the cap.
    pub truncated: bool,
}
