//! The file server: a listener, an accepting thread and a [`Manager`] of
//! [`Session`]s.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rustix::event::{EventfdFlags, eventfd};

use super::accepting::{HandshakeSlot, SessionAcceptor, refuse_proxied};
use super::agent::{self, Load};
use super::closer::Closer;
use super::config::{Policy, ServerConfig, ServerError};
use super::fs::Root;
use super::limits::Budget;
use super::metrics::{self, Metrics};
use super::proxy::{Handshake, Handshakes};
use super::session::{ServerState, Session};
use super::sidecar::{SharedBackoff, Sidecar};
use super::sockopt;
use super::tls::{Tls, TlsError, TlsSource};
use super::users::Users;
use super::watch;
use crate::util::lock;
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
    /// The PROXY handshake thread's handle, shared with the acceptor.
    handshakes: HandshakeSlot,
    stopping: AtomicBool,
    /// Written once by shutdown: stops the file watcher.
    stop_event: OwnedFd,
    /// The accept back-off of every listener, the sidecars' included.
    backoff: SharedBackoff,
}

#[derive(Debug)]
struct Threads {
    /// The PROXY header thread, when there are trusted proxies.
    handshake: Option<JoinHandle<()>>,
    closer: JoinHandle<()>,
    /// The TLS refuser, when the port speaks TLS.
    tls: Option<JoinHandle<()>>,
    /// The watcher of the users file and the certificate files.
    watch: Option<JoinHandle<()>>,
    /// The metrics and agent listeners, stopped last.
    sidecars: Sidecars,
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
    /// - [`ServerError::Config`]: a setting is out of its range;
    /// - [`ServerError::Root`]: the root is missing or not a directory;
    /// - [`ServerError::Bind`]: the address is in use or not available;
    /// - [`ServerError::BindExtra`]: so is the metrics or agent address;
    /// - [`ServerError::Tls`]: the certificate or key is missing,
    ///   unreadable or unusable, or only one of them was given;
    /// - [`ServerError::Users`]: the users file is unreadable or has a bad
    ///   line;
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
        let budget = Budget::of(&config);
        let (closer, closer_thread) =
            Closer::start("filesrv", budget.lingering).map_err(ServerError::Start)?;
        let secured = secure(&config, &root, local_addr, &closer);
        let (tls, tls_thread, users) = match secured {
            Ok(secured) => secured,
            Err(e) => {
                closer.stop();
                let _ = closer_thread.join();
                return Err(e);
            }
        };
        let builder = ManagerBuilder::new(config.max_running)
            .admission(config.admission(budget.waiting))
            .busy_idle_timeout(config.busy_idle_timeout)
            .busy_session_limit(config.busy_session_limit)
            .park_idle_timeout(config.idle_timeout)
            .max_parked(budget.parked)
            .name("filesrv");
        let state = Arc::new(ServerState {
            root,
            config,
            closer,
            metrics: Metrics::default(),
            tls,
            users,
        });
        let handshakes = HandshakeSlot::default();
        let manager = builder
            .build_with_acceptor(SessionAcceptor {
                listener,
                state: state.clone(),
                handshakes: handshakes.clone(),
            })
            .map_err(ServerError::Start)?;
        let inner = Arc::new(Listening {
            manager,
            state,
            handshakes,
            stopping: AtomicBool::new(false),
            stop_event: eventfd(0, EventfdFlags::CLOEXEC)
                .map_err(|e| ServerError::Start(e.into()))?,
            backoff: SharedBackoff::default(),
        });
        let handshake = match &inner.state.config.proxy_from {
            trusted if trusted.is_empty() => None,
            _ => {
                let admitting = inner.clone();
                let (handshakes, thread) = Handshakes::start(
                    inner.state.config.proxy_timeout,
                    budget.pending,
                    move |handshake| admitting.after_handshake(handshake),
                )
                .map_err(ServerError::Start)?;
                *lock(&inner.handshakes) = Some(handshakes);
                Some(thread)
            }
        };
        let sidecars = inner.start_sidecars()?;
        let watched = inner.watched_files();
        let watch = if watched.is_empty() {
            None
        } else {
            let reloading = inner.clone();
            let stop = inner.stop_event.try_clone().map_err(ServerError::Start)?;
            match watch::watch(&watched, stop, move || reloading.reload()) {
                Ok(thread) => Some(thread),
                Err(e) => {
                    log::warn!("cannot watch the users and certificate files: {e}");
                    None
                }
            }
        };
        let metrics_addr = sidecars.metrics.as_ref().map(Sidecar::local_addr);
        let agent_addr = sidecars.agent.as_ref().map(Sidecar::local_addr);
        log::info!("serving on {local_addr}");
        Ok(Server {
            local_addr,
            metrics_addr,
            agent_addr,
            inner,
            threads: Mutex::new(Some(Threads {
                handshake,
                closer: closer_thread,
                tls: tls_thread,
                watch,
                sidecars,
            })),
            stopped: (Mutex::new(None), Condvar::new()),
        })
    }

    /// The pin of the TLS certificate in use at start,
    /// `sha256//<base64 SHA-256 of its SubjectPublicKeyInfo>` (curl's
    /// `--pinnedpubkey` format); `None` without TLS.
    pub fn tls_pin(&self) -> Option<&str> {
        self.inner.state.tls.as_ref().map(Tls::pin)
    }

    /// Reads the users file and the TLS certificate and key again, as a
    /// change of those files does: for connections and logins after it.
    /// What fails to load keeps the old one, with a warning.
    pub fn reload(&self) {
        self.inner.reload();
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

    /// Blocks until no client runs or waits (parked ones aside), or until
    /// `timeout` passes.
    ///
    /// - `true`: the server was idle at some moment before the timeout.
    /// - `false`: the timeout passed first.
    pub fn wait_idle_timeout(&self, timeout: Duration) -> bool {
        self.inner.manager.wait_idle_timeout(timeout)
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
            handshake,
            closer,
            tls,
            watch,
            sidecars,
        }) = threads.take()
        {
            inner.stopping.store(true, Ordering::SeqCst);
            let _ = rustix::io::write(&inner.stop_event, &1u64.to_ne_bytes());
            // Nothing more is taken from the backlog: under socket
            // activation the socket outlives this process, and its backlog
            // is the successor's.
            inner.manager.stop_accepting();
            log::info!("stopped accepting");
            // Dropped: the handshake thread refuses what it holds, ends.
            drop(lock(&inner.handshakes).take());
            if let Some(handshake) = handshake {
                let _ = handshake.join();
            }
            inner.manager.shutdown(grace);
            if let Some(watch) = watch {
                let _ = watch.join();
            }
            // Refusals inside TLS end within their bound, then go to the
            // closer.
            if let (Some(state), Some(thread)) = (&inner.state.tls, tls) {
                state.stop();
                let _ = thread.join();
            }
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
            report = crate::util::wait(done, report);
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
        log::info!("waiting for SIGINT or SIGTERM to shut down");
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

/// TLS, its refuser thread, and the users, as the settings ask.
type Secured = (Option<Tls>, Option<JoinHandle<()>>, Option<Users>);

/// TLS (with its refuser thread) and the users, as the settings ask.
fn secure(
    config: &ServerConfig,
    root: &Root,
    local_addr: SocketAddr,
    closer: &Closer,
) -> Result<Secured, ServerError> {
    let users = config
        .users
        .as_deref()
        .map(|path| Users::load(path, root, config.max_auth_failures))
        .transpose()
        .map_err(ServerError::Users)?;
    let source = match (&config.tls_cert, &config.tls_key, config.tls_self_signed) {
        (None, None, false) => return Ok((None, None, users)),
        (Some(_), Some(_), true) => return Err(ServerError::Tls(TlsError::Conflict)),
        (Some(cert), Some(key), false) => TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        (None, None, true) => {
            let mut names = vec![local_addr.ip().to_string()];
            names.extend(config.tls_names.iter().cloned());
            TlsSource::SelfSigned(names)
        }
        _ => return Err(ServerError::Tls(TlsError::Incomplete)),
    };
    let (tls, thread) = Tls::start(source, closer.clone()).map_err(|e| match e {
        Ok(e) => ServerError::Tls(e),
        Err(e) => ServerError::Start(e),
    })?;
    Ok((Some(tls), Some(thread), users))
}

fn open_root(config: &ServerConfig) -> Result<Root, ServerError> {
    config.check()?;
    Root::open(&config.root).map_err(|source| ServerError::Root {
        root: config.root.clone(),
        source,
    })
}

impl Listening {
    /// The files a change of which is reloaded.
    fn watched_files(&self) -> Vec<std::path::PathBuf> {
        let state = &self.state;
        let mut files: Vec<_> = state.users.iter().map(|u| u.path().to_owned()).collect();
        if let Some((cert, key)) = state.tls.as_ref().and_then(Tls::files) {
            files.extend([cert.to_owned(), key.to_owned()]);
        }
        files
    }

    fn reload(&self) {
        if let Some(tls) = &self.state.tls {
            tls.reload();
        }
        if let Some(users) = &self.state.users {
            users.reload(&self.state.root);
        }
    }

    /// Starts the metrics and agent listeners that the settings ask for.
    fn start_sidecars(self: &Arc<Self>) -> Result<Sidecars, ServerError> {
        let config = &self.state.config;
        let bind = |what, addr| move |source| ServerError::BindExtra { what, addr, source };
        let mut sidecars = Sidecars::default();
        if let Some(addr) = config.metrics {
            let scraped = self.clone();
            let sidecar = metrics::serve(addr, self.backoff.clone(), move || {
                let state = &scraped.state;
                let stats = scraped.manager.stats();
                metrics::encode(&state.metrics, &stats, scraped.manager.max_running())
            });
            sidecars.metrics = Some(sidecar.map_err(bind("metrics", addr))?);
        }
        if let Some(addr) = config.agent {
            let checked = self.clone();
            let sidecar = agent::serve(addr, self.backoff.clone(), move || Load {
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
            } => refuse_proxied(&self.state, stream, peer, reason),
            Handshake::Closed(stream) => self.state.closer.close(stream),
        }
    }
}
