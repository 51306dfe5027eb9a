//! nginx from the distribution's packages as a child process of a bench:
//! the baseline a file server's new-connection cost is measured against.
//!
//! The configuration is generated into a temporary directory (pid file,
//! error log and temporary paths there, nothing under /etc or /var) and
//! follows Debian's defaults where they matter for speed: `worker_processes
//! auto` (one worker per core), `sendfile on`, `tcp_nopush on`; access log
//! off, as the `filesrv` servers it is compared with log nothing. It
//! serves `root` on a listening socket this process binds on 127.0.0.1
//! port 0 and passes down (nginx takes over inherited sockets named in its
//! `NGINX` environment variable, as in its binary upgrade), so the port is
//! never guessed and connections queue from the first moment. The
//! socket has the congestion control the bench pins
//! ([`machine::pinned_listener`]); with `deferred`, nginx sets
//! `TCP_DEFER_ACCEPT` on it (its `listen ... deferred`). With [`Ssl`]
//! the listener speaks TLS (`listen ... ssl`): TLS 1.2 and 1.3, as
//! `filesrv` (rustls) offers, OpenSSL's default suites, with or without
//! session resumption.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{machine, process};
use filesrv_testkit::tools;

/// A running nginx serving a directory on 127.0.0.1; stopped (`SIGTERM`,
/// which the master passes to its workers) and reaped on drop, its
/// directory removed.
pub(crate) struct Nginx {
    child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx serving `root` (with `listen ... deferred` when
    /// `deferred`; the caller checked it is installed, a missing one is
    /// an error here). Returns once the
    /// master has started its workers (it says so on its error log,
    /// which goes to a pipe read here); an nginx that exits instead is an
    /// error carrying what it wrote.
    pub(crate) fn start(root: &Path, deferred: bool) -> io::Result<Nginx> {
        Nginx::start_sized(root, deferred, 1024)
    }

    /// [`start`](Nginx::start) with `connections` as each worker's
    /// `worker_connections` (and descriptors for them): enough for the
    /// `idle` scenario's connections all in one worker.
    pub(crate) fn start_sized(
        root: &Path,
        deferred: bool,
        connections: usize,
    ) -> io::Result<Nginx> {
        Nginx::launch(root, deferred, connections, None)
    }

    /// [`start`](Nginx::start) with an `ssl` listener.
    pub(crate) fn start_ssl(root: &Path, ssl: &Ssl<'_>) -> io::Result<Nginx> {
        Nginx::launch(root, false, 1024, Some(ssl))
    }

    fn launch(
        root: &Path,
        deferred: bool,
        connections: usize,
        ssl: Option<&Ssl<'_>>,
    ) -> io::Result<Nginx> {
        let program = tools::require("nginx")
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "nginx is not installed"))?;
        let listener = machine::pinned_listener()?;
        // nginx makes only the sockets it opens itself non-blocking; a
        // blocking one would hold a worker in `accept` whenever the other
        // worker took the connection, its own clients starving meanwhile.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let dir = std::env::temp_dir().join(format!("filesrv-bench-nginx-{}", addr.port()));
        fs::create_dir_all(&dir)?;
        let config = dir.join("nginx.conf");
        fs::write(
            &config,
            config_text(&dir, root, addr, deferred, connections, ssl),
        )?;
        let inherited = tools::Inherited::new(&listener);
        let child = Command::new(program)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&config)
            // Before the configuration is read, errors go to stderr too.
            .args(["-e", "stderr"])
            .env("NGINX", format!("{};", inherited.raw()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        drop(inherited);
        // nginx holds its own copy of the socket now.
        drop(listener);
        let mut nginx = Nginx {
            child: child?,
            addr,
            dir,
        };
        nginx.wait_started()?;
        Ok(nginx)
    }

    /// The master's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the error log (at `notice`) until the master says it started
    /// its workers; then keeps draining it on a thread.
    fn wait_started(&mut self) -> io::Result<()> {
        let stderr = self.child.stderr.take().expect("piped");
        process::wait_for_line(stderr, "start worker processes")
            .map_err(|said| io::Error::other(format!("nginx did not start: {said}")))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        process::terminate(&mut self.child);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// An `ssl` listener's certificate and key (PEM), and whether clients
/// may resume sessions.
pub(crate) struct Ssl<'a> {
    pub(crate) cert: &'a Path,
    pub(crate) key: &'a Path,
    /// `true`: nginx's defaults, `ssl_session_cache none` (no cache) and
    /// `ssl_session_tickets on` (OpenSSL's stateless tickets, two per
    /// TLS 1.3 handshake), so a client that offers a ticket resumes;
    /// `false`: `ssl_session_cache off` and `ssl_session_tickets off`, no
    /// ticket sent, every handshake full.
    pub(crate) resumption: bool,
}

/// The configuration: Debian's defaults that matter for speed, paths in
/// `dir`, the listening address `addr` (the inherited socket's), up to
/// `connections` per worker, idle keep-alive connections kept longer than
/// any run; TLS on the listener with `ssl`.
fn config_text(
    dir: &Path,
    root: &Path,
    addr: SocketAddr,
    deferred: bool,
    connections: usize,
    ssl: Option<&Ssl<'_>>,
) -> String {
    let dir = dir.display();
    let deferred = if deferred { " deferred" } else { "" };
    let (ssl, tls) = match ssl {
        None => ("", String::new()),
        Some(ssl) => {
            let sessions = if ssl.resumption {
                ""
            } else {
                "
        ssl_session_cache off;
        ssl_session_tickets off;"
            };
            (
                " ssl",
                format!(
                    "
        ssl_certificate \"{}\";
        ssl_certificate_key \"{}\";
        ssl_protocols TLSv1.2 TLSv1.3;{sessions}",
                    ssl.cert.display(),
                    ssl.key.display()
                ),
            )
        }
    };
    format!(
        "daemon off;
master_process on;
worker_processes auto;
pid {dir}/nginx.pid;
error_log stderr notice;
worker_rlimit_nofile {files};
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
    keepalive_timeout 600s;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {addr}{deferred}{ssl};
        root \"{root}\";{tls}
    }}
}}
",
        root = root.display(),
        files = connections + 64,
    )
}
