//! A line-echo server whose idle connections hold no thread: after each
//! reply the handler parks itself (`Served::Park`), and the manager brings
//! it back through admission when its client sends the next line. Two
//! worker threads serve any number of mostly idle clients.
//!
//! ```text
//! cargo run --example parked_echo -- 127.0.0.1:9100
//! ```
//!
//! then, in as many terminals as you like, `nc 127.0.0.1 9100`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use filesrv::admission::MaxWaiting;
use filesrv::{Handler, HandlerContext, Manager, ManagerBuilder, Served};

/// One client: its socket and nothing else, since a line is read byte by
/// byte (so nothing of the client's is buffered here when it parks).
struct Echo(TcpStream);

impl Handler for Echo {
    /// Without parking: echo lines until the client hangs up.
    fn run(mut self, ctx: &HandlerContext) -> io::Result<()> {
        while let Served::Park(echo) = self.serve(ctx)? {
            self = echo;
        }
        Ok(())
    }

    /// One line echoed, then parked until the next.
    fn serve(mut self, _ctx: &HandlerContext) -> io::Result<Served<Self>> {
        let mut line = Vec::new();
        let mut byte = [0u8];
        while byte[0] != b'\n' {
            if self.0.read(&mut byte)? == 0 {
                return Ok(Served::Done);
            }
            line.push(byte[0]);
        }
        self.0.write_all(&line)?;
        Ok(Served::Park(self))
    }

    fn source(&self) -> Option<std::net::IpAddr> {
        self.0.peer_addr().ok().map(|a| a.ip())
    }

    /// Watched while parked (and while waiting).
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.0.as_fd())
    }

    /// A parked client that hung up is dropped, not run.
    fn is_abandoned(&self) -> bool {
        let _ = self.0.set_nonblocking(true);
        let gone = matches!(self.0.peek(&mut [0]), Ok(0));
        let _ = self.0.set_nonblocking(false);
        gone
    }
}

/// Accepts until the listener fails or the manager shuts down, submitting
/// an `Echo` per client.
fn serve(listener: &TcpListener, manager: &Manager<Echo>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        if manager.is_shutting_down() {
            return;
        }
        if let Err(refused) = manager.submit(Echo(stream)) {
            drop(refused.into_handler());
        }
    }
}

fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".to_owned())
        .parse()
        .map_err(io::Error::other)?;
    let listener = TcpListener::bind(addr)?;
    let manager = ManagerBuilder::new(2)
        .admission(MaxWaiting(64))
        .park_idle_timeout(Some(Duration::from_secs(300)))
        .build()?;
    eprintln!("echoing on {addr}");
    serve(&listener, &manager);
    Ok(())
}

#[test]
fn two_workers_serve_a_hundred_idle_clients() {
    use std::io::BufRead;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let manager = ManagerBuilder::new(2).build().unwrap();
    std::thread::scope(|scope| {
        let manager = &manager;
        let listener = &listener;
        scope.spawn(move || serve(listener, manager));
        let mut clients: Vec<_> = (0..100)
            .map(|_| {
                let c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                io::BufReader::new(c)
            })
            .collect();
        // Every client speaks twice, in turns: each line is served though
        // only two run at once, because the others are parked, not held.
        for round in 0..2 {
            for (i, client) in clients.iter_mut().enumerate() {
                let line = format!("{round} {i}\n");
                client.get_mut().write_all(line.as_bytes()).unwrap();
                let mut back = String::new();
                client.read_line(&mut back).unwrap();
                assert_eq!(back, line);
            }
        }
        assert!(manager.wait_idle_timeout(Duration::from_secs(20)));
        assert_eq!(manager.stats().parked, 100);
        assert_eq!(manager.shutdown(Duration::ZERO).closed_parked, 100);
        // Wakes the accepting thread, which then finds the listener gone.
        drop(TcpStream::connect(addr));
    });
}
