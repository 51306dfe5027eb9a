//! Running slots cannot be held against waiting clients, and waiting
//! clients that hang up leave the queue at once (PROTOCOL.md, Connection
//! life, item 4). Real servers, real sockets; the holders pace their
//! requests (load shape, not synchronisation), and every wait is bounded.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{Conn, TestServer, rss_kib, run_alone};

/// A client that sends `STAT /` every `every` until told to stop or cut;
/// returns how long into its connection it was cut (`None`: never), and
/// the reply line that cut it.
fn hold(
    server: std::net::SocketAddr,
    every: Duration,
    ready: &Barrier,
    stop: &AtomicBool,
) -> Option<(Duration, String)> {
    let connected = Instant::now();
    let mut c = Conn::connect(server);
    let mut first = true;
    for _ in 0..100 {
        // As a careful client does: a line the server sent while we were
        // idle is read before writing more (writing after the server has
        // closed would be answered with a reset, which loses the line).
        c.stream().set_nonblocking(true).unwrap();
        let pending = c.stream().peek(&mut [0; 1]).is_ok_and(|n| n > 0);
        c.stream().set_nonblocking(false).unwrap();
        if !pending {
            c.send(b"STAT /\n");
        }
        let line = c.line();
        if !line.starts_with("OK d ") {
            return Some((connected.elapsed(), line));
        }
        if first {
            ready.wait();
            first = false;
        }
        if stop.load(SeqCst) {
            return None;
        }
        thread::sleep(every);
    }
    None
}

#[test]
fn four_holders_make_room_for_a_fifth_but_only_while_it_waits() {
    let server = TestServer::start("four-holders", |c| {
        c.max_running(4)
            .busy_idle_timeout(Some(Duration::from_secs(1)))
            .busy_session_limit(Some(Duration::from_secs(2)))
    });
    let addr = server.addr();
    let ready = Arc::new(Barrier::new(5));
    let stop = Arc::new(AtomicBool::new(false));
    let holders: Vec<_> = (0..4)
        .map(|_| {
            let (ready, stop) = (ready.clone(), stop.clone());
            thread::spawn(move || hold(addr, Duration::from_millis(500), &ready, &stop))
        })
        .collect();
    ready.wait();
    // Nobody waits: past both limits, the four are never cut.
    thread::sleep(Duration::from_millis(2500));
    assert!(
        holders.iter().all(|h| !h.is_finished()),
        "a holder was cut with nobody waiting"
    );
    // The holders never leave on their own: the fifth client is served
    // only if one of them is made to make room.
    let mut fifth = server.connect();
    fifth.send(b"STAT /\n");
    assert!(fifth.line().starts_with("OK d "));
    stop.store(true, SeqCst);
    let cut: Vec<_> = holders
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    assert!(!cut.is_empty(), "no holder made room");
    for (after, line) in cut {
        assert!(line.starts_with("ERR busy "), "{line}");
        assert!(after >= Duration::from_secs(2), "cut after {after:?}");
    }
}

/// Sends `STAT /` on `c` and checks the answer: `c` is running.
fn stat(mut c: Conn) -> Conn {
    c.send(b"STAT /\n");
    assert!(c.line().starts_with("OK d "));
    c
}

/// One running slot, busy idle timeout 1 s, no session limit.
fn one_slot_idle_limit(label: &str) -> TestServer {
    TestServer::start(label, |c| {
        c.max_running(1)
            .busy_idle_timeout(Some(Duration::from_secs(1)))
            .busy_session_limit(None)
    })
}

#[test]
fn a_connection_already_idle_too_long_is_cut_when_a_client_arrives() {
    let server = one_slot_idle_limit("idle-cut");
    let mut idle = stat(server.connect());
    // A timed wait for a known deadline: idle past the limit.
    thread::sleep(Duration::from_millis(1200));
    let arrived = Instant::now();
    let mut waiting = server.connect();
    waiting.send(b"STAT /\n");
    idle.expect_final_err("timeout");
    // At the arrival, not at a later timer; the bound is generous for a
    // loaded machine.
    let cut = arrived.elapsed();
    assert!(cut < Duration::from_secs(10), "cut after {cut:?}");
    assert!(waiting.line().starts_with("OK d "));
}

#[test]
fn a_connection_that_passes_the_limit_while_a_client_waits_is_cut_then() {
    let server = one_slot_idle_limit("idle-timer");
    let mut idle = stat(server.connect());
    let idle_since = Instant::now();
    let mut waiting = server.connect();
    waiting.send(b"STAT /\n");
    idle.expect_final_err("timeout");
    let cut = idle_since.elapsed();
    assert!(
        cut >= Duration::from_millis(950) && cut < Duration::from_secs(10),
        "cut after {cut:?} idle"
    );
    assert!(waiting.line().starts_with("OK d "));
}

#[test]
fn with_nobody_waiting_an_idle_connection_keeps_its_slot() {
    let server = one_slot_idle_limit("idle-alone");
    let idle = stat(server.connect());
    thread::sleep(Duration::from_millis(1500));
    stat(idle);
}

#[test]
fn a_thousand_waiters_that_hang_up_leave_at_once() {
    run_alone("server::slots::a_thousand_waiters_that_hang_up_leave_at_once_alone");
}

/// Run alone in a child process by the test above, so that the resident
/// set it measures is the server's and its own.
#[test]
#[ignore = "run in its own process by a_thousand_waiters_that_hang_up_leave_at_once"]
fn a_thousand_waiters_that_hang_up_leave_at_once_alone() {
    const N: usize = 1000;
    let server = TestServer::start("hangups", |c| {
        c.max_running(1)
            .max_waiting(N)
            .busy_idle_timeout(None)
            .busy_session_limit(None)
    });
    let mut holder = stat(server.connect());
    // One that sent its request and shut its write side, as `nc -N`.
    let mut half_closed = server.connect();
    half_closed.send(b"STAT /\n");
    half_closed.half_close();
    let before = rss_kib();
    let waiters: Vec<Conn> = (0..N - 1).map(|_| server.connect()).collect();
    // The queue is full: every waiter is in it.
    server.connect().expect_final_err("busy");
    let hung_up = Instant::now();
    drop(waiters);
    // A timed wait for a known deadline: the contract's 100 ms, with
    // slack for a loaded machine.
    thread::sleep(Duration::from_secs(3).saturating_sub(hung_up.elapsed()));
    let stats = server.server.stats();
    assert_eq!(stats.abandoned, (N - 1) as u64, "{stats:?}");
    assert_eq!(stats.waiting, 1, "{stats:?}");
    // A live client finds room in the queue (not ERR busy).
    let mut live = server.connect();
    live.send(b"STAT /\n");
    holder.send(b"QUIT\n");
    assert_eq!(holder.line(), "OK bye");
    assert!(half_closed.line().starts_with("OK d "), "nc -N client");
    half_closed.expect_eof();
    assert!(live.line().starts_with("OK d "));
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 10 * 1024, "RSS grew by {grown} KiB");
}
