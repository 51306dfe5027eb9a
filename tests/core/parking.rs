//! Parked handlers: a handler that ends a run with `Served::Park` holds no
//! thread and no running slot until its client sends more, then comes
//! back through admission. Real sockets on 127.0.0.1; every wait bounded.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use filesrv::admission::{Admission, Arrival, Decision, Departure, Key, PerKeyCap, Unbounded};
use filesrv::{Handler, HandlerContext, Manager, ManagerBuilder, Refusal, Served};

use super::races::accounted;
use crate::support::LIMIT;

/// What happened to an echo handler, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Refused(Refusal),
    Dropped,
}

/// Echoes one line per run, then asks to be parked. Reads byte by byte,
/// so nothing of its client's is ever buffered when it parks.
struct Echo {
    stream: TcpStream,
    key: Option<Key>,
    events: Sender<Event>,
}

impl Echo {
    fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        let mut byte = [0u8];
        loop {
            if self.stream.read(&mut byte)? == 0 {
                return Ok(None);
            }
            line.push(byte[0]);
            if byte[0] == b'\n' {
                return Ok(Some(line));
            }
        }
    }
}

impl Handler for Echo {
    fn run(self, ctx: &HandlerContext) -> io::Result<()> {
        self.serve(ctx).map(drop)
    }

    fn serve(mut self, _ctx: &HandlerContext) -> io::Result<Served<Self>> {
        self.stream.set_read_timeout(Some(LIMIT))?;
        match self.read_line()? {
            Some(line) => {
                self.stream.write_all(&line)?;
                Ok(Served::Park(self))
            }
            None => Ok(Served::Done),
        }
    }

    fn key(&self) -> Option<Key> {
        self.key
    }

    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.stream.as_fd())
    }

    fn is_abandoned(&self) -> bool {
        let mut byte = [0u8];
        self.stream.set_nonblocking(true).unwrap();
        let peeked = self.stream.peek(&mut byte);
        self.stream.set_nonblocking(false).unwrap();
        match peeked {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    fn refused(self, reason: Refusal) {
        let _ = self.events.send(Event::Refused(reason));
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Dropped);
    }
}

/// A listener and its manager's handlers' events.
struct Rig<S: Admission> {
    listener: TcpListener,
    manager: Manager<Echo, S>,
    events: Sender<Event>,
    seen: Receiver<Event>,
}

impl<S: Admission> Rig<S> {
    fn new(builder: ManagerBuilder<S>) -> Rig<S> {
        let (events, seen) = unbounded();
        Rig {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
            manager: builder.build().unwrap(),
            events,
            seen,
        }
    }

    /// A client whose handler was submitted.
    fn connect(&self, key: Option<Key>) -> TcpStream {
        let client = TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(LIMIT)).unwrap();
        let (stream, _) = self.listener.accept().unwrap();
        let echo = Echo {
            stream,
            key,
            events: self.events.clone(),
        };
        assert!(self.manager.submit(echo).is_ok(), "refused");
        client
    }

    /// The next event, within the limit.
    fn next_event(&self) -> Event {
        self.seen.recv_timeout(LIMIT).expect("no event in time")
    }
}

/// Sends a line and reads its echo.
fn echo(client: &mut TcpStream, line: &[u8]) {
    client.write_all(line).unwrap();
    let mut back = vec![0; line.len()];
    client.read_exact(&mut back).unwrap();
    assert_eq!(back, line);
}

#[test]
fn a_parked_handler_holds_no_slot_and_comes_back_when_its_client_speaks() {
    let rig = Rig::new(ManagerBuilder::new(1).admission(Unbounded));
    let mut first = rig.connect(None);
    echo(&mut first, b"one\n");
    // Idle: nothing runs or waits once the handler has parked.
    assert!(rig.manager.wait_idle_timeout(LIMIT));
    let stats = rig.manager.stats();
    assert_eq!((stats.running, stats.waiting, stats.parked), (0, 0, 1));
    // The one running slot is free for another client meanwhile.
    let mut second = rig.connect(None);
    echo(&mut second, b"two\n");
    assert!(rig.manager.wait_idle_timeout(LIMIT));
    assert_eq!(rig.manager.stats().parked, 2);
    // The first speaks again: it is served on whatever worker is free.
    echo(&mut first, b"three\n");
    echo(&mut second, b"four\n");
    assert!(rig.manager.wait_idle_timeout(LIMIT));
    let stats = rig.manager.stats();
    assert_eq!((stats.parked, stats.submitted, stats.completed), (2, 2, 0));
    assert!(rig.seen.is_empty());
}

#[test]
fn a_parked_client_that_hangs_up_is_dropped_and_counted_abandoned() {
    let rig = Rig::new(ManagerBuilder::new(2).admission(Unbounded));
    let mut client = rig.connect(None);
    echo(&mut client, b"hello\n");
    assert!(rig.manager.wait_idle_timeout(LIMIT));
    assert_eq!(rig.manager.stats().parked, 1);
    drop(client);
    assert_eq!(rig.next_event(), Event::Dropped);
    let stats = rig.manager.stats();
    assert_eq!((stats.parked, stats.abandoned, stats.submitted), (0, 1, 1));
}

#[test]
fn a_request_sent_and_half_closed_while_parked_is_served() {
    // As `nc -N`: the request, then the write side shut.
    let rig = Rig::new(ManagerBuilder::new(1).admission(Unbounded));
    let mut client = rig.connect(None);
    echo(&mut client, b"a\n");
    assert!(rig.manager.wait_idle_timeout(LIMIT));
    client.write_all(b"b\n").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"b\n");
    assert_eq!(rig.next_event(), Event::Dropped);
}

#[test]
fn the_idle_timeout_refuses_a_parked_handler_no_sooner() {
    const IDLE: Duration = Duration::from_millis(300);
    let rig = Rig::new(
        ManagerBuilder::new(1)
            .admission(Unbounded)
            .park_idle_timeout(Some(IDLE)),
    );
    let mut client = rig.connect(None);
    // Taken before the request: the handler parks after its reply, which
    // may be before or after the client reads it.
    let before_parking = Instant::now();
    echo(&mut client, b"x\n");
    assert_eq!(rig.next_event(), Event::Refused(Refusal::IdleTimeout));
    assert!(before_parking.elapsed() >= IDLE);
    assert_eq!(rig.next_event(), Event::Dropped);
    let stats = rig.manager.stats();
    assert_eq!((stats.parked, stats.refused(Refusal::IdleTimeout)), (0, 1));
}

#[test]
fn past_max_parked_the_longest_parked_is_evicted() {
    let rig = Rig::new(ManagerBuilder::new(1).admission(Unbounded).max_parked(2));
    let mut clients = Vec::new();
    for i in 0..3 {
        // One at a time: the parking order is the order here.
        let mut client = rig.connect(None);
        echo(&mut client, format!("{i}\n").as_bytes());
        assert!(rig.manager.wait_idle_timeout(LIMIT));
        assert_eq!(rig.manager.stats().parked, (i + 1).min(2));
        clients.push(client);
    }
    assert_eq!(rig.next_event(), Event::Refused(Refusal::Evicted));
    // The evicted one is the first: its client sees the end of stream.
    let mut rest = Vec::new();
    clients[0].read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    echo(&mut clients[2], b"still here\n");
}

#[test]
fn shutdown_closes_parked_handlers_at_once() {
    let rig = Rig::new(ManagerBuilder::new(2).admission(Unbounded));
    let mut clients: Vec<TcpStream> = (0..3).map(|_| rig.connect(None)).collect();
    for client in &mut clients {
        echo(client, b"hi\n");
    }
    assert!(rig.manager.wait_idle_timeout(LIMIT));
    let report = rig.manager.shutdown(LIMIT);
    assert_eq!((report.closed_parked, report.cut), (3, 0));
    for _ in 0..3 {
        assert_eq!(rig.next_event(), Event::Refused(Refusal::ShuttingDown));
        assert_eq!(rig.next_event(), Event::Dropped);
    }
    let stats = rig.manager.stats();
    assert_eq!(stats.refused(Refusal::ShuttingDown), 3);
    assert_eq!(stats.parked, 0);
}

/// Records whether each arrival was a returning one, around a per-key cap.
struct Recording {
    cap: PerKeyCap,
    returning: Arc<Mutex<Vec<bool>>>,
}

impl Admission for Recording {
    fn decide(&mut self, arrival: &Arrival) -> Decision {
        self.returning.lock().unwrap().push(arrival.returning);
        self.cap.decide(arrival)
    }
    fn admitted(&mut self, arrival: &Arrival) {
        self.cap.admitted(arrival);
    }
    fn departed(&mut self, departure: &Departure) {
        self.cap.departed(departure);
    }
}

#[test]
fn a_parked_handler_counts_against_its_key_and_returns_through_admission() {
    let returning = Arc::new(Mutex::new(Vec::new()));
    let policy = Recording {
        cap: PerKeyCap::new(1),
        returning: returning.clone(),
    };
    let rig = Rig::new(ManagerBuilder::new(2).admission(policy));
    let key = Some(Key::Class(7));
    let mut client = rig.connect(key);
    echo(&mut client, b"1\n");
    assert!(rig.manager.wait_idle_timeout(LIMIT));
    // Parked, it still holds its key's one place.
    let other = TcpStream::connect(rig.listener.local_addr().unwrap()).unwrap();
    let (stream, _) = rig.listener.accept().unwrap();
    let refused = rig.manager.submit(Echo {
        stream,
        key,
        events: rig.events.clone(),
    });
    assert_eq!(
        refused.err().map(|r| r.reason()),
        Some(Refusal::SourceLimit)
    );
    assert_eq!(rig.next_event(), Event::Dropped);
    drop(other);
    // Its own return is not refused by the cap.
    echo(&mut client, b"2\n");
    assert!(rig.manager.wait_idle_timeout(LIMIT));
    assert_eq!(*returning.lock().unwrap(), [false, false, true]);
    assert_eq!(rig.manager.with_policy(|p| p.cap.count(&Key::Class(7))), 1);
    drop(client);
    assert_eq!(rig.next_event(), Event::Dropped);
    assert_eq!(rig.manager.with_policy(|p| p.cap.count(&Key::Class(7))), 0);
}

#[test]
fn a_request_racing_the_decision_to_park_is_never_lost() {
    // The next line goes out the moment the echo is in, while the handler
    // may still be between its reply and the parking: it must wake it.
    const ROUNDS: usize = 500;
    let rig = Rig::new(ManagerBuilder::new(1).admission(Unbounded));
    let mut client = rig.connect(None);
    for round in 0..ROUNDS {
        echo(&mut client, format!("round {round}\n").as_bytes());
    }
    assert!(rig.manager.wait_idle_timeout(LIMIT));
    let stats = rig.manager.stats();
    assert_eq!((stats.parked, stats.submitted), (1, 1));
}

#[test]
fn counts_add_up_with_parked_handlers() {
    let rig = Rig::new(ManagerBuilder::new(2).admission(Unbounded));
    let mut clients: Vec<TcpStream> = (0..5).map(|_| rig.connect(None)).collect();
    for client in &mut clients {
        echo(client, b"x\n");
    }
    drop(clients.pop());
    assert_eq!(rig.next_event(), Event::Dropped);
    assert!(rig.manager.wait_idle_timeout(LIMIT));
    let s = rig.manager.stats();
    assert_eq!(s.submitted, accounted(&s), "{s:?}");
    assert_eq!(s.parked, 4);
}

#[test]
fn counts_add_up_in_every_snapshot_while_a_parked_handler_comes_back() {
    // A returning handler is parked, waiting or running in every
    // snapshot, never in none of them, however the snapshot falls.
    const ROUNDS: usize = 2_000;
    let rig = Rig::new(ManagerBuilder::new(1).admission(Unbounded));
    let mut client = rig.connect(None);
    let done = AtomicBool::new(false);
    let torn = std::thread::scope(|scope| {
        let snapshots = scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let s = rig.manager.stats();
                if accounted(&s) != s.submitted {
                    return Some(s);
                }
            }
            None
        });
        for round in 0..ROUNDS {
            echo(&mut client, format!("round {round}\n").as_bytes());
        }
        done.store(true, Ordering::Relaxed);
        snapshots.join().unwrap()
    });
    assert_eq!(torn, None, "a snapshot missed the returning handler");
}

/// Queues every arrival, but panics on the first that returns from
/// being parked.
struct PanicsOnFirstReturn(bool);

impl Admission for PanicsOnFirstReturn {
    fn decide(&mut self, arrival: &Arrival) -> Decision {
        if arrival.returning && !self.0 {
            self.0 = true;
            panic!("policy panics");
        }
        Decision::Queue
    }
}

#[test]
fn a_policy_panicking_on_a_returning_handler_costs_no_thread() {
    // The watcher, or a worker about to wait, brings parked handlers
    // back: a panic there drops the handler, counted as panicked, and
    // that thread goes on.
    let rig = Rig::new(ManagerBuilder::new(1).admission(PanicsOnFirstReturn(false)));
    let mut first = rig.connect(None);
    echo(&mut first, b"1\n");
    first.write_all(b"2\n").unwrap();
    // Dropped with its line unread: its client sees the end, or a reset.
    let mut rest = Vec::new();
    let _ = first.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert_eq!(rig.next_event(), Event::Dropped);
    let mut second = rig.connect(None);
    echo(&mut second, b"3\n");
    echo(&mut second, b"4\n");
    assert!(rig.manager.wait_idle_timeout(LIMIT));
    let s = rig.manager.stats();
    assert_eq!((s.panicked, s.parked), (1, 1), "{s:?}");
    assert_eq!(s.submitted, accounted(&s), "{s:?}");
}
