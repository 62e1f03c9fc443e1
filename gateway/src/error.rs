//! The gateway's error type and its one table mapping causes to HTTP answers:
//! `{"error": {"code", "message"}}` with the contract's codes. Agent statuses
//! are mapped by their code and `x-agent-error` metadata, never by message.
//! A 5xx answer says something generic; its cause goes to the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tonic::Code;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any cause an [`Error`] keeps for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PathOutsideProject(String),
    #[error("{0}")]
    IsDirectory(String),
    #[error("{0}")]
    NotADirectory(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    DirectoryNotEmpty(String),
    #[error("project {0} is not active")]
    ProjectNotActive(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(u64),
    /// Over a cap other than the body's size (a zip's entries or expansion).
    #[error("{0}")]
    TooLarge(String),
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// An agent's channel could not be opened or broke (503, like
    /// `Unavailable`); the transport error stays as the cause.
    #[error("agent unreachable")]
    AgentUnreachable(#[source] tonic::transport::Error),
    #[error("timed out: {0}")]
    Timeout(String),
    /// A status from an agent that maps to no client error.
    #[error("agent error")]
    Agent(#[source] tonic::Status),
    /// The state store failed; the driver's error (PostgreSQL's server
    /// message, SQLite's code) stays as the cause.
    #[error("state store")]
    Store(#[source] BoxError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
    /// A snapshot that cannot be restored (it fails its integrity checks,
    /// or is not a valid snapshot): the message names it and says why.
    #[error("{0}")]
    SnapshotUnusable(String),
    /// The project's environment cannot be made or removed and waiting will
    /// not help (a Kubernetes namespace stuck terminating): 503, and the
    /// project is marked `failed` until an operator clears it.
    #[error("{0}")]
    EnvironmentStuck(String),
}

impl Error {
    /// An internal error with context, from anything displayable.
    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }

    /// The HTTP status and the contract's error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::PathOutsideProject(_) => (StatusCode::BAD_REQUEST, "path_outside_project"),
            Error::IsDirectory(_) => (StatusCode::BAD_REQUEST, "is_directory"),
            Error::NotADirectory(_) => (StatusCode::BAD_REQUEST, "not_a_directory"),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::DirectoryNotEmpty(_) => (StatusCode::CONFLICT, "directory_not_empty"),
            Error::ProjectNotActive(_) => (StatusCode::CONFLICT, "project_not_active"),
            Error::PreconditionFailed(_) => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed")
            }
            Error::PayloadTooLarge(_) | Error::TooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            Error::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            Error::Unavailable(_) | Error::AgentUnreachable(_) | Error::EnvironmentStuck(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Error::SnapshotUnusable(_) => (StatusCode::INTERNAL_SERVER_ERROR, "snapshot_unusable"),
            Error::Agent(_) | Error::Store(_) | Error::Io(_) | Error::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

/// The contract's error code for an answer made without an [`Error`] (axum's
/// own 405, extractor rejections), agreeing with [`Error::status_and_code`]
/// for every status both produce.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PRECONDITION_FAILED => "precondition_failed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::RANGE_NOT_SATISFIABLE => "range_not_satisfiable",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::GATEWAY_TIMEOUT => "timeout",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// A gRPC code as a short label value (`deadline_exceeded`).
fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Response extension set on 5xx answers caused by an agent or another
/// upstream, so the request middleware can count them.
#[derive(Debug, Clone, Copy)]
pub struct FailedUpstream(pub &'static str);

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        let detail = s
            .metadata()
            .get(proto::ERROR_CODE_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let msg = s.message().to_owned();
        match (s.code(), detail.as_str()) {
            (_, proto::PATH_OUTSIDE_ROOT) => Error::PathOutsideProject(msg),
            (_, proto::IS_DIRECTORY) => Error::IsDirectory(msg),
            (_, proto::NOT_A_DIRECTORY) => Error::NotADirectory(msg),
            (_, proto::DIRECTORY_NOT_EMPTY) => Error::DirectoryNotEmpty(msg),
            // Too many terminals or dev servers running in the project: the
            // client can end one and retry.
            (_, proto::LIMIT_REACHED) => Error::Conflict(msg),
            // A zip over the upload caps: nothing was written.
            (_, proto::TOO_LARGE) => Error::TooLarge(msg),
            (Code::InvalidArgument | Code::OutOfRange, _) => Error::BadRequest(msg),
            (Code::NotFound, _) => Error::NotFound(msg),
            (Code::AlreadyExists, _) => Error::Conflict(msg),
            (Code::FailedPrecondition | Code::Aborted, _) => Error::PreconditionFailed(msg),
            (Code::PermissionDenied, _) => Error::Forbidden(msg),
            (Code::Unavailable, _) => Error::Unavailable(format!("agent unavailable: {msg}")),
            (Code::DeadlineExceeded, _) => Error::Timeout(msg),
            _ => Error::Agent(s),
        }
    }
}

/// A file error of the gateway's own reads (`local_files`), answered as the
/// agent's status for the same cause would have been (`From<tonic::Status>`
/// above; both map devgate-fs's one classification).
impl From<devgate_fs::Error> for Error {
    fn from(e: devgate_fs::Error) -> Error {
        use devgate_fs::ErrorKind as K;
        let kind = e.kind();
        let msg = e.to_string();
        match kind {
            K::PathOutsideRoot => Error::PathOutsideProject(msg),
            K::InvalidArgument => Error::BadRequest(msg),
            K::NotFound => Error::NotFound(msg),
            K::AlreadyExists => Error::Conflict(msg),
            K::IsDirectory => Error::IsDirectory(msg),
            K::NotADirectory => Error::NotADirectory(msg),
            K::DirectoryNotEmpty => Error::DirectoryNotEmpty(msg),
            K::PermissionDenied => Error::Forbidden(msg),
            K::ReadOnly => Error::PreconditionFailed(msg),
            K::StorageFull | K::Other => match e {
                devgate_fs::Error::Io(io) => Error::Io(io),
                other => Error::Internal(other.to_string()),
            },
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Error {
        Error::AgentUnreachable(e)
    }
}

/// An error and its causes, `outer: cause: root cause`, for logs: a
/// driver's or transport's own message often sits only in a source.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        // 5xx bodies say something generic; the cause goes to the log.
        let message = if status.is_server_error() {
            match &self {
                Error::Unavailable(_) | Error::AgentUnreachable(_) => {
                    tracing::warn!(error = %Chain(&self), "request failed");
                    "the service or the project's environment is unavailable; try again".to_owned()
                }
                // The cause (what holds the namespace) is for the operator.
                Error::EnvironmentStuck(_) => {
                    tracing::error!(error = %Chain(&self), "project environment stuck");
                    "the project's previous environment is stuck being removed and needs an operator; the project is marked failed and its snapshots are kept".to_owned()
                }
                Error::Timeout(_) => {
                    tracing::warn!(error = %Chain(&self), "request timed out");
                    "the operation timed out".to_owned()
                }
                // Names the snapshot and the failed check; no secret in it.
                Error::SnapshotUnusable(m) => {
                    tracing::error!(error = %self, "snapshot unusable");
                    m.clone()
                }
                _ => {
                    tracing::error!(error = %Chain(&self), "internal error");
                    "internal error; see the gateway's log".to_owned()
                }
            }
        } else {
            self.to_string()
        };
        let body = serde_json::json!({"error": {"code": code, "message": message}});
        let mut resp = (status, axum::Json(body)).into_response();
        if status.is_server_error() {
            // For the agent-RPC-errors metric, counted by the request middleware.
            let kind = match &self {
                Error::Agent(s) => Some(grpc_code_name(s.code())),
                Error::Unavailable(_) | Error::AgentUnreachable(_) => Some("unavailable"),
                Error::Timeout(_) => Some("deadline_exceeded"),
                _ => None,
            };
            if let Some(kind) = kind {
                resp.extensions_mut().insert(FailedUpstream(kind));
            }
        }
        if let Error::RangeNotSatisfiable { size } = self
            && let Ok(v) = format!("bytes */{size}").parse()
        {
            resp.headers_mut()
                .insert(axum::http::header::CONTENT_RANGE, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_code(code: Code, detail: &'static str) -> tonic::Status {
        let mut s = tonic::Status::new(code, "x");
        s.metadata_mut().insert(
            proto::ERROR_CODE_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static(detail),
        );
        s
    }

    #[test]
    fn agent_statuses_map_by_code() {
        let e: Error = with_code(Code::InvalidArgument, proto::PATH_OUTSIDE_ROOT).into();
        assert_eq!(e.status_and_code().1, "path_outside_project");
        let e: Error = with_code(Code::FailedPrecondition, proto::DIRECTORY_NOT_EMPTY).into();
        assert_eq!(
            e.status_and_code(),
            (StatusCode::CONFLICT, "directory_not_empty")
        );
        let e: Error = tonic::Status::failed_precondition("etag").into();
        assert_eq!(e.status_and_code().0, StatusCode::PRECONDITION_FAILED);
        let e: Error = tonic::Status::already_exists("x").into();
        assert_eq!(e.status_and_code().0, StatusCode::CONFLICT);
        // A limit on running terminals or dev servers: 409, the client can
        // end one; a full disk (no detail) is not that.
        let e: Error = with_code(Code::ResourceExhausted, proto::LIMIT_REACHED).into();
        assert_eq!(e.status_and_code(), (StatusCode::CONFLICT, "conflict"));
        let e: Error = tonic::Status::resource_exhausted("disk full").into();
        assert_ne!(e.status_and_code().0, StatusCode::CONFLICT);
        let e: Error = tonic::Status::internal("secret detail").into();
        assert_eq!(e.status_and_code().0, StatusCode::INTERNAL_SERVER_ERROR);
    }
}

#[cfg(test)]
mod status_codes {
    use super::*;

    #[test]
    fn codes_for_bare_statuses_agree_with_the_errors() {
        let errors = [
            Error::BadRequest(String::new()),
            Error::Unauthorized(String::new()),
            Error::Forbidden(String::new()),
            Error::NotFound(String::new()),
            Error::Conflict(String::new()),
            Error::PreconditionFailed(String::new()),
            Error::PayloadTooLarge(1),
            Error::RangeNotSatisfiable { size: 1 },
            Error::Unavailable(String::new()),
            Error::Timeout(String::new()),
            Error::Internal(String::new()),
        ];
        for e in errors {
            let (status, code) = e.status_and_code();
            assert_eq!(code_for_status(status), code, "{status}");
        }
    }
}
