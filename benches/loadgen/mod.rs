//! The load generator of the transfer bench, also run on its own as
//! `cargo run --release --example loadgen`.
//!
//! It speaks the protocol itself over plain sockets (not through
//! [`filesrv::protocol::Client`]), so the same clients can load any server
//! that answers `GET` and `QUIT`: `filesrv`, the bench's baselines, or a
//! server in another language. With [`Protocol::Http`] the same clients
//! speak HTTP/1.1 instead (`GET /<path>`), to load a web server such as
//! nginx with the same files. Bodies are read into a buffer and dropped.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// The longest reply line accepted, `\n` included.
const MAX_LINE: usize = 4096;

/// How the clients of a [`Load`] use connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One connection per client, kept for the whole run: `GET`, read the
    /// body, next `GET`.
    Persistent,
    /// A new connection per request: connect, send `GET <path>\nQUIT\n` in
    /// one write, read the body, `OK bye` and the end of the stream, close.
    /// The server closes first, as an HTTP server does after
    /// `Connection: close`, so the TIME-WAIT sockets are on its side.
    PerRequest,
}

/// What the clients of a [`Load`] speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// The file server's protocol: `GET <path>\n`, `OK <size>\n` and the
    /// body.
    Filesrv,
    /// HTTP/1.1: `GET /<path>` with a `Host` header, answered `200` with a
    /// `Content-Length` and the body. In [`Mode::PerRequest`] the request
    /// says `Connection: close` (the server closes after the body, as
    /// `filesrv` does after `QUIT`); in [`Mode::Persistent`] the
    /// connection is kept, and opened again if the server closes it.
    Http,
}

/// A closed-loop load: `clients` threads, each sending its next request as
/// soon as the previous reply is complete.
#[derive(Clone, Debug)]
pub(crate) struct Load<'a> {
    /// The server.
    pub(crate) addr: SocketAddr,
    /// The paths asked for; client `i` starts at `paths[i % len]` and goes
    /// round.
    pub(crate) paths: &'a [String],
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// How connections are used.
    pub(crate) mode: Mode,
    /// Run before the measured window; its requests are not counted.
    pub(crate) warmup: Duration,
    /// The measured window.
    pub(crate) duration: Duration,
}

/// What one [`Load`] run measured.
#[derive(Debug)]
pub(crate) struct Report {
    /// Requests that started and ended inside the measured window.
    pub(crate) requests: u64,
    /// Body bytes of those requests.
    pub(crate) bytes: u64,
    /// Requests completed at any time, the warm-up's and those that
    /// straddled the window's edges included. Every client completes one
    /// at least, so a machine too busy to fit one inside the window still
    /// shows whether the server answers.
    pub(crate) completed: u64,
    /// Failed requests (any time during the run), an `ERR` reply
    /// included; a persistent client reconnects after one.
    pub(crate) errors: u64,
    /// The first failure's description.
    pub(crate) first_error: Option<String>,
    /// The measured window.
    pub(crate) window: Duration,
    /// Latency of every counted request in nanoseconds, sorted: from just
    /// before the request was written (before `connect` in
    /// [`Mode::PerRequest`]) to its body's last byte.
    latencies: Vec<u64>,
}

impl Report {
    /// Requests per second over the window.
    pub(crate) fn rate(&self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64()
    }

    /// The latency at `per_mille` thousandths (500: the median, 990: the
    /// 99th percentile), by the nearest-rank method.
    pub(crate) fn latency(&self, per_mille: usize) -> Duration {
        let rank = (per_mille.min(1000) * self.latencies.len()).div_ceil(1000);
        match rank.checked_sub(1).and_then(|i| self.latencies.get(i)) {
            Some(&nanos) => Duration::from_nanos(nanos),
            None => Duration::ZERO,
        }
    }
}

/// Runs `load` speaking the file server's protocol, and returns what it
/// measured; bounded by `warmup + duration` plus the time of the requests
/// then in flight (each is bounded by a 10 s socket timeout).
pub(crate) fn run(load: &Load<'_>) -> io::Result<Report> {
    run_hooked(load, Protocol::Filesrv, None)
}

/// Runs `load` speaking `protocol`; otherwise as [`run`].
pub(crate) fn run_speaking(load: &Load<'_>, protocol: Protocol) -> io::Result<Report> {
    run_hooked(load, protocol, None)
}

/// Runs `load` as [`run`] does, each client calling `after_each` after
/// every request it completes (outside the latency it measures, inside
/// the window's rate).
#[allow(
    dead_code,
    reason = "the transfer bench calls it; the example does not"
)]
pub(crate) fn run_with(load: &Load<'_>, after_each: &(dyn Fn() + Sync)) -> io::Result<Report> {
    run_hooked(load, Protocol::Filesrv, Some(after_each))
}

fn run_hooked(
    load: &Load<'_>,
    protocol: Protocol,
    after_each: Option<&(dyn Fn() + Sync)>,
) -> io::Result<Report> {
    assert!(load.clients > 0 && !load.paths.is_empty());
    let errors = Errors::default();
    let ready = Barrier::new(load.clients + 1);
    let start = StartGate::default();
    let results = thread::scope(|scope| {
        let workers: Vec<_> = (0..load.clients)
            .map(|i| {
                let (errors, ready, start) = (&errors, &ready, &start);
                thread::Builder::new()
                    .name(format!("loadgen-{i}"))
                    .spawn_scoped(scope, move || {
                        client(load, protocol, i, errors, ready, start, after_each)
                    })
            })
            .collect::<io::Result<_>>()?;
        ready.wait();
        start.open(Instant::now());
        let mut all = Vec::new();
        let (mut bytes, mut completed) = (0, 0);
        for worker in workers {
            let (latencies, got, done) = worker.join().expect("a load client panicked");
            all.extend(latencies);
            bytes += got;
            completed += done;
        }
        io::Result::Ok((all, bytes, completed))
    });
    let (mut latencies, bytes, completed) = results?;
    latencies.sort_unstable();
    Ok(Report {
        requests: latencies.len() as u64,
        bytes,
        completed,
        errors: errors.count.into_inner(),
        first_error: errors
            .first
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner),
        window: load.duration,
        latencies,
    })
}

/// One client thread: its latencies and body bytes inside the window, and
/// how many requests it completed in all (one at least, unless every
/// attempt failed until the window's end).
fn client(
    load: &Load<'_>,
    protocol: Protocol,
    index: usize,
    errors: &Errors,
    ready: &Barrier,
    start: &StartGate,
    after_each: Option<&(dyn Fn() + Sync)>,
) -> (Vec<u64>, u64, u64) {
    let mut conn = None;
    if load.mode == Mode::Persistent {
        conn = Conn::connect(load.addr, SMALL_BUF)
            .inspect_err(|e| errors.record(e))
            .ok();
    }
    ready.wait();
    let started = start.wait();
    let (from, until) = (started + load.warmup, started + load.warmup + load.duration);
    let mut latencies = Vec::new();
    let (mut bytes, mut completed) = (0, 0);
    let mut next = index;
    loop {
        let began = Instant::now();
        if began >= until && (completed > 0 || errors.count.load(Ordering::Relaxed) > 0) {
            break;
        }
        let path = &load.paths[next % load.paths.len()];
        next += 1;
        let got = match load.mode {
            Mode::Persistent => {
                let open = match conn.take() {
                    Some(c) => Ok(c),
                    None => Conn::connect(load.addr, SMALL_BUF),
                };
                open.and_then(|mut c| match protocol {
                    Protocol::Filesrv => {
                        let n = c.get(path)?;
                        conn = Some(c);
                        Ok(n)
                    }
                    Protocol::Http => {
                        let (n, kept) = c.http_get(load.addr, path, false)?;
                        conn = kept.then_some(c);
                        Ok(n)
                    }
                })
            }
            Mode::PerRequest => match protocol {
                Protocol::Filesrv => get_once(load.addr, path),
                Protocol::Http => http_get_once(load.addr, path),
            },
        };
        let ended = Instant::now();
        if let (Some(hook), Ok(_)) = (after_each, &got) {
            hook();
        }
        completed += u64::from(got.is_ok());
        match got {
            Ok(n) if began >= from && ended <= until => {
                latencies.push(u64::try_from((ended - began).as_nanos()).unwrap_or(u64::MAX));
                bytes += n;
            }
            Ok(_) => {}
            // A persistent client reconnects for its next request.
            Err(e) => errors.record(&e),
        }
    }
    (latencies, bytes, completed)
}

/// One request on a fresh connection, closed by the server after `QUIT`.
fn get_once(addr: SocketAddr, path: &str) -> io::Result<u64> {
    let mut conn = Conn::connect(addr, SMALL_BUF)?;
    conn.send(format!("GET {path}\nQUIT\n").as_bytes())?;
    let n = conn.body()?;
    let bye = conn.line()?;
    if bye != b"OK bye" {
        return Err(unexpected(bye));
    }
    conn.expect_end()?;
    Ok(n)
}

/// One HTTP request on a fresh connection with `Connection: close`: the
/// server must close after the body.
fn http_get_once(addr: SocketAddr, path: &str) -> io::Result<u64> {
    let mut conn = Conn::connect(addr, SMALL_BUF)?;
    let (n, _) = conn.http_get(addr, path, true)?;
    conn.expect_end()?;
    Ok(n)
}

/// The read buffer of the small-file clients: a 4 KiB body and its reply
/// line fit.
const SMALL_BUF: usize = 16 * 1024;

/// The read buffer of [`fetch`]: large reads keep the receiver's system
/// calls out of a bulk transfer's cost.
pub(crate) const BULK_BUF: usize = 256 * 1024;

/// Downloads `path` on a new connection with a [`BULK_BUF`] buffer and
/// drops the body; returns its size.
pub(crate) fn fetch(addr: SocketAddr, path: &str) -> io::Result<u64> {
    let mut conn = Conn::connect(addr, BULK_BUF)?;
    conn.get(path)
}

/// A client connection with its read buffer.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Conn {
    /// Connects with `TCP_NODELAY` and 10 s read and write timeouts.
    pub(crate) fn connect(addr: SocketAddr, buf_size: usize) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            stream,
            buf: vec![0; buf_size.max(MAX_LINE)].into_boxed_slice(),
            start: 0,
            end: 0,
        })
    }

    /// Sends `GET <path>`, reads the body and drops it; returns its size.
    pub(crate) fn get(&mut self, path: &str) -> io::Result<u64> {
        self.send(format!("GET {path}\n").as_bytes())?;
        self.body()
    }

    /// Sends an HTTP/1.1 `GET /<path>` to the server at `host` (asking it
    /// to close after the reply when `close`), reads a `200` reply's
    /// headers and body, and drops the body. Returns its size, and whether
    /// the connection may be used again (neither side said `close`).
    fn http_get(&mut self, host: SocketAddr, path: &str, close: bool) -> io::Result<(u64, bool)> {
        let connection = if close { "Connection: close\r\n" } else { "" };
        self.send(format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\n{connection}\r\n").as_bytes())?;
        let status = self.line()?;
        if !status.starts_with(b"HTTP/1.1 200 ") {
            return Err(unexpected(status));
        }
        let mut size = None;
        let mut kept = !close;
        loop {
            let line = self.line()?;
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.is_empty() {
                break;
            }
            let text = String::from_utf8_lossy(line);
            let Some((name, value)) = text.split_once(':') else {
                return Err(unexpected(line));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                size = Some(value.parse().map_err(|_| unexpected(line))?);
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                kept = false;
            }
        }
        let size = size.ok_or_else(|| unexpected("a reply without Content-Length"))?;
        self.discard(size)?;
        Ok((size, kept))
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads an `OK <size>` line and the body after it.
    fn body(&mut self) -> io::Result<u64> {
        let line = self.line()?;
        let size = line
            .strip_prefix(b"OK ")
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| unexpected(line))?;
        self.discard(size)?;
        Ok(size)
    }

    /// Reads exactly `n` bytes and drops them.
    pub(crate) fn discard(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let buffered = self.end - self.start;
            let take = usize::try_from(n).map_or(buffered, |n| n.min(buffered));
            self.start += take;
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            self.fill()?;
        }
    }

    /// Reads the next line, without its `\n`.
    pub(crate) fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut searched = 0;
        loop {
            let unread = &self.buf[self.start..self.end];
            if let Some(i) = unread[searched..].iter().position(|&b| b == b'\n') {
                let line = unread[..searched + i].to_vec();
                self.start += searched + i + 1;
                return Ok(line);
            }
            searched = unread.len();
            if searched >= MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
            }
            self.fill()?;
        }
    }

    /// Reads more into the buffer, moving the unread bytes to its start.
    fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let n = loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }

    /// Checks that the server closed the connection and sent nothing more.
    fn expect_end(&mut self) -> io::Result<()> {
        if self.start != self.end {
            return Err(unexpected(&self.buf[self.start..self.end]));
        }
        match self.fill() {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            Err(e) => Err(e),
            Ok(()) => Err(unexpected(&self.buf[self.start..self.end])),
        }
    }
}

fn unexpected(reply: impl AsRef<[u8]>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(reply.as_ref())
        ),
    )
}

/// The failures of a run: how many, and the first.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    fn record(&self, error: &io::Error) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            *self.first.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
        }
    }
}

/// Holds the clients until every one is connected, then gives them all the
/// same start instant.
#[derive(Default)]
struct StartGate {
    at: Mutex<Option<Instant>>,
    opened: Condvar,
}

impl StartGate {
    fn open(&self, at: Instant) {
        *self.at.lock().unwrap_or_else(PoisonError::into_inner) = Some(at);
        self.opened.notify_all();
    }

    fn wait(&self) -> Instant {
        let mut at = self.at.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(at) = *at {
                return at;
            }
            at = self.opened.wait(at).unwrap_or_else(PoisonError::into_inner);
        }
    }
}
