//! What a new connection goes through at its two ends: deferred accept
//! (`defer_accept`, `--defer-accept`: a connection is accepted once its
//! client has spoken, and from then on the queue, the watcher of waiting
//! clients and the busy limits behave as the protocol says), and the
//! close after `QUIT`.
//!
//! Each test that needs a client to stay silent connects it just before
//! the client that speaks: the kernel holds a silent connection for about
//! a second before it accepts it anyway.

use filesrv::protocol::ServerConfig;
use std::io::{ErrorKind, Read};
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
/// FIN is more than the handshake's ACK) and leaves without a request
/// served, as the protocol says; the one behind it is served.
#[test]
fn a_client_that_hangs_up_unheard_is_accepted_and_leaves() {
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
    // Every count final. The one that hung up was dropped from the queue,
    // or, if it was accepted only as the slot came free, ran into its end
    // of stream at once; either way it was accepted, and nothing failed.
    t.server.shutdown();
    let stats = t.server.stats();
    assert_eq!(stats.abandoned + stats.completed, 3, "{stats:?}");
    assert_eq!(stats.failed + stats.refused_total(), 0, "{stats:?}");
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

/// Bytes after `QUIT` are never read, and closing a socket whose kernel
/// buffer still holds bytes sends a reset, which would also throw away
/// the replies still held back (corked, since the next request was
/// already in): with more than a buffer's worth behind `QUIT` the server
/// sends its replies and its FIN before it closes. The client waits in
/// the queue while it sends, so all of it is there before the server
/// reads.
#[test]
fn replies_before_quit_survive_a_flood_sent_after_it() {
    let t = TestServer::start("quit-then-more", |c| c.max_running(1));
    t.dir.write("notes.txt", NOTES);
    let mut running = t.connect();
    running.send(b"STAT notes.txt\n");
    assert!(running.line().starts_with("OK f "));
    let mut c = t.connect();
    let mut script = b"GET notes.txt\nQUIT\n".to_vec();
    script.resize(script.len() + 256 * 1024, b'x');
    let mut writer = c.stream().try_clone().unwrap();
    // The server stops reading after QUIT: what it never reads may stay
    // unsent here, and the write then fails on the reset.
    let flood = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut writer, &script);
    });
    running.send(b"QUIT\n");
    assert_eq!(running.line(), "OK bye");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    // Until the end of the stream, or the reset that follows it.
    loop {
        match c.reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{e}; read so far: {:?}", String::from_utf8_lossy(&got)),
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("OK 13\n{}OK bye\n", String::from_utf8_lossy(NOTES))
    );
    flood.join().unwrap();
}
