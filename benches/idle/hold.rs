//! Idle keep-alive connections, held by the bench process: each sends one
//! HTTP/1.1 GET, reads its whole reply (checked: `200`, the body's
//! length), and then stays silent, open, until dropped. Loopback only,
//! bounded in count by the caller and in time by a read timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::net::sockopt::set_socket_linger;

/// The longest a held connection's reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections that each did one request and now sit idle.
pub(crate) struct Idle {
    conns: Vec<TcpStream>,
}

impl Idle {
    /// Opens `count` connections to `addr`, one after the other, each
    /// getting `path` (whose body is `len` bytes) once.
    pub(crate) fn open(addr: SocketAddr, count: usize, path: &str, len: usize) -> io::Result<Idle> {
        let request = format!("GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let mut conns = Vec::with_capacity(count);
        let mut buf = vec![0; len + 4096];
        for i in 0..count {
            let mut conn = TcpStream::connect(addr)?;
            conn.set_read_timeout(Some(REPLY_TIMEOUT))?;
            conn.write_all(request.as_bytes())?;
            read_reply(&mut conn, &mut buf, len)
                .map_err(|e| io::Error::new(e.kind(), format!("idle connection {i}: {e}")))?;
            conns.push(conn);
        }
        Ok(Idle { conns })
    }

    /// How many of the connections the server has closed (or sent
    /// something on) since their reply: all should still be open and
    /// silent.
    pub(crate) fn closed(&self) -> io::Result<usize> {
        let mut closed = 0;
        for chunk in self.conns.chunks(1024) {
            let mut fds: Vec<PollFd<'_>> = chunk
                .iter()
                .map(|c| PollFd::new(c, PollFlags::IN | PollFlags::RDHUP))
                .collect();
            poll(&mut fds, Some(&Timespec::default()))?;
            closed += fds.iter().filter(|fd| !fd.revents().is_empty()).count();
        }
        Ok(closed)
    }
}

impl Drop for Idle {
    /// Resets the connections rather than closing them: no `TIME_WAIT`
    /// on this side, so rounds of thousands never run out of ports.
    fn drop(&mut self) {
        for conn in &self.conns {
            let _ = set_socket_linger(conn, Some(Duration::ZERO));
        }
    }
}

/// Reads one reply to a GET: its head up to the blank line, `200`, a
/// `Content-Length` of `len`, and then the body.
fn read_reply(conn: &mut TcpStream, buf: &mut [u8], len: usize) -> io::Result<()> {
    let mut have = 0;
    let head_end = loop {
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if have == buf.len() {
            return Err(io::Error::other("reply head too long"));
        }
        match conn.read(&mut buf[have..])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => have += n,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    if !head.starts_with("HTTP/1.1 200 ") || length != Some(len) {
        return Err(io::Error::other(format!("unexpected reply: {head}")));
    }
    let mut body = have - head_end;
    while body < len {
        match conn.read(&mut buf[..(len - body).min(4096)])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => body += n,
        }
    }
    if body > len {
        return Err(io::Error::other("more bytes than the reply's length"));
    }
    Ok(())
}
