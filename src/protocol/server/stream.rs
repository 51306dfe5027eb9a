//! A session's byte stream: the TCP socket itself, or TLS over it.
//!
//! Whatever speaks a protocol on a connection reads and writes through a
//! [`SessionStream`]. The socket stays reachable beside it for what is
//! set or done on the socket whatever runs over it (timeouts, the cork,
//! shutdown from another thread, polling), and, in plaintext only, for
//! `sendfile`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use rustls::ServerConnection;

use super::config::ServerConfig;
use super::transfer::PacedWriter;

/// The socket, shared with the hooks that shut it down from other
/// threads, and the TLS state when the port speaks TLS.
#[derive(Debug)]
pub(crate) struct SessionStream {
    socket: Arc<TcpStream>,
    tls: Option<Box<ServerConnection>>,
}

impl SessionStream {
    /// Plaintext over `socket`.
    pub(crate) fn plain(socket: Arc<TcpStream>) -> SessionStream {
        SessionStream { socket, tls: None }
    }

    /// TLS over `socket`, its handshake still to come: the first read or
    /// write does it.
    pub(crate) fn tls(socket: Arc<TcpStream>, conn: ServerConnection) -> SessionStream {
        SessionStream {
            socket,
            tls: Some(Box::new(conn)),
        }
    }

    /// Whether the connection speaks TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the TLS handshake is still to be completed (never in
    /// plaintext): nothing can be said to the client yet.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
    }

    /// The socket, when bytes written to it reach the client as they are
    /// (plaintext): what `sendfile` needs.
    pub(crate) fn plain_socket(&self) -> Option<&TcpStream> {
        match self.tls {
            None => Some(&self.socket),
            Some(_) => None,
        }
    }

    /// Whether nothing received is held inside TLS: no plaintext left to
    /// read and nothing left to send (always true in plaintext). A
    /// record still incomplete is held, but the rest of it must come from
    /// the socket.
    pub(crate) fn is_drained(&mut self) -> bool {
        match &mut self.tls {
            None => true,
            Some(tls) => {
                !tls.wants_write()
                    && tls
                        .process_new_packets()
                        .is_ok_and(|state| state.plaintext_bytes_to_read() == 0)
            }
        }
    }

    /// The bytes that say `reply` and end the stream, to be written by
    /// someone else (without blocking): `reply` itself in plaintext; in
    /// TLS, its records and close_notify (nothing before the handshake
    /// completed).
    pub(crate) fn seal(&mut self, reply: &[u8]) -> Vec<u8> {
        let Some(tls) = &mut self.tls else {
            return reply.to_vec();
        };
        let mut out = Vec::new();
        if tls.is_handshaking() {
            return out;
        }
        let _ = tls.writer().write_all(reply);
        tls.send_close_notify();
        while tls.wants_write() {
            if tls.write_tls(&mut out).is_err() {
                break;
            }
        }
        out
    }

    /// A writer for a body: the socket kept to the body's pace (the stall
    /// timeout as wall time, the minimum rate), through TLS when the port
    /// speaks it. Through TLS what is written leaves at `flush`, or
    /// sooner when rustls' buffer is full: flush at the end.
    pub(crate) fn paced<'a>(&'a mut self, config: &ServerConfig) -> Paced<'a> {
        Paced {
            tls: self.tls.as_deref_mut(),
            socket: PacedWriter::new(&self.socket, config),
        }
    }

    /// Ends TLS cleanly (close_notify), best effort; nothing in
    /// plaintext or before the handshake completed.
    pub(crate) fn close_notify(&mut self) {
        let records = self.seal(&[]);
        let _ = (&*self.socket).write_all(&records);
    }
}

/// See [`SessionStream::paced`]. Once the pace is broken every write
/// fails, and [`stalled`](Paced::stalled) says why.
pub(crate) struct Paced<'a> {
    tls: Option<&'a mut ServerConnection>,
    socket: PacedWriter<'a>,
}

impl Paced<'_> {
    /// Whether a write failed because the client read too slowly.
    pub(crate) fn stalled(&self) -> bool {
        self.socket.stalled()
    }
}

/// Sends the TLS records waiting to go, at the socket's pace.
fn send_records(tls: &mut ServerConnection, socket: &mut PacedWriter<'_>) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(socket)?;
    }
    Ok(())
}

impl Write for Paced<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Paced { tls, socket } = self;
        let Some(tls) = tls.as_deref_mut() else {
            return socket.write(buf);
        };
        // rustls takes what its buffer holds. The records wait for the
        // flush, so that a reply's head leaves with the start of its body
        // (one send, as `MSG_MORE` does in plaintext); a full buffer goes
        // out now to make room.
        let n = tls.writer().write(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        send_records(tls, socket)?;
        tls.writer().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let Paced { tls, socket } = self;
        match tls.as_deref_mut() {
            Some(tls) => {
                tls.writer().flush()?;
                send_records(tls, socket)
            }
            None => Ok(()),
        }
    }
}

/// The socket beneath, for polling (TLS or not).
impl AsFd for SessionStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Read for SessionStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut socket = &*self.socket;
        match &mut self.tls {
            None => socket.read(buf),
            Some(tls) => match rustls::Stream::new(&mut **tls, &mut socket).read(buf) {
                // A peer that closes without close_notify ends the stream
                // as a plaintext close does: requests are framed, so no
                // truncation goes unnoticed.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for SessionStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut socket = &*self.socket;
        match &mut self.tls {
            None => socket.write(buf),
            Some(tls) => rustls::Stream::new(&mut **tls, &mut socket).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut socket = &*self.socket;
        match &mut self.tls {
            None => Ok(()),
            Some(tls) => rustls::Stream::new(&mut **tls, &mut socket).flush(),
        }
    }
}
