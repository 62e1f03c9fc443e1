//! The agent's wire format: generated protobuf messages and tonic clients and
//! servers. Only this crate knows protobuf; the agent and the gateway convert
//! to their own types at their edges.

#![allow(unreachable_pub, clippy::all)]

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("agent.v1");
    }
}

pub use agent::v1;

/// Metadata key that carries the agent's shared token, as `Bearer <token>`.
pub const AUTH_METADATA_KEY: &str = "authorization";

/// Error code (see [`ERROR_CODE_METADATA_KEY`]) of an `InvalidArgument` status for a path that leaves the root.
pub const PATH_OUTSIDE_ROOT: &str = "path_outside_project";
/// Error code of a `FailedPrecondition` for a non-empty directory removed without `recursive`.
pub const DIRECTORY_NOT_EMPTY: &str = "directory_not_empty";
/// Error code of an `InvalidArgument` when a file operation hits a directory.
pub const IS_DIRECTORY: &str = "is_directory";
/// Error code of an `InvalidArgument` when a directory operation hits a file.
pub const NOT_A_DIRECTORY: &str = "not_a_directory";
/// Error code of a `ResourceExhausted` when a limit on running PTY sessions
/// or background processes is reached (the caller ends one first).
pub const LIMIT_REACHED: &str = "limit_reached";
/// Error code of a `ResourceExhausted` when an archive is over an extract cap
/// (entries, expanded bytes, expansion ratio): the gateway answers 413.
pub const TOO_LARGE: &str = "payload_too_large";

/// Status metadata key whose value is one of the codes above, so the gateway
/// maps errors by code rather than by matching message strings.
pub const ERROR_CODE_METADATA_KEY: &str = "x-agent-error";
