//! A line-echo server on the admission core: a custom [`Handler`] behind a
//! custom [`Admission`] policy.
//!
//! ```text
//! cargo run --example custom_handler -- [PORT]    (default 7878)
//! printf 'hello\nquit\n' | nc 127.0.0.1 7878
//! ```
//!
//! Each client gets its lines back until it sends `quit` (answered `bye`)
//! or hangs up. Two clients are served at a time; the policy, written by
//! hand, lets at most [`MAX_WAITING`] more wait for a slot, and at most
//! [`PER_SOURCE`] connections (running or waiting) come from one address.
//! A refused client is told why in one line, `refused: <reason>`, by
//! [`Handler::refused`], which the accepting loop calls through
//! [`Refused::notify`](filesrv::Refused::notify). Ctrl-C stops the server.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use filesrv::admission::{Arrival, Decision, Departure, PerKeyCap};
use filesrv::protocol::LingeringCloser;
use filesrv::{Admission, Handler, HandlerContext, Manager, ManagerBuilder, Refusal, Stop};

/// Clients served at the same time.
const MAX_RUNNING: usize = 2;
/// Clients that may wait for a slot when every one is taken.
const MAX_WAITING: usize = 8;
/// Connections, running or waiting, from one address.
const PER_SOURCE: usize = 4;
/// The longest line echoed; a longer one ends the connection.
const MAX_LINE: usize = 1024;
/// How long a client may stay silent, or leave a reply unread.
const IDLE: Duration = Duration::from_secs(60);

/// The work for one client: echo its lines.
struct Echo {
    stream: TcpStream,
    peer: IpAddr,
    /// Closes a refused connection without losing its last line.
    closer: LingeringCloser,
}

impl Echo {
    fn new(stream: TcpStream, closer: LingeringCloser) -> io::Result<Echo> {
        stream.set_read_timeout(Some(IDLE))?;
        stream.set_write_timeout(Some(IDLE))?;
        let peer = stream.peer_addr()?.ip();
        Ok(Echo {
            stream,
            peer,
            closer,
        })
    }
}

impl Handler for Echo {
    fn run(self, ctx: &HandlerContext) -> io::Result<()> {
        // On shutdown: stop reading (the loop below sees the end of the
        // stream), then, once the grace period is over, writing too.
        let hook = self.stream.try_clone()?;
        ctx.on_stop(move |stop| {
            let how = match stop {
                Stop::Graceful => Shutdown::Read,
                _ => Shutdown::Both,
            };
            let _ = hook.shutdown(how);
        });
        let mut reader = BufReader::new(&self.stream);
        let mut writer = &self.stream;
        let mut line = Vec::new();
        loop {
            line.clear();
            let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX);
            (&mut reader).take(limit).read_until(b'\n', &mut line)?;
            match line.as_slice() {
                [] => return Ok(()),
                b"quit\n" | b"quit\r\n" => return writer.write_all(b"bye\n"),
                [.., b'\n'] => writer.write_all(&line)?,
                _ => return writer.write_all(b"line too long\n"),
            }
        }
    }

    fn source(&self) -> Option<IpAddr> {
        Some(self.peer)
    }

    fn refused(self, reason: Refusal) {
        // Called on the accepting thread (or the one shutting down), which
        // must not wait: the line is written without blocking, and the
        // closer drains what the client already sent before closing, so
        // that a reset does not swallow the line.
        let line = format!("refused: {reason}\n");
        self.closer.refuse(self.stream, line.as_bytes());
    }
}

/// The admission policy, written by hand: per address first (the
/// library's [`PerKeyCap`] keeps those counts: up when a client is
/// admitted, down when it departs, whatever the way), then the length of
/// the queue once every slot is taken.
struct Policy {
    max_waiting: usize,
    per_source: PerKeyCap,
}

impl Policy {
    fn new(max_waiting: usize, per_source: usize) -> Policy {
        Policy {
            max_waiting,
            per_source: PerKeyCap::new(per_source),
        }
    }
}

impl Admission for Policy {
    fn decide(&mut self, arrival: &Arrival) -> Decision {
        let by_source = self.per_source.decide(arrival);
        if by_source != Decision::Queue {
            by_source
        } else if arrival.running >= arrival.max_running && arrival.waiting >= self.max_waiting {
            Decision::Refuse(Refusal::Overloaded)
        } else {
            Decision::Queue
        }
    }

    // Both forwarded, or the per-address counts would never move.
    fn admitted(&mut self, arrival: &Arrival) {
        self.per_source.admitted(arrival);
    }

    fn departed(&mut self, departure: &Departure) {
        self.per_source.departed(departure);
    }
}

/// A manager running `max_running` echo handlers behind [`Policy`].
fn manager(max_running: usize, policy: Policy) -> io::Result<Manager<Echo, Policy>> {
    ManagerBuilder::new(max_running)
        .admission(policy)
        .name("echo")
        .build()
}

/// Hands one accepted connection to the manager; a refused one is told
/// why and closed.
fn admit(
    manager: &Manager<Echo, Policy>,
    closer: &LingeringCloser,
    stream: TcpStream,
) -> io::Result<()> {
    if let Err(refused) = manager.submit(Echo::new(stream, closer.clone())?) {
        refused.notify();
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let port = match std::env::args().nth(1) {
        Some(port) => port
            .parse()
            .map_err(|_| io::Error::other(format!("not a port: {port}")))?,
        None => 7878,
    };
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    let manager = manager(MAX_RUNNING, Policy::new(MAX_WAITING, PER_SOURCE))?;
    let closer = LingeringCloser::start()?;
    eprintln!("echoing on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        // A failed accept or a client gone before it was admitted ends
        // that client only.
        if let Err(e) = stream.and_then(|stream| admit(&manager, &closer, stream)) {
            eprintln!("accept: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long a test waits for any reply before failing.
    const LIMIT: Duration = Duration::from_secs(20);

    /// A listener on 127.0.0.1:0 and a manager with one slot.
    fn server(max_waiting: usize, per_source: usize) -> (TcpListener, Manager<Echo, Policy>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let policy = Policy::new(max_waiting, per_source);
        (listener, manager(1, policy).unwrap())
    }

    /// Connects a client and admits it, as `main`'s loop does.
    fn client(listener: &TcpListener, manager: &Manager<Echo, Policy>) -> TcpStream {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(LIMIT)).unwrap();
        admit(manager, closer(), listener.accept().unwrap().0).unwrap();
        client
    }

    /// One closer for every test.
    fn closer() -> &'static LingeringCloser {
        static CLOSER: std::sync::OnceLock<LingeringCloser> = std::sync::OnceLock::new();
        CLOSER.get_or_init(|| LingeringCloser::start().unwrap())
    }

    /// Sends `line` and asserts it comes back: the client is running.
    fn assert_echo(client: &TcpStream, line: &str) {
        (&*client).write_all(line.as_bytes()).unwrap();
        let mut reply = vec![0; line.len()];
        (&*client).read_exact(&mut reply).unwrap();
        assert_eq!(reply, line.as_bytes());
    }

    /// Everything until the server closes.
    fn rest(client: &TcpStream) -> String {
        let mut rest = String::new();
        (&*client).read_to_string(&mut rest).unwrap();
        rest
    }

    #[test]
    fn echoes_lines_until_quit() {
        let (listener, manager) = server(1, 4);
        let c = client(&listener, &manager);
        (&c).write_all(b"hello\nworld\nquit\n").unwrap();
        assert_eq!(rest(&c), "hello\nworld\nbye\n");
        manager.shutdown(LIMIT);
        assert_eq!(manager.stats().completed, 1);
    }

    #[test]
    fn a_full_queue_refuses_with_a_line() {
        let (listener, manager) = server(1, 4);
        let running = client(&listener, &manager);
        assert_echo(&running, "ping\n");
        let waiting = client(&listener, &manager);
        let refused = client(&listener, &manager);
        assert_eq!(rest(&refused), "refused: server busy\n");
        // The running client leaves; the waiting one gets its slot.
        (&running).write_all(b"quit\n").unwrap();
        assert_eq!(rest(&running), "bye\n");
        assert_echo(&waiting, "pong\n");
        manager.shutdown(LIMIT);
        assert_eq!(manager.stats().refused(Refusal::Overloaded), 1);
    }

    #[test]
    fn a_refused_client_that_already_sent_data_still_gets_its_line() {
        let (listener, manager) = server(0, 4);
        let running = client(&listener, &manager);
        assert_echo(&running, "ping\n");
        for _ in 0..5 {
            let refused = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            refused.set_read_timeout(Some(LIMIT)).unwrap();
            // Unread bytes at close would make the kernel reset the
            // connection, which can destroy the line before it is read.
            (&refused).write_all(&[b'x'; 32 * 1024]).unwrap();
            admit(&manager, closer(), listener.accept().unwrap().0).unwrap();
            // And goes on sending after the server answered, as a client
            // that pipelines does.
            let _ = (&refused).write_all(&[b'y'; 32 * 1024]);
            let mut line = String::new();
            BufReader::new(&refused).read_line(&mut line).unwrap();
            assert_eq!(line, "refused: server busy\n");
        }
        manager.shutdown(LIMIT);
    }

    #[test]
    fn one_address_gets_a_limited_share() {
        let (listener, manager) = server(8, 2);
        let running = client(&listener, &manager);
        assert_echo(&running, "ping\n");
        let _waiting = client(&listener, &manager);
        let refused = client(&listener, &manager);
        assert_eq!(
            rest(&refused),
            "refused: too many connections from your address\n"
        );
        manager.shutdown(LIMIT);
        assert_eq!(manager.stats().refused(Refusal::SourceLimit), 1);
    }

    #[test]
    fn shutdown_tells_waiting_clients_and_stops_running_ones() {
        let (listener, manager) = server(1, 4);
        let running = client(&listener, &manager);
        assert_echo(&running, "ping\n");
        let waiting = client(&listener, &manager);
        let report = manager.shutdown(LIMIT);
        assert_eq!(rest(&waiting), "refused: server is shutting down\n");
        assert_eq!(rest(&running), "");
        assert_eq!((report.refused_waiting, report.cut), (1, 0));
    }
}
