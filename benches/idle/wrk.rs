//! `wrk` (Debian's package) as the one HTTP client of the `idle`, `http`
//! and `tls` scenarios: the same program, arguments and file against
//! every server, so what differs is the server.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

/// One `wrk` run: what it reports, checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    /// Responses received.
    pub(crate) requests: u64,
    /// Its `Requests/sec`.
    pub(crate) rate: f64,
    /// Its socket errors (connect, read, write, timeout), summed: a
    /// server that closed keep-alive connections under the client.
    pub(crate) socket_errors: u64,
}

/// How `wrk` loads the server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Load {
    /// Connections kept open (`-c`); two threads (`-t2`) drive them.
    pub(crate) connections: usize,
    /// `-d`, in seconds (wrk's finest unit).
    pub(crate) seconds: u32,
    /// `-H 'Connection: close'`: a new connection per request, the server
    /// closing first.
    pub(crate) close: bool,
    /// `https://`: wrk's OpenSSL, no certificate check, the session of a
    /// connection offered again on its next one (`SSL_clear`), so a server
    /// that resumes sessions does no full handshake after the first.
    pub(crate) tls: bool,
}

impl Load {
    /// The load in words, for the bench's output.
    pub(crate) fn label(&self) -> String {
        if self.close {
            format!("Connection: close, {} clients", self.connections)
        } else {
            format!("keep-alive, {} clients", self.connections)
        }
    }
}

/// Runs `wrk` at `program` against `http://addr/path` (`https` with
/// [`Load::tls`]) and returns its
/// figures; a run with a status other than 2xx/3xx is an error carrying
/// wrk's output (socket errors are counted, for the caller to judge).
pub(crate) fn run(program: &Path, addr: SocketAddr, path: &str, load: Load) -> io::Result<Run> {
    let mut command = Command::new(program);
    command
        .arg("-t2")
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        // A generous bound: a reply slower than this is an error, not a
        // figure.
        .args(["--timeout", "10s"]);
    if load.close {
        command.args(["-H", "Connection: close"]);
    }
    let scheme = if load.tls { "https" } else { "http" };
    let out = command
        .arg(format!("{scheme}://{addr}/{path}"))
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse(&text).ok_or_else(|| io::Error::other(format!("wrk against {addr}: {text}")))
}

/// The figures of wrk's report, `None` if it shows a status other than
/// 2xx/3xx.
fn parse(text: &str) -> Option<Run> {
    if text.contains("Non-2xx") {
        return None;
    }
    // `Socket errors: connect 0, read 3, write 0, timeout 0`, when any.
    let socket_errors = match text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
    {
        Some(counts) => counts
            .split(',')
            .map(|c| c.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<Option<u64>>()?,
        None => 0,
    };
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))?
        .0
        .parse()
        .ok()?;
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    (requests > 0).then_some(Run {
        requests,
        rate,
        socket_errors,
    })
}
