//! The file server: a listener, an accepting thread and a [`Manager`] of
//! [`Session`]s.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd};

use super::accepting::SessionSource;
use super::agent::{self, Load};
use super::closer::Closer;
use super::config::{Policy, ServerConfig, ServerError};
use super::fs::Root;
use super::metrics::{self, Metrics};
use super::proxy::{Handshake, Handshakes, NoHeader};
use super::session::{ServerState, Session, reply_error};
use super::sidecar::Sidecar;
use super::sockopt;
use crate::protocol::wire::ErrorCode;
use crate::util::{Backoff, lock};
use crate::{Manager, ManagerBuilder, ShutdownReport, Stats};

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
    metrics_addr: Option<SocketAddr>,
    agent_addr: Option<SocketAddr>,
    inner: Arc<Listening>,
    /// Taken by the first shutdown, which holds the lock until it is done.
    threads: Mutex<Option<Threads>>,
    /// The first shutdown's report, once it is done; [`Server::wait`]
    /// waits on the condition variable for it.
    stopped: (Mutex<Option<ShutdownReport>>, Condvar),
}

#[derive(Debug)]
struct Listening {
    manager: Manager<Session, Policy>,
    state: Arc<ServerState>,
    /// Shared with the manager's source when workers accept themselves.
    listener: Arc<TcpListener>,
    stopping: AtomicBool,
    /// Written once by shutdown: wakes the accepting thread's `poll`.
    stop_event: OwnedFd,
}

#[derive(Debug)]
struct Threads {
    /// The accepting thread, when the manager does not accept itself
    /// (with trusted proxies).
    accept: Option<JoinHandle<()>>,
    /// The PROXY header thread, when there are trusted proxies.
    handshake: Option<JoinHandle<()>>,
    closer: JoinHandle<()>,
    /// The metrics and agent listeners, stopped last.
    sidecars: Sidecars,
    /// Dropped to wake the accepting thread from an error back-off.
    wake: Sender<()>,
}

/// The optional listeners beside the main one.
#[derive(Debug, Default)]
struct Sidecars {
    metrics: Option<Sidecar>,
    agent: Option<Sidecar>,
}

impl Sidecars {
    fn stop(self) {
        self.metrics
            .into_iter()
            .chain(self.agent)
            .for_each(Sidecar::stop);
    }
}

impl Server {
    /// Binds `addr` and starts serving `config.root`. Leftover temporary
    /// files of an earlier run (a killed upload) are removed first.
    ///
    /// The listen backlog is the largest the kernel allows
    /// (`net.core.somaxconn`, 4096 on current Linux), not the 128 of
    /// [`TcpListener::bind`]: with 128, a burst of connections met while
    /// every accepting thread is busy (or the process is descheduled) has
    /// its handshakes beyond the 128th dropped, and those clients wait for
    /// a SYN retry, one second or more, before the server ever sees them,
    /// and then out of order. A listener given to
    /// [`from_listener`](Server::from_listener) keeps the backlog it has.
    ///
    /// # Errors
    ///
    /// - [`ServerError::Root`]: the root is missing or not a directory;
    /// - [`ServerError::Bind`]: the address is in use or not available;
    /// - [`ServerError::BindExtra`]: so is the metrics or agent address;
    /// - [`ServerError::Start`]: a thread could not be started.
    pub fn bind(addr: SocketAddr, config: ServerConfig) -> Result<Server, ServerError> {
        let root = open_root(&config)?;
        let listener = TcpListener::bind(addr)
            .and_then(|listener| {
                // Listening again changes the backlog; the kernel caps it.
                rustix::net::listen(&listener, i32::MAX)?;
                Ok(listener)
            })
            .map_err(|source| ServerError::Bind { addr, source })?;
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
        // Accepted only when `poll` says so; another process sharing the
        // socket (a successor, under socket activation) may take it first.
        listener.set_nonblocking(true).map_err(ServerError::Start)?;
        sockopt::set_inherited(&listener, &config).map_err(ServerError::Start)?;
        let (closer, closer_thread) = Closer::start("filesrv").map_err(ServerError::Start)?;
        let builder = ManagerBuilder::new(config.max_running)
            .admission(config.admission())
            .busy_idle_timeout(config.busy_idle_timeout)
            .busy_session_limit(config.busy_session_limit)
            // The protocol counts per client address, not per network.
            .ipv6_prefix(128)
            .name("filesrv");
        let state = Arc::new(ServerState {
            root,
            config,
            closer,
            metrics: Metrics::default(),
        });
        let listener = Arc::new(listener);
        // Idle workers accept themselves, unless trusted proxies' headers
        // must be read first (see `accepting`).
        let workers_accept = state.config.proxy_from.is_empty();
        let manager = if workers_accept {
            builder.build_with_source(SessionSource {
                listener: listener.clone(),
                state: state.clone(),
            })
        } else {
            builder.build()
        }
        .map_err(ServerError::Start)?;
        let inner = Arc::new(Listening {
            manager,
            state,
            listener,
            stopping: AtomicBool::new(false),
            stop_event: eventfd(0, EventfdFlags::CLOEXEC)
                .map_err(|e| ServerError::Start(e.into()))?,
        });
        let (handshakes, handshake) = match &inner.state.config.proxy_from {
            trusted if trusted.is_empty() => (None, None),
            trusted => {
                let admitting = inner.clone();
                let (handshakes, thread) = Handshakes::start(
                    trusted.clone(),
                    inner.state.config.proxy_timeout,
                    move |handshake| admitting.after_handshake(handshake),
                )
                .map_err(ServerError::Start)?;
                (Some(handshakes), Some(thread))
            }
        };
        let sidecars = inner.start_sidecars()?;
        let metrics_addr = sidecars.metrics.as_ref().map(Sidecar::local_addr);
        let agent_addr = sidecars.agent.as_ref().map(Sidecar::local_addr);
        let (wake, woken) = crossbeam_channel::bounded(0);
        let accepting = inner.clone();
        let accept = (!workers_accept).then(|| {
            thread::Builder::new()
                .name("filesrv-accept".to_owned())
                .spawn(move || {
                    accepting.accept_loop(&woken, handshakes.as_ref());
                    // Dropped: the handshake thread refuses what it holds, ends.
                    drop(handshakes);
                })
        });
        let accept = match accept.transpose() {
            Ok(accept) => accept,
            Err(e) => {
                sidecars.stop();
                return Err(ServerError::Start(e));
            }
        };
        log::info!("serving on {local_addr}");
        Ok(Server {
            local_addr,
            metrics_addr,
            agent_addr,
            inner,
            threads: Mutex::new(Some(Threads {
                accept,
                handshake,
                closer: closer_thread,
                sidecars,
                wake,
            })),
            stopped: (Mutex::new(None), Condvar::new()),
        })
    }

    /// The address the server listens on (with the real port when bound
    /// to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where Prometheus metrics are served (`http://ADDR/metrics`), with
    /// the real port when bound to port 0; `None` when not configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where HAProxy's `agent-check` is answered, with the real port when
    /// bound to port 0; `None` when not configured.
    pub fn agent_addr(&self) -> Option<SocketAddr> {
        self.agent_addr
    }

    /// The manager's counters.
    pub fn stats(&self) -> Stats {
        self.inner.manager.stats()
    }

    /// Changes how many clients are served at once (`max_running`) on the
    /// running server. Growing starts waiting clients at once, in queue
    /// order. Shrinking never cuts a client: the running count falls to
    /// the new bound as clients leave, and nobody starts beyond it
    /// meanwhile. The agent's `maxconn` and the `limit_sessions` metric
    /// show the new bound. After a shutdown began it does nothing.
    ///
    /// The waiting queue's bound was fitted at start to the descriptor
    /// limit and the `max_running` of then, and stays: growing far past
    /// the start value can run out of descriptors first (accepting then
    /// backs off until some are free).
    ///
    /// # Errors
    ///
    /// The OS refused to start a thread; the workers already started stay,
    /// and the bound is what they make.
    ///
    /// # Panics
    ///
    /// If `n` is 0 or above 2³¹.
    pub fn set_max_running(&self, n: usize) -> io::Result<()> {
        self.inner.manager.set_max_running(n)
    }

    /// Removes the temporary files of the uploads still in progress in
    /// this process, and any left beneath the root by an earlier one;
    /// returns how many it removed.
    ///
    /// For a program about to exit without waiting for its clients, as
    /// `filesrv` does on a second SIGINT or SIGTERM: those uploads are
    /// lost either way, and their files would otherwise stay until the
    /// next start. A program that goes on serving instead sees each such
    /// upload fail when it completes (`ERR internal`).
    pub fn remove_temporary_files(&self) -> usize {
        self.inner
            .state
            .root
            .cleanup_stale_temps()
            .unwrap_or_else(|e| {
                log::warn!("could not remove temporary files: {e}");
                0
            })
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
            handshake,
            closer,
            sidecars,
            wake,
        }) = threads.take()
        {
            inner.stopping.store(true, Ordering::SeqCst);
            drop(wake);
            let _ = rustix::io::write(&inner.stop_event, &1u64.to_ne_bytes());
            match accept {
                Some(accept) => {
                    let _ = accept.join();
                }
                None => inner.manager.stop_accepting(),
            }
            log::info!("stopped accepting");
            // The accepting thread stopped the handshakes on its way out.
            if let Some(handshake) = handshake {
                let _ = handshake.join();
            }
            inner.manager.shutdown(grace);
            // Every session is done: nothing else reaches the closer.
            inner.state.closer.stop();
            let _ = closer.join();
            // Metrics and the agent's `drain` lasted the whole shutdown.
            sidecars.stop();
        }
        // The manager keeps the report of its first shutdown.
        let report = inner.manager.shutdown(grace);
        let (stopped, done) = &self.stopped;
        *lock(stopped) = Some(report);
        done.notify_all();
        report
    }

    /// Blocks until the server has stopped, by a [`shutdown`](Server::shutdown)
    /// on another thread (or [`shutdown_on_signal`](Server::shutdown_on_signal)),
    /// and returns that shutdown's report. For a program whose main thread
    /// has nothing else to do than to keep the server alive.
    ///
    /// - Returns at once if the server has stopped already.
    /// - Never returns if nothing ever shuts the server down.
    pub fn wait(&self) -> ShutdownReport {
        let (stopped, done) = &self.stopped;
        let mut report = lock(stopped);
        loop {
            if let Some(report) = *report {
                return report;
            }
            report = done.wait(report).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Blocks until the process gets SIGINT or SIGTERM, then shuts the
    /// server down gracefully ([`shutdown`](Server::shutdown): waiting
    /// clients refused, running ones given the grace period) and returns
    /// the report. As `filesrv` does, a second signal during the grace
    /// ends it at once: the running clients' uploads are removed
    /// ([`remove_temporary_files`](Server::remove_temporary_files)) and the
    /// process exits with status 0.
    ///
    /// The signals are handled by this process from the call on (and
    /// stay so after it returns), in place of their default action of
    /// ending the process. Feature `signals` (on with the default `cli`).
    ///
    /// # Errors
    ///
    /// The signal handlers could not be installed.
    #[cfg(feature = "signals")]
    pub fn shutdown_on_signal(&self) -> io::Result<ShutdownReport> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        if let Some(signal) = signals.forever().next() {
            log::info!(
                "signal {signal}: shutting down; waiting up to {:?} for {} running clients \
                 (the signal again stops at once)",
                self.inner.state.config.shutdown_grace,
                self.stats().running
            );
        }
        Ok(thread::scope(|scope| {
            scope.spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    let running = self.stats().running;
                    log::info!("signal {signal}: stopping now, cutting {running} running clients");
                    self.remove_temporary_files();
                    std::process::exit(0);
                }
            });
            let report = self.shutdown();
            handle.close();
            report
        }))
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
    fn accept_loop(&self, woken: &Receiver<()>, handshakes: Option<&Handshakes>) {
        let mut backoff = Backoff::default();
        loop {
            // Once stopping, nothing more is taken from the backlog: under
            // socket activation the socket outlives this process, and its
            // backlog is the successor's.
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            // The listener is non-blocking: a burst is accepted back to
            // back, and only an empty backlog costs a wait.
            let accepted = match self.listener.accept() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Wait for a connection or the stop.
                    let mut ready = [
                        PollFd::new(&self.listener, PollFlags::IN),
                        PollFd::new(&self.stop_event, PollFlags::IN),
                    ];
                    match rustix::event::poll(&mut ready, None) {
                        Ok(_) if !ready[1].revents().is_empty() => return,
                        Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                        Err(e) => Err(e.into()),
                    }
                }
                accepted => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff.reset();
                    self.state.metrics.accepted();
                    match handshakes {
                        // A trusted proxy: its header names the client.
                        Some(handshakes) if handshakes.trusts(peer) => {
                            if let Err(stream) = handshakes.submit(stream, peer) {
                                self.refuse_proxied(stream, peer, NoHeader::Full);
                            }
                        }
                        _ => self.admit(stream, peer, false),
                    }
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    let pause = backoff.failed();
                    log::warn!("accept failed: {e}; retrying in {pause:?}");
                    // Wait out the back-off, or until shutdown drops the
                    // sender; either way, then look again.
                    let _ = woken.recv_timeout(pause);
                }
            }
        }
    }
}

impl Listening {
    /// Starts the metrics and agent listeners that the settings ask for.
    fn start_sidecars(self: &Arc<Self>) -> Result<Sidecars, ServerError> {
        let config = &self.state.config;
        let bind = |what, addr| move |source| ServerError::BindExtra { what, addr, source };
        let mut sidecars = Sidecars::default();
        if let Some(addr) = config.metrics {
            let scraped = self.clone();
            let sidecar = metrics::serve(addr, move || {
                let state = &scraped.state;
                let stats = scraped.manager.stats();
                metrics::encode(&state.metrics, &stats, scraped.manager.max_running())
            });
            sidecars.metrics = Some(sidecar.map_err(bind("metrics", addr))?);
        }
        if let Some(addr) = config.agent {
            let checked = self.clone();
            let sidecar = agent::serve(addr, move || Load {
                stopping: checked.stopping.load(Ordering::SeqCst),
                max_running: checked.manager.max_running(),
                waiting: checked.manager.stats().waiting,
            });
            match sidecar {
                Ok(sidecar) => sidecars.agent = Some(sidecar),
                Err(source) => {
                    sidecars.stop();
                    return Err(bind("agent-check", addr)(source));
                }
            }
        }
        Ok(sidecars)
    }

    /// Submits a session for the client at `source` to the manager;
    /// `check`: the proxy's own connection (its health check).
    fn admit(&self, stream: TcpStream, source: SocketAddr, check: bool) {
        let mut session = Session::new(stream, source, self.state.clone());
        if check {
            session = session.proxy_check();
        }
        if let Err(refused) = self.manager.submit(session) {
            refused.notify();
        }
    }

    /// Runs on the handshake thread for each connection leaving it.
    fn after_handshake(&self, handshake: Handshake) {
        match handshake {
            Handshake::Done {
                stream,
                peer,
                source,
            } => {
                log::debug!("{peer}: PROXY header for {source}");
                // A LOCAL header (or v1 UNKNOWN) leaves the proxy's own
                // address as the source.
                self.admit(stream, source, source == peer);
            }
            Handshake::Refused {
                stream,
                peer,
                reason,
            } => self.refuse_proxied(stream, peer, reason),
            Handshake::Closed(stream) => self.state.closer.close(stream),
        }
    }

    /// Refuses a trusted proxy's connection that brought no usable header;
    /// it never reached the manager, so it took no waiting place.
    fn refuse_proxied(&self, stream: TcpStream, peer: SocketAddr, reason: NoHeader) {
        log::info!("{peer}: refused: {reason}");
        self.state.metrics.proxy_refused(reason);
        let code = match reason {
            NoHeader::Malformed => ErrorCode::BadRequest,
            NoHeader::Timeout => ErrorCode::Timeout,
            NoHeader::Full => ErrorCode::Busy,
            NoHeader::ShuttingDown => ErrorCode::Unavailable,
        };
        let line = reply_error(code, &reason.to_string());
        self.state.closer.refuse(stream, line.as_bytes());
    }
}

/// Errors about one connection that died before it was accepted.
pub(super) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
