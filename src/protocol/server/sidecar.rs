//! A sidecar listener: a thread that accepts on its own socket and answers
//! each connection in turn (the metrics endpoint, the HAProxy agent).
//!
//! One connection at a time, each bounded by [`DEADLINE`] for reading and
//! writing, so a slow or silent peer delays the next by at most that and
//! memory stays fixed. Stopped by shutting the listening socket's read
//! side, which ends a blocked `accept` on Linux.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Read and write deadline of one sidecar connection.
pub(crate) const DEADLINE: Duration = Duration::from_secs(2);

/// A running sidecar listener.
#[derive(Debug)]
pub(crate) struct Sidecar {
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    local_addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl Sidecar {
    /// Binds `addr` and answers each connection with `answer` on a thread
    /// named `name`.
    pub(crate) fn start(
        name: &str,
        addr: SocketAddr,
        mut answer: impl FnMut(TcpStream) + Send + 'static,
    ) -> io::Result<Sidecar> {
        let listener = Arc::new(TcpListener::bind(addr)?);
        let local_addr = listener.local_addr()?;
        let accepting = listener.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let stopped = stopping.clone();
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                loop {
                    match accepting.accept() {
                        Ok((stream, _)) => {
                            let bounded = stream
                                .set_read_timeout(Some(DEADLINE))
                                .and_then(|()| stream.set_write_timeout(Some(DEADLINE)));
                            if bounded.is_ok() {
                                answer(stream);
                            }
                        }
                        // Shut down by `stop`.
                        Err(_) if stopped.load(Ordering::SeqCst) => return,
                        Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // A failure that would only repeat (no descriptors):
                        // the sidecar ends, the server goes on.
                        Err(e) => {
                            log::warn!("{local_addr}: accept failed: {e}; no longer answering");
                            return;
                        }
                    }
                }
            })?;
        Ok(Sidecar {
            listener,
            stopping,
            local_addr,
            thread,
        })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and joins the thread.
    pub(crate) fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Read);
        let _ = self.thread.join();
    }
}
