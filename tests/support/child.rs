//! The `filesrv` binary as a child process.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{Conn, LIMIT};

/// The `filesrv` binary as a child process on 127.0.0.1, with its log
/// (`-v`) drained by a thread and offered line by line. Killed and reaped
/// on drop.
pub(crate) struct ChildServer {
    child: std::process::Child,
    addr: SocketAddr,
    log: crossbeam_channel::Receiver<String>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl ChildServer {
    /// `filesrv -v --bind 127.0.0.1 0 <max_running> --root <root>`; add
    /// options before spawning.
    pub(crate) fn command(root: &Path, max_running: usize) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_filesrv"));
        command
            .args(["-v", "--bind", "127.0.0.1", "0"])
            .arg(max_running.to_string())
            .arg("--root")
            .arg(root)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command
    }

    /// Starts the command and waits (at most [`LIMIT`]) for its
    /// `serving on <addr>` log line.
    pub(crate) fn spawn(mut command: std::process::Command) -> ChildServer {
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = crossbeam_channel::unbounded();
        let drain = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // The receiver may be gone; keep draining so the child
                // never blocks on a full pipe.
                let _ = tx.send(line);
            }
        });
        let mut server = ChildServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            drain: Some(drain),
        };
        let line = server
            .wait_log("serving on ")
            .expect("the server did not start");
        let addr = line.rsplit("serving on ").next().unwrap().trim();
        server.addr = addr.parse().unwrap();
        server
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap()
    }

    pub(crate) fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// The next log line containing `needle`, waiting at most [`LIMIT`];
    /// `None` if the log ended first.
    pub(crate) fn wait_log(&self, needle: &str) -> Option<String> {
        self.log_until(needle).pop()
    }

    /// The log lines up to and including the next one containing
    /// `needle`, waiting at most [`LIMIT`]; empty if the log ended first.
    pub(crate) fn log_until(&self, needle: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + LIMIT;
        let mut lines = Vec::new();
        loop {
            match self.log.recv_deadline(deadline) {
                Ok(line) if line.contains(needle) => {
                    lines.push(line);
                    return lines;
                }
                Ok(line) => lines.push(line),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    panic!("no log line with {needle:?} within {LIMIT:?}")
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Vec::new(),
            }
        }
    }

    /// Sends `signal` to the server.
    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(self.pid(), signal).unwrap();
    }

    /// Waits (at most `limit`) for the server to exit; its log closing is
    /// the sign. Returns the exit status.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            match self.log.recv_deadline(deadline) {
                Ok(_) => {}
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    panic!("the server did not exit within {limit:?}")
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.child.wait().unwrap()
    }

    /// The CPU time the server has used so far, user plus system, read
    /// from `/proc/<pid>/stat` (clock ticks taken as 100 per second, as
    /// on every Linux configuration in use).
    pub(crate) fn cpu_time(&self) -> Duration {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name in parentheses: state is the 3rd
        // field overall, utime the 14th and stime the 15th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// The server's peak resident memory (`VmHWM`), in KiB.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Sets one of the server's resource limits (both soft and hard).
    pub(crate) fn set_limit(&self, resource: rustix::process::Resource, value: u64) {
        let limit = rustix::process::Rlimit {
            current: Some(value),
            maximum: Some(value),
        };
        rustix::process::prlimit(Some(self.pid()), resource, limit).unwrap();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}
