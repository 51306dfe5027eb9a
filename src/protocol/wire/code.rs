//! The error codes of `ERR <code> <message>` replies.

use std::fmt;
use std::str::FromStr;

/// The code of an `ERR <code> <message>` reply, as listed in the protocol.
///
/// The set is fixed by version 1 of the protocol, so the enum is exhaustive:
/// a client can match on every code.
///
/// ```
/// use filesrv::protocol::wire::ErrorCode;
///
/// assert_eq!(ErrorCode::NotFound.as_str(), "not-found");
/// assert_eq!("too-large".parse(), Ok(ErrorCode::TooLarge));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `bad-request`: unknown verb, wrong field count, bad number, bad
    /// encoding, or not a regular file (or directory) where one is needed.
    BadRequest,
    /// `not-found`: no such file or parent directory.
    NotFound,
    /// `forbidden`: the path escapes the root, is not readable, uses the
    /// reserved prefix, or uploads are disabled.
    Forbidden,
    /// `too-large`: a PUT over the configured maximum.
    TooLarge,
    /// `range`: a GET offset past the end of the file.
    Range,
    /// `busy`: admission refused, or the connection waited too long.
    Busy,
    /// `unavailable`: the server is shutting down.
    Unavailable,
    /// `timeout`: no complete request in time, or a stalled upload body.
    Timeout,
    /// `denied`: authentication required, bad credentials, or too many
    /// failed logins from the client's network.
    Denied,
    /// `internal`: an I/O error on the server side.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of the protocol's table.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::Forbidden,
        ErrorCode::TooLarge,
        ErrorCode::Range,
        ErrorCode::Busy,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Denied,
        ErrorCode::Internal,
    ];

    /// The code as written on the wire, such as `bad-request`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Range => "range",
            ErrorCode::Busy => "busy",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Denied => "denied",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an [`ErrorCode`] from a string that names no code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code")]
pub struct UnknownErrorCode;

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    /// Parses the wire form exactly (codes are lower case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == s)
            .ok_or(UnknownErrorCode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse(), Ok(code));
            assert_eq!(code.to_string(), code.as_str());
        }
    }

    #[test]
    fn unknown_codes_are_refused() {
        for text in ["", "BAD-REQUEST", "bad_request", "ok", "forbidden "] {
            assert_eq!(text.parse::<ErrorCode>(), Err(UnknownErrorCode), "{text:?}");
        }
    }
}
