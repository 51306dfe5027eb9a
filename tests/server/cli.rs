//! The `filesrv` binary driven as a process: its command line, silence by
//! default, start-up errors, and graceful shutdown on SIGTERM and SIGINT.
//!
//! Every process is killed when its test ends, and every wait on it is
//! bounded: output and exit are collected by threads and waited for on
//! channels with a timeout.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Resource, Signal};

use crate::support::{
    ChildServer, Conn, LIMIT, NOTES, TempDir, Terminal, begin_upload, running_and_waiting, tools,
};

/// A temporary root holding `notes.txt`.
fn root_with_notes(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    dir.write("notes.txt", NOTES);
    dir
}

/// A `filesrv` process with its output piped, killed on drop. A thread
/// waits for its exit and one reads each output stream, so every wait on
/// it is a channel receive with a timeout.
struct Proc {
    pid: Pid,
    exit: Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    stdout: Receiver<Vec<u8>>,
    stderr: Receiver<Vec<u8>>,
}

/// What a finished process left.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Proc {
    fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_filesrv"))
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::from_child(&child);
        let stdout = read_all(child.stdout.take().unwrap());
        let stderr = read_all(child.stderr.take().unwrap());
        let (exited, exit) = mpsc::channel();
        thread::spawn(move || exited.send(child.wait().unwrap()));
        Proc {
            pid,
            exit,
            status: None,
            stdout,
            stderr,
        }
    }

    /// The exit status, if the process exits within `limit`.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.exit.recv_timeout(limit) {
                Ok(status) => self.status = Some(status),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => panic!("the waiting thread failed"),
            }
        }
        self.status
    }

    /// Waits (at most [`LIMIT`]) for the exit and the whole output.
    fn finish(mut self) -> Finished {
        let status = self.wait(LIMIT).expect("filesrv did not exit in time");
        let text = |output: &Receiver<Vec<u8>>| {
            let bytes = output.recv_timeout(LIMIT).expect("output not closed");
            String::from_utf8(bytes).unwrap()
        };
        Finished {
            status,
            stdout: text(&self.stdout),
            stderr: text(&self.stderr),
        }
    }

    fn signal(&self, signal: Signal) {
        rustix::process::kill_process(self.pid, signal).unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() && self.exit.try_recv().is_err() {
            // Not reaped yet, so the pid is still this process's.
            let _ = rustix::process::kill_process(self.pid, Signal::KILL);
            let _ = self.exit.recv_timeout(LIMIT);
        }
    }
}

/// Reads `stream` to its end on a thread; the bytes arrive on the channel.
fn read_all(mut stream: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (done, bytes) = mpsc::channel();
    thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stream.read_to_end(&mut all);
        let _ = done.send(all);
    });
    bytes
}

/// Runs `filesrv` with `args` to its exit (it must exit by itself).
fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Finished {
    Proc::spawn(args).finish()
}

/// Runs `filesrv 0 1 --bind 127.0.0.1 --root <root>`, which must exit by
/// itself.
fn run_with_root(root: &Path) -> Finished {
    let mut args = ["0", "1", "--bind", "127.0.0.1", "--root"]
        .map(std::ffi::OsStr::new)
        .to_vec();
    args.push(root.as_os_str());
    run(&args)
}

/// Asserts a start-up failure: non-zero exit, nothing on stdout, and
/// exactly one line on stderr, which it returns.
fn assert_fails_with_one_line(finished: &Finished, what: &str) -> String {
    assert!(!finished.status.success(), "{what}: {:?}", finished.status);
    assert_eq!(finished.stdout, "", "{what}");
    let stderr = &finished.stderr;
    assert!(
        stderr.ends_with('\n') && stderr.lines().count() == 1 && stderr.trim().len() > 10,
        "{what}: stderr {stderr:?}"
    );
    stderr.clone()
}

/// Starts a silent `filesrv` (no `-v`, so no log line to learn a port
/// from) on a free port, and returns it with a first connection to it.
///
/// The port is found by binding port 0 and letting it go; if another
/// process takes it meanwhile, filesrv exits and another port is tried.
/// Readiness can only be seen by connecting: refused attempts are retried,
/// each after waiting up to 5 ms for the process to exit instead.
fn start_silent(root: &Path, options: &[&str]) -> (Proc, Conn) {
    let deadline = Instant::now() + LIMIT;
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let root = root.to_str().unwrap();
        let mut args = vec![&*port, "1", "--bind", "127.0.0.1", "--root", root];
        args.extend(options);
        let mut proc = Proc::spawn(&args);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        loop {
            if let Ok(stream) = TcpStream::connect(addr) {
                stream.set_read_timeout(Some(LIMIT)).unwrap();
                stream.set_write_timeout(Some(LIMIT)).unwrap();
                return (proc, Conn::from_stream(stream));
            }
            if proc.wait(Duration::from_millis(5)).is_some() {
                break; // the port was taken: try another
            }
            assert!(Instant::now() < deadline, "filesrv did not start");
        }
    }
    panic!("filesrv did not start on a free port");
}

/// A `filesrv -v` child on 127.0.0.1 serving `dir`'s root with `options`.
fn spawn_verbose(dir: &TempDir, max_running: usize, options: &[&str]) -> ChildServer {
    let mut command = ChildServer::command(&dir.root(), max_running);
    command.args(options);
    ChildServer::spawn(command)
}

// ------------------------------------------------------------- silence

#[test]
fn silent_by_default_through_requests_refusals_and_sigterm() {
    let dir = root_with_notes("cli-silent");
    let (server, mut first) = start_silent(&dir.root(), &["--max-waiting", "0"]);
    first.assert_get("notes.txt", NOTES);
    first.send(b"FROB\n");
    first.expect_err("bad-request");
    let mut second = Conn::connect(first.stream().peer_addr().unwrap());
    second.expect_final_err("busy");
    server.signal(Signal::TERM);
    first.expect_final_err("unavailable");
    let finished = server.finish();
    assert!(finished.status.success(), "{:?}", finished.status);
    assert_eq!(finished.stdout, "");
    assert_eq!(finished.stderr, "");
}

// ------------------------------------------------------ start-up errors

#[test]
fn bad_arguments_fail_with_a_message() {
    let dir = TempDir::new("cli-args");
    let root = dir.root();
    let root = root.to_str().unwrap();
    let cases: [&[&str]; 15] = [
        &[],
        &["--root", root],
        &["9000", "--root", root],
        &["0", "0", "--root", root],
        &["0", "x", "--root", root],
        &["70000", "1", "--root", root],
        &["0", "1", "--root", root, "--idle-timeout", "abc"],
        &["0", "1", "--root", root, "--queue-timeout", "-1"],
        &["0", "1", "--root", root, "--max-upload", "1X"],
        &["0", "1", "--root", root, "--max-waiting", "-1"],
        &["0", "1", "--root", root, "--bind", "256.0.0.1"],
        &["0", "1", "--root", root, "--frobnicate"],
        &["0", "1", "--root", root, "--proxy-from", "10.0.0.0/33"],
        &["0", "1", "--root", root, "--metrics", "localhost"],
        &["0", "1", "--root", root, "--agent", "127.0.0.1"],
    ];
    for args in cases {
        let finished = run(args);
        assert!(
            !finished.status.success(),
            "{args:?}: {:?}",
            finished.status
        );
        assert_eq!(finished.stdout, "", "{args:?}");
        assert!(
            finished.stderr.contains("error"),
            "{args:?}: stderr {:?}",
            finished.stderr
        );
    }
}

#[test]
fn port_in_use_fails_with_one_line() {
    let dir = TempDir::new("cli-port-in-use");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let root = dir.root();
    let finished = run(&[
        port.as_str(),
        "1",
        "--bind",
        "127.0.0.1",
        "--root",
        root.to_str().unwrap(),
    ]);
    let line = assert_fails_with_one_line(&finished, "port in use");
    assert!(line.contains(&port), "{line:?}");
}

#[test]
fn metrics_or_agent_port_in_use_fails_with_one_line() {
    let dir = TempDir::new("cli-sidecar-in-use");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let root = dir.root();
    for option in ["--metrics", "--agent"] {
        let finished = run(&[
            "0",
            "1",
            "--bind",
            "127.0.0.1",
            "--root",
            root.to_str().unwrap(),
            option,
            &addr,
        ]);
        let line = assert_fails_with_one_line(&finished, option);
        let what = option.trim_start_matches("--");
        assert!(line.contains(&addr) && line.contains(what), "{line:?}");
    }
}

#[test]
fn missing_root_fails_with_one_line() {
    let dir = TempDir::new("cli-no-root");
    let missing = dir.path().join("missing");
    let finished = run_with_root(&missing);
    assert_fails_with_one_line(&finished, "missing root");
}

#[test]
fn root_that_is_a_file_fails_with_one_line() {
    let dir = root_with_notes("cli-file-root");
    let file = dir.root().join("notes.txt");
    let finished = run_with_root(&file);
    assert_fails_with_one_line(&finished, "root is a file");
}

// ---------------------------------------------------- help and version

#[test]
fn help_mentions_every_option_of_the_contract() {
    let finished = run(&["--help"]);
    assert!(finished.status.success());
    let help = finished.stdout;
    for word in [
        "<PORT>",
        "<MAX_RUNNING>",
        "--root",
        "--bind",
        "--max-waiting",
        "--max-per-source",
        "--queue-timeout",
        "--idle-timeout",
        "--stall-timeout",
        "--allow-put",
        "--max-upload",
        "--shutdown-grace",
        "--proxy-from",
        "--metrics",
        "--agent",
        "--tls-cert",
        "--tls-key",
        "--tls-self-signed",
        "--tls-name",
        "--users",
        "--anonymous-read",
        "--allow-plain-auth",
        "--max-auth-failures",
        "--hash-password",
        "-v",
        "--verbose",
        "--help",
        "--version",
    ] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
    assert_eq!(finished.stderr, "");
}

/// `--hash-password` with no password on stdin (empty input, an empty
/// line, as `echo "$UNSET" |` gives) fails in one line: a hash of the
/// empty password would be a users line anyone logs in with.
#[test]
fn hash_password_refuses_an_empty_password() {
    for input in [&b""[..], b"\n", b"\r\n"] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_filesrv"));
        let out = tools::run_with_input(command.arg("--hash-password"), input);
        let finished = Finished {
            status: out.status,
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        };
        let line = assert_fails_with_one_line(&finished, "an empty password");
        assert!(line.contains("no password"), "{input:?}: {line}");
        assert_eq!(finished.status.code(), Some(1), "{input:?}");
    }
}

#[test]
fn hash_password_with_a_port_is_a_mistake_said_at_once() {
    // Read as a server's start, it would wait on stdin and print a hash.
    let finished = run(&["--hash-password", "9000", "5"]);
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("cannot be used with"),
        "{}",
        finished.stderr
    );
    assert!(finished.stdout.is_empty(), "{}", finished.stdout);
}

/// The exit statuses --help states are the ones a bad argument and a
/// failed start give.
#[test]
fn help_states_the_exit_statuses_start_up_errors_give() {
    let help = run(&["--help"]).stdout;
    assert!(
        help.contains("Start-up errors exit 1 (bad\narguments: 2)"),
        "{help}"
    );
    assert_eq!(run(&["9000"]).status.code(), Some(2));
    let dir = TempDir::new("cli-exit");
    let missing = dir.path().join("missing");
    assert_eq!(run_with_root(&missing).status.code(), Some(1));
}

#[test]
fn version_prints_name_and_version() {
    let finished = run(&["--version"]);
    assert!(finished.status.success());
    assert_eq!(
        finished.stdout,
        format!("filesrv {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(finished.stderr, "");
}

// ------------------------------------------------------------- options

#[test]
fn nc_style_client_gets_the_exact_reply() {
    let dir = root_with_notes("cli-nc");
    let server = spawn_verbose(&dir, 1, &[]);
    let mut c = server.connect();
    c.send(b"GET notes.txt\n");
    c.half_close();
    assert_eq!(c.read_until_closed(), b"OK 13\nhello, world\n");
}

#[test]
fn idle_timeout_option_takes_fractions() {
    let dir = root_with_notes("cli-idle");
    let server = spawn_verbose(&dir, 1, &["--idle-timeout", "0.3"]);
    let began = Instant::now();
    let mut c = server.connect();
    c.expect_err("timeout");
    // Fired, so not read as 0 (no timeout); not before 0.3 s. How late is
    // not asserted: a busy machine delays it.
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    c.expect_closed();
}

#[test]
fn max_upload_option_takes_a_binary_suffix() {
    let dir = root_with_notes("cli-max-upload");
    let server = spawn_verbose(&dir, 1, &["--allow-put", "--max-upload", "1K"]);
    let mut c = server.connect();
    c.send(b"PUT big.bin 1025\n");
    c.expect_final_err("too-large");
    let mut c = server.connect();
    c.send(b"PUT ok.bin 1024\n");
    c.send(&[7; 1024]);
    assert_eq!(c.line(), "OK 1024");
    assert_eq!(dir.read("ok.bin"), [7; 1024]);
}

#[test]
fn write_error_on_the_server_is_internal() {
    let dir = root_with_notes("cli-internal");
    let server = spawn_verbose(&dir, 1, &["--allow-put"]);
    // Files may not grow past 1 KiB: the upload's write fails with EFBIG
    // (the server ignores SIGXFSZ).
    server.set_limit(Resource::Fsize, 1024);
    let mut c = server.connect();
    c.send(b"PUT big.bin 4096\n");
    c.send(&[7; 4096]);
    let message = c.err_message("internal");
    assert!(
        !message.contains(dir.path().to_str().unwrap()),
        "{message:?}"
    );
    c.expect_closed();
    assert!(!dir.root().join("big.bin").exists());
    assert!(dir.temp_files("").is_empty());
    // The server lives on.
    let mut c = server.connect();
    c.assert_get("notes.txt", NOTES);
}

// ------------------------------------------------------------- signals

/// `signal` stops a server with an idle running client and a waiting one:
/// both get `ERR unavailable`, and the process exits 0.
fn signal_stops_gracefully(signal: Signal, label: &str) {
    let dir = root_with_notes(label);
    let mut server = spawn_verbose(&dir, 1, &["--max-waiting", "1"]);
    let (mut running, mut waiting) = running_and_waiting(|| server.connect());
    server.signal(signal);
    running.expect_final_err("unavailable");
    waiting.expect_final_err("unavailable");
    let status = server.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigterm_refuses_idle_and_waiting_clients_then_exits_0() {
    signal_stops_gracefully(Signal::TERM, "cli-sigterm");
}

#[test]
fn sigint_refuses_idle_and_waiting_clients_then_exits_0() {
    signal_stops_gracefully(Signal::INT, "cli-sigint");
}

#[test]
fn sigterm_lets_a_request_finish_within_the_grace() {
    let dir = root_with_notes("cli-grace-finish");
    let mut server = spawn_verbose(&dir, 2, &["--allow-put"]);
    let mut uploader = server.connect();
    begin_upload(&mut uploader, &dir, "up.txt", 10, b"hello");
    let mut idle = server.connect();
    idle.assert_get("notes.txt", NOTES);
    server.signal(Signal::TERM);
    // The idle client's refusal shows the graceful stop has begun.
    idle.expect_final_err("unavailable");
    uploader.send(b"world");
    assert_eq!(uploader.line(), "OK 10");
    uploader.expect_final_err("unavailable");
    assert!(server.wait_exit(LIMIT).success());
    assert_eq!(dir.read("up.txt"), b"helloworld");
}

#[test]
fn shutdown_grace_cuts_a_stalled_upload_and_exits_0() {
    let grace = Duration::from_millis(500);
    let dir = root_with_notes("cli-grace-cut");
    let mut server = spawn_verbose(&dir, 1, &["--allow-put", "--shutdown-grace", "0.5"]);
    let mut uploader = server.connect();
    begin_upload(&mut uploader, &dir, "up.bin", 1000, b"0123456789");
    let began = Instant::now();
    server.signal(Signal::TERM);
    let status = server.wait_exit(LIMIT);
    let took = began.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= grace,
        "exited after {took:?}, before the grace ended"
    );
    // Cut, not answered; and nothing of the upload is left.
    assert!(!uploader.rest().starts_with(b"OK"));
    assert_eq!(dir.temp_files(""), Vec::<String>::new());
    assert!(!dir.root().join("up.bin").exists());
}

/// With a grace far longer than any test waits, only the second signal
/// can end it: the upload still running is cut, its temporary file
/// removed, and the exit is 0. The first, with -v, said whom it waits for.
fn second_signal_ends_the_grace_at_once(first: Signal, second: Signal, label: &str) {
    let dir = root_with_notes(label);
    let mut server = spawn_verbose(&dir, 2, &["--allow-put", "--shutdown-grace", "3600"]);
    let mut uploader = server.connect();
    begin_upload(&mut uploader, &dir, "up.bin", 1000, b"0123456789");
    server.signal(first);
    let line = server.wait_log("shutting down").unwrap();
    assert!(
        line.contains("waiting up to 3600s for 1 running client"),
        "{line}"
    );
    server.signal(second);
    let line = server.wait_log("stopping now").unwrap();
    assert!(line.contains("cutting 1 running client"), "{line}");
    let status = server.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}");
    assert!(!uploader.rest().starts_with(b"OK"));
    assert_eq!(dir.temp_files(""), Vec::<String>::new());
    assert!(!dir.root().join("up.bin").exists());
}

#[test]
fn a_second_sigint_ends_the_grace_at_once() {
    second_signal_ends_the_grace_at_once(Signal::INT, Signal::INT, "cli-second-int");
}

#[test]
fn sigterm_after_sigint_ends_the_grace_at_once() {
    second_signal_ends_the_grace_at_once(Signal::INT, Signal::TERM, "cli-second-term");
}

/// The fields of each line of an access log, checked for the documented
/// form: eight, the first a Unix time with milliseconds, the last seconds
/// with microseconds; the six between returned.
fn access_log_fields(log: &str) -> Vec<Vec<String>> {
    log.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 8, "{line}");
            let (secs, millis) = fields[0].split_once('.').unwrap();
            assert!(secs.parse::<u64>().unwrap() > 1_700_000_000, "{line}");
            assert_eq!(millis.len(), 3, "{line}");
            let (_, micros) = fields[7].split_once('.').unwrap();
            assert!(
                fields[7].parse::<f64>().unwrap() < LIMIT.as_secs_f64(),
                "{line}"
            );
            assert_eq!(micros.len(), 6, "{line}");
            fields[1..7].iter().map(|f| (*f).to_owned()).collect()
        })
        .collect()
}

#[test]
fn access_log_has_one_line_per_request() {
    let dir = root_with_notes("cli-access-log");
    let log = dir.path().join("access.log");
    let server = spawn_verbose(
        &dir,
        1,
        &["--allow-put", "--access-log", log.to_str().unwrap()],
    );
    let mut c = server.connect();
    let client = c.stream().local_addr().unwrap().to_string();
    c.send(b"GET notes.txt\nSTAT no%20such\nFROB\nPUT up.txt 5\nhelloLIST\nQUIT\n");
    let replies = c.read_until_closed();
    let replies = String::from_utf8(replies).unwrap();
    // LIST's body: the lines between its `OK 2` and `OK bye`.
    let listing = replies
        .split_once("OK 5\nOK 2\n")
        .and_then(|(_, rest)| rest.strip_suffix("OK bye\n"))
        .unwrap_or_else(|| panic!("{replies:?}"));
    // Written before the connection closed.
    let fields = access_log_fields(&std::fs::read_to_string(&log).unwrap());
    let row = |r: &str| -> Vec<String> {
        std::iter::once(client.clone())
            .chain(r.split(' ').map(str::to_owned))
            .collect()
    };
    assert_eq!(
        fields,
        [
            row("- GET notes.txt OK 13"),
            row("- STAT no%20such not-found 0"),
            row("- invalid - bad-request 0"),
            row("- PUT up.txt OK 5"),
            row(&format!("- LIST . OK {}", listing.len())),
            row("- QUIT - OK 0"),
        ]
    );
}

#[test]
fn access_log_dash_is_stderr() {
    let dir = root_with_notes("cli-access-stderr");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_filesrv"));
    command
        .args([
            "--bind",
            "127.0.0.1",
            "0",
            "1",
            "--access-log",
            "-",
            "--root",
        ])
        .arg(dir.root());
    // -v too, for the line saying where it listens; the access log's
    // lines come among the others.
    command.arg("-v");
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let server = ChildServer::spawn(command);
    let mut c = server.connect();
    c.assert_get("notes.txt", NOTES);
    let line = server.wait_log(" GET notes.txt OK 13 ").unwrap();
    assert_eq!(access_log_fields(&line).len(), 1, "{line}");
}

// ------------------------------------------- config file, completions, man

/// Sends a PUT of `size` bytes and returns the reply line.
fn put_reply(server: &ChildServer, size: usize) -> String {
    let mut c = server.connect();
    c.send(format!("PUT up.bin {size}\n").as_bytes());
    c.send(&vec![b'x'; size]);
    c.line()
}

#[test]
fn a_config_file_sets_options_and_the_command_line_wins() {
    let dir = root_with_notes("cli-config");
    let config = dir.write(
        "../filesrv.toml",
        "# uploads up to 10 bytes\nallow-put = true\nmax-upload = \"10\"\n\
         idle-timeout = 30.5\nproxy-from = [\"10.0.0.0/8\", \"192.0.2.1\"]\nhidden = false\n",
    );
    let config = config.to_str().unwrap();
    // From the file: uploads on, at most 10 bytes.
    let server = spawn_verbose(&dir, 1, &["--config", config]);
    assert_eq!(put_reply(&server, 5), "OK 5");
    assert_eq!(
        put_reply(&server, 15),
        "ERR too-large upload of 15 bytes exceeds the size limit of 10 bytes"
    );
    drop(server);
    // The command line's --max-upload wins over the file's.
    let server = spawn_verbose(
        &dir,
        1,
        &["--max-upload", "20", &format!("--config={config}")],
    );
    assert_eq!(put_reply(&server, 15), "OK 15");
    assert_eq!(
        put_reply(&server, 25),
        "ERR too-large upload of 25 bytes exceeds the size limit of 20 bytes"
    );
}

#[test]
fn a_bad_config_file_is_named_in_one_line() {
    let dir = root_with_notes("cli-config-bad");
    let root = dir.root();
    for (text, says) in [
        ("max-waitin = 5\n", "unknown key 'max-waitin'"),
        ("max-waiting = \n", "TOML parse error"),
        ("allow-put = [1]\n", "allow-put: 1 is not a string"),
    ] {
        let path = dir.write("../bad.toml", text);
        let finished = run(&[
            "0".as_ref(),
            "1".as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
            "--root".as_ref(),
            root.as_os_str(),
        ]);
        assert_eq!(finished.status.code(), Some(2), "{text}");
        assert_eq!(finished.stdout, "");
        let prefix = format!("filesrv: --config {}: ", path.display());
        assert!(finished.stderr.starts_with(&prefix), "{}", finished.stderr);
        assert!(finished.stderr.contains(says), "{}", finished.stderr);
    }
    let finished = run(&["0", "1", "--config", "/nonexistent/filesrv.toml"]);
    assert_eq!(finished.status.code(), Some(2));
    assert!(
        finished
            .stderr
            .starts_with("filesrv: --config /nonexistent/filesrv.toml: "),
        "{}",
        finished.stderr
    );
}

#[test]
fn completions_load_in_bash_and_name_every_option() {
    let finished = run(&["--completions", "bash"]);
    assert!(finished.status.success(), "{}", finished.stderr);
    for option in [
        "--access-log",
        "--config",
        "--allow-put",
        "--shutdown-grace",
    ] {
        assert!(finished.stdout.contains(option), "{option}");
    }
    let script = std::env::temp_dir().join(format!("filesrv-completions-{}", std::process::id()));
    std::fs::write(&script, &finished.stdout).unwrap();
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p filesrv",
            script.display()
        ))
        .output()
        .unwrap();
    std::fs::remove_file(&script).unwrap();
    let complete = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        complete.contains(" -F _filesrv ") && complete.trim_end().ends_with(" filesrv"),
        "{complete}{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let finished = run(&["--completions", shell]);
        assert!(
            finished.status.success() && finished.stdout.contains("access-log"),
            "{shell}"
        );
    }
    // Alone: with anything else it is a usage error.
    let finished = run(&["--completions", "bash", "0", "1"]);
    assert_eq!(finished.status.code(), Some(2));
}

#[test]
fn the_man_page_renders_with_every_option() {
    let finished = run(&["--man-page"]);
    assert!(finished.status.success(), "{}", finished.stderr);
    let roff = &finished.stdout;
    assert!(roff.contains(".TH filesrv 1"), "{roff}");
    // As man shows it (groff, which man-db uses, reads it from stdin).
    let Some(groff) = tools::require("groff") else {
        return;
    };
    let rendered = tools::run_with_input(
        std::process::Command::new(groff).args(["-man", "-Tascii"]),
        roff.as_bytes(),
    );
    assert!(rendered.status.success());
    // Bold and underline are overstruck (`X\bX`, `_\bX`): keep the last.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&rendered.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    for option in ["--access-log", "--config", "--completions", "MAX_RUNNING"] {
        assert!(text.contains(option), "{option} not in\n{text}");
    }
}

#[test]
fn bind_takes_a_host_name() {
    let dir = root_with_notes("cli-bind-name");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_filesrv"));
    command
        .args(["-v", "--bind", "localhost", "0", "1", "--root"])
        .arg(dir.root())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let server = ChildServer::spawn(command);
    assert!(server.addr().ip().is_loopback(), "{}", server.addr());
    server.connect().assert_get("notes.txt", NOTES);
}

#[test]
fn max_running_past_the_memory_map_limit_fails_with_one_line() {
    // Twice the threads the kernel's map limit allows (each needs about
    // four maps): once refused with a line, not an abort inside a thread.
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dir = root_with_notes("maps");
    let max_running = (limit / 2).to_string();
    let root = dir.path().to_str().unwrap();
    let finished = run(&["0", &max_running, "--bind", "127.0.0.1", "--root", root]);
    assert_eq!(finished.status.code(), Some(1), "{:?}", finished.status);
    let line = assert_fails_with_one_line(&finished, "too many threads");
    assert!(line.contains("max_map_count"), "{line}");
}

/// `--hash-password` on a terminal, as `htpasswd` does it: asked twice
/// with echo off, so the password is never shown, and a typo in either
/// is an error rather than a hash nobody can log in with.
#[test]
fn hash_password_on_a_terminal_asks_twice_and_never_shows_it() {
    use argon2::password_hash::{PasswordVerifier as _, phc::PasswordHash};

    // Types `first` at the first prompt and `again` at the second: the
    // process's output and what the terminal showed.
    let hash_password = |first: &str, again: &str| {
        let filesrv = Path::new(env!("CARGO_BIN_EXE_filesrv"));
        let (mut terminal, child) = Terminal::spawn(filesrv, &["--hash-password"]);
        terminal.expect("Password: ");
        terminal.type_line(first);
        terminal.expect("Again: ");
        terminal.type_line(again);
        (child.wait_with_output().unwrap(), terminal.closed())
    };
    let (out, screen) = hash_password("correct horse", "correct horse");
    assert_eq!(screen, "Password: \r\nAgain: \r\n");
    assert_eq!(out.status.code(), Some(0), "{screen}");
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = PasswordHash::new(hash.trim_end()).unwrap();
    assert!(
        argon2::Argon2::default()
            .verify_password(b"correct horse", &hash)
            .is_ok()
    );

    let (out, screen) = hash_password("correct horse", "correct hose");
    assert_eq!(out.status.code(), Some(1), "{screen}");
    assert!(out.stdout.is_empty());
    assert!(
        screen.contains("the two passwords typed differ"),
        "{screen}"
    );
    assert!(!screen.contains("horse"), "{screen}");
}
