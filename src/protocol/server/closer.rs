//! Closing a connection after a final `ERR` line without losing the line.
//!
//! Closing a socket whose receive buffer still holds unread bytes makes the
//! kernel send a reset, and a reset can destroy a reply the client has not
//! read yet. So a connection that ends on an error is not closed at once:
//! its write side is shut down (the client sees the line, then end of
//! stream), and a single closer thread keeps it a short while, discarding
//! what the client still sends, before closing it. The accepting thread
//! and the workers never wait for this.
//!
//! A refused connection may be an HTTP client, which would not understand
//! an `ERR` line: the closer thread waits up to [`SNIFF`] for its first
//! bytes and answers a `503` instead when they begin an HTTP request line,
//! the `ERR` line otherwise (also when nothing came in time).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd};

use super::http;
use crate::util::time_left;

/// How long a closing connection is kept to drain before it is closed.
const LINGER: Duration = Duration::from_millis(250);
/// How many connections may linger at once, at most; past that they close
/// at once. A server lowers it to its descriptor budget.
pub(crate) const MAX_LINGERING: usize = 4096;
/// At most this much is discarded from one lingering connection.
const MAX_DISCARD: usize = 1 << 20;
/// How long a refused connection is given to send its first bytes, to
/// tell an HTTP client (answered `503`) from a line-protocol one.
const SNIFF: Duration = Duration::from_secs(1);
/// The most first bytes kept to decide; an HTTP-looking start that long
/// without its line's end is taken as HTTP.
const MAX_SNIFF: usize = 1024;

/// What the closer thread is handed.
#[derive(Debug)]
enum Job {
    /// Answered already: linger until the instant, then close.
    Linger(Instant, Arc<TcpStream>),
    /// Refused: wait for the first bytes until the instant, then answer.
    Sniff(Instant, Arc<TcpStream>, Refusal),
}

/// A refused connection's two possible answers.
#[derive(Debug)]
struct Refusal {
    line: Vec<u8>,
    http: Vec<u8>,
    /// The first bytes received so far.
    seen: Vec<u8>,
}

/// The handle workers and the accepting thread use to close connections.
#[derive(Clone, Debug)]
pub(crate) struct Closer {
    /// `None` tells the thread to finish the queue and end.
    queue: Sender<Option<Job>>,
    /// Written after each job: wakes the thread from its `poll`.
    wake: Arc<OwnedFd>,
}

impl Closer {
    /// Starts the closer thread, which holds at most `max_lingering`
    /// connections lingering or waiting for their first bytes; a refusal
    /// it cannot take now is answered and closed at once, never left to
    /// wait behind the others; it ends after [`Closer::stop`].
    pub(crate) fn start(name: &str, max_lingering: usize) -> io::Result<(Closer, JoinHandle<()>)> {
        let max = max_lingering.max(1);
        let (queue, jobs) = crossbeam_channel::bounded(1);
        let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let woken = wake.clone();
        let thread = thread::Builder::new()
            .name(format!("{name}-closer"))
            .spawn(move || close_in_turn(&jobs, &woken, max))?;
        Ok((Closer { queue, wake }, thread))
    }

    /// Hands `job` to the thread; `false` when it cannot take it now.
    fn hand(&self, job: Option<Job>) -> bool {
        let taken = self.queue.try_send(job).is_ok();
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        taken
    }

    /// Refuses a connection that may be an HTTP client: the closer
    /// thread waits up to 1 s for its first bytes, then writes `http` if
    /// they begin an HTTP request line, `line` otherwise, and closes as
    /// [`refuse`](Closer::refuse) does. Never blocks the caller; with the
    /// thread's queue full, `line` is written at once.
    pub(crate) fn refuse_sniffing(&self, stream: TcpStream, line: &[u8], http: Vec<u8>) {
        let stream = Arc::new(stream);
        if stream.set_nonblocking(true).is_ok() {
            let refusal = Refusal {
                line: line.to_vec(),
                http,
                seen: Vec::new(),
            };
            let job = Job::Sniff(Instant::now() + SNIFF, stream.clone(), refusal);
            if self.hand(Some(job)) {
                return;
            }
        }
        Closer::refuse_now(&stream, line);
    }

    /// Writes `line` (best effort, never blocking), shuts the write side
    /// and hands the connection to the closer thread. A shared socket
    /// closes when its other owners are gone too.
    pub(crate) fn refuse(&self, stream: impl Into<Arc<TcpStream>>, line: &[u8]) {
        let stream = stream.into();
        Closer::refuse_now(&stream, line);
        // Too many lingering already, or shutting down: it closes now.
        self.hand(Some(Job::Linger(Instant::now() + LINGER, stream)));
    }

    /// Writes `line` without blocking and shuts the write side.
    fn refuse_now(stream: &TcpStream, line: &[u8]) {
        if stream.set_nonblocking(true).is_ok() {
            write_nonblocking(stream, line);
        }
        let _ = stream.shutdown(Shutdown::Write);
        discard(stream);
    }

    /// Shuts the write side (after the final reply) and closes the
    /// connection once the client had time to read it.
    pub(crate) fn close(&self, stream: impl Into<Arc<TcpStream>>) {
        self.refuse(stream, b"");
    }

    /// Ends the closer thread once the connections queued so far are
    /// closed; their lingering takes at most [`LINGER`].
    pub(crate) fn stop(&self) {
        let _ = self.queue.send(None);
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
    }
}

/// Writes what the send buffer takes now; a fresh connection's buffer
/// always has room for a line, and a full one is not worth waiting for.
fn write_nonblocking(mut stream: &TcpStream, mut line: &[u8]) {
    while let Ok(n @ 1..) = stream.write(line) {
        line = &line[n..];
    }
}

/// Reads and drops what has arrived, without blocking (the socket is
/// non-blocking), up to [`MAX_DISCARD`].
fn discard(mut stream: &TcpStream) {
    let mut sink = [0u8; 16 * 1024];
    let mut total = 0;
    while total < MAX_DISCARD {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// Closes connections after a last line without losing it to a reset,
/// for a [`Handler`](crate::Handler) of your own: what the file server
/// does with `ERR busy` and its other final replies.
///
/// [`refuse`](LingeringCloser::refuse) writes the line without blocking
/// (what the socket's send buffer takes at once: a fresh connection's
/// always takes a line), shuts the write side, and hands the connection to
/// one background thread, which discards what the client still sends for
/// 250 ms, then closes it. The caller (typically the accepting thread in
/// [`Handler::refused`](crate::Handler::refused)) never waits. At most
/// 4096 connections linger at once; past that they are closed at once.
/// The thread ends once every clone is dropped and its queue is done.
///
/// ```no_run
/// use std::net::TcpListener;
/// use filesrv::protocol::LingeringCloser;
///
/// # fn main() -> std::io::Result<()> {
/// let closer = LingeringCloser::start()?;
/// let listener = TcpListener::bind("127.0.0.1:7000")?;
/// for stream in listener.incoming() {
///     closer.refuse(stream?, b"go away: closed for maintenance\n");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct LingeringCloser {
    closer: Closer,
}

impl LingeringCloser {
    /// Starts the background thread (`lingering-closer`).
    ///
    /// # Errors
    ///
    /// The error of spawning the thread.
    pub fn start() -> io::Result<LingeringCloser> {
        // Detached: it ends by itself when the last sender is gone.
        let (closer, _thread) = Closer::start("lingering", MAX_LINGERING)?;
        Ok(LingeringCloser { closer })
    }

    /// Writes `line` without blocking, shuts the write side, and closes
    /// the connection in the background once the client had time to read
    /// it.
    pub fn refuse(&self, stream: TcpStream, line: &[u8]) {
        self.closer.refuse(stream, line);
    }

    /// Shuts the write side after the replies already written, and closes
    /// the connection in the background.
    pub fn close(&self, stream: TcpStream) {
        self.closer.close(stream);
    }
}

/// The closer thread. Jobs of each kind arrive in deadline order (the
/// wait is the same for all of a kind), so it keeps two FIFOs, waits in
/// `poll` for the first bytes of the refused ones (and its wake-up
/// event) until the nearest deadline, answers each refused connection
/// when its bytes decide or its wait ends, and closes lingering ones
/// when theirs ends. On stop, refused connections are answered at once
/// with what they sent so far.
fn close_in_turn(jobs: &Receiver<Option<Job>>, wake: &OwnedFd, max: usize) {
    let mut lingering: VecDeque<(Instant, Arc<TcpStream>)> = VecDeque::new();
    let mut sniffing: VecDeque<(Instant, Arc<TcpStream>, Refusal)> = VecDeque::new();
    let mut stopping = false;
    loop {
        // At most `max` held; the rest wait in the queue, and past it a
        // refusal closes at once.
        while lingering.len() + sniffing.len() < max {
            match jobs.try_recv() {
                Ok(Some(Job::Linger(deadline, stream))) => lingering.push_back((deadline, stream)),
                Ok(Some(Job::Sniff(deadline, stream, refusal))) => {
                    sniffing.push_back((deadline, stream, refusal));
                }
                Ok(None) | Err(TryRecvError::Disconnected) => {
                    stopping = true;
                    break;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        let now = Instant::now();
        while let Some((deadline, ..)) = sniffing.front() {
            if *deadline > now && !stopping {
                break;
            }
            let (_, stream, refusal) = sniffing.pop_front().expect("front seen");
            lingering.push_back(answer(stream, &refusal));
        }
        while lingering
            .front()
            .is_some_and(|(deadline, _)| *deadline <= now)
        {
            let (_, stream) = lingering.pop_front().expect("front seen");
            discard(&stream);
        }
        let next = match (sniffing.front(), lingering.front()) {
            (Some((a, ..)), Some((b, _))) => Some(*a.min(b)),
            (Some((a, ..)), None) => Some(*a),
            (None, Some((b, _))) => Some(*b),
            (None, None) if stopping => return,
            (None, None) => None,
        };
        let timeout = next.map(|next| {
            let left = time_left(next).unwrap_or_default();
            Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(wake, PollFlags::IN))
            .chain(
                sniffing
                    .iter()
                    .map(|(_, s, _)| PollFd::new(&**s, PollFlags::IN)),
            )
            .collect();
        if rustix::event::poll(&mut fds, timeout.as_ref()).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds[1..].iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(wake, &mut counter);
        let mut still = VecDeque::with_capacity(sniffing.len());
        for ((deadline, stream, mut refusal), ready) in sniffing.into_iter().zip(ready) {
            if !ready {
                still.push_back((deadline, stream, refusal));
                continue;
            }
            // Gone before a byte came: answered all the same.
            match sniff(&mut refusal.seen, &mut &*stream) {
                Ok(None) => still.push_back((deadline, stream, refusal)),
                Ok(Some(_)) => lingering.push_back(answer(stream, &refusal)),
                Err(_) => {}
            }
        }
        sniffing = still;
    }
}

/// Reads what `source` holds now of a refused client's first bytes into
/// `seen` (at most [`MAX_SNIFF`] in all, without waiting) and says whether
/// they begin an HTTP request: `None` while they cannot tell yet. The end
/// of the stream decides with what came.
pub(super) fn sniff(seen: &mut Vec<u8>, source: &mut impl Read) -> io::Result<Option<bool>> {
    let mut chunk = [0u8; MAX_SNIFF];
    let mut ended = false;
    while seen.len() < MAX_SNIFF {
        match source.read(&mut chunk[..MAX_SNIFF - seen.len()]) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(http::refusal_is_http(
        seen,
        ended || seen.len() == MAX_SNIFF,
    ))
}

/// Writes a refused connection's answer (the `503` when its first bytes
/// began an HTTP request line) and shuts its write side; returns it to
/// linger.
fn answer(stream: Arc<TcpStream>, refusal: &Refusal) -> (Instant, Arc<TcpStream>) {
    let is_http = http::refusal_is_http(&refusal.seen, true) == Some(true);
    let reply = if is_http {
        &refusal.http
    } else {
        &refusal.line
    };
    Closer::refuse_now(&stream, reply);
    (Instant::now() + LINGER, stream)
}
