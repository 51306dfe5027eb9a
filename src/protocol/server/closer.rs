//! Closing a connection after a final `ERR` line without losing the line.
//!
//! Closing a socket whose receive buffer still holds unread bytes makes the
//! kernel send a reset, and a reset can destroy a reply the client has not
//! read yet. So a connection that ends on an error is not closed at once:
//! its write side is shut down (the client sees the line, then end of
//! stream), and a single closer thread keeps it a short while, discarding
//! what the client still sends, before closing it. The accepting thread
//! and the workers never wait for this.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::util::time_left;

/// How long a closing connection is kept to drain before it is closed.
const LINGER: Duration = Duration::from_millis(250);
/// How many connections may linger at once, at most; past that they close
/// at once. A server lowers it to its descriptor budget.
pub(crate) const MAX_LINGERING: usize = 4096;
/// At most this much is discarded from one lingering connection.
const MAX_DISCARD: usize = 1 << 20;

/// The handle workers and the accepting thread use to close connections.
#[derive(Clone, Debug)]
pub(crate) struct Closer {
    /// `None` tells the thread to finish the queue and end.
    queue: Sender<Option<(Instant, Arc<TcpStream>)>>,
}

impl Closer {
    /// Starts the closer thread, which lets at most `max_lingering`
    /// connections linger at once; it ends after [`Closer::stop`].
    pub(crate) fn start(name: &str, max_lingering: usize) -> io::Result<(Closer, JoinHandle<()>)> {
        let (queue, lingering) = crossbeam_channel::bounded(max_lingering.max(1));
        let thread = thread::Builder::new()
            .name(format!("{name}-closer"))
            .spawn(move || close_in_turn(&lingering))?;
        Ok((Closer { queue }, thread))
    }

    /// Writes `line` (best effort, never blocking), shuts the write side
    /// and hands the connection to the closer thread. A shared socket
    /// closes when its other owners are gone too.
    pub(crate) fn refuse(&self, stream: impl Into<Arc<TcpStream>>, line: &[u8]) {
        let stream = stream.into();
        Closer::refuse_now(&stream, line);
        // Too many lingering already, or shutting down: it closes now.
        let _ = self.queue.try_send(Some((Instant::now() + LINGER, stream)));
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

/// The closer thread: connections arrive in deadline order (the linger is
/// the same for all), so it waits for the oldest, drains it and closes it.
fn close_in_turn(lingering: &Receiver<Option<(Instant, Arc<TcpStream>)>>) {
    while let Ok(Some((deadline, stream))) = lingering.recv() {
        // A timed wait for a known instant, not synchronisation.
        if let Some(left) = time_left(deadline) {
            thread::sleep(left);
        }
        discard(&stream);
    }
}
