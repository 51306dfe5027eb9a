//! Request heads: the sniff of a first line, parsing with `httparse`,
//! and the framing rules `httparse` leaves to its caller (one
//! `Content-Length`, no `Transfer-Encoding`, no bare LF, size limits).

use std::io;
use std::time::Instant;

use super::reply::Status;
use super::wire::Wire;
use crate::HandlerContext;
use crate::protocol::server::session::Filled;
use crate::protocol::wire::{PathError, RelPath};

/// The longest request line, `\r\n` included: longer is `414`.
pub(super) const MAX_REQUEST_LINE: usize = 8 * 1024;
/// The longest header section after the request line: longer is `431`.
pub(super) const MAX_HEADER_SECTION: usize = 16 * 1024;
/// The most header fields: more is `431`.
pub(super) const MAX_FIELDS: usize = 100;
/// Why a request other than PUT with a body is refused.
pub(super) const NO_BODIES: &str = "request bodies are not accepted";
/// How far a long first line is read to find its end and decide whether
/// it is HTTP: a 414 is certain well before.
const MAX_HEAD: usize = 32 * 1024;

/// Whether `line` (without its `\n`) is an HTTP/1.x request line:
/// `<METHOD> <target> HTTP/1.<digit>` with an all-uppercase method. Any
/// other first line keeps the connection on the line protocol.
pub(in crate::protocol::server) fn is_request_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut fields = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    is_method(method)
        && !target.is_empty()
        && matches!(version, [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit())
}

/// Whether a first line too long for the line protocol is an HTTP
/// request line, which HTTP allows longer (or answers `414`). Reads on,
/// by `deadline`, while the line begins as one does (a method and an
/// origin-form target) and its end is not buffered; anything else stays
/// on the line protocol, whose refusal is then at once.
pub(in crate::protocol::server) fn long_request_line(
    wire: &mut impl Wire,
    deadline: Option<Instant>,
    ctx: &HandlerContext,
) -> io::Result<bool> {
    let mut idle = false;
    loop {
        let pending = wire.pending();
        if !may_be_request_line(pending) {
            return Ok(false);
        }
        if let Some(newline) = pending.iter().position(|&b| b == b'\n') {
            return Ok(is_request_line(&pending[..newline]));
        }
        if pending.len() >= MAX_HEAD {
            return Ok(false);
        }
        if !matches!(wire.fill(deadline, &mut idle, ctx)?, Filled::More) {
            return Ok(false);
        }
    }
}

/// Whether a refused connection's first bytes `seen` begin an HTTP
/// request line: `None` while they may but its end has not come, unless
/// `last` (nothing more will be read), when an HTTP-looking start (a
/// method and an origin-form target) is taken as HTTP.
pub(in crate::protocol::server) fn refusal_is_http(seen: &[u8], last: bool) -> Option<bool> {
    if let Some(newline) = seen.iter().position(|&b| b == b'\n') {
        return Some(is_request_line(&seen[..newline]));
    }
    let method = seen.split(|&b| b == b' ').next().unwrap_or_default();
    let may_begin = method.len() <= 16
        && method.iter().all(u8::is_ascii_uppercase)
        && seen.get(method.len() + 1).is_none_or(|&b| b == b'/');
    match (may_begin, last) {
        (false, _) => Some(false),
        (true, false) => None,
        (true, true) => Some(may_be_request_line(seen)),
    }
}

/// Whether `start` begins as an HTTP request line does: a method and an
/// origin-form target.
fn may_be_request_line(start: &[u8]) -> bool {
    let Some(space) = start.iter().position(|&b| b == b' ') else {
        return false;
    };
    is_method(&start[..space]) && start.get(space + 1) == Some(&b'/')
}

fn is_method(word: &[u8]) -> bool {
    !word.is_empty() && word.len() <= 16 && word.iter().all(u8::is_ascii_uppercase)
}

/// The methods served; any other is `405`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    Get,
    Head,
    Put,
    /// Any other, named for the log and the metrics.
    Other,
}

impl Method {
    /// The label for logs and metrics.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Other => "other",
        }
    }
}

/// What a request head says, kept once the buffer it was parsed from is
/// reused.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) method: Method,
    /// The target as sent, for the log and the `301`'s `Location`.
    pub(super) target: String,
    /// The decoded path, or why it was refused.
    pub(super) path: Result<RelPath, PathError>,
    /// Whether the target's path ends with `/`.
    pub(super) slash: bool,
    /// HTTP/1.0 rather than 1.1.
    pub(super) http10: bool,
    /// Whether the connection stays open after the reply.
    pub(super) keep_alive: bool,
    pub(super) content_length: Option<u64>,
    pub(super) expect_continue: bool,
    pub(super) range: Option<String>,
    pub(super) if_range: Option<String>,
    pub(super) if_none_match: Option<String>,
    pub(super) if_modified_since: Option<String>,
    pub(super) want_sha256: bool,
    /// `Authorization: Basic <credentials>`, for the users check.
    pub(super) basic_auth: Option<String>,
}

/// The outcome of parsing the buffered bytes.
#[derive(Debug)]
pub(super) enum Parsed {
    /// A complete head of this many bytes.
    Complete(Head, usize),
    /// Not complete yet: read more.
    Partial,
    /// Refused with this status; the connection then closes.
    Refused(Status, &'static str),
}

/// Parses the request head at the start of `buf`.
pub(super) fn parse(buf: &[u8]) -> Parsed {
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end.map_or(buf.len(), |i| i + 1) > MAX_REQUEST_LINE {
        return Parsed::Refused(Status::UriTooLong, "request line too long");
    }
    // Left uninitialised: httparse writes what it parses (writing 100
    // empty fields first was a 3 KiB memset per request).
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            let line = line_end.map_or(0, |i| i + 1);
            return if buf.len() - line > MAX_HEADER_SECTION {
                Parsed::Refused(Status::HeadersTooLarge, "header section too large")
            } else {
                Parsed::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refused(Status::HeadersTooLarge, "too many header fields");
        }
        Err(_) => return Parsed::Refused(Status::BadRequest, "malformed request head"),
    };
    if len - line_end.map_or(0, |i| i + 1) > MAX_HEADER_SECTION {
        return Parsed::Refused(Status::HeadersTooLarge, "header section too large");
    }
    // A bare LF ends no line here: strict framing, as against smuggling.
    if buf[..len]
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || buf[i - 1] != b'\r'))
    {
        return Parsed::Refused(Status::BadRequest, "lines must end with CRLF");
    }
    match head(&request) {
        Ok(head) => Parsed::Complete(head, len),
        Err((status, why)) => Parsed::Refused(status, why),
    }
}

/// The parts of a parsed request the server uses, with the framing rules.
fn head(request: &httparse::Request<'_, '_>) -> Result<Head, (Status, &'static str)> {
    let method = match request.method.unwrap_or_default() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        _ => Method::Other,
    };
    let http10 = request.version == Some(0);
    let target = request.path.unwrap_or_default();
    let mut head = Head {
        method,
        target: target.to_owned(),
        path: Err(PathError::BadEscape),
        slash: false,
        http10,
        keep_alive: !http10,
        content_length: None,
        expect_continue: false,
        range: None,
        if_range: None,
        if_none_match: None,
        if_modified_since: None,
        want_sha256: false,
        basic_auth: None,
    };
    let mut transfer_encoding = false;
    for field in request.headers.iter() {
        let value = std::str::from_utf8(field.value).unwrap_or_default().trim();
        let name = field.name;
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
        if is("content-length") {
            let length = crate::protocol::wire::number(value)
                .ok_or((Status::BadRequest, "bad Content-Length"))?;
            if head.content_length.is_some_and(|seen| seen != length) {
                return Err((Status::BadRequest, "two different Content-Length fields"));
            }
            head.content_length = Some(length);
        } else if is("transfer-encoding") {
            transfer_encoding = true;
        } else if is("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    head.keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") && http10 {
                    head.keep_alive = true;
                }
            }
        } else if is("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        } else if is("range") {
            head.range = Some(value.to_owned());
        } else if is("if-range") {
            head.if_range = Some(value.to_owned());
        } else if is("if-none-match") {
            head.if_none_match = Some(value.to_owned());
        } else if is("if-modified-since") {
            head.if_modified_since = Some(value.to_owned());
        } else if is("want-repr-digest") {
            head.want_sha256 = wants_sha256(value);
        } else if is("authorization") {
            let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
            if scheme.eq_ignore_ascii_case("basic") {
                head.basic_auth = Some(credentials.trim().to_owned());
            }
        }
    }
    if transfer_encoding {
        return Err(match (head.content_length, method) {
            (Some(_), _) => (
                Status::BadRequest,
                "Transfer-Encoding and Content-Length together",
            ),
            (None, Method::Put) => (Status::LengthRequired, "uploads need a Content-Length"),
            (None, _) => (Status::BadRequest, NO_BODIES),
        });
    }
    if method == Method::Put && head.content_length.is_none() {
        return Err((Status::LengthRequired, "uploads need a Content-Length"));
    }
    let Some(path) = target.strip_prefix('/') else {
        return Err((Status::BadRequest, "the target must be an absolute path"));
    };
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    head.slash = path.is_empty() || path.ends_with('/');
    head.path = RelPath::decode(path.as_bytes());
    Ok(head)
}

/// Whether a `Want-Repr-Digest` dictionary asks for `sha-256` with a
/// non-zero preference (RFC 9530).
fn wants_sha256(value: &str) -> bool {
    value.split(',').any(|member| {
        let (key, preference) = member.split_once('=').unwrap_or((member, "1"));
        key.trim() == "sha-256" && preference.trim().parse::<u8>().is_ok_and(|p| p > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_http_request_lines_only() {
        assert!(is_request_line(b"GET / HTTP/1.1\r"));
        assert!(is_request_line(b"DELETE /x?y HTTP/1.0"));
        assert!(!is_request_line(b"GET /x"));
        assert!(!is_request_line(b"get / HTTP/1.1"));
        assert!(!is_request_line(b"GET / HTTP/2.0"));
        assert!(!is_request_line(b"GET notes.txt 5"));
        assert!(may_be_request_line(b"GET /aaaa"));
        assert!(!may_be_request_line(b"GET aaaa"));
        assert_eq!(
            refusal_is_http(b"GET / HTTP/1.1\r\nHost", false),
            Some(true)
        );
        assert_eq!(refusal_is_http(b"GET /x\n", false), Some(false));
        assert_eq!(refusal_is_http(b"GE", false), None);
        assert_eq!(refusal_is_http(b"GET /x", false), None);
        assert_eq!(refusal_is_http(b"GET /x", true), Some(true));
        assert_eq!(refusal_is_http(b"GET notes", false), Some(false));
        assert_eq!(refusal_is_http(b"", true), Some(false));
    }

    #[test]
    fn framing_rules() {
        let refused = |head: &[u8]| match parse(head) {
            Parsed::Refused(status, _) => status,
            other => panic!("{other:?}"),
        };
        let te_cl = b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refused(te_cl), Status::BadRequest);
        let two = b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(refused(two), Status::BadRequest);
        let te = b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refused(te), Status::LengthRequired);
        assert_eq!(refused(b"PUT /a HTTP/1.1\r\n\r\n"), Status::LengthRequired);
        let fold = b"GET /a HTTP/1.1\r\nX-A: 1\r\n  2\r\n\r\n";
        assert_eq!(refused(fold), Status::BadRequest);
        assert_eq!(
            refused(b"GET /a HTTP/1.1\r\nHost : x\r\n\r\n"),
            Status::BadRequest
        );
        assert_eq!(refused(b"GET /a HTTP/1.1\n\n"), Status::BadRequest);
        let same = b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert!(matches!(parse(same), Parsed::Complete(_, _)));
        assert!(matches!(
            parse(b"GET /a HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
        assert!(wants_sha256("sha-512=3, sha-256=10"));
        assert!(!wants_sha256("sha-256=0"));
    }
}
