//! The request-line parser: bytes in, a [`Request`] or a [`RequestError`] out.

use super::number::number;
use super::{ErrorCode, PathError, RelPath, percent_decode};

/// The longest request line, counting every byte up to and including `\n`.
///
/// Enforcing it is the line reader's job: a longer line is answered with
/// [`RequestError::line_too_long`].
pub const MAX_LINE: usize = 4096;

/// One parsed request line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET <path> [<offset>]`: send a file, or its tail from `offset`.
    Get {
        /// The file to send.
        path: RelPath,
        /// Where to start; `None` for the whole file.
        offset: Option<u64>,
    },
    /// `PUT <path> <size>`: receive `size` bytes and store them at `path`.
    Put {
        /// The file to create or replace.
        path: RelPath,
        /// The length of the body that follows the line.
        size: u64,
    },
    /// `LIST [<dir>]`: list a directory (the root without an argument).
    List {
        /// The directory to list.
        path: RelPath,
    },
    /// `STAT <path>`: type, size and modification time.
    Stat {
        /// The file or directory to describe.
        path: RelPath,
    },
    /// `SUM <path> [<length>]`: the SHA-256 of a file, or of its first
    /// `length` bytes.
    Sum {
        /// The file to hash.
        path: RelPath,
        /// How many bytes from the start to hash; `None` for the whole file.
        length: Option<u64>,
    },
    /// `AUTH <name> <password>`: log in as a user of the server's users
    /// file.
    Auth {
        /// The user's name, as written (never percent-decoded).
        name: String,
        /// The password: the rest of the line after the name,
        /// percent-decoded.
        password: Password,
    },
    /// `QUIT`: say goodbye and close.
    Quit,
}

/// The password of an `AUTH` request: raw bytes that are never shown.
///
/// Its `Debug` prints `Password(..)`, so a logged or printed request never
/// carries the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    /// Wraps the decoded bytes of a password.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Password {
        Password(bytes.into())
    }

    /// The password's bytes, for a hash verifier.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Request {
    /// The path the request names; `None` for `QUIT`.
    pub fn path(&self) -> Option<&RelPath> {
        match self {
            Request::Get { path, .. }
            | Request::Put { path, .. }
            | Request::List { path }
            | Request::Stat { path }
            | Request::Sum { path, .. } => Some(path),
            Request::Auth { .. } | Request::Quit => None,
        }
    }

    /// The verb as the protocol spells it, upper case: `GET`, `PUT`,
    /// `LIST`, `STAT`, `SUM`, `AUTH` or `QUIT`.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Get { .. } => "GET",
            Request::Put { .. } => "PUT",
            Request::List { .. } => "LIST",
            Request::Stat { .. } => "STAT",
            Request::Sum { .. } => "SUM",
            Request::Auth { .. } => "AUTH",
            Request::Quit => "QUIT",
        }
    }
}

/// Why a request line was refused, and what happens to the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    code: ErrorCode,
    message: &'static str,
    closes: bool,
}

impl RequestError {
    /// The error for a line longer than [`MAX_LINE`]; it closes the
    /// connection, since the rest of the line cannot be told from the next
    /// request.
    pub fn line_too_long() -> RequestError {
        RequestError::new(ErrorCode::BadRequest, "request line too long").closing()
    }

    /// The reply code: `bad-request`, or `forbidden` for a refused path.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// A short message for people, fit for the `ERR` reply.
    pub fn message(&self) -> &'static str {
        self.message
    }

    /// Whether the connection must be closed after the `ERR` reply.
    ///
    /// True for a line too long or not UTF-8, and for every refused `PUT`
    /// line: its body may follow and cannot be skipped safely.
    pub fn closes_connection(&self) -> bool {
        self.closes
    }

    fn new(code: ErrorCode, message: &'static str) -> RequestError {
        RequestError {
            code,
            message,
            closes: false,
        }
    }

    fn bad(message: &'static str) -> RequestError {
        RequestError::new(ErrorCode::BadRequest, message)
    }

    fn closing(self) -> RequestError {
        RequestError {
            closes: true,
            ..self
        }
    }
}

impl From<PathError> for RequestError {
    fn from(error: PathError) -> RequestError {
        RequestError::new(error.code(), error.message())
    }
}

/// Parses one request line, given without its final `\n`.
///
/// A single trailing `\r` is ignored. The line must be UTF-8 and free of
/// control bytes; fields are separated by exactly one space; the verb is
/// case-insensitive; numbers are one or more ASCII digits that fit a `u64`.
///
/// ```
/// use filesrv::protocol::wire::{parse_request, Request, RelPath};
///
/// assert_eq!(
///     parse_request(b"get docs/a%20b.txt 10\r")?,
///     Request::Get { path: "docs/a b.txt".parse()?, offset: Some(10) },
/// );
/// assert_eq!(parse_request(b"LIST")?, Request::List { path: RelPath::root() });
/// assert!(parse_request(b"GET  a").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// A [`RequestError`] with code `bad-request` (unknown verb, wrong field
/// count, empty field, control byte, bad number or bad escape) or
/// `forbidden` (a refused path, see [`RelPath::decode`]). It
/// [closes the connection](RequestError::closes_connection) when the line is
/// not UTF-8 or the verb is `PUT`.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line)
        .map_err(|_| RequestError::bad("request line is not UTF-8").closing())?;
    let is_put = line
        .split(' ')
        .next()
        .is_some_and(|verb| verb.eq_ignore_ascii_case("PUT"));
    parse_text(line).map_err(|error| if is_put { error.closing() } else { error })
}

/// Parses a line already known to be UTF-8.
fn parse_text(line: &str) -> Result<Request, RequestError> {
    if line.is_empty() {
        return Err(RequestError::bad("empty request line"));
    }
    if line.bytes().any(|b| b < 0x20 || b == 0x7F) {
        return Err(RequestError::bad("control character in request line"));
    }
    // The password is the rest of the line, spaces included.
    if let Some((verb, rest)) = line.split_once(' ')
        && verb.eq_ignore_ascii_case("AUTH")
    {
        return parse_auth(rest);
    }
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.contains(&"") {
        return Err(RequestError::bad(
            "fields must be separated by exactly one space",
        ));
    }
    let (verb, args) = fields
        .split_first()
        .expect("split yields at least one field");
    let verb = verb.to_ascii_uppercase();
    Ok(match (verb.as_str(), args) {
        ("GET", [path]) => Request::Get {
            path: parse_path(path)?,
            offset: None,
        },
        ("GET", [path, offset]) => Request::Get {
            path: parse_path(path)?,
            offset: Some(parse_number(offset)?),
        },
        ("PUT", [path, size]) => Request::Put {
            path: parse_path(path)?,
            size: parse_number(size)?,
        },
        ("LIST", []) => Request::List {
            path: RelPath::root(),
        },
        ("LIST", [path]) => Request::List {
            path: parse_path(path)?,
        },
        ("STAT", [path]) => Request::Stat {
            path: parse_path(path)?,
        },
        ("SUM", [path]) => Request::Sum {
            path: parse_path(path)?,
            length: None,
        },
        ("SUM", [path, length]) => Request::Sum {
            path: parse_path(path)?,
            length: Some(parse_number(length)?),
        },
        ("QUIT", []) => Request::Quit,
        ("GET", _) => return Err(RequestError::bad("usage: GET <path> [<offset>]")),
        ("PUT", _) => return Err(RequestError::bad("usage: PUT <path> <size>")),
        ("LIST", _) => return Err(RequestError::bad("usage: LIST [<dir>]")),
        ("STAT", _) => return Err(RequestError::bad("usage: STAT <path>")),
        ("SUM", _) => return Err(RequestError::bad("usage: SUM <path> [<length>]")),
        ("QUIT", _) => return Err(RequestError::bad("usage: QUIT")),
        ("AUTH", _) => return Err(RequestError::bad(AUTH_USAGE)),
        _ => return Err(RequestError::bad("unknown verb")),
    })
}

const AUTH_USAGE: &str = "usage: AUTH <name> <password>";

/// `<name> <password>`: the name up to the next space, the password the
/// rest of the line, percent-decoded.
fn parse_auth(rest: &str) -> Result<Request, RequestError> {
    match rest.split_once(' ') {
        Some((name, password)) if !name.is_empty() => Ok(Request::Auth {
            name: name.to_owned(),
            password: Password::new(percent_decode(password.as_bytes())?),
        }),
        _ => Err(RequestError::bad(AUTH_USAGE)),
    }
}

fn parse_path(field: &str) -> Result<RelPath, RequestError> {
    Ok(RelPath::decode(field.as_bytes())?)
}

/// One or more ASCII digits (leading zeros allowed) that fit a `u64`.
fn parse_number(field: &str) -> Result<u64, RequestError> {
    number(field).ok_or_else(|| {
        if field.bytes().all(|b| b.is_ascii_digit()) {
            RequestError::bad("number too large")
        } else {
            RequestError::bad("numbers must be decimal digits only")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path(field: &str) -> RelPath {
        RelPath::decode(field.as_bytes()).unwrap()
    }

    #[track_caller]
    fn refused(line: &[u8], code: ErrorCode, closes: bool) {
        let error = parse_request(line).expect_err(&String::from_utf8_lossy(line));
        assert_eq!(
            (error.code(), error.closes_connection()),
            (code, closes),
            "{:?}: {error}",
            String::from_utf8_lossy(line)
        );
        assert!(!error.message().is_empty() && !error.message().contains('\n'));
    }

    #[test]
    fn auth_takes_the_rest_of_the_line_as_a_decoded_password() {
        let auth = |name: &str, password: &[u8]| Request::Auth {
            name: name.to_owned(),
            password: Password::new(password),
        };
        assert_eq!(
            parse_request(b"auth bob two words%21").unwrap(),
            auth("bob", b"two words!")
        );
        assert_eq!(parse_request(b"AUTH bob ").unwrap(), auth("bob", b""));
        assert_eq!(
            parse_request(b"AUTH bob a  b").unwrap(),
            auth("bob", b"a  b")
        );
        for bad in [&b"AUTH"[..], b"AUTH bob", b"AUTH  pw", b"AUTH bob p%zz"] {
            refused(bad, ErrorCode::BadRequest, false);
        }
        // The secret never shows in a debug print.
        let printed = format!("{:?}", parse_request(b"AUTH bob hunter2").unwrap());
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn max_line_is_4096() {
        assert_eq!(MAX_LINE, 4096);
        let error = RequestError::line_too_long();
        assert_eq!(error.code(), ErrorCode::BadRequest);
        assert!(error.closes_connection());
    }

    #[test]
    fn parses_every_verb() {
        for (line, request) in [
            (
                &b"GET a.txt"[..],
                Request::Get {
                    path: path("a.txt"),
                    offset: None,
                },
            ),
            (
                b"GET a.txt 0",
                Request::Get {
                    path: path("a.txt"),
                    offset: Some(0),
                },
            ),
            (
                b"GET a 007",
                Request::Get {
                    path: path("a"),
                    offset: Some(7),
                },
            ),
            (
                b"GET a 18446744073709551615",
                Request::Get {
                    path: path("a"),
                    offset: Some(u64::MAX),
                },
            ),
            (
                b"PUT d/b.bin 12",
                Request::Put {
                    path: path("d/b.bin"),
                    size: 12,
                },
            ),
            (
                b"PUT b 0",
                Request::Put {
                    path: path("b"),
                    size: 0,
                },
            ),
            (
                b"LIST",
                Request::List {
                    path: RelPath::root(),
                },
            ),
            (
                b"LIST /",
                Request::List {
                    path: RelPath::root(),
                },
            ),
            (b"LIST docs", Request::List { path: path("docs") }),
            (b"STAT x%20y", Request::Stat { path: path("x y") }),
            (
                b"SUM a",
                Request::Sum {
                    path: path("a"),
                    length: None,
                },
            ),
            (
                b"sum d/a%20b 0",
                Request::Sum {
                    path: path("d/a b"),
                    length: Some(0),
                },
            ),
            (b"QUIT", Request::Quit),
        ] {
            assert_eq!(
                parse_request(line),
                Ok(request),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        for verb in ["quit", "Quit", "qUiT"] {
            assert_eq!(parse_request(verb.as_bytes()), Ok(Request::Quit));
        }
        assert_eq!(
            parse_request(b"list"),
            Ok(Request::List {
                path: RelPath::root()
            })
        );
    }

    #[test]
    fn one_final_carriage_return_is_stripped() {
        assert_eq!(parse_request(b"QUIT\r"), Ok(Request::Quit));
        assert_eq!(
            parse_request(b"GET a 5\r"),
            Ok(Request::Get {
                path: path("a"),
                offset: Some(5)
            })
        );
        refused(b"QUIT\r\r", ErrorCode::BadRequest, false);
        refused(b"QU\rIT", ErrorCode::BadRequest, false);
    }

    #[test]
    fn refuses_unknown_verbs_and_field_counts() {
        for line in [
            &b"FETCH a"[..],
            b"GETS a",
            b"GET",
            b"GET a 1 2",
            b"LIST a b",
            b"STAT",
            b"STAT a b",
            b"QUIT now",
            b"SUM",
            b"SUM a 1 2",
            b"SUM a -1",
            b"\xC3\xA9",
        ] {
            refused(line, ErrorCode::BadRequest, false);
        }
    }

    #[test]
    fn refuses_empty_fields() {
        for line in [
            &b""[..],
            b"\r",
            b" ",
            b"GET  a",
            b" GET a",
            b"GET a ",
            b"QUIT ",
            b"LIST ",
        ] {
            refused(line, ErrorCode::BadRequest, false);
        }
    }

    #[test]
    fn refuses_control_bytes() {
        for line in [
            &b"GET a\tb"[..],
            b"GET\ta",
            b"GET a\x00",
            b"GET a\x7F",
            b"\x1BQUIT",
            b"GET a\rb",
        ] {
            refused(line, ErrorCode::BadRequest, false);
        }
        // A C1 control is valid UTF-8 and not a raw control byte.
        assert_eq!(
            parse_request("STAT a\u{85}".as_bytes()),
            Ok(Request::Stat {
                path: path("a\u{85}")
            })
        );
    }

    #[test]
    fn refuses_bad_numbers() {
        for number in [
            "-1",
            "+1",
            "1.0",
            "1e3",
            "0x10",
            "١",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            refused(
                format!("GET a {number}").as_bytes(),
                ErrorCode::BadRequest,
                false,
            );
        }
    }

    #[test]
    fn refuses_bad_paths() {
        refused(b"GET a%2", ErrorCode::BadRequest, false);
        refused(b"STAT %zz", ErrorCode::BadRequest, false);
        refused(b"GET ../etc/passwd", ErrorCode::Forbidden, false);
        refused(b"LIST a/%2e%2e/..", ErrorCode::Forbidden, false);
        refused(b"GET .filesrv-1-2", ErrorCode::Forbidden, false);
        refused(b"GET a%00", ErrorCode::Forbidden, false);
        refused(b"GET a%5C", ErrorCode::Forbidden, false);
    }

    #[test]
    fn non_utf8_closes() {
        refused(b"GET \xFF", ErrorCode::BadRequest, true);
        refused(b"\xC3", ErrorCode::BadRequest, true);
        // Encoded, the same bytes are fine.
        assert_eq!(
            parse_request(b"GET %FF"),
            Ok(Request::Get {
                path: RelPath::decode(b"\xFF").unwrap(),
                offset: None
            })
        );
    }

    #[test]
    fn every_refused_put_closes() {
        for line in [
            &b"PUT a"[..],
            b"put a 1 2",
            b"PUT a -1",
            b"PUT a 18446744073709551616",
            b"PUT ../a 1",
            b"PUT a%zz 1",
            b"PUT  a 1",
            b"PUT a\t 1",
        ] {
            let error = parse_request(line).unwrap_err();
            assert!(
                error.closes_connection(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_request(&line);
        }

        #[test]
        fn encoded_paths_parse_back(raw in proptest::collection::vec(1u8..=255, 1..32)) {
            if let Ok(expected) = RelPath::decode(&raw) {
                let line = format!("STAT {expected}");
                prop_assert_eq!(parse_request(line.as_bytes()), Ok(Request::Stat { path: expected }));
            }
        }
    }
}
