//! A manager with a [`Source`]: idle workers accept their own connections
//! (leader/follower), the accepting thread takes over while every worker
//! is busy. Real listeners on 127.0.0.1 port 0; every wait is bounded,
//! and synchronisation is by channels and the admission policy's calls,
//! never by sleeping.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, unbounded};
use filesrv::{
    Admission, Arrival, BoxHandler, Decision, Handler, HandlerContext, Manager, ManagerBuilder,
    MaxWaiting, Refusal, Source, Unbounded, handler_fn,
};

use crate::support::{Conn, LIMIT, SHORT, TestServer, connect_from};

/// What the handlers of one test share: who started, who may go on, how
/// many run at once.
#[derive(Clone)]
struct Shared {
    /// The name each handler read from its client, as it starts.
    started: Sender<String>,
    /// One message lets one handler whose name begins with `hold` finish.
    release: Receiver<()>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// The names of the threads that accepted, in order.
    acceptors: Arc<Mutex<Vec<String>>>,
}

/// Reads a name line from its client, reports it, waits for a release if
/// the name says `hold`, then answers `served <name>` and closes.
struct Named {
    stream: TcpStream,
    shared: Shared,
}

impl Handler for Named {
    fn run(self, _ctx: &HandlerContext) -> io::Result<()> {
        let Named { stream, shared } = self;
        let now = shared.running.fetch_add(1, SeqCst) + 1;
        shared.peak.fetch_max(now, SeqCst);
        let mut name = String::new();
        BufReader::new(&stream).read_line(&mut name)?;
        let name = name.trim_end().to_owned();
        let _ = shared.started.send(name.clone());
        if name.starts_with("hold") {
            let _ = shared.release.recv_timeout(LIMIT);
        }
        shared.running.fetch_sub(1, SeqCst);
        (&stream).write_all(format!("served {name}\n").as_bytes())
    }

    /// Reads the name first: a close with unread bytes would be a reset.
    fn refused(self, reason: Refusal) {
        let _ = BufReader::new(&self.stream).read_line(&mut String::new());
        let _ = (&self.stream).write_all(format!("refused {reason:?}\n").as_bytes());
    }
}

/// The test listener as a source of [`Named`] handlers.
struct Listener {
    listener: TcpListener,
    shared: Shared,
    /// Calls of `accept` left that panic first.
    panics: AtomicUsize,
}

impl Source<BoxHandler> for Listener {
    fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    fn accept(&self) -> io::Result<Option<BoxHandler>> {
        let panics = self.panics.load(SeqCst);
        if panics > 0 {
            self.panics.store(panics - 1, SeqCst);
            panic!("deliberate panic in accept");
        }
        match self.listener.accept() {
            Ok((stream, _)) => {
                let name = thread::current().name().unwrap_or("").to_owned();
                self.shared.acceptors.lock().unwrap().push(name);
                let shared = self.shared.clone();
                Ok(Some(BoxHandler::new(Named { stream, shared })))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Tells the test each admitted arrival's id (the policy's own calls,
/// under the admission lock), and queues everyone.
struct Told(Sender<u64>);

impl Admission for Told {
    fn decide(&mut self, _arrival: &Arrival) -> Decision {
        Decision::Queue
    }
    fn admitted(&mut self, arrival: &Arrival) {
        let _ = self.0.send(arrival.id);
    }
    const HEARS_DEPARTURES: bool = false;
}

/// Refuses everyone as unavailable.
struct Closed;

impl Admission for Closed {
    fn decide(&mut self, _arrival: &Arrival) -> Decision {
        Decision::Refuse(Refusal::Unavailable)
    }
    const HEARS_DEPARTURES: bool = false;
}

struct Setup {
    addr: SocketAddr,
    shared: Shared,
    started: Receiver<String>,
    release: Sender<()>,
}

/// A listener on 127.0.0.1 port 0 and the state its handlers share.
fn setup() -> (Listener, Setup) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, started) = unbounded();
    let (release, release_rx) = unbounded();
    let shared = Shared {
        started: started_tx,
        release: release_rx,
        running: Arc::default(),
        peak: Arc::default(),
        acceptors: Arc::default(),
    };
    let source = Listener {
        listener,
        shared: shared.clone(),
        panics: AtomicUsize::new(0),
    };
    let setup = Setup {
        addr,
        shared,
        started,
        release,
    };
    (source, setup)
}

/// A client that sends its name.
fn client(addr: SocketAddr, name: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.write_all(format!("{name}\n").as_bytes()).unwrap();
    stream
}

/// Everything the server sent until it closed.
fn reply(mut stream: TcpStream) -> String {
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

fn next_start(setup: &Setup) -> String {
    setup
        .started
        .recv_timeout(LIMIT)
        .expect("a handler started")
}

#[test]
fn idle_workers_accept_and_serve_exact_bytes() {
    let (source, setup) = setup();
    let manager: Manager<BoxHandler> = ManagerBuilder::new(2)
        .name("lf")
        .build_with_source(source)
        .unwrap();
    // One client at a time: after the first few, both workers are idle
    // and waiting on the listener whenever a client connects.
    for round in 0..40 {
        let name = format!("c{round}");
        assert_eq!(reply(client(setup.addr, &name)), format!("served {name}\n"));
    }
    let acceptors = setup.shared.acceptors.lock().unwrap().clone();
    assert_eq!(acceptors.len(), 40);
    assert!(
        acceptors.iter().any(|name| name.starts_with("lf-worker-")),
        "no worker accepted: {acceptors:?}"
    );
    // A client sees the end before its handler is counted complete.
    assert!(manager.wait_idle_timeout(LIMIT));
    let stats = manager.stats();
    assert_eq!((stats.submitted, stats.completed), (40, 40));
    manager.shutdown(LIMIT);
}

#[test]
fn the_bound_holds_and_the_busy_manager_queues_what_it_accepts() {
    let (source, setup) = setup();
    let (admitted_tx, admitted) = unbounded();
    let manager: Manager<BoxHandler, _> = ManagerBuilder::new(2)
        .admission(Told(admitted_tx))
        .name("lf")
        .build_with_source(source)
        .unwrap();
    let clients: Vec<_> = (0..6)
        .map(|i| client(setup.addr, &format!("hold{i}")))
        .collect();
    let mut started = vec![next_start(&setup), next_start(&setup)];
    // Both workers are held: the others are accepted by the accepting
    // thread and wait in the queue; none starts.
    for _ in 0..6 {
        assert!(admitted.recv_timeout(LIMIT).is_ok(), "not all accepted");
    }
    assert_eq!(manager.stats().waiting, 4);
    assert!(setup.started.recv_timeout(SHORT).is_err(), "a third ran");
    for _ in 0..4 {
        setup.release.send(()).unwrap();
        started.push(next_start(&setup));
    }
    for _ in 0..2 {
        setup.release.send(()).unwrap();
    }
    started.sort();
    let names: Vec<_> = (0..6).map(|i| format!("hold{i}")).collect();
    assert_eq!(started, names);
    for (stream, name) in clients.into_iter().zip(&names) {
        assert_eq!(reply(stream), format!("served {name}\n"));
    }
    assert_eq!(setup.shared.peak.load(SeqCst), 2, "more than 2 ran at once");
    let acceptors = setup.shared.acceptors.lock().unwrap().clone();
    assert!(
        acceptors.iter().any(|name| name == "lf-accept"),
        "the accepting thread never took over: {acceptors:?}"
    );
    manager.shutdown(LIMIT);
}

#[test]
fn a_waiting_client_starts_before_a_newer_connection() {
    let (source, setup) = setup();
    let (admitted_tx, admitted) = unbounded();
    let manager: Manager<BoxHandler, _> = ManagerBuilder::new(1)
        .admission(Told(admitted_tx))
        .build_with_source(source)
        .unwrap();
    let first = client(setup.addr, "hold-first");
    assert_eq!(next_start(&setup), "hold-first");
    assert!(admitted.recv_timeout(LIMIT).is_ok());
    // The worker is busy: this one is accepted by the accepting thread and
    // waits in the queue.
    let waiting = client(setup.addr, "waiting");
    assert!(admitted.recv_timeout(LIMIT).is_ok());
    // Connected after it waited, this one is newer.
    let newer = client(setup.addr, "newer");
    setup.release.send(()).unwrap();
    assert_eq!(next_start(&setup), "waiting");
    assert_eq!(next_start(&setup), "newer");
    assert_eq!(reply(first), "served hold-first\n");
    assert_eq!(reply(waiting), "served waiting\n");
    assert_eq!(reply(newer), "served newer\n");
    manager.shutdown(LIMIT);
}

#[test]
fn a_submit_wakes_a_worker_waiting_on_the_source() {
    let (source, setup) = setup();
    let manager: Manager<BoxHandler> = ManagerBuilder::new(3).build_with_source(source).unwrap();
    let manager = Arc::new(manager);
    // Another thread submits, one handler at a time; each must run with
    // every worker idle on the listener (a lost wake-up leaves it waiting
    // until the bounded receive fails).
    let (ran_tx, ran) = unbounded();
    let submitter = {
        let manager = manager.clone();
        thread::spawn(move || {
            for round in 0..300u32 {
                let ran_tx = ran_tx.clone();
                let job = handler_fn(move |_| {
                    let _ = ran_tx.send(round);
                    Ok(())
                });
                manager.submit(BoxHandler::new(job)).unwrap();
                assert!(manager.wait_idle_timeout(LIMIT), "round {round} never ran");
            }
        })
    };
    for round in 0..300u32 {
        assert_eq!(ran.recv_timeout(LIMIT), Ok(round), "a lost wake-up");
    }
    submitter.join().unwrap();
    // The listener still works beside it.
    assert_eq!(reply(client(setup.addr, "after")), "served after\n");
    manager.shutdown(LIMIT);
}

#[test]
fn a_burst_of_submits_wakes_as_many_waiting_workers_as_it_needs() {
    let (source, setup) = setup();
    let manager: Manager<BoxHandler> = ManagerBuilder::new(3).build_with_source(source).unwrap();
    let (started_tx, started) = unbounded();
    let (release_tx, release) = unbounded::<()>();
    // Each round, three handlers that all hold their worker until the
    // round ends: all three workers, idle on the listener, must wake.
    for round in 0..50 {
        for _ in 0..3 {
            let (started_tx, release) = (started_tx.clone(), release.clone());
            let job = handler_fn(move |_| {
                let _ = started_tx.send(());
                let _ = release.recv_timeout(LIMIT);
                Ok(())
            });
            manager.submit(BoxHandler::new(job)).unwrap();
        }
        for n in 0..3 {
            assert!(
                started.recv_timeout(LIMIT).is_ok(),
                "round {round}: only {n} of 3 woke"
            );
        }
        for _ in 0..3 {
            release_tx.send(()).unwrap();
        }
        assert!(manager.wait_idle_timeout(LIMIT));
    }
    assert_eq!(reply(client(setup.addr, "after")), "served after\n");
    manager.shutdown(LIMIT);
}

#[test]
fn shutdown_with_workers_waiting_on_the_source_is_prompt() {
    let (source, setup) = setup();
    let manager: Manager<BoxHandler> = ManagerBuilder::new(4).build_with_source(source).unwrap();
    assert_eq!(reply(client(setup.addr, "one")), "served one\n");
    // The client sees the end of its reply a moment before the handler
    // that sent it leaves its running place: wait for that, so that the
    // shutdown meets only workers waiting on the source.
    assert!(manager.wait_idle_timeout(LIMIT));
    let (done_tx, done) = unbounded();
    thread::spawn(move || {
        let report = manager.shutdown(Duration::from_secs(5));
        let _ = done_tx.send(report);
    });
    let report = done
        .recv_timeout(LIMIT)
        .expect("the shutdown did not return");
    // Idle workers were not running anything: no grace was waited for.
    assert_eq!((report.running_at_start, report.cut), (0, 0));
}

#[test]
fn nothing_is_accepted_once_stopped_but_submit_still_works() {
    let (source, setup) = setup();
    let manager: Manager<BoxHandler> = ManagerBuilder::new(2).build_with_source(source).unwrap();
    assert_eq!(reply(client(setup.addr, "before")), "served before\n");
    manager.stop_accepting();
    manager.stop_accepting();
    // Connected, in the kernel's backlog, and never taken.
    let mut late = client(setup.addr, "late");
    late.set_read_timeout(Some(SHORT)).unwrap();
    let mut byte = [0u8; 1];
    let err = late.read(&mut byte).unwrap_err();
    assert!(matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ));
    assert_eq!(setup.shared.acceptors.lock().unwrap().len(), 1);
    let (ran_tx, ran) = unbounded();
    let job = handler_fn(move |_| {
        let _ = ran_tx.send(());
        Ok(())
    });
    manager.submit(BoxHandler::new(job)).unwrap();
    assert!(ran.recv_timeout(LIMIT).is_ok());
    manager.shutdown(LIMIT);
}

#[test]
fn max_running_shrinks_and_grows_with_a_source() {
    let (source, setup) = setup();
    let manager: Manager<BoxHandler, _> = ManagerBuilder::new(4)
        .admission(Unbounded)
        .build_with_source(source)
        .unwrap();
    assert_eq!(reply(client(setup.addr, "warm")), "served warm\n");
    assert_eq!(next_start(&setup), "warm");
    manager.set_max_running(1).unwrap();
    let clients: Vec<_> = (0..3)
        .map(|i| client(setup.addr, &format!("hold{i}")))
        .collect();
    let mut started = vec![next_start(&setup)];
    assert!(setup.started.recv_timeout(SHORT).is_err(), "ran past 1");
    assert_eq!(setup.shared.peak.load(SeqCst), 1);
    // Grown: the two waiting start at once, in queue order.
    manager.set_max_running(3).unwrap();
    started.push(next_start(&setup));
    started.push(next_start(&setup));
    assert_eq!(setup.shared.running.load(SeqCst), 3);
    for _ in 0..3 {
        setup.release.send(()).unwrap();
    }
    started.sort();
    assert_eq!(started, ["hold0", "hold1", "hold2"]);
    for (i, stream) in clients.into_iter().enumerate() {
        assert_eq!(reply(stream), format!("served hold{i}\n"));
    }
    manager.shutdown(LIMIT);
}

#[test]
fn a_refusal_on_the_source_path_reaches_the_client() {
    let (source, setup) = setup();
    let manager: Manager<BoxHandler, _> = ManagerBuilder::new(2)
        .admission(Closed)
        .name("lf")
        .build_with_source(source)
        .unwrap();
    for _ in 0..5 {
        assert_eq!(reply(client(setup.addr, "x")), "refused Unavailable\n");
    }
    let stats = manager.stats();
    assert_eq!(
        (stats.submitted, stats.admitted, stats.completed),
        (5, 0, 0)
    );
    manager.shutdown(LIMIT);
}

#[test]
fn the_file_server_refuses_a_second_client_of_a_source_over_its_cap() {
    let server = TestServer::start("lf-cap", |c| c.max_running(2).max_per_source(1));
    server.dir.write("a.txt", "abc");
    let mut first = server.connect();
    first.assert_get("a.txt", b"abc");
    // A worker is idle: it accepts the second itself, and the cap refuses.
    server.connect().expect_final_err("busy");
    // Another address is not over its cap.
    let other = connect_from(Ipv4Addr::new(127, 0, 0, 2), server.addr()).unwrap();
    Conn::from_stream(other).assert_get("a.txt", b"abc");
    first.send(b"QUIT\n");
    assert_eq!(first.line(), "OK bye");
}

#[test]
fn a_max_waiting_refusal_comes_from_the_accepting_thread() {
    let (source, setup) = setup();
    let manager: Manager<BoxHandler, _> = ManagerBuilder::new(1)
        .admission(MaxWaiting(0))
        .build_with_source(source)
        .unwrap();
    // Rounds, so that the accepting thread is found asleep (a worker was
    // waiting on the source when it last looked) at some point: only the
    // worker that stops waiting last can wake it then.
    for _ in 0..20 {
        let held = client(setup.addr, "hold");
        assert_eq!(next_start(&setup), "hold");
        // The only worker is busy, so nobody waits on the source: the
        // accepting thread takes this one, and no waiting place is free.
        assert_eq!(reply(client(setup.addr, "x")), "refused QueueFull\n");
        setup.release.send(()).unwrap();
        assert_eq!(reply(held), "served hold\n");
        // Its client saw the end before the handler left the running
        // count: the next `hold` must not find it still running.
        assert!(manager.wait_idle_timeout(LIMIT));
    }
    manager.shutdown(LIMIT);
}

#[test]
fn a_source_that_panics_is_backed_off_from_not_fatal() {
    let (mut source, setup) = setup();
    source.panics = AtomicUsize::new(3);
    let manager: Manager<BoxHandler> = ManagerBuilder::new(2).build_with_source(source).unwrap();
    // The connection stays in the backlog through the panics, and is
    // served after the back-off.
    assert_eq!(reply(client(setup.addr, "late")), "served late\n");
    assert_eq!(reply(client(setup.addr, "next")), "served next\n");
    manager.shutdown(LIMIT);
}
