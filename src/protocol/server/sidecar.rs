//! A sidecar listener: a thread that accepts on its own socket and answers
//! each connection (the metrics endpoint, the HAProxy agent).
//!
//! Many peers at once on one `poll`, each with a whole-request
//! [`DEADLINE`] from its accept, so a slow, trickling or silent peer
//! neither delays another nor holds the sidecar longer than that; at most
//! [`MAX_PEERS`] are held, the oldest dropped for a newcomer, so memory
//! stays fixed. Accept errors (out of descriptors) pause the listener with
//! the server's shared back-off, and it answers again when they pass.
//! Stopped by an event written to it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};

use crate::util::{Backoff, is_transient, lock, timespec};

/// How long one sidecar connection may take, request and reply, from its
/// accept.
pub(crate) const DEADLINE: Duration = Duration::from_secs(2);

/// How many connections a sidecar holds at once.
pub(crate) const MAX_PEERS: usize = 32;

/// The largest request a sidecar reads; past it the answer is asked for
/// with what came.
pub(crate) const MAX_REQUEST: usize = 8 * 1024;

/// What a sidecar answers: given the bytes read so far, the reply, or
/// `None` to read more. Called at the accept with nothing read.
pub(crate) type Answer = dyn Fn(&[u8]) -> Option<Vec<u8>> + Send;

/// The accept back-off every listener of one server shares: running out
/// of descriptors is the process's state, not one listener's.
pub(crate) type SharedBackoff = Arc<Mutex<Backoff>>;

/// A running sidecar listener.
#[derive(Debug)]
pub(crate) struct Sidecar {
    stop_event: Arc<OwnedFd>,
    local_addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl Sidecar {
    /// Binds `addr` and answers each connection with `answer` on a thread
    /// named `name`, backing off accept errors with `backoff`.
    pub(crate) fn start(
        name: &str,
        addr: SocketAddr,
        backoff: SharedBackoff,
        answer: Box<Answer>,
    ) -> io::Result<Sidecar> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let stop_event = Arc::new(eventfd(0, EventfdFlags::CLOEXEC)?);
        let stopped = stop_event.clone();
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                Poller {
                    listener,
                    local_addr,
                    backoff,
                    answer,
                    peers: VecDeque::new(),
                    paused_until: None,
                }
                .run(&stopped);
            })?;
        Ok(Sidecar {
            stop_event,
            local_addr,
            thread,
        })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, drops the peers held, and joins the thread.
    pub(crate) fn stop(self) {
        let _ = rustix::io::write(&*self.stop_event, &1u64.to_ne_bytes());
        let _ = self.thread.join();
    }
}

/// The sidecar's thread: its listener and the peers being answered.
struct Poller {
    listener: TcpListener,
    local_addr: SocketAddr,
    backoff: SharedBackoff,
    answer: Box<Answer>,
    /// In accept order: the oldest first.
    peers: VecDeque<Peer>,
    /// Accepting again after an accept error, from then.
    paused_until: Option<Instant>,
}

impl Poller {
    fn run(mut self, stop_event: &OwnedFd) {
        loop {
            let now = Instant::now();
            self.peers.retain(|peer| peer.deadline > now);
            if self.paused_until.is_some_and(|until| until <= now) {
                self.paused_until = None;
            }
            let listening = self.paused_until.is_none();
            let mut fds = Vec::with_capacity(2 + self.peers.len());
            fds.push(PollFd::new(stop_event, PollFlags::IN));
            if listening {
                fds.push(PollFd::new(&self.listener, PollFlags::IN));
            }
            fds.extend(self.peers.iter().map(|peer| {
                let flags = if peer.reply.is_some() {
                    PollFlags::OUT
                } else {
                    PollFlags::IN
                };
                PollFd::new(&peer.stream, flags)
            }));
            let wake = (self.peers.iter().map(|peer| peer.deadline))
                .chain(self.paused_until)
                .min();
            let timeout = wake.map(|wake| timespec(wake.saturating_duration_since(now)));
            if let Err(e) = poll(&mut fds, timeout.as_ref()) {
                if e != rustix::io::Errno::INTR {
                    log::warn!("{}: poll failed: {e}", self.local_addr);
                    self.pause();
                }
                continue;
            }
            if !fds[0].revents().is_empty() {
                return;
            }
            let first_peer = if listening { 2 } else { 1 };
            let accept = listening && !fds[1].revents().is_empty();
            let ready: Vec<bool> = fds[first_peer..]
                .iter()
                .map(|fd| !fd.revents().is_empty())
                .collect();
            drop(fds);
            let answer = &*self.answer;
            let mut ready = ready.into_iter();
            self.peers
                .retain_mut(|peer| !ready.next().unwrap_or(false) || peer.progress(answer));
            if accept {
                self.accept();
            }
        }
    }

    /// Accepts what the backlog holds, up to [`MAX_PEERS`] at a time.
    fn accept(&mut self) {
        for _ in 0..MAX_PEERS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    lock(&self.backoff).reset();
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.peers.len() == MAX_PEERS {
                        self.peers.pop_front();
                    }
                    let mut peer = Peer {
                        stream,
                        deadline: Instant::now() + DEADLINE,
                        request: Vec::new(),
                        reply: None,
                    };
                    if peer.progress(&*self.answer) {
                        self.peers.push_back(peer);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    let pause = self.pause();
                    log::warn!(
                        "{}: accept failed: {e}; retrying in {pause:?}",
                        self.local_addr
                    );
                    return;
                }
            }
        }
    }

    /// Stops accepting for the shared back-off's next pause.
    fn pause(&mut self) -> Duration {
        let pause = lock(&self.backoff).failed();
        self.paused_until = Some(Instant::now() + pause);
        pause
    }
}

/// One connection being answered.
struct Peer {
    stream: TcpStream,
    deadline: Instant,
    request: Vec<u8>,
    /// The reply and how much of it was sent, once known.
    reply: Option<(Vec<u8>, usize)>,
}

impl Peer {
    /// Reads or writes what the socket allows; false once the connection
    /// is done (answered, or gone).
    fn progress(&mut self, answer: &Answer) -> bool {
        if self.reply.is_none() && !self.read(answer) {
            return false;
        }
        let Some((reply, sent)) = &mut self.reply else {
            return true;
        };
        while *sent < reply.len() {
            match self.stream.write(&reply[*sent..]) {
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        // Bytes the peer sent that were not read (a check's own) would
        // turn the close into a reset, which may destroy the reply.
        let mut discard = [0u8; 1024];
        for _ in 0..MAX_REQUEST / discard.len() {
            if !matches!(self.stream.read(&mut discard), Ok(n) if n > 0) {
                break;
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        false
    }

    /// Reads until the answer is known or the socket is drained; false
    /// when the peer is gone first.
    fn read(&mut self, answer: &Answer) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(reply) = answer(&self.request) {
                self.reply = Some((reply, 0));
                return true;
            }
            let room = MAX_REQUEST + 1 - self.request.len();
            let want = room.min(chunk.len());
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => return false,
                Ok(n) => self.request.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}
