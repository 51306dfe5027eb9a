//! The error of a file operation beneath the root, and how errno values
//! map to reply codes.

use std::io;

use rustix::io::Errno;

use crate::protocol::wire::ErrorCode;

/// A failed file operation: its reply code, a message for people, and the
/// underlying I/O error if there was one.
///
/// The message never holds a host path.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct FsError {
    code: ErrorCode,
    message: &'static str,
    #[source]
    source: Option<io::Error>,
}

impl FsError {
    /// The reply code.
    pub(crate) fn code(&self) -> ErrorCode {
        self.code
    }

    /// A short message for people, fit for the `ERR` reply.
    pub(crate) fn message(&self) -> &'static str {
        self.message
    }

    pub(crate) fn new(code: ErrorCode, message: &'static str) -> FsError {
        FsError {
            code,
            message,
            source: None,
        }
    }

    fn with_source(code: ErrorCode, message: &'static str, errno: Errno) -> FsError {
        FsError {
            code,
            message,
            source: Some(errno.into()),
        }
    }

    /// Maps the error of resolving or opening a path, as listed on [`Root`].
    pub(crate) fn resolving(errno: Errno) -> FsError {
        let (code, message) = match errno {
            Errno::NOENT | Errno::NOTDIR => (ErrorCode::NotFound, "no such file or directory"),
            Errno::NAMETOOLONG => (ErrorCode::NotFound, "file name too long"),
            Errno::XDEV => (ErrorCode::Forbidden, "path leads outside the served root"),
            Errno::ACCESS | Errno::PERM => (ErrorCode::Forbidden, "permission denied"),
            Errno::LOOP => (ErrorCode::Forbidden, "too many levels of symbolic links"),
            Errno::NXIO | Errno::NODEV => (ErrorCode::BadRequest, "not a regular file"),
            _ => return FsError::internal(errno),
        };
        FsError::with_source(code, message, errno)
    }

    /// Maps an I/O error of the server's own, such as a failed write.
    pub(crate) fn internal(errno: Errno) -> FsError {
        let message = match errno {
            Errno::NOSPC | Errno::DQUOT => "disk full: no space left on the server",
            Errno::FBIG => "file too large for the server",
            Errno::MFILE | Errno::NFILE => "server is out of resources",
            Errno::ACCESS | Errno::PERM | Errno::ROFS => "the server may not write there",
            _ => "i/o error on the server",
        };
        FsError::with_source(ErrorCode::Internal, message, errno)
    }
}

/// An I/O error of the server's own, such as writing an upload: `internal`.
impl From<io::Error> for FsError {
    fn from(error: io::Error) -> FsError {
        let errno = Errno::from_io_error(&error).unwrap_or(Errno::IO);
        FsError {
            source: Some(error),
            ..FsError::internal(errno)
        }
    }
}
