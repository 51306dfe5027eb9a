//! `Server::set_max_running` over real connections: growing starts a
//! waiting client at once, shrinking cuts nobody and holds the next client
//! back until enough leave, and the agent's `maxconn` and the
//! `limit_sessions` metric follow the bound.

use super::metrics::{agent_check, local, sample, scrape};
use crate::support::{Conn, TestServer};

/// A client that was served one `STAT /` and keeps its slot.
fn served(t: &TestServer) -> Conn {
    let mut c = t.connect();
    stat(&mut c);
    c
}

fn stat(c: &mut Conn) {
    c.send(b"STAT /\n");
    assert!(c.line().starts_with("OK d "));
}

/// Shows that one client waits: with a queue of one, the next is refused.
fn queue_is_full(t: &TestServer) {
    t.connect().expect_final_err("busy");
}

/// The `filesrv_limit_sessions` sample of a scrape.
fn limit_metric(t: &TestServer) -> f64 {
    sample(&scrape(t), "filesrv_limit_sessions")
}

#[test]
fn max_running_grows_and_shrinks_on_a_running_server() {
    let t = TestServer::start("resize", |c| {
        c.max_running(1)
            .max_waiting(1)
            .agent(local())
            .metrics(local())
    });
    assert_eq!(agent_check(&t), "up ready 100% maxconn:1\n");
    let mut first = served(&t);
    // The second waits for the only slot...
    let mut second = t.connect();
    second.send(b"STAT /\n");
    queue_is_full(&t);
    // ...and starts when the bound grows.
    t.server.set_max_running(2).unwrap();
    assert!(second.line().starts_with("OK d "));
    assert_eq!(agent_check(&t), "up ready 100% maxconn:2\n");
    assert_eq!(limit_metric(&t), 2.0);

    // Shrinking cuts nobody: both are still served.
    t.server.set_max_running(1).unwrap();
    stat(&mut first);
    stat(&mut second);
    assert_eq!(agent_check(&t), "up ready 100% maxconn:1\n");
    assert_eq!(limit_metric(&t), 1.0);
    // Both still hold a slot, one above the bound: the next client waits,
    // and the queue still has its one place (shown by the one after it
    // being refused)...
    let mut third = t.connect();
    third.send(b"STAT /\n");
    queue_is_full(&t);
    // ...and goes on waiting when the first leaves, the second filling
    // the bound...
    first.send(b"QUIT\n");
    assert_eq!(first.line(), "OK bye");
    first.expect_eof();
    queue_is_full(&t);
    // ...until the second leaves too.
    second.send(b"QUIT\n");
    assert_eq!(second.line(), "OK bye");
    let line = third.line();
    assert!(line.starts_with("OK d "), "{line}");
    assert_eq!(t.server.stats().running, 1);
    drop(third);
    t.assert_serves();
}
