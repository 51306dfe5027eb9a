//! The binary as an operator runs it: signals, logging, descriptor
//! limits, permissions and a full disk.

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use rustix::process::{Resource, Signal};

use crate::support::{ChildServer, LIMIT, TempDir, Tmpfs, begin_upload};

fn command(dir: &TempDir, max_running: usize, args: &[&str]) -> Command {
    let mut command = ChildServer::command(&dir.root(), max_running);
    command.args(args);
    command
}

/// SIGHUP reloads (the users and the certificate, see tests/server/users.rs)
/// and never stops; SIGTERM shuts down gracefully.
#[test]
fn sighup_keeps_serving_and_sigterm_shuts_down_removing_temporary_files() {
    let dir = TempDir::new("ops-sighup");
    dir.write("file.txt", "abc");
    let args = ["--allow-put", "--max-waiting", "1"];
    let mut server = ChildServer::spawn(command(&dir, 1, &args));
    let mut upload = server.connect();
    begin_upload(&mut upload, &dir, "new.bin", 1000, b"partial");
    let mut waiting = server.connect();
    waiting.send(b"STAT /\n");
    // Accepted in order: once a third is refused, the second waits in
    // the queue, not in the backlog a stopping server leaves alone.
    server.connect().expect_final_err("busy");
    // SIGHUP: logged, and nothing stops.
    server.signal(Signal::HUP);
    server.wait_log("SIGHUP").unwrap();
    upload.send(b"more");
    server.connect().expect_final_err("busy");
    server.signal(Signal::TERM);
    waiting.expect_last_err("unavailable");
    // The upload in progress is cut when the grace ends (it never
    // finishes: its client sends nothing more) ... or when its client
    // leaves, as here.
    drop(upload);
    let status = server.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}");
    assert!(dir.temp_files("").is_empty(), "{:?}", dir.temp_files(""));
    assert!(!dir.root().join("new.bin").exists());
}

#[test]
fn explicit_verbosity_wins_over_rust_log() {
    let dir = TempDir::new("ops-rust-log");
    let mut command = command(&dir, 1, &["-v"]);
    command.env("RUST_LOG", "warn");
    // spawn waits for the info-level `serving on` line.
    let server = ChildServer::spawn(command);
    let mut c = server.connect();
    c.send(b"QUIT\n");
    assert_eq!(c.line(), "OK bye");
    assert!(server.wait_log("QUIT -> OK").is_some());
}

#[test]
fn request_lines_are_logged_as_sent() {
    let dir = TempDir::new("ops-log");
    for i in 0..5 {
        dir.write(&format!("d/f{i}"), "12345");
    }
    let server = ChildServer::spawn(command(&dir, 1, &["--allow-put"]));
    let mut c = server.connect();
    let body = vec![0u8; 100_000];
    c.send(b"PUT z.bin 100000\n");
    c.send(&body);
    assert_eq!(c.line(), "OK 100000");
    let line = server
        .wait_log("PUT z.bin 100000 -> OK 100000 bytes")
        .unwrap();
    assert!(!line.contains("%00"), "{line}");
    c.send(b"LIST d\n");
    assert_eq!(c.line(), "OK 5");
    // The body's bytes: the entries' lines, not the `OK 5` line.
    let listing: usize = (0..5).map(|_| c.line().len() + 1).sum();
    server
        .wait_log(&format!("LIST d -> OK {listing} bytes"))
        .unwrap();
    c.send(b"STAT my%20file\n");
    c.expect_err("not-found");
    server.wait_log("STAT my%20file -> not-found").unwrap();
}

#[test]
fn a_dequeued_client_with_no_descriptor_left_gets_err_internal() {
    let dir = TempDir::new("ops-nofd");
    let server = ChildServer::spawn(command(&dir, 1, &["--max-waiting", "1"]));
    let mut running = server.connect();
    running.send(b"STAT /\n");
    assert!(running.line().starts_with("OK d "));
    let mut waiting = server.connect();
    waiting.send(b"STAT /\n");
    // The queue of one is full: the waiting client is in it.
    server.connect().expect_final_err("busy");
    // From now on no descriptor can be opened at all (0-2 are taken).
    server.set_limit(Resource::Nofile, 3);
    running.send(b"QUIT\n");
    assert_eq!(running.line(), "OK bye");
    // Serving the connection takes no descriptor; its request, which
    // needs one, is refused, and the connection stays.
    assert_eq!(waiting.line(), "ERR internal server is out of resources");
    waiting.send(b"QUIT\n");
    assert_eq!(waiting.line(), "OK bye");
}

#[test]
fn the_descriptor_limit_is_raised_and_bounds_the_queue() {
    let dir = TempDir::new("ops-nofile");
    // Soft 200, hard 400: the server raises the soft limit to 400 and
    // keeps --max-waiting 1024 within it (400 - 64 - 4 per running). No
    // busy idle timeout: on a slow machine the 332 connections can take
    // longer than its 5 s, and the idle running client, asked to make
    // room, would let one more wait (found failing once in CI).
    let mut command = Command::new("prlimit");
    command.arg("--nofile=200:400").arg("--");
    let args = ["--max-waiting", "1024", "--busy-idle-timeout", "0"];
    let inner = command_line(&dir, &args);
    command.arg(inner.get_program()).args(inner.get_args());
    command
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let server = ChildServer::spawn(command);
    // (It says so in a warning before `serving on`.)
    let limits =
        fs::read_to_string(format!("/proc/{}/limits", server.pid().as_raw_nonzero())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["400", "400"],
        "{open_files}"
    );
    // One running, 332 waiting: the next clients get ERR busy at once
    // instead of a connect that times out.
    let mut running = server.connect();
    running.send(b"STAT /\n");
    assert!(running.line().starts_with("OK d "));
    let waiting: Vec<TcpStream> = (0..332)
        .map(|_| TcpStream::connect_timeout(&server.addr(), LIMIT).unwrap())
        .collect();
    for _ in 0..3 {
        let mut c = server.connect();
        c.expect_final_err("busy");
    }
    drop(waiting);
}

fn command_line(dir: &TempDir, args: &[&str]) -> Command {
    command(dir, 1, args)
}

#[test]
fn a_put_onto_a_file_the_server_could_not_write_is_forbidden() {
    let dir = TempDir::new("ops-readonly");
    let read_only = dir.write("read-only.txt", "kept\n");
    fs::set_permissions(&read_only, fs::Permissions::from_mode(0o444)).unwrap();
    let mut names = vec!["read-only.txt"];
    // Another user's file, writable by its owner only (root may chown).
    if rustix::process::geteuid().is_root() {
        let theirs = dir.write("theirs.txt", "kept\n");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        names.push("theirs.txt");
    }
    let server = ChildServer::spawn(command(&dir, 1, &["--allow-put"]));
    for name in names {
        let mut c = server.connect();
        // Refused before its body: the connection closes, as every
        // refused PUT does.
        c.send(format!("PUT {name} 4\n").as_bytes());
        c.expect_final_err("forbidden");
        assert_eq!(dir.read(name), b"kept\n", "{name}");
    }
    assert!(dir.temp_files("").is_empty());
    // A file the server may write is still replaced.
    dir.write("mine.txt", "old\n");
    let mut c = server.connect();
    c.send(b"PUT mine.txt 4\nnew\n");
    assert_eq!(c.line(), "OK 4");
}

#[test]
fn uploads_keep_the_replaced_files_permissions() {
    let dir = TempDir::new("ops-mode");
    let private = dir.write("private.txt", "secret\n");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    let script = dir.write("run.sh", "#!/bin/sh\n");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o750)).unwrap();
    let server = ChildServer::spawn(command(&dir, 1, &["--allow-put"]));
    let mut c = server.connect();
    c.send(b"PUT private.txt 4\nnew\nPUT run.sh 3\nls\nPUT fresh.txt 1\nx");
    for n in [4, 3, 1] {
        assert_eq!(c.line(), format!("OK {n}"));
    }
    let mode = |name: &str| {
        fs::metadata(dir.root().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(dir.read("private.txt"), b"new\n");
    assert_eq!(mode("private.txt"), 0o600);
    assert_eq!(mode("run.sh"), 0o750);
    // A new file: 0644 less the server's umask (the test's, inherited).
    let umask = rustix::process::umask(rustix::fs::Mode::empty());
    rustix::process::umask(umask);
    assert_eq!(mode("fresh.txt"), 0o644 & !umask.bits());
}

#[test]
fn a_disk_too_full_for_an_upload_is_refused_before_its_body() {
    let dir = TempDir::new("ops-full");
    dir.write("file.txt", "old\n");
    let server = ChildServer::spawn(command(&dir, 1, &["--allow-put"]));
    // Files may not grow past 2 MiB: reserving 3 MiB fails at once.
    server.set_limit(Resource::Fsize, 2 << 20);
    let mut c = server.connect();
    c.send(format!("PUT file.txt {}\n", 3 << 20).as_bytes());
    // Nothing of the body was sent: the answer comes first.
    let message = c.err_message("internal");
    assert!(message.contains("too large"), "{message}");
    c.expect_closed();
    assert_eq!(dir.read("file.txt"), b"old\n");
    assert!(dir.temp_files("").is_empty());
    if rustix::process::geteuid().is_root() {
        full_tmpfs();
    } else {
        eprintln!("not root: the tmpfs half of this test is skipped");
    }
}

/// On a 2 MiB tmpfs, a 3 MiB upload is refused with a message that says
/// the disk is full, before its body is sent, and the disk is left as it
/// was.
fn full_tmpfs() {
    let dir = TempDir::new("ops-tmpfs");
    let root = dir.root();
    let _tmpfs = Tmpfs::mount(&root, 2 << 20).expect("root mounts a tmpfs");
    let server = ChildServer::spawn(command(&dir, 1, &["--allow-put"]));
    let mut c = server.connect();
    c.send(format!("PUT big.bin {}\n", 3 << 20).as_bytes());
    let message = c.err_message("internal");
    assert!(message.contains("disk full"), "{message}");
    c.expect_closed();
    assert!(fs::read_dir(&root).unwrap().next().is_none());
    let mut c = server.connect();
    c.send(b"PUT small 5\nsmall");
    assert_eq!(c.line(), "OK 5");
}

#[test]
fn list_is_capped_and_streamed() {
    let server = crate::support::TestServer::start("ops-list-cap", |c| c.max_list_entries(3));
    for i in 0..3 {
        server.dir.write(&format!("three/f{i}"), "");
        server.dir.write(&format!("four/f{i}"), "");
    }
    server.dir.write("four/f3", "");
    // Hidden and reserved names do not count against the cap.
    server.dir.write("three/.hidden", "");
    let mut c = server.connect();
    c.send(b"LIST three\n");
    assert_eq!(c.line(), "OK 3");
    for i in 0..3 {
        assert_eq!(c.line(), format!("f 0 f{i}"));
    }
    c.send(b"LIST four\n");
    c.expect_final_err("too-large");
    // A large listing arrives whole and in order through the buffer.
    let big = crate::support::TestServer::start("ops-list-big", |c| c);
    let names: Vec<String> = (0..5000).map(|i| format!("entry-{i:05}")).collect();
    for name in &names {
        big.dir.write(&format!("d/{name}"), "x");
    }
    let mut c = big.connect();
    c.send(b"LIST d\n");
    assert_eq!(c.line(), "OK 5000");
    for name in &names {
        assert_eq!(c.line(), format!("f 1 {name}"));
    }
}

#[test]
fn a_get_cut_by_the_end_of_the_grace_is_logged_as_such() {
    let dir = TempDir::new("ops-cut");
    let size: u64 = 64 << 20;
    fs::File::create(dir.root().join("big"))
        .unwrap()
        .set_len(size)
        .unwrap();
    let mut server = ChildServer::spawn(command(&dir, 1, &["--shutdown-grace", "0.3"]));
    let mut c = server.connect();
    c.send(b"GET big\n");
    assert_eq!(c.line(), format!("OK {size}"));
    // The client reads nothing more: the server's send blocks until the
    // grace ends and the socket is shut.
    server.signal(Signal::TERM);
    let line = server.wait_log("GET big -> ").unwrap();
    assert!(line.contains("-> cut-by-shutdown "), "{line}");
    assert!(server.wait_exit(LIMIT).success());
}
