//! The file server: a listener, an accepting thread and a [`Manager`] of
//! [`Session`]s.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::closer::Closer;
use super::config::{Policy, ServerConfig, ServerError};
use super::fs::Root;
use super::session::{ServerState, Session, refusal_line};
use crate::util::lock;
use crate::{Manager, ManagerBuilder, Refusal, ShutdownReport, Stats};

/// A running file server: bound, accepting, serving.
///
/// ```
/// use std::io::{Read, Write};
/// use filesrv::protocol::{Server, ServerConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::env::temp_dir().join(format!("filesrv-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// std::fs::write(dir.join("hello.txt"), "hi\n")?;
///
/// let server = Server::bind("127.0.0.1:0".parse()?, ServerConfig::new(&dir))?;
/// let mut client = std::net::TcpStream::connect(server.local_addr())?;
/// client.write_all(b"GET hello.txt\nQUIT\n")?;
/// let mut reply = String::new();
/// client.read_to_string(&mut reply)?;
/// assert_eq!(reply, "OK 3\nhi\nOK bye\n");
///
/// server.shutdown();
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
///
/// Dropping a server shuts it down, as [`shutdown`](Server::shutdown) does.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    inner: Arc<Listening>,
    /// Taken by the first shutdown, which holds the lock until it is done.
    threads: Mutex<Option<Threads>>,
}

#[derive(Debug)]
struct Listening {
    manager: Manager<Session, Policy>,
    state: Arc<ServerState>,
    listener: TcpListener,
    stopping: AtomicBool,
}

#[derive(Debug)]
struct Threads {
    accept: JoinHandle<()>,
    closer: JoinHandle<()>,
    /// Dropped to wake the accepting thread from an error back-off.
    wake: Sender<()>,
}

/// Back-off after an `accept` error such as running out of descriptors:
/// doubled on each failure in a row, up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

impl Server {
    /// Binds `addr` and starts serving `config.root`. Leftover temporary
    /// files of an earlier run (a killed upload) are removed first.
    ///
    /// # Errors
    ///
    /// - [`ServerError::Root`]: the root is missing or not a directory;
    /// - [`ServerError::Bind`]: the address is in use or not available;
    /// - [`ServerError::Start`]: a thread could not be started.
    pub fn bind(addr: SocketAddr, config: ServerConfig) -> Result<Server, ServerError> {
        let root = open_root(&config)?;
        let listener =
            TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
        Server::start(listener, root, config)
    }

    /// Serves `config.root` on an already bound listener.
    ///
    /// # Errors
    ///
    /// As [`bind`](Server::bind), without [`ServerError::Bind`].
    pub fn from_listener(
        listener: TcpListener,
        config: ServerConfig,
    ) -> Result<Server, ServerError> {
        let root = open_root(&config)?;
        Server::start(listener, root, config)
    }

    fn start(
        listener: TcpListener,
        root: Root,
        config: ServerConfig,
    ) -> Result<Server, ServerError> {
        match root.cleanup_stale_temps() {
            Ok(0) => {}
            Ok(n) => log::info!("removed {n} temporary files left by an earlier run"),
            Err(e) => log::warn!("could not clean up old temporary files: {e}"),
        }
        let local_addr = listener.local_addr().map_err(ServerError::Start)?;
        let (closer, closer_thread) = Closer::start("filesrv").map_err(ServerError::Start)?;
        let manager = ManagerBuilder::new(config.max_running)
            .admission(config.admission())
            .busy_idle_timeout(config.busy_idle_timeout)
            .busy_session_limit(config.busy_session_limit)
            .name("filesrv")
            .build()
            .map_err(ServerError::Start)?;
        let state = Arc::new(ServerState {
            root,
            config,
            closer,
        });
        let inner = Arc::new(Listening {
            manager,
            state,
            listener,
            stopping: AtomicBool::new(false),
        });
        let (wake, woken) = crossbeam_channel::bounded(0);
        let accepting = inner.clone();
        let accept = thread::Builder::new()
            .name("filesrv-accept".to_owned())
            .spawn(move || accepting.accept_loop(&woken))
            .map_err(ServerError::Start)?;
        log::info!("serving on {local_addr}");
        Ok(Server {
            local_addr,
            inner,
            threads: Mutex::new(Some(Threads {
                accept,
                closer: closer_thread,
                wake,
            })),
        })
    }

    /// The address the server listens on (with the real port when bound
    /// to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The manager's counters.
    pub fn stats(&self) -> Stats {
        self.inner.manager.stats()
    }

    /// Stops the server: no more connections are accepted, waiting clients
    /// get `ERR unavailable`, running ones may finish their current request
    /// within the configured grace period and are cut after it, and every
    /// thread is joined.
    ///
    /// Safe to call more than once and from several threads; every call
    /// returns the manager's report of the first.
    pub fn shutdown(&self) -> ShutdownReport {
        let inner = &self.inner;
        let grace = inner.state.config.shutdown_grace;
        let mut threads = lock(&self.threads);
        if let Some(Threads {
            accept,
            closer,
            wake,
        }) = threads.take()
        {
            inner.stopping.store(true, Ordering::SeqCst);
            drop(wake);
            self.wake_accept();
            let _ = accept.join();
            inner.manager.shutdown(grace);
            // Every session is done: nothing else reaches the closer.
            inner.state.closer.stop();
            let _ = closer.join();
        }
        // The manager keeps the report of its first shutdown.
        inner.manager.shutdown(grace)
    }

    /// Wakes the accepting thread from a blocking `accept` by connecting
    /// to it; if that fails (e.g. no descriptors left), by shutting the
    /// listening socket's read side, which also ends a blocked `accept`.
    fn wake_accept(&self) {
        let target = match self.local_addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
            }
            addr => addr,
        };
        if TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_err() {
            let _ = rustix::net::shutdown(&self.inner.listener, rustix::net::Shutdown::Read);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn open_root(config: &ServerConfig) -> Result<Root, ServerError> {
    Root::open(&config.root).map_err(|source| ServerError::Root {
        root: config.root.clone(),
        source,
    })
}

impl Listening {
    fn accept_loop(&self, woken: &Receiver<()>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let accepted = self.listener.accept();
            if self.stopping.load(Ordering::SeqCst) {
                if let Ok((stream, _)) = accepted {
                    Closer::refuse_now(&stream, refusal_line(Refusal::ShuttingDown).as_bytes());
                }
                return;
            }
            match accepted {
                Ok((stream, peer)) => {
                    backoff = BACKOFF_MIN;
                    // Replies are small and latency-bound; bodies are sent
                    // with explicit corking instead of Nagle's delays.
                    let _ = stream.set_nodelay(true);
                    let session = Session::new(stream, peer, self.state.clone());
                    if let Err(refused) = self.manager.submit(session) {
                        refused.notify();
                    }
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    log::warn!("accept failed: {e}; retrying in {backoff:?}");
                    // Wait out the back-off, or until shutdown drops the
                    // sender; either way, then look again.
                    let _ = woken.recv_timeout(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Errors about one connection that died before it was accepted.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
