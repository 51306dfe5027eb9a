//! The library's ways to keep a server until it is stopped:
//! `Server::wait` on another thread's shutdown, and
//! `Server::shutdown_on_signal`, which takes over SIGINT and SIGTERM and
//! so runs in a process of its own (this test binary again, running one
//! `#[ignore]`d test), signalled by the test.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::support::{DirWatch, LIMIT, NOTES, TempDir, TestServer, running_and_waiting};

#[test]
fn wait_returns_the_report_of_a_shutdown_on_another_thread() {
    let t = TestServer::start("wait", |c| c.max_running(1).max_waiting(1));
    let (running, waiting) = running_and_waiting(|| t.connect());
    let (report, reported) = mpsc::channel();
    thread::scope(|scope| {
        scope.spawn(|| report.send(t.server.wait()).unwrap());
        // Not before a shutdown (a lower bound: a busy machine can only
        // make it later).
        assert_eq!(
            reported.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let shutdown = t.server.shutdown();
        let waited = reported.recv_timeout(LIMIT).expect("wait did not return");
        assert_eq!(waited.refused_waiting, shutdown.refused_waiting);
        assert_eq!((waited.running_at_start, waited.refused_waiting), (1, 1));
    });
    // After the shutdown, at once.
    assert_eq!(t.server.wait().running_at_start, 1);
    drop((running, waiting));
}

/// Starts this test binary again running only `name` (an `#[ignore]`d
/// test), its output piped, logging at `info`.
fn spawn_alone(name: &str, root: &std::path::Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("FILESRV_SIGNAL_ROOT", root)
        .env("RUST_LOG", "filesrv=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The lines of `child`'s stdout and stderr, as they come.
fn lines(child: &mut std::process::Child) -> crossbeam_channel::Receiver<String> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx.send(l)))
    });
    thread::spawn(move || {
        BufReader::new(err)
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx2.send(l)))
    });
    rx
}

/// The next line containing one of `needles`, within [`LIMIT`].
fn wait_for_any(lines: &crossbeam_channel::Receiver<String>, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        match lines.recv_deadline(deadline) {
            Ok(line) if needles.iter().any(|n| line.contains(n)) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with any of {needles:?}: {e}"),
        }
    }
}

/// The next line containing `needle`, within [`LIMIT`].
fn wait_for(lines: &crossbeam_channel::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        match lines.recv_deadline(deadline) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {needle:?}: {e}"),
        }
    }
}

/// Run alone by the test below: a server on the given root with an
/// upload in progress and an hour's grace, until signals stop it.
#[test]
#[ignore = "run in a process of its own by the signal tests"]
fn serve_until_a_signal() {
    crate::support::init();
    let root = std::env::var_os("FILESRV_SIGNAL_ROOT").expect("run by the signal tests");
    let root = std::path::PathBuf::from(root);
    let config = filesrv::protocol::ServerConfig::new(&root)
        .allow_put(true)
        .shutdown_grace(Duration::from_secs(3600));
    let server = filesrv::protocol::Server::bind(([127, 0, 0, 1], 0).into(), config).unwrap();
    let mut idle = crate::support::Conn::connect(server.local_addr());
    idle.assert_get("notes.txt", NOTES);
    let mut uploader = crate::support::Conn::connect(server.local_addr());
    let watch = DirWatch::new(&root);
    uploader.send(b"PUT up.bin 1000\n0123456789");
    let has_temp = || {
        std::fs::read_dir(&root).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".filesrv-")
        })
    };
    assert!(watch.wait_until(has_temp), "the upload did not begin");
    println!("ready");
    // The upload holds the hour's grace: only a second signal ends it,
    // and the process with it.
    server.shutdown_on_signal().unwrap();
    unreachable!("the upload never finishes");
}

#[test]
fn shutdown_on_signal_stops_gracefully_and_a_second_signal_at_once() {
    let dir = TempDir::new("signals");
    dir.write("notes.txt", NOTES);
    let mut child = spawn_alone("server::signals::serve_until_a_signal", &dir.root());
    let output = lines(&mut child);
    // Ready, and the handlers in place (a signal before them would end
    // the process by its default action); stdout and stderr are read
    // apart, so the two lines may come in either order.
    let mut needed = vec!["ready", "waiting for SIGINT or SIGTERM"];
    while !needed.is_empty() {
        let line = wait_for_any(&output, &needed);
        needed.retain(|needle| !line.contains(needle));
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    kill_process(pid, Signal::TERM).unwrap();
    wait_for(&output, "signal 15: shutting down");
    kill_process(pid, Signal::INT).unwrap();
    wait_for(&output, "signal 2: stopping now");
    let (done, exited) = mpsc::channel();
    thread::spawn(move || done.send(child.wait()).unwrap());
    let status = exited.recv_timeout(LIMIT).expect("did not exit").unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(dir.temp_files(""), Vec::<String>::new());
    assert!(!dir.root().join("up.bin").exists());
}
