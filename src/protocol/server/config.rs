//! The server's settings and the errors of starting it.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::AccessLog;
use crate::admission::{Admission as _, And, MaxWaiting, PerKeyCap, QueueTimeout};

/// Settings of a [`Server`](crate::protocol::Server); the command line of the `filesrv` binary maps
/// onto these one to one.
///
/// Set through by-value setters named after each setting; the settings
/// are checked together when the server starts
/// ([`ServerError::Config`] names the first one that is wrong).
///
/// `ServerConfig::new(root)` gives the defaults: 4 running, 1024 waiting,
/// no per-source cap, no queue timeout, idle and stall timeouts of 30 s,
/// busy idle timeout 5 s and busy session limit 60 s, a minimum body rate
/// of 500 bytes/s, uploads off (1 GiB limit when on), 10 s shutdown grace,
/// hidden names not served, at most 100,000 entries per LIST, no trusted
/// proxies (a PROXY header deadline of 5 s once there are some), no
/// metrics or agent listener, no TLS, no users (10 failed logins per
/// source per minute once there are some), no deferred accept, no access
/// log, no parking (at most 10,000 parked once it is on).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The directory served; nothing outside it is read or written.
    pub(crate) root: PathBuf,
    /// Clients served at the same time (at least 1).
    pub(crate) max_running: usize,
    /// Clients waiting beyond the running ones; 0: none. Lowered at start
    /// (with a warning) to what the open-descriptor limit leaves room for:
    /// 6 per running client and 64 in reserve.
    pub(crate) max_waiting: usize,
    /// Running plus waiting clients from one IP address; 0: no cap.
    pub(crate) max_per_source: usize,
    /// How long a client may wait for a slot; `None`: forever.
    pub(crate) queue_timeout: Option<Duration>,
    /// Time allowed for a complete request line; `None`: no limit.
    pub(crate) idle_timeout: Option<Duration>,
    /// Time allowed without progress on a body; `None`: no limit.
    pub(crate) stall_timeout: Option<Duration>,
    /// While clients wait, how long a running connection may sit idle
    /// between requests before it makes room (`ERR timeout`); `None`: no
    /// such limit.
    pub(crate) busy_idle_timeout: Option<Duration>,
    /// While clients wait, how long a connection may run before it makes
    /// room after its current request (`ERR busy`); `None`: no such limit.
    pub(crate) busy_session_limit: Option<Duration>,
    /// The slowest a body may move, in bytes per second, after an initial
    /// allowance of the stall timeout (30 s without one), as Apache's
    /// `mod_reqtimeout` `MinRate`; `None`: no minimum.
    pub(crate) min_rate: Option<u64>,
    /// Whether PUT is accepted.
    pub(crate) allow_put: bool,
    /// The largest accepted upload, in bytes.
    pub(crate) max_upload: u64,
    /// How long running clients may finish on shutdown.
    pub(crate) shutdown_grace: Duration,
    /// Whether hidden names (a path component starting with `.`) are
    /// listed, served and written; off: they are `not-found` (PUT:
    /// `forbidden`).
    pub(crate) hidden: bool,
    /// The most entries one LIST returns; a larger directory is refused
    /// with `ERR too-large`. 0: no cap.
    pub(crate) max_list_entries: usize,
    /// Networks of trusted proxies: a connection from one must begin with
    /// a PROXY protocol v1 or v2 header, whose source address then counts
    /// as the client's. Empty: no header is ever looked for.
    pub(crate) proxy_from: Vec<IpNet>,
    /// Time a trusted proxy has to send the whole header.
    pub(crate) proxy_timeout: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: nowhere.
    pub(crate) metrics: Option<SocketAddr>,
    /// Where to answer HAProxy's `agent-check`; `None`: nowhere.
    pub(crate) agent: Option<SocketAddr>,
    /// PEM certificate chain: with [`tls_key`](ServerConfig::tls_key), the
    /// port speaks TLS. Both or neither.
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of
    /// [`tls_cert`](ServerConfig::tls_cert).
    pub(crate) tls_key: Option<PathBuf>,
    /// Speak TLS with a certificate generated at start (for `localhost`,
    /// the bound address and [`tls_names`](ServerConfig::tls_names)); its
    /// pin is [`Server::tls_pin`](crate::protocol::Server::tls_pin).
    pub(crate) tls_self_signed: bool,
    /// Extra DNS names of a generated certificate.
    pub(crate) tls_names: Vec<String>,
    /// The users file; `None`: everyone is anonymous.
    pub(crate) users: Option<PathBuf>,
    /// With users: GET, LIST, STAT and SUM are served before `AUTH`, on
    /// the whole served root.
    pub(crate) anonymous_read: bool,
    /// Accept `AUTH` on plaintext connections from peers that are not
    /// loopback (TLS ended at a trusted proxy).
    pub(crate) allow_plain_auth: bool,
    /// Failed logins per source within 60 s before `AUTH` is refused
    /// without a check; 0: no limit.
    pub(crate) max_auth_failures: usize,
    /// Whether the listener defers accepting a connection until its
    /// client has sent something (Linux's `TCP_DEFER_ACCEPT`, nginx's
    /// `deferred`): a client that connects and waits before speaking is
    /// accepted only once it speaks, or after about a second when the
    /// kernel gives up waiting. Off: the listener is left as it is.
    pub(crate) defer_accept: bool,
    /// Where to write one line per request ([`AccessLog`] gives the
    /// format); `None`: nowhere.
    pub(crate) access_log: Option<AccessLog>,
    /// Whether the access log has the requests of a trusted proxy's own
    /// connections (a PROXY v2 `LOCAL` header: HAProxy's health checks);
    /// off: they are left out.
    pub(crate) access_log_checks: bool,
    /// Whether a connection between requests gives its running slot back
    /// until its next request (parked: no thread, no slot). Off: a
    /// connection holds its slot for its whole life.
    pub(crate) park_idle: bool,
    /// The most connections parked at once; past it the longest parked is
    /// closed. Lowered at start (with a warning) to fit the descriptor
    /// limit.
    pub(crate) max_parked: usize,
}

impl ServerConfig {
    /// The defaults, serving `root`.
    pub fn new(root: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            root: root.into(),
            max_running: 4,
            max_waiting: 1024,
            max_per_source: 0,
            queue_timeout: None,
            idle_timeout: Some(Duration::from_secs(30)),
            stall_timeout: Some(Duration::from_secs(30)),
            busy_idle_timeout: Some(Duration::from_secs(5)),
            busy_session_limit: Some(Duration::from_secs(60)),
            min_rate: Some(500),
            allow_put: false,
            max_upload: 1 << 30,
            shutdown_grace: Duration::from_secs(10),
            hidden: false,
            max_list_entries: 100_000,
            proxy_from: Vec::new(),
            proxy_timeout: Duration::from_secs(5),
            metrics: None,
            agent: None,
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            tls_names: Vec::new(),
            users: None,
            anonymous_read: false,
            allow_plain_auth: false,
            max_auth_failures: 10,
            defer_accept: false,
            access_log: None,
            access_log_checks: false,
            park_idle: false,
            max_parked: 10_000,
        }
    }

    /// Sets [`max_running`](ServerConfig::max_running) (default 4; at
    /// least 1).
    pub fn max_running(mut self, n: usize) -> Self {
        self.max_running = n;
        self
    }

    /// Sets [`max_waiting`](ServerConfig::max_waiting) (default 1024).
    pub fn max_waiting(mut self, n: usize) -> Self {
        self.max_waiting = n;
        self
    }

    /// Sets [`max_per_source`](ServerConfig::max_per_source) (default 0, no cap).
    pub fn max_per_source(mut self, n: usize) -> Self {
        self.max_per_source = n;
        self
    }

    /// Sets [`queue_timeout`](ServerConfig::queue_timeout) (default none); `None`
    /// for no limit.
    /// A zero is refused when the server starts: it is not "none".
    pub fn queue_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// Sets [`idle_timeout`](ServerConfig::idle_timeout) (default 30 s); `None`
    /// for no limit.
    /// A zero is refused when the server starts: it is not "none".
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`stall_timeout`](ServerConfig::stall_timeout) (default 30 s); `None`
    /// for no limit.
    /// A zero is refused when the server starts: it is not "none".
    pub fn stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Sets [`busy_idle_timeout`](ServerConfig::busy_idle_timeout)
    /// (default 5 s); `None` for no limit.
    /// A zero is refused when the server starts: it is not "none".
    pub fn busy_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.busy_idle_timeout = timeout;
        self
    }

    /// Sets [`busy_session_limit`](ServerConfig::busy_session_limit)
    /// (default 60 s); `None` for no limit.
    /// A zero is refused when the server starts: it is not "none".
    pub fn busy_session_limit(mut self, limit: Option<Duration>) -> Self {
        self.busy_session_limit = limit;
        self
    }

    /// Sets [`min_rate`](ServerConfig::min_rate) in bytes per second
    /// (default 500); `None` for no minimum.
    /// A zero is refused when the server starts: it is not "none".
    pub fn min_rate(mut self, rate: Option<u64>) -> Self {
        self.min_rate = rate;
        self
    }

    /// Sets [`allow_put`](ServerConfig::allow_put) (default off).
    pub fn allow_put(mut self, allow: bool) -> Self {
        self.allow_put = allow;
        self
    }

    /// Sets [`max_upload`](ServerConfig::max_upload) (default 1 GiB).
    pub fn max_upload(mut self, bytes: u64) -> Self {
        self.max_upload = bytes;
        self
    }

    /// Sets [`shutdown_grace`](ServerConfig::shutdown_grace) (default 10 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets [`hidden`](ServerConfig::hidden) (default off).
    pub fn hidden(mut self, serve: bool) -> Self {
        self.hidden = serve;
        self
    }

    /// Sets [`max_list_entries`](ServerConfig::max_list_entries) (default
    /// 100,000; 0 for no cap).
    pub fn max_list_entries(mut self, n: usize) -> Self {
        self.max_list_entries = n;
        self
    }

    /// Sets [`proxy_from`](ServerConfig::proxy_from) (default none).
    pub fn proxy_from(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        self.proxy_from = networks.into_iter().collect();
        self
    }

    /// Sets [`proxy_timeout`](ServerConfig::proxy_timeout) (default 5 s).
    /// Must not be zero (checked when the server starts).
    pub fn proxy_timeout(mut self, timeout: Duration) -> Self {
        self.proxy_timeout = timeout;
        self
    }

    /// Sets [`metrics`](ServerConfig::metrics) (default none).
    pub fn metrics(mut self, addr: Option<SocketAddr>) -> Self {
        self.metrics = addr;
        self
    }

    /// Sets [`agent`](ServerConfig::agent) (default none).
    pub fn agent(mut self, addr: Option<SocketAddr>) -> Self {
        self.agent = addr;
        self
    }

    /// The first setting that is wrong, if any.
    pub(crate) fn check(&self) -> Result<(), ServerError> {
        let wrong = |setting, reason| Err(ServerError::Config { setting, reason });
        if !(1..=1 << 31).contains(&self.max_running) {
            return wrong("max_running", "must be between 1 and 2^31");
        }
        let timeouts = [
            ("queue_timeout", self.queue_timeout),
            ("idle_timeout", self.idle_timeout),
            ("stall_timeout", self.stall_timeout),
            ("busy_idle_timeout", self.busy_idle_timeout),
            ("busy_session_limit", self.busy_session_limit),
        ];
        for (setting, timeout) in timeouts {
            if timeout == Some(Duration::ZERO) {
                return wrong(setting, "zero is not \"none\": use None for no limit");
            }
        }
        if self.min_rate == Some(0) {
            return wrong("min_rate", "zero is not \"none\": use None for no minimum");
        }
        if self.proxy_timeout.is_zero() {
            return wrong("proxy_timeout", "must not be zero");
        }
        if self.park_idle && self.max_parked == 0 {
            return wrong("max_parked", "must be at least 1 with park_idle");
        }
        Ok(())
    }

    /// Sets [`tls_cert`](ServerConfig::tls_cert) (default none).
    pub fn tls_cert(mut self, path: Option<PathBuf>) -> Self {
        self.tls_cert = path;
        self
    }

    /// Sets [`tls_key`](ServerConfig::tls_key) (default none).
    pub fn tls_key(mut self, path: Option<PathBuf>) -> Self {
        self.tls_key = path;
        self
    }

    /// Sets [`tls_self_signed`](ServerConfig::tls_self_signed) (default off).
    pub fn tls_self_signed(mut self, generate: bool) -> Self {
        self.tls_self_signed = generate;
        self
    }

    /// Sets [`tls_names`](ServerConfig::tls_names) (default none).
    pub fn tls_names(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.tls_names = names.into_iter().collect();
        self
    }

    /// Sets [`users`](ServerConfig::users) (default none).
    pub fn users(mut self, path: Option<PathBuf>) -> Self {
        self.users = path;
        self
    }

    /// Sets [`anonymous_read`](ServerConfig::anonymous_read) (default off).
    pub fn anonymous_read(mut self, open: bool) -> Self {
        self.anonymous_read = open;
        self
    }

    /// Sets [`allow_plain_auth`](ServerConfig::allow_plain_auth) (default off).
    pub fn allow_plain_auth(mut self, allow: bool) -> Self {
        self.allow_plain_auth = allow;
        self
    }

    /// Sets [`max_auth_failures`](ServerConfig::max_auth_failures)
    /// (default 10; 0 for no limit).
    pub fn max_auth_failures(mut self, n: usize) -> Self {
        self.max_auth_failures = n;
        self
    }

    /// Sets [`defer_accept`](ServerConfig::defer_accept) (default off).
    pub fn defer_accept(mut self, defer: bool) -> Self {
        self.defer_accept = defer;
        self
    }

    /// Sets [`access_log`](ServerConfig::access_log) (default none).
    pub fn access_log(mut self, log: Option<AccessLog>) -> Self {
        self.access_log = log;
        self
    }

    /// Sets [`access_log_checks`](ServerConfig::access_log_checks)
    /// (default off).
    pub fn access_log_checks(mut self, on: bool) -> Self {
        self.access_log_checks = on;
        self
    }

    /// Sets [`park_idle`](ServerConfig::park_idle) (default off).
    pub fn park_idle(mut self, on: bool) -> Self {
        self.park_idle = on;
        self
    }

    /// Sets [`max_parked`](ServerConfig::max_parked) (default 10,000).
    pub fn max_parked(mut self, n: usize) -> Self {
        self.max_parked = n;
        self
    }

    /// The admission policy, with at most `max_waiting` waiting (the
    /// setting, as the descriptor budget lowered it).
    pub(crate) fn admission(&self, max_waiting: usize) -> Policy {
        let per_source = match self.max_per_source {
            0 => usize::MAX,
            n => n,
        };
        MaxWaiting(max_waiting)
            .and(PerKeyCap::new(per_source))
            .and(QueueTimeout(self.queue_timeout.unwrap_or(Duration::MAX)))
    }
}

/// The file server's admission policy, built from its [`ServerConfig`].
pub(crate) type Policy = And<And<MaxWaiting, PerKeyCap>, QueueTimeout>;

/// Why a [`Server`](crate::protocol::Server) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The served directory could not be opened.
    #[error("cannot serve {}", root.display())]
    Root {
        /// The directory given.
        root: PathBuf,
        /// Why opening it failed.
        #[source]
        source: io::Error,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address given.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: io::Error,
    },
    /// The metrics or agent address could not be bound.
    #[error("cannot listen for {what} on {addr}")]
    BindExtra {
        /// `metrics` or `agent-check`.
        what: &'static str,
        /// The address given.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: io::Error,
    },
    /// A setting is out of its range.
    #[error("bad setting {setting}: {reason}")]
    Config {
        /// The setting's name, as its setter's.
        setting: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TLS certificate or key is missing, unreadable or unusable.
    #[error("cannot set up TLS")]
    Tls(#[source] super::tls::TlsError),
    /// The users file could not be loaded.
    #[error("cannot load the users")]
    Users(#[source] super::users::UsersError),
    /// A thread could not be started, or the listener not set up.
    #[error("cannot start the server")]
    Start(#[source] io::Error),
}
