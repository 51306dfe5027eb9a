//! A raw protocol connection: write bytes, read exact replies, every read
//! bounded by [`LIMIT`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use super::LIMIT;

/// A raw protocol connection: write bytes, read exact replies. Reads time
/// out after [`LIMIT`], so a hung server fails the test instead of hanging.
pub(crate) struct Conn {
    pub(crate) reader: BufReader<TcpStream>,
}

impl Conn {
    pub(crate) fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, LIMIT).unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        stream.set_write_timeout(Some(LIMIT)).unwrap();
        Conn {
            reader: BufReader::new(stream),
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.stream().write_all(bytes).unwrap();
    }

    /// Like [`Conn::send`], but reports failure (the server may have closed).
    pub(crate) fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream().write_all(bytes)
    }

    /// Shuts the write side, as `nc -N` does after its input.
    pub(crate) fn half_close(&mut self) {
        self.stream().shutdown(Shutdown::Write).unwrap();
    }

    /// The next reply line without its `\n`; panics on end of stream.
    pub(crate) fn line(&mut self) -> String {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).unwrap();
        assert_eq!(
            line.last(),
            Some(&b'\n'),
            "no complete line: {:?}",
            String::from_utf8_lossy(&line)
        );
        line.pop();
        String::from_utf8(line).unwrap()
    }

    /// Asserts the next line is `ERR <code> <non-empty message>`.
    pub(crate) fn expect_err(&mut self, code: &str) {
        let line = self.line();
        let prefix = format!("ERR {code} ");
        assert!(
            line.starts_with(&prefix) && line.len() > prefix.len(),
            "expected ERR {code}, got {line:?}"
        );
    }

    /// Exactly `n` body bytes.
    pub(crate) fn body(&mut self, n: usize) -> Vec<u8> {
        let mut body = vec![0; n];
        self.reader.read_exact(&mut body).unwrap();
        body
    }

    /// Everything until the server closes.
    /// A reset counts as the end; a server that never closes fails the
    /// test after [`LIMIT`].
    pub(crate) fn rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        if let Err(e) = self.reader.read_to_end(&mut rest) {
            assert!(
                !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "the server did not close the connection within {LIMIT:?}"
            );
        }
        rest
    }

    /// Asserts the server closes the connection with nothing more to say.
    pub(crate) fn expect_eof(&mut self) {
        let rest = self.rest();
        assert!(
            rest.is_empty(),
            "expected end of stream, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Everything until the server closes. Unlike [`Conn::rest`], fails the
    /// test when the server does not close within the read timeout, or
    /// resets the connection (which may have destroyed replies).
    pub(crate) fn read_until_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        if let Err(e) = self.reader.read_to_end(&mut rest) {
            panic!(
                "connection not closed cleanly: {e}; read so far: {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
        rest
    }

    /// Asserts the server closes the connection cleanly, with nothing more
    /// to say, within the read timeout.
    pub(crate) fn expect_closed(&mut self) {
        let rest = self.read_until_closed();
        assert!(
            rest.is_empty(),
            "expected end of stream, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Asserts the next line is `ERR <code> <non-empty message>`; returns
    /// the message.
    pub(crate) fn err_message(&mut self, code: &str) -> String {
        let line = self.line();
        let message = line
            .strip_prefix(&format!("ERR {code} "))
            .map(str::to_owned);
        match message {
            Some(message) if !message.is_empty() => message,
            _ => panic!("expected ERR {code}, got {line:?}"),
        }
    }

    /// Asserts the next line is `ERR <code> <message>`, and that the server
    /// then closes the connection cleanly.
    pub(crate) fn expect_final_err(&mut self, code: &str) {
        self.expect_err(code);
        self.expect_closed();
    }

    /// Sends `GET <args>` (a path, and an offset if wanted) and asserts
    /// the reply is `OK <n>` and exactly `contents`.
    pub(crate) fn assert_get(&mut self, args: &str, contents: &[u8]) {
        self.send(format!("GET {args}\n").as_bytes());
        assert_eq!(self.line(), format!("OK {}", contents.len()), "GET {args}");
        assert_eq!(self.body(contents.len()), contents, "GET {args}");
    }

    /// Wraps a stream connected elsewhere (e.g. by [`connect_from`]).
    pub(crate) fn from_stream(stream: TcpStream) -> Conn {
        Conn {
            reader: BufReader::new(stream),
        }
    }

    /// The next reply line, or `None` when the server closed (or reset)
    /// the connection first; a server that does neither fails the test
    /// after [`LIMIT`].
    pub(crate) fn try_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                Some(String::from_utf8_lossy(&line).into_owned())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("neither a line nor the end within {LIMIT:?}")
            }
            _ => None,
        }
    }

    /// Closes with a reset (SO_LINGER 0) instead of a FIN.
    pub(crate) fn reset(self) {
        let stream = self.reader.into_inner();
        rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO)).unwrap();
    }

    /// Asserts a last `ERR <code> ...` line, after which the connection
    /// ends, closed or reset (as when the client was still sending).
    pub(crate) fn expect_last_err(&mut self, code: &str) {
        self.expect_err(code);
        assert_eq!(self.try_line(), None, "the connection stayed open");
    }

    /// Sends each request line in turn and asserts its `ERR <code>` reply;
    /// the connection stays open.
    pub(crate) fn expect_refusals(&mut self, refusals: &[(&str, &str)]) {
        for (request, code) in refusals {
            self.send(format!("{request}\n").as_bytes());
            self.expect_err(code);
        }
    }
}

/// A TCP connection to `addr` from the loopback address `from` (any of
/// 127.0.0.0/8), so that tests can play many distinct sources. `std`
/// cannot bind before connecting, so the socket is made with rustix. The
/// connect is bounded by [`LIMIT`] (Linux applies the send timeout to it).
pub(crate) fn connect_from(from: std::net::Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    use rustix::net::{self, AddressFamily, SocketFlags, SocketType, sockopt};
    assert!(from.is_loopback() && addr.ip().is_loopback());
    // Close-on-exec, as std's sockets are: a child spawned meanwhile by
    // another test must not inherit it.
    let fd = net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(LIMIT))?;
    net::bind(&fd, &std::net::SocketAddrV4::new(from, 0))?;
    net::connect(&fd, &addr)?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(LIMIT))?;
    stream.set_write_timeout(Some(LIMIT))?;
    Ok(stream)
}
