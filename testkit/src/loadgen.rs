//! The load generator of the transfer bench, also run on its own as
//! `cargo run --release --example loadgen`.
//!
//! It speaks the protocol itself over plain sockets (not through
//! [`filesrv::protocol::Client`]), so the same clients can load any server
//! that answers `GET` and `QUIT`: `filesrv`, the bench's baselines, or a
//! server in another language. With [`Protocol::Http`] the same clients
//! speak HTTP instead (`GET /<path>`), to load a web server such as
//! nginx with the same files. Bodies are read into a buffer and dropped.
//!
//! Both protocols cost the client the same: every request is built once
//! before the run, and a reply is checked for its status and length
//! only (an HTTP client finds `Content-Length` and the end of the head
//! with one scan, no header parsing).

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
pub enum Mode {
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
pub enum Protocol {
    /// The file server's protocol: `GET <path>\n`, `OK <size>\n` and the
    /// body.
    Filesrv,
    /// HTTP: `GET /<path>`, answered `200` with a `Content-Length` and
    /// the body. In [`Mode::PerRequest`] an HTTP/1.0 request, after which
    /// the server closes (as `filesrv` does after `QUIT`); in
    /// [`Mode::Persistent`] HTTP/1.1 with a `Host` header, the connection
    /// kept, and opened again if the server says `Connection: close`.
    Http,
}

/// A closed-loop load: `clients` threads, each sending its next request as
/// soon as the previous reply is complete.
#[derive(Clone, Debug)]
pub struct Load<'a> {
    /// The server.
    pub addr: SocketAddr,
    /// The paths asked for; client `i` starts at `paths[i % len]` and goes
    /// round.
    pub paths: &'a [String],
    /// Concurrent clients.
    pub clients: usize,
    /// How connections are used.
    pub mode: Mode,
    /// Run before the measured window; its requests are not counted.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// What one [`Load`] run measured.
#[derive(Debug)]
pub struct Report {
    /// Requests that started and ended inside the measured window.
    pub requests: u64,
    /// Body bytes of those requests.
    pub bytes: u64,
    /// Requests completed at any time, the warm-up's and those that
    /// straddled the window's edges included. Every client completes one
    /// at least, so a machine too busy to fit one inside the window still
    /// shows whether the server answers.
    pub completed: u64,
    /// Failed requests (any time during the run), an `ERR` reply
    /// included; a persistent client reconnects after one.
    pub errors: u64,
    /// The first failure's description.
    pub first_error: Option<String>,
    /// The measured window.
    pub window: Duration,
    /// Latency of every counted request in nanoseconds, sorted: from just
    /// before the request was written (before `connect` in
    /// [`Mode::PerRequest`]) to its body's last byte.
    latencies: Vec<u64>,
}

impl Report {
    /// Requests per second over the window.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64()
    }

    /// The latency at `per_mille` thousandths (500: the median, 990: the
    /// 99th percentile), by the nearest-rank method.
    pub fn latency(&self, per_mille: usize) -> Duration {
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
pub fn run(load: &Load<'_>) -> io::Result<Report> {
    run_hooked(load, Protocol::Filesrv, None)
}

/// Runs `load` speaking `protocol`; otherwise as [`run`].
pub fn run_speaking(load: &Load<'_>, protocol: Protocol) -> io::Result<Report> {
    run_hooked(load, protocol, None)
}

/// Runs `load` as [`run`] does, each client calling `after_each` after
/// every request it completes (outside the latency it measures, inside
/// the window's rate).
#[allow(
    dead_code,
    reason = "the transfer bench calls it; the example does not"
)]
pub fn run_with(load: &Load<'_>, after_each: &(dyn Fn() + Sync)) -> io::Result<Report> {
    run_hooked(load, Protocol::Filesrv, Some(after_each))
}

/// The bytes of the request for `path`, built once per run.
fn request(load: &Load<'_>, protocol: Protocol, path: &str) -> Vec<u8> {
    match (protocol, load.mode) {
        (Protocol::Filesrv, Mode::Persistent) => format!("GET {path}\n"),
        (Protocol::Filesrv, Mode::PerRequest) => format!("GET {path}\nQUIT\n"),
        (Protocol::Http, Mode::Persistent) => {
            format!("GET /{path} HTTP/1.1\r\nHost: {}\r\n\r\n", load.addr)
        }
        (Protocol::Http, Mode::PerRequest) => format!("GET /{path} HTTP/1.0\r\n\r\n"),
    }
    .into_bytes()
}

fn run_hooked(
    load: &Load<'_>,
    protocol: Protocol,
    after_each: Option<&(dyn Fn() + Sync)>,
) -> io::Result<Report> {
    assert!(load.clients > 0 && !load.paths.is_empty());
    let requests: Vec<Vec<u8>> = (load.paths.iter())
        .map(|path| request(load, protocol, path))
        .collect();
    let errors = Errors::default();
    let ready = Barrier::new(load.clients + 1);
    let start = StartGate::default();
    let results = thread::scope(|scope| {
        let workers: Vec<_> = (0..load.clients)
            .map(|i| {
                let (errors, ready, start, requests) = (&errors, &ready, &start, &requests);
                thread::Builder::new()
                    .name(format!("loadgen-{i}"))
                    .spawn_scoped(scope, move || {
                        let fixture = Fixture {
                            errors,
                            ready,
                            start,
                            after_each,
                        };
                        client(load, protocol, requests, i, &fixture)
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

/// What every client thread of a run shares.
struct Fixture<'a> {
    errors: &'a Errors,
    ready: &'a Barrier,
    start: &'a StartGate,
    after_each: Option<&'a (dyn Fn() + Sync)>,
}

/// One client thread: its latencies and body bytes inside the window, and
/// how many requests it completed in all (one at least, unless every
/// attempt failed until the window's end).
/// `requests[i]` is the request for `load.paths[i]`.
fn client(
    load: &Load<'_>,
    protocol: Protocol,
    requests: &[Vec<u8>],
    index: usize,
    fixture: &Fixture<'_>,
) -> (Vec<u64>, u64, u64) {
    let Fixture {
        errors,
        ready,
        start,
        after_each,
    } = *fixture;
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
        let request = &requests[next % requests.len()];
        next += 1;
        let got = match load.mode {
            Mode::Persistent => {
                let open = match conn.take() {
                    Some(c) => Ok(c),
                    None => Conn::connect(load.addr, SMALL_BUF),
                };
                open.and_then(|mut c| {
                    c.send(request)?;
                    let (n, kept) = match protocol {
                        Protocol::Filesrv => (c.body()?, true),
                        Protocol::Http => c.http_reply()?,
                    };
                    conn = kept.then_some(c);
                    Ok(n)
                })
            }
            Mode::PerRequest => once(load.addr, protocol, request),
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

/// One request on a fresh connection, which the server closes after the
/// reply (after `QUIT`, or after an HTTP/1.0 reply).
fn once(addr: SocketAddr, protocol: Protocol, request: &[u8]) -> io::Result<u64> {
    let mut conn = Conn::connect(addr, SMALL_BUF)?;
    conn.send(request)?;
    let n = match protocol {
        Protocol::Filesrv => {
            let n = conn.body()?;
            let bye = conn.line()?;
            if bye != b"OK bye" {
                return Err(unexpected(bye));
            }
            n
        }
        Protocol::Http => conn.http_reply()?.0,
    };
    conn.expect_end()?;
    Ok(n)
}

/// The read buffer of the small-file clients: a 4 KiB body and its reply
/// line fit.
const SMALL_BUF: usize = 16 * 1024;

/// The read buffer of [`fetch`]: large reads keep the receiver's system
/// calls out of a bulk transfer's cost.
pub const BULK_BUF: usize = 256 * 1024;

/// Downloads `path` on a new connection with a [`BULK_BUF`] buffer and
/// drops the body; returns its size.
pub fn fetch(addr: SocketAddr, path: &str) -> io::Result<u64> {
    let mut conn = Conn::connect(addr, BULK_BUF)?;
    conn.get(path)
}

/// [`fetch`] from an HTTP server (an HTTP/1.0 `GET /<path>`).
#[allow(
    dead_code,
    reason = "the transfer bench calls it; the example does not"
)]
pub fn fetch_http(addr: SocketAddr, path: &str) -> io::Result<u64> {
    let mut conn = Conn::connect(addr, BULK_BUF)?;
    conn.send(format!("GET /{path} HTTP/1.0\r\n\r\n").as_bytes())?;
    Ok(conn.http_reply()?.0)
}

/// A client connection with its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Conn {
    /// Connects with `TCP_NODELAY` and 10 s read and write timeouts.
    pub fn connect(addr: SocketAddr, buf_size: usize) -> io::Result<Conn> {
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
    pub fn get(&mut self, path: &str) -> io::Result<u64> {
        self.send(format!("GET {path}\n").as_bytes())?;
        self.body()
    }

    /// Reads a `200` reply's head and body, and drops the body. Returns
    /// its size, and whether the connection may be used again (the server
    /// did not say `Connection: close`). The head is looked at for its
    /// status, its `Content-Length` and `Connection: close` only, as
    /// nginx writes them.
    fn http_reply(&mut self) -> io::Result<(u64, bool)> {
        let mut searched: usize = 0;
        let head_len = loop {
            let unread = &self.buf[self.start..self.end];
            let from = searched.saturating_sub(3);
            if let Some(i) = find(&unread[from..], b"\r\n\r\n") {
                break from + i + 4;
            }
            searched = unread.len();
            if searched >= MAX_LINE {
                return Err(unexpected("a reply head too long"));
            }
            self.fill()?;
        };
        let head = &self.buf[self.start..self.start + head_len];
        if !head.starts_with(b"HTTP/1.1 200 ") {
            return Err(unexpected(head));
        }
        let size = find(head, b"\r\nContent-Length: ")
            .map(|i| &head[i + 18..])
            .and_then(|rest| {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
            })
            .ok_or_else(|| unexpected(head))?;
        let kept = find(head, b"\r\nConnection: close\r\n").is_none();
        self.start += head_len;
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
    pub fn discard(&mut self, mut n: u64) -> io::Result<()> {
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
    pub fn line(&mut self) -> io::Result<Vec<u8>> {
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

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
