//! systemd socket activation and readiness: the listening socket passed
//! in `LISTEN_FDS` (here as systemfd passes it, with
//! `LISTEN_FDS_FIRST_FD`, since a child's fd 3 cannot be set without
//! unsafe code), a restart on the same socket that loses no connection
//! waiting in its backlog, and `READY=1` / `STOPPING=1` on
//! `NOTIFY_SOCKET`.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;

use rustix::process::Signal;

use crate::support::{ChildServer, Conn, LIMIT, TempDir, begin_upload, tools};

/// Connections made while no instance accepts.
const BACKLOG: usize = 20;

/// `filesrv` on the passed `listener` (PORT is 0 and ignored).
fn start(dir: &TempDir, listener: &TcpListener) -> ChildServer {
    let passed = tools::Inherited::new(listener);
    let mut command = ChildServer::command(&dir.root(), 2);
    command
        .args(["--allow-put", "--shutdown-grace", "20"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDS_FIRST_FD", passed.raw().to_string())
        .env_remove("LISTEN_PID");
    ChildServer::spawn(command)
}

#[test]
fn a_restart_on_the_passed_socket_loses_no_waiting_connection() {
    let dir = TempDir::new("activation");
    let data: Vec<u8> = (0..64 * 1024)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    dir.write("data.bin", &data);
    // The socket unit's socket: held here across both instances.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();

    let mut old = start(&dir, &listener);
    assert_eq!(old.addr(), addr, "serves the passed socket, not PORT");
    Conn::connect(addr).assert_get("data.bin", &data);
    // An upload in progress keeps the old instance in its grace period.
    let mut uploading = Conn::connect(addr);
    begin_upload(&mut uploading, &dir, "up.bin", 4, b"ab");
    old.signal(Signal::TERM);
    old.wait_log("stopped accepting");

    // Nobody accepts now: these wait in the socket's backlog.
    let mut waiting: Vec<Conn> = (0..BACKLOG)
        .map(|_| {
            let mut c = Conn::connect(addr);
            c.send(b"GET data.bin\nQUIT\n");
            c
        })
        .collect();
    // The old instance finishes its upload, then exits.
    uploading.send(b"cd");
    assert_eq!(uploading.line(), "OK 4");
    uploading.expect_final_err("unavailable");
    assert!(old.wait_exit(LIMIT).success());
    assert_eq!(dir.read("up.bin"), b"abcd");

    let new = start(&dir, &listener);
    for c in &mut waiting {
        assert_eq!(c.line(), format!("OK {}", data.len()));
        assert_eq!(c.body(data.len()), data);
        assert_eq!(c.line(), "OK bye");
        c.expect_eof();
    }
    drop(new);
}

#[test]
fn readiness_and_stopping_are_notified() {
    let dir = TempDir::new("notify");
    let socket_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    notify.set_read_timeout(Some(LIMIT)).unwrap();
    let mut command = ChildServer::command(&dir.root(), 1);
    command.env("NOTIFY_SOCKET", &socket_path);
    let mut server = ChildServer::spawn(command);
    let mut message = [0u8; 256];
    let n = notify.recv(&mut message).unwrap();
    assert_eq!(&message[..n], b"READY=1\n");
    server.signal(Signal::TERM);
    let n = notify.recv(&mut message).unwrap();
    assert_eq!(&message[..n], b"STOPPING=1\n");
    assert!(server.wait_exit(LIMIT).success());
}
