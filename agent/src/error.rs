//! The agent's error type and its one mapping to gRPC statuses.

use tonic::{Code, Status};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A limit on running sessions or processes (`--max-pty-sessions`,
    /// `--max-background`).
    #[error("limit reached: {0}")]
    LimitReached(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let (code, detail) = match &e {
            Error::PathOutsideRoot(_) => (Code::InvalidArgument, Some(proto::PATH_OUTSIDE_ROOT)),
            Error::InvalidArgument(_) => (Code::InvalidArgument, None),
            Error::NotFound(_) => (Code::NotFound, None),
            Error::AlreadyExists(_) => (Code::AlreadyExists, None),
            Error::IsDirectory(_) => (Code::InvalidArgument, Some(proto::IS_DIRECTORY)),
            Error::NotADirectory(_) => (Code::InvalidArgument, Some(proto::NOT_A_DIRECTORY)),
            Error::DirectoryNotEmpty(_) => {
                (Code::FailedPrecondition, Some(proto::DIRECTORY_NOT_EMPTY))
            }
            Error::FailedPrecondition(_) => (Code::FailedPrecondition, None),
            Error::DeadlineExceeded(_) => (Code::DeadlineExceeded, None),
            Error::Unavailable(_) => (Code::Unavailable, None),
            Error::LimitReached(_) => (Code::ResourceExhausted, Some(proto::LIMIT_REACHED)),
            Error::Io(io) if crate::paths::is_escape(io) => {
                (Code::InvalidArgument, Some(proto::PATH_OUTSIDE_ROOT))
            }
            // A symlink loop (ErrorKind::FilesystemLoop is not stable yet).
            Error::Io(io) if io.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                (Code::InvalidArgument, None)
            }
            Error::Io(io) => match io.kind() {
                std::io::ErrorKind::NotFound => (Code::NotFound, None),
                std::io::ErrorKind::AlreadyExists => (Code::AlreadyExists, None),
                std::io::ErrorKind::PermissionDenied => (Code::PermissionDenied, None),
                std::io::ErrorKind::IsADirectory => {
                    (Code::InvalidArgument, Some(proto::IS_DIRECTORY))
                }
                std::io::ErrorKind::NotADirectory => {
                    (Code::InvalidArgument, Some(proto::NOT_A_DIRECTORY))
                }
                std::io::ErrorKind::DirectoryNotEmpty => {
                    (Code::FailedPrecondition, Some(proto::DIRECTORY_NOT_EMPTY))
                }
                // A name too long, a symlink loop, a move into itself: the
                // client's input, not our failure.
                std::io::ErrorKind::InvalidInput
                | std::io::ErrorKind::InvalidFilename
                | std::io::ErrorKind::CrossesDevices => (Code::InvalidArgument, None),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    (Code::ResourceExhausted, None)
                }
                std::io::ErrorKind::ReadOnlyFilesystem => (Code::FailedPrecondition, None),
                _ => (Code::Internal, None),
            },
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
