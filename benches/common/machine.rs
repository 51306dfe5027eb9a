//! What the transfer bench pins of the machine, so that its figures are
//! the servers' and not the machine's: the congestion control of the
//! listening sockets it creates, and the big file in the page cache.
//!
//! - Congestion control. A VM whose default is BBR paces every segment
//!   over loopback with a kernel timer (there is no `fq` qdisc on `lo`),
//!   and each server's write pattern then steers a bulk transfer by up
//!   to half its speed either way from run to run. Every listener the
//!   bench creates (for `filesrv`, nginx and the bare `sendfile` loop)
//!   gets [`CONGESTION`] set with `TCP_CONGESTION`, which accepted
//!   sockets inherit; the bench prints what the sockets have and what the
//!   system's default is.
//! - The page cache. A VM may evict a file's cold pages between rounds
//!   (DAMON `pageout`), and a GET that reads from disk measures the
//!   disk. [`warm`] reads the file through before each run and then asks
//!   `fincore` (util-linux) how much of it is resident.

use std::fs::{self, File};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;

use rustix::net::sockopt::{set_tcp_congestion, tcp_congestion};

/// The congestion control pinned on the bench's listeners: Linux's
/// default, which needs no pacing.
pub(crate) const CONGESTION: &str = "cubic";

/// A listener on 127.0.0.1 with a free port, the largest backlog (as
/// `Server::bind` listens) and [`CONGESTION`].
pub(crate) fn pinned_listener() -> io::Result<TcpListener> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    rustix::net::listen(&listener, i32::MAX)?;
    set_tcp_congestion(&listener, CONGESTION)?;
    Ok(listener)
}

/// One line for the bench's output: what `listener` (and so every socket
/// accepted from it) uses, and the system's default.
pub(crate) fn congestion_line(listener: &TcpListener) -> String {
    let pinned = tcp_congestion(listener).unwrap_or_else(|e| format!("unknown ({e})"));
    let default = fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map_or_else(|e| format!("unknown ({e})"), |s| s.trim().to_owned());
    format!("congestion control: {pinned} on the listeners (system default {default})")
}

/// Reads `path` through (into the page cache), then returns the fraction
/// of it that is resident, by `fincore`; `None` if `fincore` cannot say.
pub(crate) fn warm(path: &Path) -> io::Result<Option<f64>> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    while file.read(&mut buf)? > 0 {}
    Ok(resident_bytes(path).map(|bytes| bytes as f64 / size as f64))
}

/// The bytes of `path` in the page cache, by `fincore --bytes`.
fn resident_bytes(path: &Path) -> Option<u64> {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}
