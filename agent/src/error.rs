//! The agent's error type and its one mapping to gRPC statuses.

use devgate_fs::ErrorKind;
use tonic::{Code, Status};

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("path leaves the root: {0}")]
    PathOutsideRoot(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("is a directory: {0}")]
    IsDirectory(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("directory not empty: {0}")]
    DirectoryNotEmpty(String),
    #[error("precondition failed: {0}")]
    FailedPrecondition(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A limit on running sessions or processes (`--max-pty-sessions`,
    /// `--max-background`).
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// An archive over an extract cap (entries, expanded bytes, ratio).
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<devgate_fs::Error> for Error {
    fn from(e: devgate_fs::Error) -> Error {
        use devgate_fs::Error as Fs;
        match e {
            Fs::PathOutsideRoot(p) => Error::PathOutsideRoot(p),
            Fs::InvalidArgument(m) => Error::InvalidArgument(m),
            Fs::NotFound(p) => Error::NotFound(p),
            Fs::AlreadyExists(p) => Error::AlreadyExists(p),
            Fs::IsDirectory(p) => Error::IsDirectory(p),
            Fs::NotADirectory(p) => Error::NotADirectory(p),
            Fs::DirectoryNotEmpty(p) => Error::DirectoryNotEmpty(p),
            Fs::Io(io) => Error::Io(io),
        }
    }
}

/// The status code and `x-agent-error` detail of a class of file errors.
fn fs_code(kind: ErrorKind) -> (Code, Option<&'static str>) {
    match kind {
        ErrorKind::PathOutsideRoot => (Code::InvalidArgument, Some(proto::PATH_OUTSIDE_ROOT)),
        ErrorKind::InvalidArgument => (Code::InvalidArgument, None),
        ErrorKind::NotFound => (Code::NotFound, None),
        ErrorKind::AlreadyExists => (Code::AlreadyExists, None),
        ErrorKind::IsDirectory => (Code::InvalidArgument, Some(proto::IS_DIRECTORY)),
        ErrorKind::NotADirectory => (Code::InvalidArgument, Some(proto::NOT_A_DIRECTORY)),
        ErrorKind::DirectoryNotEmpty => {
            (Code::FailedPrecondition, Some(proto::DIRECTORY_NOT_EMPTY))
        }
        ErrorKind::PermissionDenied => (Code::PermissionDenied, None),
        ErrorKind::StorageFull => (Code::ResourceExhausted, None),
        ErrorKind::ReadOnly => (Code::FailedPrecondition, None),
        ErrorKind::Other => (Code::Internal, None),
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let (code, detail) = match &e {
            Error::PathOutsideRoot(_) => fs_code(ErrorKind::PathOutsideRoot),
            Error::InvalidArgument(_) => fs_code(ErrorKind::InvalidArgument),
            Error::NotFound(_) => fs_code(ErrorKind::NotFound),
            Error::AlreadyExists(_) => fs_code(ErrorKind::AlreadyExists),
            Error::IsDirectory(_) => fs_code(ErrorKind::IsDirectory),
            Error::NotADirectory(_) => fs_code(ErrorKind::NotADirectory),
            Error::DirectoryNotEmpty(_) => fs_code(ErrorKind::DirectoryNotEmpty),
            Error::FailedPrecondition(_) => (Code::FailedPrecondition, None),
            Error::Unavailable(_) => (Code::Unavailable, None),
            Error::LimitReached(_) => (Code::ResourceExhausted, Some(proto::LIMIT_REACHED)),
            Error::TooLarge(_) => (Code::ResourceExhausted, Some(proto::TOO_LARGE)),
            // A name too long, a symlink loop, a move into itself: the
            // client's input, not our failure (the classification is
            // devgate-fs's, shared with the gateway's local reads).
            Error::Io(io) => fs_code(ErrorKind::of_io(io)),
            Error::Internal(_) => (Code::Internal, None),
        };
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        let mut status = Status::new(code, e.to_string());
        if let Some(detail) = detail {
            status.metadata_mut().insert(
                proto::ERROR_CODE_METADATA_KEY,
                tonic::metadata::MetadataValue::from_static(detail),
            );
        }
        status
    }
}

/// Maps an `io::Error` from an operation on the clean path `rel` (through the
/// root's handles) to the agent's error: an escape becomes `PathOutsideRoot`
/// (see [`devgate_fs::Root::io_error`]).
pub(crate) fn io_error(rel: &str, e: std::io::Error) -> Error {
    devgate_fs::Root::io_error(rel, e).into()
}
