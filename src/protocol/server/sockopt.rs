//! Socket options at the lowest cost per connection: set once on the
//! listener and inherited, a read timeout changed only when it must, and
//! the cork that sends the replies to pipelined requests together.
//! Also the listener's deferred accept (`TCP_DEFER_ACCEPT`), when asked.
//!
//! Linux copies a listening socket's options to every socket `accept`
//! returns (`TCP_NODELAY`, `SO_SNDTIMEO` and `SO_RCVTIMEO` among them), so
//! what every connection needs is set once here, and a new connection
//! costs no `setsockopt` for them.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use rustix::net::sockopt::{Timeout, set_socket_timeout, set_tcp_cork, set_tcp_nodelay};

use super::config::ServerConfig;

/// How far the read timeout already set may be from the one wanted and
/// still be used: a read may end this much before or after its deadline
/// (the kernel already rounds the timeout up to a clock tick, 1 to 10 ms).
/// Each request's idle deadline is set anew, so between requests the time
/// left differs from the previous one by microseconds.
const SLACK: Duration = Duration::from_millis(1);

/// Sets on `listener` what every accepted connection inherits:
/// `TCP_NODELAY` (replies are small and latency-bound; bodies are sent
/// with explicit corking instead of Nagle's delays), the stall timeout
/// for writes, and the idle timeout for reads (what a session's first
/// read waits; see [`ReadTimeout::inherited`]). With
/// [`defer_accept`](ServerConfig::defer_accept), also `TCP_DEFER_ACCEPT`
/// (without it, a passed socket keeps whatever it was given).
pub(super) fn set_inherited(listener: &TcpListener, config: &ServerConfig) -> io::Result<()> {
    set_tcp_nodelay(listener, true)?;
    set_socket_timeout(listener, Timeout::Send, nonzero(config.stall_timeout)?)?;
    set_socket_timeout(listener, Timeout::Recv, nonzero(config.idle_timeout)?)?;
    if config.defer_accept {
        set_tcp_defer_accept(listener, DEFER_ACCEPT_SECS)?;
    }
    Ok(())
}

/// How long the kernel holds a connection whose client has not spoken,
/// in seconds: nginx's choice for `deferred`. The kernel turns it into
/// one retransmission of its SYN-ACK (at about 1 s); the client's answer
/// to that one is accepted, data or not.
const DEFER_ACCEPT_SECS: i32 = 1;

/// Sets `TCP_DEFER_ACCEPT` on a listening socket: it becomes readable,
/// and `accept` returns a connection, only once the client's first data
/// (or its FIN) arrived, or the `secs` of waiting are over; 0 turns it
/// off. Neither rustix nor socket2 offers this option.
#[allow(unsafe_code)]
fn set_tcp_defer_accept(listener: &TcpListener, secs: i32) -> io::Result<()> {
    // SAFETY: `listener` is an open socket for the whole call, and the
    // option's value is a C int, passed by pointer with its exact size.
    let result = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const secs).cast(),
            INT_LEN,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The listener's `TCP_DEFER_ACCEPT`, in seconds as the kernel rounds it;
/// 0: off.
#[cfg(test)]
#[allow(unsafe_code)]
fn tcp_defer_accept(listener: &TcpListener) -> io::Result<i32> {
    let mut secs: libc::c_int = 0;
    let mut len = INT_LEN;
    // SAFETY: `listener` is open for the whole call; the kernel writes at
    // most `len` bytes (a C int's size) into `secs` and the length back.
    let result = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw mut secs).cast(),
            &raw mut len,
        )
    };
    if result == 0 {
        Ok(secs)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The size of a C int option, as `setsockopt` takes it.
#[allow(clippy::cast_possible_truncation, reason = "4 fits")]
const INT_LEN: libc::socklen_t = std::mem::size_of::<libc::c_int>() as libc::socklen_t;

/// A zero timeout means none to the kernel; refused as
/// [`TcpStream::set_read_timeout`] refuses it.
fn nonzero(timeout: Option<Duration>) -> io::Result<Option<Duration>> {
    match timeout {
        Some(t) if t.is_zero() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot set a 0 duration timeout",
        )),
        other => Ok(other),
    }
}

/// The read timeout of one connection's socket, as last set: set again
/// only when the wanted one is more than [`SLACK`] away from it.
#[derive(Debug)]
pub(super) struct ReadTimeout {
    current: Option<Duration>,
}

impl ReadTimeout {
    /// The timeout of a socket accepted from a listener prepared by
    /// [`set_inherited`]: the idle timeout.
    pub(super) fn inherited(config: &ServerConfig) -> ReadTimeout {
        ReadTimeout {
            current: config.idle_timeout,
        }
    }

    /// Makes the next read on `stream` wait about `wanted` at most.
    pub(super) fn set(&mut self, stream: &TcpStream, wanted: Option<Duration>) -> io::Result<()> {
        let fits = match (self.current, wanted) {
            (None, None) => true,
            (Some(current), Some(wanted)) => current.abs_diff(wanted) <= SLACK,
            _ => false,
        };
        if !fits {
            stream.set_read_timeout(wanted)?;
            self.current = wanted;
        }
        Ok(())
    }
}

/// `TCP_CORK` of one connection. Held while the client has already sent
/// the next request (`GET` then `QUIT` in one write), so the replies
/// leave in full segments, the end of stream with the last of them,
/// instead of a segment (and a wake-up of the client) per reply line;
/// released before any read that may wait for the client. Shutting the
/// write side or closing sends what is held, and the kernel sends it
/// after 200 ms in any case.
#[derive(Debug, Default)]
pub(super) struct Cork {
    held: bool,
}

impl Cork {
    /// Holds back partial segments from now on.
    pub(super) fn hold(&mut self, stream: &TcpStream) -> io::Result<()> {
        if !self.held {
            set_tcp_cork(stream, true)?;
            self.held = true;
        }
        Ok(())
    }

    /// Sends what is held, and every reply at once from now on.
    pub(super) fn release(&mut self, stream: &TcpStream) -> io::Result<()> {
        if self.held {
            set_tcp_cork(stream, false)?;
            self.held = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    /// What the server relies on: an accepted socket has the options set
    /// on its listener.
    #[test]
    fn accepted_sockets_inherit_the_listeners_options() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let config = ServerConfig::new("/")
            .idle_timeout(Some(Duration::from_secs(7)))
            .stall_timeout(Some(Duration::from_secs(3)));
        set_inherited(&listener, &config).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
        assert_eq!(
            accepted.write_timeout().unwrap(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            accepted.read_timeout().unwrap(),
            Some(Duration::from_secs(7))
        );
        assert!(ReadTimeout::inherited(&config).current == accepted.read_timeout().unwrap());
    }

    #[test]
    fn defer_accept_is_set_on_the_listener_only_when_asked() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        set_inherited(&listener, &ServerConfig::new("/")).unwrap();
        assert_eq!(tcp_defer_accept(&listener).unwrap(), 0);
        set_inherited(&listener, &ServerConfig::new("/").defer_accept(true)).unwrap();
        assert_eq!(tcp_defer_accept(&listener).unwrap(), DEFER_ACCEPT_SECS);
    }

    /// A passed socket (systemd's, whose unit may say `DeferAcceptSec=`)
    /// gets the option from `from_listener` too, and keeps its own when
    /// the setting is off.
    #[test]
    fn a_passed_listener_gets_defer_accept_and_keeps_its_own_without_it() {
        let root = std::env::temp_dir().join(format!("filesrv-defer-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let passed = TcpListener::bind("127.0.0.1:0").unwrap();
        // The same socket as the server's: what is set there shows here.
        let seen = passed.try_clone().unwrap();
        let config = ServerConfig::new(&root).defer_accept(true);
        let server = crate::protocol::Server::from_listener(passed, config).unwrap();
        assert_eq!(tcp_defer_accept(&seen).unwrap(), DEFER_ACCEPT_SECS);
        server.shutdown();

        let passed = TcpListener::bind("127.0.0.1:0").unwrap();
        set_tcp_defer_accept(&passed, 5).unwrap();
        // Rounded up to whole retransmissions of the SYN-ACK: 1 + 2 + 4 s.
        let given = tcp_defer_accept(&passed).unwrap();
        assert_eq!(given, 7);
        let seen = passed.try_clone().unwrap();
        let server = crate::protocol::Server::from_listener(passed, ServerConfig::new(&root));
        assert_eq!(tcp_defer_accept(&seen).unwrap(), given);
        server.unwrap().shutdown();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn no_timeout_is_inherited_as_none() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let config = ServerConfig::new("/")
            .idle_timeout(None)
            .stall_timeout(None);
        set_inherited(&listener, &config).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(accepted.write_timeout().unwrap(), None);
        assert_eq!(accepted.read_timeout().unwrap(), None);
    }

    #[test]
    fn the_read_timeout_is_set_only_when_it_moves_past_the_slack() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let set = Some(Duration::from_secs(30));
        stream.set_read_timeout(set).unwrap();
        let mut timeout = ReadTimeout { current: set };
        // Within the slack: the socket keeps what it has.
        timeout
            .set(&stream, Some(Duration::from_secs(30) - SLACK))
            .unwrap();
        assert_eq!(stream.read_timeout().unwrap(), set);
        // Past it, or to none: set.
        let shorter = Some(Duration::from_secs(20));
        timeout.set(&stream, shorter).unwrap();
        assert_eq!(stream.read_timeout().unwrap(), shorter);
        timeout.set(&stream, None).unwrap();
        assert_eq!(stream.read_timeout().unwrap(), None);
        timeout.set(&stream, set).unwrap();
        assert_eq!(stream.read_timeout().unwrap(), set);
    }
}
