//! A real HAProxy in front of servers under test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{LIMIT, TempDir, tools};

/// An `haproxy` child process, killed and reaped on drop.
///
/// The frontend's listening socket is bound by the test (127.0.0.1, port
/// 0) and inherited by haproxy (`bind fd@N`), so clients can connect at
/// once: until haproxy accepts, they wait in the socket's backlog. No
/// readiness polling is needed. Its stderr (state changes such as
/// `Server be/s2 enters drain state`) is offered line by line.
pub(crate) struct HaProxy {
    child: Child,
    addr: SocketAddr,
    log: crossbeam_channel::Receiver<String>,
    dir: TempDir,
}

impl HaProxy {
    /// Starts haproxy in TCP mode, forwarding its frontend to one backend
    /// server described by `server` (`ADDR` and its options, such as
    /// `send-proxy-v2` or `ssl verify none`), with a stats socket.
    pub(crate) fn forwarding(label: &str, server: &str) -> HaProxy {
        HaProxy::start(
            label,
            &format!(
                "global\n\
                 \x20   stats socket @STATS@ mode 600 level admin\n\
                 defaults\n\
                 \x20   mode tcp\n\
                 \x20   timeout connect 5s\n\
                 \x20   timeout client 30s\n\
                 \x20   timeout server 30s\n\
                 frontend fe\n\
                 \x20   bind @FRONTEND@\n\
                 \x20   default_backend be\n\
                 backend be\n\
                 \x20   server s1 {server}\n"
            ),
        )
    }

    /// Starts haproxy on `config`, in which `@FRONTEND@` stands for the
    /// frontend's address (`fd@N`) and `@STATS@` for the stats socket's
    /// path. The test checks first that haproxy is there
    /// ([`tools::require`]); here its absence is a panic.
    pub(crate) fn start(label: &str, config: &str) -> HaProxy {
        let haproxy = tools::require("haproxy").expect("haproxy, required first");
        let dir = TempDir::new(label);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inherited = tools::Inherited::new(&listener);
        let config = config
            .replace("@FRONTEND@", &format!("fd@{}", inherited.raw()))
            .replace("@STATS@", dir.path().join("stats.sock").to_str().unwrap());
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let mut child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(inherited);
        drop(listener);
        let stderr = child.stderr.take().unwrap();
        let (lines, log) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = lines.send(line);
            }
        });
        HaProxy {
            child,
            addr,
            log,
            dir,
        }
    }

    /// The frontend's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits (at most [`LIMIT`]) for a line of haproxy's stderr that
    /// contains `needle`; panics if none comes.
    pub(crate) fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        let mut seen = Vec::new();
        loop {
            match self.log.recv_deadline(deadline) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(e) => panic!(
                    "no haproxy line with {needle:?} ({e}) in\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// Waits at most `within` for a line of haproxy's stderr that
    /// contains `needle`; `None` if none came by then.
    pub(crate) fn log_within(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            match self.log.recv_deadline(deadline) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    fn stats_socket(&self) -> PathBuf {
        self.dir.path().join("stats.sock")
    }

    /// Runs one command on the stats socket and returns its answer.
    pub(crate) fn command(&self, command: &str) -> String {
        let mut socket = UnixStream::connect(self.stats_socket()).unwrap();
        socket.set_read_timeout(Some(LIMIT)).unwrap();
        socket.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).unwrap();
        answer
    }

    /// `show stat`'s `status` column (e.g. `UP`, `DRAIN (agent)`) for
    /// server `server` of backend `backend`.
    pub(crate) fn server_status(&self, backend: &str, server: &str) -> String {
        let stat = self.command("show stat");
        let header: Vec<&str> = stat
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = header.iter().position(|&c| c == "status").unwrap();
        stat.lines()
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|fields| fields.len() > column && fields[0] == backend && fields[1] == server)
            .map(|fields| fields[column].to_owned())
            .unwrap_or_else(|| panic!("no {backend}/{server} in\n{stat}"))
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
