//! The server's settings and the errors of starting it.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::AccessLog;
use crate::util::timeout_setting;
use crate::{Admission as _, And, MaxWaiting, PerSourceCap, QueueTimeout};

/// Settings of a [`Server`](crate::protocol::Server); the command line of the `filesrv` binary maps
/// onto these one to one.
///
/// `ServerConfig::new(root)` gives the defaults: 4 running, 1024 waiting,
/// no per-source cap, no queue timeout, idle and stall timeouts of 30 s,
/// busy idle timeout 5 s and busy session limit 60 s, a minimum body rate
/// of 500 bytes/s, uploads off (1 GiB limit when on), 10 s shutdown grace,
/// hidden names not served, at most 100,000 entries per LIST, no trusted
/// proxies (a PROXY header deadline of 5 s once there are some), no
/// metrics or agent listener, no access log.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The directory served; nothing outside it is read or written.
    pub root: PathBuf,
    /// Clients served at the same time (at least 1).
    pub max_running: usize,
    /// Clients waiting beyond the running ones; 0: none. Lowered at start
    /// (with a warning) to what the open-descriptor limit leaves room for:
    /// 4 per running client and 64 in reserve.
    pub max_waiting: usize,
    /// Running plus waiting clients from one IP address; 0: no cap.
    pub max_per_source: usize,
    /// How long a client may wait for a slot; `None`: forever.
    pub queue_timeout: Option<Duration>,
    /// Time allowed for a complete request line; `None`: no limit.
    pub idle_timeout: Option<Duration>,
    /// Time allowed without progress on a body; `None`: no limit.
    pub stall_timeout: Option<Duration>,
    /// While clients wait, how long a running connection may sit idle
    /// between requests before it makes room (`ERR timeout`); `None`: no
    /// such limit.
    pub busy_idle_timeout: Option<Duration>,
    /// While clients wait, how long a connection may run before it makes
    /// room after its current request (`ERR busy`); `None`: no such limit.
    pub busy_session_limit: Option<Duration>,
    /// The slowest a body may move, in bytes per second, after an initial
    /// allowance of the stall timeout (30 s without one), as Apache's
    /// `mod_reqtimeout` `MinRate`; `None`: no minimum.
    pub min_rate: Option<u64>,
    /// Whether PUT is accepted.
    pub allow_put: bool,
    /// The largest accepted upload, in bytes.
    pub max_upload: u64,
    /// How long running clients may finish on shutdown.
    pub shutdown_grace: Duration,
    /// Whether hidden names (a path component starting with `.`) are
    /// listed, served and written; off: they are `not-found` (PUT:
    /// `forbidden`).
    pub hidden: bool,
    /// The most entries one LIST returns; a larger directory is refused
    /// with `ERR too-large`. 0: no cap.
    pub max_list_entries: usize,
    /// Networks of trusted proxies: a connection from one must begin with
    /// a PROXY protocol v1 or v2 header, whose source address then counts
    /// as the client's. Empty: no header is ever looked for.
    pub proxy_from: Vec<IpNet>,
    /// Time a trusted proxy has to send the whole header.
    pub proxy_timeout: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: nowhere.
    pub metrics: Option<SocketAddr>,
    /// Where to answer HAProxy's `agent-check`; `None`: nowhere.
    pub agent: Option<SocketAddr>,
    /// Where to write one line per request ([`AccessLog`] gives the
    /// format); `None`: nowhere.
    pub access_log: Option<AccessLog>,
    /// Whether the access log has the requests of a trusted proxy's own
    /// connections (a PROXY v2 `LOCAL` header: HAProxy's health checks);
    /// off: they are left out.
    pub access_log_checks: bool,
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
            access_log: None,
            access_log_checks: false,
        }
    }

    /// Sets [`max_running`](ServerConfig::max_running) (default 4).
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn max_running(mut self, n: usize) -> Self {
        assert!(n >= 1, "max_running must be at least 1");
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
    ///
    /// # Panics
    ///
    /// If `timeout` is `Some(Duration::ZERO)`: a zero is not "none".
    pub fn queue_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.queue_timeout = timeout_setting(timeout, "queue_timeout");
        self
    }

    /// Sets [`idle_timeout`](ServerConfig::idle_timeout) (default 30 s); `None`
    /// for no limit.
    ///
    /// # Panics
    ///
    /// If `timeout` is `Some(Duration::ZERO)`: a zero is not "none".
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout_setting(timeout, "idle_timeout");
        self
    }

    /// Sets [`stall_timeout`](ServerConfig::stall_timeout) (default 30 s); `None`
    /// for no limit.
    ///
    /// # Panics
    ///
    /// If `timeout` is `Some(Duration::ZERO)`: a zero is not "none".
    pub fn stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.stall_timeout = timeout_setting(timeout, "stall_timeout");
        self
    }

    /// Sets [`busy_idle_timeout`](ServerConfig::busy_idle_timeout)
    /// (default 5 s); `None` for no limit.
    ///
    /// # Panics
    ///
    /// If `timeout` is `Some(Duration::ZERO)`: a zero is not "none".
    pub fn busy_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.busy_idle_timeout = timeout_setting(timeout, "busy_idle_timeout");
        self
    }

    /// Sets [`busy_session_limit`](ServerConfig::busy_session_limit)
    /// (default 60 s); `None` for no limit.
    ///
    /// # Panics
    ///
    /// If `limit` is `Some(Duration::ZERO)`: a zero is not "none".
    pub fn busy_session_limit(mut self, limit: Option<Duration>) -> Self {
        self.busy_session_limit = timeout_setting(limit, "busy_session_limit");
        self
    }

    /// Sets [`min_rate`](ServerConfig::min_rate) in bytes per second
    /// (default 500); `None` for no minimum.
    ///
    /// # Panics
    ///
    /// If `rate` is `Some(0)`: a zero is not "none".
    pub fn min_rate(mut self, rate: Option<u64>) -> Self {
        assert_ne!(rate, Some(0), "use None for no min_rate");
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
    ///
    /// # Panics
    ///
    /// If `timeout` is zero.
    pub fn proxy_timeout(mut self, timeout: Duration) -> Self {
        assert!(!timeout.is_zero(), "proxy_timeout must not be zero");
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

    pub(crate) fn admission(&self) -> Policy {
        let per_source = match self.max_per_source {
            0 => usize::MAX,
            n => n,
        };
        MaxWaiting(super::limits::waiting_bound(self))
            .and(PerSourceCap::new(per_source))
            .and(QueueTimeout(self.queue_timeout.unwrap_or(Duration::MAX)))
    }
}

/// The file server's admission policy, built from its [`ServerConfig`].
pub(crate) type Policy = And<And<MaxWaiting, PerSourceCap>, QueueTimeout>;

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
    /// A thread could not be started, or the listener not set up.
    #[error("cannot start the server")]
    Start(#[source] io::Error),
}
