//! The listener as the manager's [`Acceptor`]: idle workers accept their
//! own connections (the manager's accepting thread only while every
//! worker is busy). A trusted proxy's connection goes on to the PROXY
//! handshake thread, which reads its header without holding a worker and
//! then submits the session; every other connection becomes a session at
//! once. One accept path for both.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};

use super::proxy::{Handshakes, NoHeader, trusts};
use super::session::{ServerState, Session, reply_error};
use crate::Acceptor;
use crate::protocol::wire::ErrorCode;
use crate::util::{is_transient, lock};

/// The handshake thread's handle, set once it runs and taken at shutdown
/// (dropping it ends the thread).
pub(super) type HandshakeSlot = Arc<Mutex<Option<Handshakes>>>;

/// Accepts from the (non-blocking) listener, one session per connection.
pub(super) struct SessionAcceptor {
    pub(super) listener: TcpListener,
    pub(super) state: Arc<ServerState>,
    pub(super) handshakes: HandshakeSlot,
}

impl Acceptor<Session> for SessionAcceptor {
    fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    fn accept(&self) -> io::Result<Option<Session>> {
        let (stream, peer) = match self.listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || is_transient(&e) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.state.metrics.accepted();
        if !trusts(&self.state.config.proxy_from, peer) {
            return Ok(Some(Session::new(stream, peer, self.state.clone())));
        }
        // A trusted proxy: its header names the client.
        let refused = match &*lock(&self.handshakes) {
            Some(handshakes) => handshakes.submit(stream, peer).err(),
            // Before the handshake thread runs, or once it stopped.
            None => Some(stream),
        };
        if let Some(stream) = refused {
            refuse_proxied(&self.state, stream, peer, NoHeader::Full);
        }
        Ok(None)
    }
}

/// Refuses a trusted proxy's connection that brought no usable header;
/// it never reached the manager, so it took no waiting place.
pub(super) fn refuse_proxied(
    state: &ServerState,
    stream: TcpStream,
    peer: SocketAddr,
    reason: NoHeader,
) {
    log::info!("{peer}: refused: {reason}");
    state.metrics.proxy_refused(reason);
    let code = match reason {
        NoHeader::Malformed => ErrorCode::BadRequest,
        NoHeader::Timeout => ErrorCode::Timeout,
        NoHeader::Full => ErrorCode::Busy,
        NoHeader::ShuttingDown => ErrorCode::Unavailable,
    };
    let line = reply_error(code, &reason.to_string());
    state.closer.refuse(stream, line.as_bytes());
}
