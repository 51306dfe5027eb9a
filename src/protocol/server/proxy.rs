//! PROXY protocol headers (v1 and v2) from trusted sources, read on a
//! handshake thread so that the accepting thread never waits for a slow
//! client.
//!
//! A connection from a trusted network (`--proxy-from`) must begin with a
//! header; its source address then stands for the client everywhere
//! (admission, per-source caps, logs). From any other network no header is
//! looked for: its bytes are protocol data. The header is parsed with the
//! `proxy-header` crate on bytes *peeked* from the socket and only the
//! header's own bytes are then consumed, so a session starts on a socket
//! positioned at its first request and needs no hand-over buffer.
//!
//! One thread waits on an epoll set (edge-triggered, so an incomplete
//! header is looked at again only when more bytes arrive) with a timeout
//! at the earliest deadline; the number of connections in the handshake
//! is bounded by [`MAX_PENDING`], and by [`MAX_PENDING_PER_SOURCE`] from
//! one trusted address, its memory by a fixed peek buffer.
//!
//! The parser is held to the specification before the crate sees the
//! bytes: a connection must begin with a signature (`PROXY ` or v2's
//! twelve bytes) or a beginning of one, and a v1 line must end with CRLF
//! within 107 bytes. What can never become a header is refused at once,
//! not at the deadline.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use ipnet::IpNet;
use proxy_header::{ParseConfig, ProxyHeader};
use rustix::event::epoll::EventFlags;
use rustix::io::Errno;
use rustix::net::RecvFlags;

use crate::poller::Poller;

/// Connections in the handshake at once, at most; later ones are refused
/// busy. A server lowers it to its descriptor budget.
pub(crate) const MAX_PENDING: usize = 1024;

/// Connections in the handshake at once from one trusted address, so that
/// one proxy's (or one compromised host's) silent connections leave room
/// for the others.
pub(crate) const MAX_PENDING_PER_SOURCE: usize = 128;

/// The v1 signature, with its space.
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// The v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;

/// The longest header looked at: a v1 header is at most 107 bytes, a v2
/// header 16 plus its length, which for addresses and the usual TLVs is
/// far below this.
const MAX_HEADER: usize = 1024;

/// How a connection left the handshake.
#[derive(Debug)]
pub(crate) enum Handshake {
    /// The header is complete and consumed: `source` is the client's
    /// address (the proxy's own for a v2 LOCAL header, e.g. a health
    /// check, or a v1 `UNKNOWN`).
    Done {
        /// The socket, blocking again, at the first byte after the header.
        stream: TcpStream,
        /// The proxy's address.
        peer: SocketAddr,
        /// The client's address, per the header.
        source: SocketAddr,
    },
    /// No header: to be refused with the reason's line.
    Refused {
        /// The socket, to be refused.
        stream: TcpStream,
        /// The proxy's address.
        peer: SocketAddr,
        /// Why.
        reason: NoHeader,
    },
    /// The connection closed before sending anything: nothing to answer.
    Closed(TcpStream),
}

/// Why a trusted connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NoHeader {
    /// The first bytes are not a PROXY header.
    #[error("missing or malformed PROXY header")]
    Malformed,
    /// The header did not complete within the deadline.
    #[error("PROXY header not complete in time")]
    Timeout,
    /// Too many connections in the handshake already.
    #[error("too many connections in the PROXY handshake")]
    Full,
    /// The server is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// The accepting thread's end: which peers must send a header, and the
/// way to the handshake thread.
#[derive(Debug)]
pub(crate) struct Handshakes {
    /// Taken and dropped by `drop`, it tells the thread to refuse what it
    /// holds and end; `Some` until then.
    queue: Option<Sender<(TcpStream, SocketAddr)>>,
    poller: Arc<Poller>,
}

impl Handshakes {
    /// Starts the handshake thread; `finished` gets every connection that
    /// leaves the handshake, on that thread.
    ///
    /// At most `max_pending` connections are held at once (at most
    /// [`MAX_PENDING`]), and at most an eighth of them (at most
    /// [`MAX_PENDING_PER_SOURCE`]) from one address.
    pub(crate) fn start(
        timeout: Duration,
        max_pending: usize,
        finished: impl FnMut(Handshake) + Send + 'static,
    ) -> io::Result<(Handshakes, JoinHandle<()>)> {
        let poller = Arc::new(Poller::new()?);
        let max_pending = max_pending.clamp(1, MAX_PENDING);
        let (queue, arrivals) = crossbeam_channel::bounded(max_pending);
        let thread_poller = poller.clone();
        let thread = thread::Builder::new()
            .name("filesrv-handshake".to_owned())
            .spawn(move || {
                let mut set = HandshakeSet {
                    poller: thread_poller,
                    timeout,
                    max_pending,
                    per_source_cap: (max_pending / 8).clamp(1, MAX_PENDING_PER_SOURCE),
                    pending: HashMap::new(),
                    per_source: HashMap::new(),
                    deadlines: BTreeSet::new(),
                    next_key: 0,
                    finished,
                };
                set.run(&arrivals);
            })?;
        Ok((
            Handshakes {
                queue: Some(queue),
                poller,
            },
            thread,
        ))
    }

    /// Hands an accepted connection from a trusted peer to the handshake
    /// thread; never blocks. When the thread holds [`MAX_PENDING`]
    /// already, the connection comes back to be refused.
    pub(crate) fn submit(&self, stream: TcpStream, peer: SocketAddr) -> Result<(), TcpStream> {
        let queue = self.queue.as_ref().expect("until dropped");
        match queue.try_send((stream, peer)) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            Err(TrySendError::Full((stream, _)) | TrySendError::Disconnected((stream, _))) => {
                Err(stream)
            }
        }
    }

    fn wake(&self) {
        self.poller.wake();
    }
}

/// Dropping the accepting thread's end stops the handshake thread: it
/// refuses the connections it holds (`ERR unavailable`) and ends; the
/// server joins it.
impl Drop for Handshakes {
    fn drop(&mut self) {
        // The sender first: woken, the thread must find it gone.
        drop(self.queue.take());
        self.wake();
    }
}

/// A connection whose header is not complete yet.
struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
}

/// The handshake thread's state.
struct HandshakeSet<F> {
    poller: Arc<Poller>,
    timeout: Duration,
    max_pending: usize,
    per_source_cap: usize,
    pending: HashMap<u64, Pending>,
    /// How many of them each trusted address holds.
    per_source: HashMap<IpAddr, usize>,
    /// Deadlines in order, with the key of their connection.
    deadlines: BTreeSet<(Instant, u64)>,
    next_key: u64,
    finished: F,
}

impl<F: FnMut(Handshake)> HandshakeSet<F> {
    fn run(&mut self, arrivals: &Receiver<(TcpStream, SocketAddr)>) {
        let mut events = Poller::events();
        let mut ready = Vec::new();
        loop {
            let until = self.deadlines.first().map(|&(deadline, _)| deadline);
            let woken = match self.poller.wait(until, &mut events, |key, flags| {
                ready.push((key, flags));
            }) {
                Ok(woken) => woken,
                Err(e) => {
                    log::error!("PROXY handshake: epoll failed: {e}");
                    self.refuse_all(NoHeader::ShuttingDown);
                    return;
                }
            };
            for (key, flags) in ready.drain(..) {
                self.look(key, flags);
            }
            if woken {
                loop {
                    match arrivals.try_recv() {
                        Ok((stream, peer)) => self.add(stream, peer),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            self.refuse_all(NoHeader::ShuttingDown);
                            return;
                        }
                    }
                }
            }
            self.expire();
        }
    }

    fn add(&mut self, stream: TcpStream, peer: SocketAddr) {
        let held = self.per_source.get(&peer.ip()).copied().unwrap_or(0);
        if self.pending.len() >= self.max_pending || held >= self.per_source_cap {
            return self.refuse(stream, peer, NoHeader::Full);
        }
        let key = self.next_key;
        self.next_key += 1;
        let flags = EventFlags::IN | EventFlags::RDHUP | EventFlags::ET;
        if stream.set_nonblocking(true).is_err() || self.poller.watch(&stream, key, flags).is_err()
        {
            return (self.finished)(Handshake::Closed(stream));
        }
        // Registering a socket with bytes already waiting reports it at
        // once, so a header that came with the connection is not missed.
        let deadline = Instant::now() + self.timeout;
        self.deadlines.insert((deadline, key));
        *self.per_source.entry(peer.ip()).or_default() += 1;
        self.pending.insert(
            key,
            Pending {
                stream,
                peer,
                deadline,
            },
        );
    }

    /// Looks at a connection that has new bytes (or hung up).
    fn look(&mut self, key: u64, flags: EventFlags) {
        let Some(pending) = self.pending.get(&key) else {
            return;
        };
        let hung_up = flags.intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR);
        let outcome = read_header(&pending.stream, pending.peer, hung_up);
        if let Ok(None) = outcome {
            return;
        }
        let Pending { stream, peer, .. } = self.remove(key).expect("looked up above");
        let handshake = match outcome {
            Ok(Some(source)) => match stream.set_nonblocking(false) {
                Ok(()) => Handshake::Done {
                    stream,
                    peer,
                    source,
                },
                Err(_) => Handshake::Closed(stream),
            },
            Ok(None) => unreachable!("kept above"),
            Err(Some(reason)) => Handshake::Refused {
                stream,
                peer,
                reason,
            },
            Err(None) => Handshake::Closed(stream),
        };
        (self.finished)(handshake);
    }

    /// Refuses the connections whose deadline has passed.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, key)) = self.deadlines.first() {
            if deadline > now {
                return;
            }
            if let Some(Pending { stream, peer, .. }) = self.remove(key) {
                self.refuse(stream, peer, NoHeader::Timeout);
            }
        }
    }

    /// Takes a connection out of the handshake.
    fn remove(&mut self, key: u64) -> Option<Pending> {
        let pending = self.pending.remove(&key)?;
        self.deadlines.remove(&(pending.deadline, key));
        self.poller.delete(&pending.stream);
        let ip = pending.peer.ip();
        if let Some(held) = self.per_source.get_mut(&ip) {
            *held -= 1;
            if *held == 0 {
                self.per_source.remove(&ip);
            }
        }
        Some(pending)
    }

    fn refuse_all(&mut self, reason: NoHeader) {
        self.deadlines.clear();
        self.per_source.clear();
        for (_, Pending { stream, peer, .. }) in std::mem::take(&mut self.pending) {
            self.refuse(stream, peer, reason);
        }
    }

    fn refuse(&mut self, stream: TcpStream, peer: SocketAddr, reason: NoHeader) {
        (self.finished)(Handshake::Refused {
            stream,
            peer,
            reason,
        });
    }
}

/// Peeks at what the connection has sent: `Ok(Some(source))` once a whole
/// header is there (and then consumed), `Ok(None)` while it may still
/// come, `Err(Some(_))` for a refusal, `Err(None)` for a connection that
/// closed or failed before sending anything.
fn read_header(
    stream: &TcpStream,
    peer: SocketAddr,
    hung_up: bool,
) -> Result<Option<SocketAddr>, Option<NoHeader>> {
    let mut buf = [0u8; MAX_HEADER];
    let seen = match rustix::net::recv(stream, &mut buf, RecvFlags::PEEK) {
        Ok((_, 0)) => return Err(None),
        Ok((_, n)) => n,
        Err(Errno::AGAIN | Errno::INTR) if !hung_up => return Ok(None),
        Err(_) => return Err(None),
    };
    strict(&buf[..seen]).map_err(Some)?;
    let config = ParseConfig {
        include_tlvs: false,
        ..ParseConfig::default()
    };
    match ProxyHeader::parse(&buf[..seen], config) {
        Ok((header, used)) => {
            let source = header.proxied_address().map_or(peer, |a| a.source);
            consume(stream, &mut buf[..used]).map_err(|_| None)?;
            Ok(Some(source))
        }
        Err(proxy_header::Error::BufferTooShort) if seen < MAX_HEADER && !hung_up => Ok(None),
        Err(_) => Err(Some(NoHeader::Malformed)),
    }
}

/// Refuses bytes that can never become a header the specification
/// allows: they must begin with a signature or a beginning of one, and a
/// v1 line must end with CRLF within [`V1_MAX`] bytes.
fn strict(seen: &[u8]) -> Result<(), NoHeader> {
    let begins = |signature: &[u8]| {
        let n = seen.len().min(signature.len());
        seen[..n] == signature[..n]
    };
    if begins(V2_SIGNATURE) {
        return Ok(());
    }
    if !begins(V1_SIGNATURE) {
        return Err(NoHeader::Malformed);
    }
    let line = &seen[..seen.len().min(V1_MAX)];
    match line.iter().position(|&b| b == b'\n') {
        Some(end) if end > 0 && line[end - 1] == b'\r' => Ok(()),
        Some(_) => Err(NoHeader::Malformed),
        None if seen.len() >= V1_MAX => Err(NoHeader::Malformed),
        None => Ok(()),
    }
}

/// Reads exactly `buf.len()` bytes that a peek has shown are there.
fn consume(stream: &TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::net::recv(stream, &mut buf[done..], RecvFlags::empty()) {
            Ok((_, 0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok((_, n)) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether `peer` is in one of the `trusted` networks (an IPv4-mapped
/// IPv6 address as its IPv4 address): a proxy that must send a header.
pub(crate) fn trusts(trusted: &[IpNet], peer: SocketAddr) -> bool {
    let ip = peer.ip().to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_can_still_become_a_header_is_kept() {
        let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 9000\r\n";
        for maybe in [
            &b"P"[..],
            b"PROXY",
            b"PROXY TCP4 1",
            v1,
            b"\r\n\r\n\0",
            V2_SIGNATURE,
        ] {
            assert_eq!(strict(maybe), Ok(()), "{maybe:?}");
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'x');
        long.extend_from_slice(b"\r\n");
        let never: [&[u8]; 6] = [
            b"PROXYX TCP4",
            b"GET / HTTP/1.0\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 9000\n",
            &long,
            &long[..V1_MAX],
            b"\r\n\r\nX",
        ];
        for bytes in never {
            assert_eq!(strict(bytes), Err(NoHeader::Malformed), "{bytes:?}");
        }
    }

    #[test]
    fn trust_follows_the_networks_and_unmaps_ipv4() {
        let nets: Vec<IpNet> = ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let h = |peer: &str| trusts(&nets, peer.parse().unwrap());
        assert!(h("10.1.2.3:5"));
        assert!(h("127.0.0.1:5"));
        assert!(h("[::ffff:127.0.0.1]:5"));
        assert!(h("[fd12::1]:5"));
        assert!(!h("127.0.0.2:5"));
        assert!(!h("11.0.0.1:5"));
    }
}
