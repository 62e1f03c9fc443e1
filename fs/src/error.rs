//! The crate's error type and the one classification of file errors that the
//! agent (to gRPC statuses) and the gateway (to HTTP answers) both map from.

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a client path or the file it names.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path leaves the root: `..`, an absolute path, a NUL byte, or a
    /// symlink out of the root met while resolving it.
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
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

/// The classes of [`Error`] that callers answer differently; each edge
/// (the agent's gRPC status, the gateway's HTTP answer) maps these and
/// nothing else, so both give the same answer for the same cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    PathOutsideRoot,
    /// Bad client input: a name too long, a symlink loop, a move into itself,
    /// the root where an entry is needed, a FIFO where a file is needed.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    IsDirectory,
    NotADirectory,
    DirectoryNotEmpty,
    PermissionDenied,
    /// The disk or a quota is full.
    StorageFull,
    ReadOnly,
    /// Anything else: the server's failure, not the client's.
    Other,
}

impl Error {
    /// The class of this error, for mapping to a protocol's answer.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::PathOutsideRoot(_) => ErrorKind::PathOutsideRoot,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::IsDirectory(_) => ErrorKind::IsDirectory,
            Error::NotADirectory(_) => ErrorKind::NotADirectory,
            Error::DirectoryNotEmpty(_) => ErrorKind::DirectoryNotEmpty,
            Error::Io(io) => ErrorKind::of_io(io),
        }
    }
}

impl ErrorKind {
    /// The class of an I/O error from an operation on a client path.
    pub fn of_io(io: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as K;
        if is_escape(io) {
            return ErrorKind::PathOutsideRoot;
        }
        // A symlink loop (io::ErrorKind::FilesystemLoop is not stable yet).
        if io.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            return ErrorKind::InvalidArgument;
        }
        match io.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::AlreadyExists => ErrorKind::AlreadyExists,
            K::PermissionDenied => ErrorKind::PermissionDenied,
            K::IsADirectory => ErrorKind::IsDirectory,
            K::NotADirectory => ErrorKind::NotADirectory,
            K::DirectoryNotEmpty => ErrorKind::DirectoryNotEmpty,
            K::InvalidInput | K::InvalidFilename | K::CrossesDevices => ErrorKind::InvalidArgument,
            K::StorageFull | K::QuotaExceeded => ErrorKind::StorageFull,
            K::ReadOnlyFilesystem => ErrorKind::ReadOnly,
            _ => ErrorKind::Other,
        }
    }
}

/// Whether `e` is cap-std's "a path led outside of the filesystem". cap-std
/// builds that error by hand as `PermissionDenied` without an OS error code,
/// while a real `EACCES`/`EPERM` from the kernel always carries one. This is
/// the only way to tell them apart: cap-std exposes no error type for it.
pub fn is_escape(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::PermissionDenied && e.raw_os_error().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_io_errors() {
        let escape = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "outside");
        assert_eq!(Error::Io(escape).kind(), ErrorKind::PathOutsideRoot);
        let eacces = std::io::Error::from_raw_os_error(rustix::io::Errno::ACCESS.raw_os_error());
        assert_eq!(Error::Io(eacces).kind(), ErrorKind::PermissionDenied);
        let eloop = std::io::Error::from_raw_os_error(rustix::io::Errno::LOOP.raw_os_error());
        assert_eq!(Error::Io(eloop).kind(), ErrorKind::InvalidArgument);
        let enospc = std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        assert_eq!(Error::Io(enospc).kind(), ErrorKind::StorageFull);
        let eio = std::io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error());
        assert_eq!(Error::Io(eio).kind(), ErrorKind::Other);
    }
}
