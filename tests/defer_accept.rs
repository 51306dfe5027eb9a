//! `defer_accept` (`--defer-accept`): a connection is accepted once its
//! client has spoken, and from then on the queue, the watcher of waiting
//! clients and the busy limits behave as the protocol says.
//!
//! Each test that needs a client to stay silent connects it just before
//! the client that speaks: the kernel holds a silent connection for about
//! a second before it accepts it anyway.

use filesrv::protocol::ServerConfig;
use std::net::TcpListener;

use crate::support::{ChildServer, Conn, NOTES, SHORT, TempDir, TestServer, tools};

/// A server with deferred accept, one running slot, no idle or busy
/// limits unless `configure` sets them, serving `notes.txt`.
fn serve(label: &str, configure: impl FnOnce(ServerConfig) -> ServerConfig) -> TestServer {
    let t = TestServer::start(label, |c| {
        configure(
            c.defer_accept(true)
                .max_running(1)
                .idle_timeout(None)
                .busy_idle_timeout(None)
                .busy_session_limit(None),
        )
    });
    t.dir.write("notes.txt", NOTES);
    t
}

fn get_notes_then_bye(c: &mut Conn) {
    assert_eq!(c.line(), format!("OK {}", NOTES.len()));
    assert_eq!(c.body(NOTES.len()), NOTES);
    assert_eq!(c.line(), "OK bye");
    c.expect_eof();
}

/// Without deferred accept the silent client would take the only slot,
/// and with no limit to make it leave, the speaking one would wait for
/// ever (the read fails after the support's 20 s).
#[test]
fn a_silent_client_takes_no_slot_and_its_request_is_served_once_it_waits() {
    let t = serve("defer-silent", |c| c.max_waiting(1));
    let mut silent = t.connect();
    let mut speaking = t.connect();
    speaking.send(b"STAT notes.txt\n");
    assert!(speaking.line().starts_with("OK f 13 "));
    // Speaking now: accepted, and it waits behind `speaking`.
    silent.send(b"GET notes.txt\nQUIT\n");
    // The one waiting place is taken: it is in the queue.
    let mut third = t.connect();
    third.send(b"STAT notes.txt\n");
    third.expect_final_err("busy");
    speaking.send(b"QUIT\n");
    assert_eq!(speaking.line(), "OK bye");
    speaking.expect_eof();
    // A request sent while waiting is served.
    get_notes_then_bye(&mut silent);
}

/// A client that hangs up without a word is accepted all the same (its
/// FIN is more than the handshake's ACK), waits, and leaves the queue
/// unrun, as the protocol says.
#[test]
fn a_waiting_client_that_hangs_up_leaves_the_queue() {
    let t = serve("defer-abandoned", |c| c);
    let mut running = t.connect();
    running.send(b"STAT notes.txt\n");
    assert!(running.line().starts_with("OK f "));
    drop(t.connect());
    let mut next = t.connect();
    next.send(b"GET notes.txt\nQUIT\n");
    running.send(b"QUIT\n");
    assert_eq!(running.line(), "OK bye");
    get_notes_then_bye(&mut next);
    // The one that hung up reached the head first (FIFO) and was dropped.
    assert_eq!(t.server.stats().abandoned, 1);
}

/// A client that spoke and waits makes an idle running one leave after
/// the busy idle timeout, and is then served.
#[test]
fn a_waiting_client_makes_an_idle_one_leave() {
    let t = serve("defer-busy-idle", |c| c.busy_idle_timeout(Some(SHORT)));
    let mut running = t.connect();
    running.send(b"STAT notes.txt\n");
    assert!(running.line().starts_with("OK f "));
    let mut waiting = t.connect();
    waiting.send(b"GET notes.txt\nQUIT\n");
    running.expect_final_err("timeout");
    get_notes_then_bye(&mut waiting);
}

/// What `--defer-accept` changes for a client that never speaks: it is
/// accepted after the kernel's wait (about a second), and the idle
/// timeout then runs as for any client.
#[test]
fn a_client_that_never_speaks_is_accepted_after_the_kernels_wait() {
    let t = serve("defer-never", |c| c.idle_timeout(Some(SHORT)));
    let mut silent = t.connect();
    silent.expect_final_err("timeout");
}

/// `--defer-accept` on a socket passed by systemd: a silent client takes
/// no slot there either.
#[test]
fn the_binary_defers_on_a_passed_socket() {
    let dir = TempDir::new("defer-passed");
    dir.write("notes.txt", NOTES);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let passed = tools::Inherited::new(&listener);
    let mut command = ChildServer::command(&dir.root(), 1);
    command
        .args(["--defer-accept", "--idle-timeout", "0"])
        .args(["--busy-idle-timeout", "0", "--busy-session-limit", "0"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDS_FIRST_FD", passed.raw().to_string())
        .env_remove("LISTEN_PID");
    let server = ChildServer::spawn(command);
    drop(passed);
    let addr = listener.local_addr().unwrap();
    assert_eq!(server.addr(), addr);
    let _silent = Conn::connect(addr);
    let mut speaking = Conn::connect(addr);
    speaking.send(b"GET notes.txt\nQUIT\n");
    get_notes_then_bye(&mut speaking);
}
