//! The `filesrv` binary as a child process under hostile conditions: file
//! descriptors and file size limited (`prlimit` on the running child, no
//! unsafe code), floods measured by the child's CPU time and peak memory,
//! signals in the middle of transfers, a kill mid-upload and a restart,
//! and an unprivileged server facing unreadable files. Every child is
//! killed and reaped on drop; every wait is bounded.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

use super::metrics::http_get;
use crate::support::{ChildServer, Conn, DirWatch, LIMIT, TempDir, connect_from};
use rustix::process::{Resource, Signal};

/// The server on `dir`'s root, with `args` added.
fn command(dir: &TempDir, max_running: usize, args: &[&str]) -> std::process::Command {
    let mut command = ChildServer::command(&dir.root(), max_running);
    command.args(args);
    command
}

/// Asserts that a fresh client is served: `GET file.txt` gives `want`.
fn assert_serves(server: &ChildServer, want: &[u8]) {
    let mut c = server.connect();
    c.send(b"GET file.txt\nQUIT\n");
    assert_eq!(c.line(), format!("OK {}", want.len()));
    assert_eq!(c.body(want.len()), want);
    assert_eq!(c.line(), "OK bye");
}

/// `n` clients that were answered and are now idle.
fn idle_clients(server: &ChildServer, n: usize) -> Vec<Conn> {
    (0..n)
        .map(|_| {
            let mut c = server.connect();
            c.send(b"STAT /\n");
            assert!(c.line().starts_with("OK d "));
            c
        })
        .collect()
}

/// Lowers the server's descriptor limit to `limit` and connects 80
/// clients, more than it leaves.
fn exhaust_descriptors(server: &ChildServer, limit: u64) -> Vec<TcpStream> {
    server.set_limit(Resource::Nofile, limit);
    (0..80)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect()
}

#[test]
fn out_of_descriptors_the_server_backs_off_and_recovers() {
    let dir = TempDir::new("proc-nofile");
    dir.write("file.txt", "abc");
    let server = ChildServer::spawn(command(&dir, 4, &[]));
    assert_serves(&server, b"abc");
    // Every running slot taken by an idle client, so the flood below
    // waits in the queue holding its descriptors (a client dequeued with
    // none left would be answered ERR internal and its descriptor freed).
    let running = idle_clients(&server, 4);
    // A few dozen descriptors: the flood below exhausts them.
    let flood = exhaust_descriptors(&server, 48);
    // Failing accepts back off, doubling up to half a second: the CPU
    // time over the back-off's climb shows whether it spins.
    let first = server.wait_log("accept failed").unwrap();
    let (cpu, began) = (server.cpu_time(), Instant::now());
    server.wait_log("retrying in 500ms").unwrap();
    let (cpu, wall) = (server.cpu_time() - cpu, began.elapsed());
    eprintln!("{first}\n{cpu:?} of CPU over {wall:?}");
    assert!(wall >= Duration::from_millis(300), "{wall:?}");
    assert!(cpu < wall / 4, "{cpu:?} of CPU over {wall:?}: a busy loop");
    // Load drops: service resumes within a back-off period.
    drop(flood);
    drop(running);
    assert_serves(&server, b"abc");
}

#[test]
fn out_of_descriptors_the_sidecars_back_off_and_answer_again() {
    let dir = TempDir::new("proc-nofile-sidecar");
    dir.write("file.txt", "abc");
    let server = ChildServer::spawn(command(&dir, 2, &["--metrics", "127.0.0.1:0"]));
    let line = server.wait_log("metrics on http://").unwrap();
    let metrics: std::net::SocketAddr = line
        .rsplit("http://")
        .next()
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(http_get(metrics, "/metrics").0, "HTTP/1.0 200 OK");
    // The running slots taken, then descriptors exhausted by a flood on
    // the main port: a scrape's connection cannot be accepted.
    let running = idle_clients(&server, 2);
    let flood = exhaust_descriptors(&server, 40);
    server.wait_log("accept failed").unwrap();
    let waiting_scrape = TcpStream::connect(metrics).unwrap();
    server
        .wait_log(&format!("{metrics}: accept failed"))
        .unwrap();
    // Load drops: the metrics endpoint answers again.
    drop(flood);
    drop(running);
    drop(waiting_scrape);
    assert_eq!(http_get(metrics, "/metrics").0, "HTTP/1.0 200 OK");
}

#[test]
fn bursts_of_refusals_never_starve_running_clients_of_descriptors() {
    let dir = TempDir::new("proc-budget");
    dir.write("file.txt", "abc");
    // A hard limit of 300 descriptors from the start, under which the
    // server shares them out. No busy idle timeout: the running clients
    // sit idle while the queue fills, and on a slow machine that outlasts
    // the default 5 s (with 0.05 s the test failed 1 run in 3).
    let plain = command(&dir, 4, &["--busy-idle-timeout", "0"]);
    let mut limited = std::process::Command::new("prlimit");
    limited
        .arg("--nofile=300:300")
        .arg(env!("CARGO_BIN_EXE_filesrv"))
        .args(plain.get_args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let server = ChildServer::spawn(limited);
    let mut running = idle_clients(&server, 4);
    // The queue filled, and held.
    let waiting: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    let addr = server.addr();
    let (outcomes, newcomer) = thread::scope(|scope| {
        let (done, flooding) = crossbeam_channel::bounded::<()>(0);
        // Bursts of connections refused busy, each lingering a while.
        let flood = scope.spawn(move || {
            for _ in 0..3 {
                let burst: Vec<TcpStream> = (0..600)
                    .filter_map(|_| TcpStream::connect(addr).ok())
                    .collect();
                drop(burst);
            }
            drop(done);
        });
        // Meanwhile the running clients keep asking.
        let askers: Vec<_> = running
            .iter_mut()
            .map(|c| {
                let flooding = flooding.clone();
                scope.spawn(move || {
                    let (mut ok, mut failed) = (0, Vec::new());
                    // At least once, and on until the bursts are over.
                    loop {
                        c.send(b"GET file.txt\n");
                        match c.line() {
                            line if line == "OK 3" => {
                                assert_eq!(c.body(3), b"abc");
                                ok += 1;
                            }
                            line => failed.push(line),
                        }
                        let over = crossbeam_channel::TryRecvError::Disconnected;
                        if flooding.try_recv() == Err(over) {
                            break;
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        flood.join().unwrap();
        // A newcomer finds the queue full: told so, not left unanswered.
        let mut newcomer = server.connect();
        let line = newcomer.try_line();
        let outcomes: Vec<(usize, Vec<String>)> =
            askers.into_iter().map(|a| a.join().unwrap()).collect();
        (outcomes, line)
    });
    eprintln!("running clients: {outcomes:?}; newcomer: {newcomer:?}");
    for (ok, failed) in &outcomes {
        assert!(
            failed.is_empty(),
            "a running client was refused: {failed:?}"
        );
        assert!(*ok > 0);
    }
    assert!(
        newcomer
            .as_deref()
            .is_some_and(|line| line.starts_with("ERR busy ")),
        "{newcomer:?}"
    );
    drop((waiting, running));
}

#[test]
fn out_of_descriptors_the_server_still_shuts_down_cleanly() {
    let dir = TempDir::new("proc-nofile-term");
    dir.write("file.txt", "abc");
    let mut server = ChildServer::spawn(command(&dir, 2, &[]));
    assert_serves(&server, b"abc");
    // An idle running client, and clients beyond the last descriptor.
    let mut idle = server.connect();
    idle.send(b"STAT /\n");
    assert!(idle.line().starts_with("OK d "));
    server.set_limit(Resource::Nofile, 32);
    let flood: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    server.wait_log("accept failed").unwrap();
    server.signal(Signal::TERM);
    idle.expect_last_err("unavailable");
    let status = server.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}");
    drop(flood);
}

#[test]
fn a_flood_keeps_the_servers_memory_bounded() {
    let dir = TempDir::new("proc-memory");
    dir.write("file.txt", "abc");
    let args = ["--max-waiting", "32", "--idle-timeout", "0.5"];
    let server = ChildServer::spawn(command(&dir, 8, &args));
    assert_serves(&server, b"abc");
    let before = server.peak_rss_kib();
    // 400 clients at once, from 16 threads and 40 sources, each sending
    // 64 KiB of junk without a newline: far more than running plus
    // waiting (8 + 32).
    let addr = server.addr();
    let threads: Vec<_> = (0..16usize)
        .map(|t| {
            thread::spawn(move || {
                let junk = vec![b'j'; 64 * 1024];
                let clients: Vec<Conn> = (0..25)
                    .filter_map(|i| {
                        let host = u8::try_from(1 + (t * 25 + i) % 40).unwrap();
                        let stream = connect_from(Ipv4Addr::new(127, 0, 2, host), addr).ok()?;
                        // A waiting client's junk stays in the socket
                        // buffers; the server may close on a refused one.
                        stream
                            .set_write_timeout(Some(Duration::from_secs(1)))
                            .unwrap();
                        let _ = (&stream).write_all(&junk);
                        Some(Conn::from_stream(stream))
                    })
                    .collect();
                let mut outcomes = [0usize; 2];
                for mut c in clients {
                    match c.try_line() {
                        Some(line) if line.starts_with("ERR bad-request ") => outcomes[0] += 1,
                        Some(line) if line.starts_with("ERR busy ") => outcomes[1] += 1,
                        Some(line) => panic!("unexpected reply {line:?}"),
                        // A reset that destroyed the reply: tolerated, the
                        // client wrote into a closing connection.
                        None => {}
                    }
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = [0; 2];
    for thread in threads {
        let [too_long, busy] = thread.join().unwrap();
        outcomes[0] += too_long;
        outcomes[1] += busy;
    }
    let after = server.peak_rss_kib();
    eprintln!("peak RSS {before} KiB -> {after} KiB; {outcomes:?} too long / busy");
    assert!(outcomes[0] >= 8 && outcomes[1] > 0, "{outcomes:?}");
    assert!(
        after < before + 32 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    assert_serves(&server, b"abc");
}

#[test]
fn a_burst_met_while_the_server_is_stopped_waits_in_the_backlog() {
    // The kernel caps the backlog at `net.core.somaxconn`; a burst that
    // fits it must wait there, not have its handshakes dropped after
    // the 128th (the backlog of `TcpListener::bind`).
    let somaxconn: usize = fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let burst = somaxconn.min(300);
    if burst <= 129 {
        eprintln!("net.core.somaxconn is {somaxconn}: no room above 128, skipped");
        return;
    }
    let dir = TempDir::new("proc-backlog");
    dir.write("file.txt", "abc");
    let server = ChildServer::spawn(command(&dir, 4, &[]));
    assert_serves(&server, b"abc");
    // Stopped, it accepts nothing: every handshake completes in the
    // kernel, or is dropped there and retried by the client a second
    // later, and again, for as long as the server stays stopped.
    server.signal(Signal::STOP);
    let clients: Vec<TcpStream> = (0..burst)
        .map(|i| {
            let stream = TcpStream::connect_timeout(&server.addr(), LIMIT)
                .unwrap_or_else(|e| panic!("connection {i} of {burst}: {e}"));
            stream.set_read_timeout(Some(LIMIT)).unwrap();
            stream
        })
        .collect();
    server.signal(Signal::CONT);
    // Each is served in turn (4 at a time, the rest queued).
    for stream in clients {
        let mut c = Conn::from_stream(stream);
        c.send(b"QUIT\n");
        assert_eq!(c.line(), "OK bye");
    }
    assert_serves(&server, b"abc");
}

#[test]
fn a_failing_write_is_internal_and_leaves_the_old_file() {
    let dir = TempDir::new("proc-fsize");
    dir.write("file.txt", "old\n");
    let server = ChildServer::spawn(command(&dir, 2, &["--allow-put"]));
    // Files may not grow past 64 KiB: a larger upload fails with EFBIG
    // (the binary ignores SIGXFSZ, which would otherwise kill it).
    server.set_limit(Resource::Fsize, 64 * 1024);
    let mut c = server.connect();
    let body = vec![b'n'; 1 << 20];
    c.send(format!("PUT file.txt {}\n", body.len()).as_bytes());
    let writer = {
        let mut stream = c.stream().try_clone().unwrap();
        thread::spawn(move || {
            // Most of it is never read: the server answers and closes.
            let _ = stream.write_all(&body);
        })
    };
    c.expect_last_err("internal");
    writer.join().unwrap();
    assert_eq!(dir.read("file.txt"), b"old\n");
    assert!(dir.temp_files("").is_empty(), "{:?}", dir.temp_files(""));
    // A small upload still works, and the server serves on.
    let mut c = server.connect();
    c.send(b"PUT small 5\nsmall");
    assert_eq!(c.line(), "OK 5");
    assert_serves(&server, b"old\n");
}

#[test]
fn sigterm_finishes_running_transfers_and_refuses_waiting_clients() {
    let dir = TempDir::new("proc-sigterm");
    dir.write("file.txt", "abc");
    let size: u64 = 64 << 20;
    fs::File::create(dir.root().join("big"))
        .unwrap()
        .set_len(size)
        .unwrap();
    // A grace period far beyond the test's limit: exiting within the limit
    // shows the server did not wait it out.
    let args = ["--max-waiting", "1", "--shutdown-grace", "60"];
    let mut server = ChildServer::spawn(command(&dir, 1, &args));
    let mut running = server.connect();
    running.send(b"GET big\n");
    assert_eq!(running.line(), format!("OK {size}"));
    let mut waiting = server.connect();
    waiting.send(b"GET file.txt\n");
    // Accepted in order: this refusal proves the waiting client queued.
    let mut refused = server.connect();
    refused.expect_err("busy");

    server.signal(Signal::TERM);
    server.wait_log("shutting down").unwrap();
    waiting.expect_last_err("unavailable");
    // The transfer in progress completes, every byte of it; then, idle,
    // the client is told the server is going away.
    let body = running.body(usize::try_from(size).unwrap());
    assert!(body.iter().all(|&b| b == 0));
    running.expect_last_err("unavailable");
    let status = server.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigkill_mid_upload_then_restart_leaves_no_trace() {
    let dir = TempDir::new("proc-sigkill");
    dir.write("file.txt", "old\n");
    // A temporary file of a live process (pid 1): kept by the cleanup,
    // and unreachable like every reserved name.
    dir.write(".filesrv-1-0-0", "not yours");
    let mut server = ChildServer::spawn(command(&dir, 2, &["--allow-put"]));

    let watch = DirWatch::new(&dir.root());
    let mut c = server.connect();
    c.send(format!("PUT file.txt {}\n", 1 << 20).as_bytes());
    c.send(&[b'n'; 100 * 1024]);
    // Wait until the upload's temporary file is on disk with the bytes
    // sent so far.
    let partial = || {
        dir.temp_files("").iter().any(|n| {
            n != ".filesrv-1-0-0"
                && fs::metadata(dir.root().join(n)).is_ok_and(|m| m.len() == 100 * 1024)
        })
    };
    assert!(watch.wait_until(partial), "no partial upload appeared");
    drop(watch);
    server.signal(Signal::KILL);
    assert!(!server.wait_exit(LIMIT).success());
    assert_eq!(
        dir.temp_files("").len(),
        2,
        "the killed upload's file stays"
    );
    assert_eq!(dir.read("file.txt"), b"old\n");

    // The restart removes the dead server's file, keeps the live one's,
    // and serves the old target.
    let server = ChildServer::spawn(command(&dir, 2, &["--allow-put"]));
    assert_eq!(dir.temp_files(""), [".filesrv-1-0-0"]);
    assert_serves(&server, b"old\n");
    let mut c = server.connect();
    c.expect_refusals(&[
        ("GET .filesrv-1-0-0", "forbidden"),
        ("STAT .filesrv-1-0-0", "forbidden"),
        ("GET %2Efilesrv-1-0-0", "forbidden"),
    ]);
    c.send(b"LIST\n");
    assert_eq!(c.line(), "OK 1");
    assert_eq!(c.line(), "f 4 file.txt");
    c.send(b"PUT .filesrv-1-0-0 1\nx");
    c.expect_err("forbidden");
    assert_eq!(dir.read(".filesrv-1-0-0"), b"not yours");
}

#[test]
fn an_unprivileged_server_refuses_what_it_may_not_read_or_write() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("proc-nobody");
    let dir_root = |rel: &str| dir.root().join(rel);
    let mode = |rel: &str, mode: u32| {
        fs::set_permissions(dir_root(rel), fs::Permissions::from_mode(mode)).unwrap();
    };
    dir.write("file.txt", "abc");
    dir.write("locked.txt", "locked");
    dir.write("closed/inner.txt", "inner");
    dir.write("readonly/inner.txt", "inner");
    mode("locked.txt", 0o000);
    mode("closed", 0o000);
    mode("readonly", 0o555);
    let mut nobody = command(&dir, 2, &["--allow-put"]);
    // As `nobody`: mode bits bind it, as they do not bind root.
    nobody.uid(65534).gid(65534);
    let server = ChildServer::spawn(nobody);
    let mut c = server.connect();
    c.expect_refusals(&[
        ("GET locked.txt", "forbidden"),
        ("GET closed/inner.txt", "forbidden"),
        ("LIST closed", "forbidden"),
        ("STAT closed/inner.txt", "forbidden"),
    ]);
    // STAT needs no read permission on the file itself.
    c.send(b"STAT locked.txt\n");
    assert!(c.line().starts_with("OK f 6 "));
    // An upload into a directory the server may not write to.
    let mut c = server.connect();
    c.send(b"PUT readonly/new.txt 3\nnew");
    c.expect_err("internal");
    assert!(!dir_root("readonly/new.txt").exists());
    assert_serves(&server, b"abc");
}
