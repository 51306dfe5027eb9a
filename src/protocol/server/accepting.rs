//! The listener as the manager's [`Source`]: idle workers accept their
//! own connections, and the manager's accepting thread takes over only
//! while every worker is busy.
//!
//! Used when no proxy is trusted (`proxy_from` empty). A trusted proxy's
//! connection must first go through the PROXY handshake thread, which
//! reads its header without holding a worker; those servers keep the
//! listener's own accepting thread, which hands connections to the
//! handshake thread or submits them.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use super::listener::is_transient;
use super::session::{ServerState, Session};
use crate::Source;

/// Accepts from the (non-blocking) listener, one session per connection.
pub(super) struct SessionSource {
    pub(super) listener: Arc<TcpListener>,
    pub(super) state: Arc<ServerState>,
}

impl Source<Session> for SessionSource {
    fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    fn accept(&self) -> io::Result<Option<Session>> {
        match self.listener.accept() {
            Ok((stream, peer)) => {
                self.state.metrics.accepted();
                Ok(Some(Session::new(stream, peer, self.state.clone())))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || is_transient(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
