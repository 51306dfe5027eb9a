//! The access log: one line per request answered, in a fixed,
//! space-separated format that a program can split (see [`AccessLog`]).

use std::fmt::{self, Write as _};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::protocol::wire::Request;

/// Where a [`Server`](crate::protocol::Server) writes its access log
/// ([`ServerConfig::access_log`](crate::protocol::ServerConfig::access_log)):
/// one line per request answered, eight fields separated by single
/// spaces, none of them ever empty or holding a space:
///
/// ```text
/// 1764000000.123 192.0.2.1:50312 - GET docs/notes.txt OK 6 0.000183
/// ```
///
/// 1. when the answer ended: Unix time in seconds, with milliseconds;
/// 2. the client's address and port (the PROXY header's source behind a
///    trusted proxy);
/// 3. the user: `-` (there are no users yet);
/// 4. the verb (`GET`, `PUT`, `LIST`, `STAT`, `SUM`, `QUIT`), or
///    `invalid` for a line that is not a request;
/// 5. the path as the client sent it (percent-encoded, `%XX` added for
///    any byte outside printable ASCII); `.` for `LIST` without one, `-`
///    for `QUIT` and an invalid line;
/// 6. the result: `OK`, the error code of an `ERR` reply, or how a body
///    broke off (`cut`, `cut-by-shutdown`, `gone`, `stalled`);
/// 7. the body bytes sent (GET, LIST) or received (PUT);
/// 8. the time the request took, in seconds with microseconds.
///
/// A connection that sends no request (a health check that only
/// connects, a client refused `ERR busy`) writes no line, nor by default
/// does a trusted proxy's own connection (a PROXY v2 `LOCAL` header, as
/// HAProxy's health checks send;
/// [`access_log_checks`](crate::protocol::ServerConfig::access_log_checks)). Each line is
/// written whole with one call; a failed write is dropped, never slowing
/// or failing the request.
#[derive(Clone)]
pub struct AccessLog {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl AccessLog {
    /// A log on the process's standard error.
    pub fn stderr() -> AccessLog {
        AccessLog::to_writer(io::stderr())
    }

    /// A log appended to the file at `path`, created if missing.
    ///
    /// # Errors
    ///
    /// The error of opening the file.
    pub fn file(path: impl AsRef<Path>) -> io::Result<AccessLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AccessLog::to_writer(file))
    }

    /// A log written to `writer` (unbuffered: give a buffered writer one
    /// that flushes on each line, or none).
    pub fn to_writer(writer: impl Write + Send + 'static) -> AccessLog {
        AccessLog {
            out: Arc::new(Mutex::new(Box::new(writer))),
        }
    }

    /// Writes the line of one request.
    pub(crate) fn record(&self, entry: &Entry<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let Entry {
            client,
            user,
            verb,
            path,
            result,
            bytes,
            took,
        } = entry;
        let line = format!(
            "{}.{:03} {client} {} {verb} {path} {result} {bytes} {}.{:06}\n",
            now.as_secs(),
            now.subsec_millis(),
            user.unwrap_or("-"),
            took.as_secs(),
            took.subsec_micros()
        );
        let mut out = crate::util::lock(&self.out);
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    }
}

/// One request, as its access log line shows it.
pub(crate) struct Entry<'a> {
    pub(crate) client: SocketAddr,
    /// The name the connection logged in as (`AUTH`), if any.
    pub(crate) user: Option<&'a str>,
    /// The line protocol's verb (`invalid` for a line that is not a
    /// request), or the HTTP method.
    pub(crate) verb: &'a str,
    /// As sent, percent-encoded.
    pub(crate) path: &'a str,
    /// The line protocol's answer (`OK`, an error code...), or the HTTP
    /// status code.
    pub(crate) result: &'a dyn fmt::Display,
    pub(crate) bytes: u64,
    pub(crate) took: Duration,
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

/// The path field of a request line for the log: its second
/// space-separated field as sent, with `%XX` for bytes outside printable
/// ASCII; `.` for `LIST` alone, `-` when the request has no path.
pub(crate) fn path_field(line: &[u8], request: Option<&Request>) -> String {
    let mut fields = line.split(|&b| b == b' ');
    let verb = fields.next();
    match (request, fields.next()) {
        (None | Some(Request::Quit), _) => "-".to_owned(),
        (Some(_), Some(path)) if !path.is_empty() => {
            let mut out = String::with_capacity(path.len());
            for &byte in path {
                if byte.is_ascii_graphic() {
                    out.push(char::from(byte));
                } else {
                    let _ = write!(out, "%{byte:02X}");
                }
            }
            out
        }
        _ if verb == Some(b"LIST") => ".".to_owned(),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::server::metrics::Answer;
    use crate::protocol::wire::parse_request;

    #[test]
    fn path_fields() {
        for (line, field) in [
            (&b"GET docs/a%20b.txt 4"[..], "docs/a%20b.txt"),
            (b"LIST", "."),
            (b"LIST sub", "sub"),
            (b"QUIT", "-"),
            (b"FROB x", "-"),
            (b"GET caf\xc3\xa9", "caf%C3%A9"),
        ] {
            let request = parse_request(line).ok();
            assert_eq!(path_field(line, request.as_ref()), field, "{line:?}");
        }
    }

    #[test]
    fn one_line_of_eight_fields() {
        let sink = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let log = AccessLog::to_writer(Shared(sink.clone()));
        let request = parse_request(b"GET a.txt").unwrap();
        let client = "192.0.2.1:5000".parse().unwrap();
        let took = Duration::from_micros(1_500_042);
        let mut entry = Entry {
            client,
            user: None,
            verb: request.verb(),
            path: "a.txt",
            result: &Answer::Ok,
            bytes: 6,
            took,
        };
        log.record(&entry);
        let line = String::from_utf8(sink.lock().unwrap().clone()).unwrap();
        let fields: Vec<&str> = line.trim_end_matches('\n').split(' ').collect();
        assert_eq!(
            fields[1..],
            ["192.0.2.1:5000", "-", "GET", "a.txt", "OK", "6", "1.500042"]
        );
        entry.user = Some("alice");
        log.record(&entry);
        let lines = String::from_utf8(sink.lock().unwrap().clone()).unwrap();
        let second = lines.lines().nth(1).unwrap();
        assert_eq!(second.split(' ').nth(2), Some("alice"), "{second}");
        let (secs, millis) = fields[0].split_once('.').unwrap();
        assert!(secs.parse::<u64>().unwrap() > 1_700_000_000 && millis.len() == 3);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    }
}
