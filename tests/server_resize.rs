//! `Server::set_max_running` over real connections: growing starts a
//! waiting client at once, shrinking cuts nobody and holds the next client
//! back until enough leave, and the agent's `maxconn` and the
//! `limit_sessions` metric follow the bound.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::support::{Conn, LIMIT, TestServer};

fn local() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

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

fn agent_check(t: &TestServer) -> String {
    let mut stream = TcpStream::connect_timeout(&t.server.agent_addr().unwrap(), LIMIT).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

/// The `filesrv_limit_sessions` sample of a scrape.
fn limit_metric(t: &TestServer) -> String {
    let addr = t.server.metrics_addr().unwrap();
    let mut stream = TcpStream::connect_timeout(&addr, LIMIT).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .lines()
        .find_map(|line| line.strip_prefix("filesrv_limit_sessions "))
        .unwrap_or_else(|| panic!("no limit_sessions in\n{response}"))
        .to_owned()
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
    assert_eq!(limit_metric(&t), "2");

    // Shrinking cuts nobody: both are still served.
    t.server.set_max_running(1).unwrap();
    stat(&mut first);
    stat(&mut second);
    assert_eq!(agent_check(&t), "up ready 100% maxconn:1\n");
    assert_eq!(limit_metric(&t), "1");
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
