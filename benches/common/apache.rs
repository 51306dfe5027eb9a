//! Apache httpd (Debian's `apache2-bin`) with the event MPM as a child
//! process of a bench: the thread-based server that already parks idle
//! keep-alive connections (a listener thread owns them in a pollset; a
//! worker takes one only when a request arrives).
//!
//! The configuration is generated into a temporary directory (pid file,
//! runtime files, nothing under /etc or /var), loads only the event MPM
//! and `mod_authz_core`, serves `root` with `EnableSendfile On` (as nginx
//! and filesrv send files) and no access log (as they log nothing), its
//! error log on its stdout (through `cat`, started by httpd), and runs in
//! the foreground (`-DFOREGROUND`). Started by root, the whole
//! server runs as `nobody` (its directory handed to that user), so it is
//! an unprivileged process either way. httpd cannot take over a socket
//! it did not open (Debian's build has no socket activation), so the port
//! is one the kernel just gave this process and then released; `start`
//! tries another if httpd finds it taken meanwhile.
//!
//! [`EVENT_MPM`] holds the sizes chosen so that it can hold the `idle`
//! scenario's 10,000 idle connections beside the load.

use std::fs;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::process;
use filesrv_testkit::tools;

/// Debian's directory of httpd's modules.
const MODULES: &str = "/usr/lib/apache2/modules";

/// The event MPM's sizes, written into the configuration as they are.
///
/// An event-MPM process accepts connections while it has fewer than
/// `ThreadsPerChild + AsyncRequestWorkerFactor × idle workers`; with 2
/// processes of 64 threads and a factor of 200 that is over 12,000 per
/// process with half its workers idle, so 10,000 idle connections and 64
/// busy ones fit with room to spare. Spare-thread bounds at the maximum
/// keep both processes alive for the whole run (a process stopped
/// between rounds would take its CPU time with it).
pub(crate) const EVENT_MPM: &str = "StartServers 2
ServerLimit 2
ThreadLimit 64
ThreadsPerChild 64
MaxRequestWorkers 128
MinSpareThreads 64
MaxSpareThreads 128
AsyncRequestWorkerFactor 200
MaxConnectionsPerChild 0
ListenBacklog 4096";

/// A running httpd serving a directory on 127.0.0.1; stopped (`SIGTERM`,
/// which the parent passes to its children) and reaped on drop, its
/// directory removed.
pub(crate) struct Apache {
    child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    dir: PathBuf,
}

impl Apache {
    /// Starts httpd serving `root`; the caller checked it is installed (a
    /// missing one is an error here). Returns once the parent says it is
    /// resuming normal operations (its listening socket is open by then);
    /// an httpd that exits instead is an error carrying what it wrote.
    pub(crate) fn start(root: &Path) -> io::Result<Apache> {
        let program = tools::require("apache2")
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "apache2 is not installed"))?;
        let mut last = None;
        for _ in 0..3 {
            match Apache::try_start(&program, root) {
                Ok(apache) => return Ok(apache),
                // Another process took the port between its release and
                // httpd's bind: try another.
                Err(e) if e.to_string().contains("Address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("tried"))
    }

    fn try_start(program: &Path, root: &Path) -> io::Result<Apache> {
        let addr = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?.local_addr()?;
        let dir = std::env::temp_dir().join(format!("filesrv-bench-apache-{}", addr.port()));
        fs::create_dir_all(&dir)?;
        let config = dir.join("httpd.conf");
        fs::write(&config, config_text(&dir, root, addr))?;
        let mut command = Command::new(program);
        command
            .args(["-DFOREGROUND", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if rustix::process::geteuid().is_root() {
            // nobody:nogroup on Debian.
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534))?;
            command.uid(65534).gid(65534);
        }
        let mut apache = Apache {
            child: command.spawn()?,
            addr,
            dir,
        };
        apache.wait_started()?;
        Ok(apache)
    }

    /// The parent's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the error log until the parent says it is ready; then keeps
    /// draining it on a thread.
    fn wait_started(&mut self) -> io::Result<()> {
        let stdout = self.child.stdout.take().expect("piped");
        process::wait_for_line(stdout, "resuming normal operations").map_err(|said| {
            // Before its configuration is read, httpd writes to stderr.
            let mut early = String::new();
            if let Some(mut stderr) = self.child.stderr.take() {
                let _ = stderr.read_to_string(&mut early);
            }
            io::Error::other(format!("apache2 did not start: {said}{early}"))
        })
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        process::terminate(&mut self.child);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The configuration: paths in `dir`, `root` served on `addr`, keep-alive
/// without a limit on requests and with a timeout longer than any run.
fn config_text(dir: &Path, root: &Path, addr: SocketAddr) -> String {
    let dir = dir.display();
    let root = root.display();
    format!(
        "ServerRoot \"{dir}\"
DefaultRuntimeDir \"{dir}\"
PidFile \"{dir}/httpd.pid\"
ServerName 127.0.0.1
Listen {addr}
LoadModule mpm_event_module {MODULES}/mod_mpm_event.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
# Through `cat` to httpd's stdout: a process running as nobody may not
# reopen /dev/stderr, a pipe its parent owns.
ErrorLog \"||/bin/cat\"
LogLevel notice
{EVENT_MPM}
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 600
Timeout 60
EnableSendfile On
DocumentRoot \"{root}\"
<Directory \"{root}\">
    Require all granted
</Directory>
"
    )
}
