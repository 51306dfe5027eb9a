//! Response heads: the status line and the fields every reply carries.

use std::cell::RefCell;
use std::thread::LocalKey;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::wire::ErrorCode;

/// The statuses the server answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    Ok,
    Created,
    NoContent,
    PartialContent,
    MovedPermanently,
    NotModified,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    LengthRequired,
    ContentTooLarge,
    UriTooLong,
    RangeNotSatisfiable,
    HeadersTooLarge,
    InternalError,
    Unavailable,
}

impl Status {
    /// The code and reason phrase.
    pub(super) fn line(self) -> (u16, &'static str) {
        match self {
            Status::Ok => (200, "OK"),
            Status::Created => (201, "Created"),
            Status::NoContent => (204, "No Content"),
            Status::PartialContent => (206, "Partial Content"),
            Status::MovedPermanently => (301, "Moved Permanently"),
            Status::NotModified => (304, "Not Modified"),
            Status::BadRequest => (400, "Bad Request"),
            Status::Unauthorized => (401, "Unauthorized"),
            Status::Forbidden => (403, "Forbidden"),
            Status::NotFound => (404, "Not Found"),
            Status::MethodNotAllowed => (405, "Method Not Allowed"),
            Status::RequestTimeout => (408, "Request Timeout"),
            Status::LengthRequired => (411, "Length Required"),
            Status::ContentTooLarge => (413, "Content Too Large"),
            Status::UriTooLong => (414, "URI Too Long"),
            Status::RangeNotSatisfiable => (416, "Range Not Satisfiable"),
            Status::HeadersTooLarge => (431, "Request Header Fields Too Large"),
            Status::InternalError => (500, "Internal Server Error"),
            Status::Unavailable => (503, "Service Unavailable"),
        }
    }

    /// The status code.
    pub(super) fn code(self) -> u16 {
        self.line().0
    }

    /// The status a line-protocol error code maps to.
    pub(super) fn of(code: ErrorCode) -> Status {
        match code {
            ErrorCode::BadRequest => Status::BadRequest,
            ErrorCode::NotFound => Status::NotFound,
            ErrorCode::Forbidden => Status::Forbidden,
            ErrorCode::TooLarge => Status::ContentTooLarge,
            ErrorCode::Range => Status::RangeNotSatisfiable,
            ErrorCode::Busy | ErrorCode::Unavailable => Status::Unavailable,
            ErrorCode::Timeout => Status::RequestTimeout,
            ErrorCode::Internal => Status::InternalError,
            ErrorCode::Denied => Status::Unauthorized,
        }
    }

    /// Whether the reply may carry `Content-Length` (RFC 9110, 8.6).
    fn has_length(self) -> bool {
        self != Status::NoContent
    }
}

/// A response head being written: the status line, `Date`, and the
/// fields added; [`ReplyHead::finish`] adds the framing and the blank line.
pub(super) struct ReplyHead {
    text: String,
    status: Status,
}

impl ReplyHead {
    /// `HTTP/1.1 <status>` and `Date`. Written without `fmt`, the date
    /// formatted once a second per thread: a 4 KiB keep-alive GET spent
    /// 2% of its CPU formatting its head.
    pub(super) fn new(status: Status) -> ReplyHead {
        let (code, reason) = status.line();
        let mut text = String::with_capacity(256);
        text.push_str("HTTP/1.1 ");
        push_digits::<10>(&mut text, code.into());
        text.push(' ');
        text.push_str(reason);
        text.push_str("\r\nDate: ");
        push_date(&mut text, SystemTime::now(), &NOW);
        text.push_str("\r\n");
        ReplyHead { text, status }
    }

    /// Adds a field; `value` must hold no CR or LF.
    pub(super) fn field(mut self, name: &str, value: &str) -> ReplyHead {
        for part in [name, ": ", value, "\r\n"] {
            self.text.push_str(part);
        }
        self
    }

    /// Adds `Content-Length` (where allowed), `Connection` as `keep_alive`
    /// says (`keep-alive` only for an HTTP/1.0 client, which asked for
    /// it), and ends the head.
    pub(super) fn finish(mut self, length: u64, keep_alive: bool, http10: bool) -> String {
        if self.status.has_length() {
            self.text.push_str("Content-Length: ");
            push_digits::<10>(&mut self.text, length);
            self.text.push_str("\r\n");
        }
        if !keep_alive {
            self.text.push_str("Connection: close\r\n");
        } else if http10 {
            self.text.push_str("Connection: keep-alive\r\n");
        }
        self.text.push_str("\r\n");
        self.text
    }
}

/// Appends `n` in base `RADIX` (2 to 16), lower-case; a constant base,
/// so that no digit costs a division instruction.
pub(super) fn push_digits<const RADIX: u64>(text: &mut String, mut n: u64) {
    let mut digits = [0u8; 64];
    let mut start = digits.len();
    loop {
        start -= 1;
        let digit = usize::try_from(n % RADIX).expect("below 16");
        digits[start] = b"0123456789abcdef"[digit];
        n /= RADIX;
        if n == 0 {
            break;
        }
    }
    text.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// A thread's last formatted HTTP date: the second it shows, and the text.
type DateCache = LocalKey<RefCell<(u64, String)>>;

thread_local! {
    /// For `Date`: a reply formats it at most once a second per thread.
    static NOW: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    /// For `Last-Modified`: files changed in the same second share it.
    static MODIFIED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends `time` as an HTTP date (whole seconds), formatted again only
/// when the second differs from the one `cache` holds.
fn push_date(text: &mut String, time: SystemTime, cache: &'static DateCache) {
    let second = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    cache.with_borrow_mut(|(shown, date)| {
        if *shown != second {
            *date = httpdate::fmt_http_date(time);
            *shown = second;
        }
        text.push_str(date);
    });
}

/// `time` (whole seconds) as an HTTP date, for `Last-Modified`.
pub(super) fn http_date(time: SystemTime) -> String {
    let mut text = String::with_capacity(29);
    push_date(&mut text, time, &MODIFIED);
    text
}

/// A reply with a short `text/plain` body: an error or a redirect. The
/// body is the status line, then `: ` and `why` when given: the message
/// the line protocol's `ERR` line gives in the same case.
pub(super) fn plain(
    status: Status,
    why: Option<&str>,
    extra: &[(&str, &str)],
    keep_alive: bool,
    http10: bool,
) -> String {
    let (code, reason) = status.line();
    let body = match why {
        Some(why) => format!("{code} {reason}: {why}\n"),
        None => format!("{code} {reason}\n"),
    };
    let mut head = ReplyHead::new(status).field("Content-Type", "text/plain; charset=utf-8");
    for (name, value) in extra {
        head = head.field(name, value);
    }
    let mut text = head.finish(body.len() as u64, keep_alive, http10);
    text.push_str(&body);
    text
}

/// The `503` a refused connection gets when its first bytes begin an
/// HTTP request line.
pub(in crate::protocol::server) fn refusal() -> String {
    plain(
        Status::Unavailable,
        None,
        &[("Retry-After", "1")],
        false,
        false,
    )
}
