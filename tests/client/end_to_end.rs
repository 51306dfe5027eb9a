//! The client library and the `fsc` binary, end to end against a real
//! server on 127.0.0.1. Every wait is bounded: the client by its timeout,
//! each `fsc` run by a watchdog.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, SystemTime};

use filesrv::protocol::wire::{EntryKind, ErrorCode};
use filesrv::protocol::{Client, ClientError, Server, ServerConfig, Stage, TransferOptions};

use crate::support::{LIMIT, TempDir, Terminal};

/// A directory outside the root for the client's own files.
pub(crate) fn local_dir(dir: &TempDir) -> PathBuf {
    let local = dir.path().join("local");
    fs::create_dir_all(&local).unwrap();
    local
}

/// Serves `dir.root()` on 127.0.0.1 with `configure`d settings.
pub(crate) fn serve(dir: &TempDir, configure: impl FnOnce(ServerConfig) -> ServerConfig) -> Server {
    let config = configure(ServerConfig::new(dir.root()));
    Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).unwrap()
}

fn connect(server: &Server) -> Client {
    Client::connect_timeout(server.local_addr(), LIMIT).unwrap()
}

/// Deterministic bytes that are not all alike, more than one chunk long.
pub(crate) fn content(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// The error's code if it is a server refusal.
fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server { code, message }) => {
            assert!(!message.is_empty(), "{code}: empty message");
            code
        }
        other => panic!("expected a server refusal, got {other:?}"),
    }
}

#[test]
fn get_returns_the_exact_bytes() {
    let dir = TempDir::new("client");
    let data = content(200_000);
    fs::write(dir.root().join("data.bin"), &data).unwrap();
    let server = serve(&dir, |config| config);
    let mut client = connect(&server);

    let mut out = Vec::new();
    assert_eq!(client.get_to("data.bin", 0, &mut out).unwrap(), 200_000);
    assert_eq!(out, data);

    let mut tail = Vec::new();
    assert_eq!(
        client.get_to("/data.bin", 150_000, &mut tail).unwrap(),
        50_000
    );
    assert_eq!(tail, data[150_000..]);

    let local = local_dir(&dir).join("copy.bin");
    assert_eq!(
        client
            .get_file("data.bin", &local, &TransferOptions::default())
            .unwrap(),
        200_000
    );
    assert_eq!(fs::read(&local).unwrap(), data);
    client.quit().unwrap();
}

#[test]
fn get_file_resumes_its_own_partial_download() {
    let dir = TempDir::new("client");
    let data = content(100_000);
    fs::write(dir.root().join("data.bin"), &data).unwrap();
    let local = local_dir(&dir).join("data.bin");
    let partial = Client::partial_path(&local, "data.bin");
    fs::write(&partial, &data[..30_000]).unwrap();
    let server = serve(&dir, |config| config);
    let mut client = connect(&server);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    client.set_progress(move |progress| {
        let report = (progress.stage, progress.done, progress.total);
        record.lock().unwrap().push(report);
    });
    let options = TransferOptions::default();
    assert_eq!(
        client.get_file("data.bin", &local, &options).unwrap(),
        70_000
    );
    assert_eq!(fs::read(&local).unwrap(), data);
    assert!(!partial.exists());
    // The check of the partial file, the body, the check of the whole.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let n = seen.len();
    assert!(n > 4, "{seen:?}");
    assert_eq!(seen[0], (Stage::ResumeCheck, 30_000, 30_000));
    assert_eq!(seen[1], (Stage::Transfer, 30_000, 100_000));
    assert_eq!(seen[n - 2], (Stage::Transfer, 100_000, 100_000));
    assert_eq!(seen[n - 1], (Stage::Verify, 100_000, 100_000));
    assert!(seen[1..n - 1].iter().all(|s| s.0 == Stage::Transfer));
    assert!(seen.windows(2).all(|pair| pair[0].1 <= pair[1].1));

    // A complete local file is not a partial one: fetched whole again.
    assert_eq!(
        client.get_file("data.bin", &local, &options).unwrap(),
        100_000
    );
    assert_eq!(fs::read(&local).unwrap(), data);

    // Without resume, a partial file is discarded.
    fs::write(&partial, content(150_000)).unwrap();
    let fresh = options.resume(false);
    assert_eq!(
        client.get_file("data.bin", &local, &fresh).unwrap(),
        100_000
    );
    assert_eq!(fs::read(&local).unwrap(), data);
}

#[test]
fn uploads_and_streams_report_their_check_after_the_body() {
    let dir = TempDir::new("client-stages");
    let data = content(50_000);
    let file = local_dir(&dir).join("up.bin");
    fs::write(&file, &data).unwrap();
    let server = serve(&dir, |config| config.allow_put(true));
    let mut client = connect(&server);
    let stages = Arc::new(Mutex::new(Vec::new()));
    let record = stages.clone();
    client.set_progress(move |progress| record.lock().unwrap().push(progress.stage));
    let options = TransferOptions::default();
    client.put_file(&file, "up.bin", &options).unwrap();
    let mut out = Vec::new();
    client.get_to_checked("up.bin", &mut out, &options).unwrap();
    assert_eq!(out, data);
    let mut stages = stages.lock().unwrap().clone();
    stages.dedup();
    use Stage::{Transfer, Verify};
    assert_eq!(stages, [Transfer, Verify, Transfer, Verify]);
}

#[test]
fn put_then_get_round_trips() {
    let dir = TempDir::new("client");
    fs::create_dir(dir.root().join("sub")).unwrap();
    let data = content(123_457);
    let local = local_dir(&dir).join("upload.bin");
    fs::write(&local, &data).unwrap();
    let server = serve(&dir, |config| config.allow_put(true));
    let mut client = connect(&server);

    let remote = "sub/my file 100%.bin";
    assert_eq!(
        client
            .put_file(&local, remote, &TransferOptions::default())
            .unwrap(),
        123_457
    );
    assert_eq!(dir.read("sub/my file 100%.bin"), data);
    let mut back = Vec::new();
    client.get_to(remote, 0, &mut back).unwrap();
    assert_eq!(back, data);

    // Only `size` bytes of the reader are sent; an upload replaces.
    assert_eq!(client.put_from(remote, &b"hello, world"[..], 5).unwrap(), 5);
    assert_eq!(dir.read("sub/my file 100%.bin"), b"hello");
    assert_eq!(client.put_from("empty", &b""[..], 0).unwrap(), 0);
    assert_eq!(dir.read("empty"), b"");
    client.quit().unwrap();
}

#[test]
fn list_and_stat_describe_files() {
    let dir = TempDir::new("client");
    let root = dir.root();
    fs::write(root.join("a b.txt"), b"hello").unwrap();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"bad\xFF")), b"x").unwrap();
    fs::create_dir(root.join("dir")).unwrap();
    fs::write(root.join("dir/inner"), b"12").unwrap();
    let server = serve(&dir, |config| config);
    let mut client = connect(&server);

    let entries = client.list("").unwrap();
    let summary: Vec<_> = entries
        .iter()
        .map(|entry| (entry.kind, entry.name.as_slice()))
        .collect();
    assert_eq!(
        summary,
        [
            (EntryKind::File, &b"a b.txt"[..]),
            (EntryKind::File, b"bad\xFF"),
            (EntryKind::Dir, b"dir"),
        ]
    );
    assert_eq!(entries[0].size, 5);
    assert_eq!(client.list("/").unwrap(), entries);
    let inner = client.list("dir").unwrap();
    assert_eq!(inner.len(), 1);
    assert_eq!(
        (inner[0].name.as_slice(), inner[0].size),
        (&b"inner"[..], 2)
    );

    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    File::options()
        .write(true)
        .open(root.join("a b.txt"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let stat = client.stat("a b.txt").unwrap();
    assert_eq!(
        (stat.kind, stat.size, stat.mtime),
        (EntryKind::File, 5, 1_700_000_000)
    );
    assert_eq!(client.stat("dir").unwrap().kind, EntryKind::Dir);
    assert_eq!(client.stat("").unwrap().kind, EntryKind::Dir);
    client.quit().unwrap();
}

#[test]
fn server_errors_surface_with_their_code() {
    let dir = TempDir::new("client");
    fs::write(dir.root().join("five"), b"12345").unwrap();
    fs::create_dir(dir.root().join("dir")).unwrap();
    let server = serve(&dir, |config| config);
    let mut client = connect(&server);
    let mut out = Vec::new();

    // Each of these keeps the connection.
    assert_eq!(
        refusal(client.get_to("missing", 0, &mut out)),
        ErrorCode::NotFound
    );
    assert_eq!(refusal(client.stat("missing")), ErrorCode::NotFound);
    assert_eq!(refusal(client.list("missing")), ErrorCode::NotFound);
    assert_eq!(
        refusal(client.get_to("five", 6, &mut out)),
        ErrorCode::Range
    );
    assert_eq!(client.get_to("five", 5, &mut out).unwrap(), 0);
    assert_eq!(
        refusal(client.get_to("dir", 0, &mut out)),
        ErrorCode::BadRequest
    );
    assert_eq!(
        refusal(client.get_to("../five", 0, &mut out)),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refusal(client.get_file(
            "missing",
            &local_dir(&dir).join("missing"),
            &TransferOptions::default()
        )),
        ErrorCode::NotFound
    );
    assert!(
        !local_dir(&dir).join("missing").exists(),
        "no local file for a refused download"
    );
    assert!(out.is_empty());
    assert_eq!(client.stat("five").unwrap().size, 5);

    // An upload refused before its body closes the connection.
    assert_eq!(
        refusal(client.put_from("new", &b"data"[..], 4)),
        ErrorCode::Forbidden
    );
    assert!(matches!(client.stat("five"), Err(ClientError::Io(_))));
    assert!(!dir.root().join("new").exists());
}

#[test]
fn upload_refusals_surface_with_their_code() {
    let dir = TempDir::new("client");
    fs::create_dir(dir.root().join("dir")).unwrap();
    let server = serve(&dir, |config| config.allow_put(true).max_upload(10));

    let mut client = connect(&server);
    assert_eq!(
        refusal(client.put_from("big", &[0; 11][..], 11)),
        ErrorCode::TooLarge
    );
    let mut client = connect(&server);
    assert_eq!(
        refusal(client.put_from("no/such/dir/file", &b"x"[..], 1)),
        ErrorCode::NotFound
    );
    let mut client = connect(&server);
    assert_eq!(
        refusal(client.put_from("dir", &b"x"[..], 1)),
        ErrorCode::BadRequest
    );
    let names: Vec<_> = fs::read_dir(dir.root())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["dir"], "nothing stored, no temporary file left");
}

#[test]
fn a_full_server_answers_busy() {
    let dir = TempDir::new("client");
    let server = serve(&dir, |config| config.max_running(1).max_waiting(0));
    let mut first = connect(&server);
    // Answered, so it holds the only running slot.
    first.list("").unwrap();

    let mut second = connect(&server);
    assert_eq!(refusal(second.list("")), ErrorCode::Busy);
    first.quit().unwrap();
}

/// A scripted server: accepts one connection, reads one request line,
/// writes `reply` and closes.
fn fake_server(reply: &'static [u8]) -> (SocketAddr, thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream).write_all(reply).unwrap();
        line
    });
    (addr, handle)
}

#[test]
fn a_short_body_is_truncated_and_closes_the_client() {
    let (addr, server) = fake_server(b"OK 10\nabc");
    let mut client = Client::connect_timeout(addr, LIMIT).unwrap();
    let mut out = Vec::new();
    match client.get_to("my file", 0, &mut out) {
        Err(ClientError::Truncated { expected, got }) => assert_eq!((expected, got), (10, 3)),
        other => panic!("expected a truncated transfer, got {other:?}"),
    }
    assert_eq!(out, b"abc");
    assert_eq!(server.join().unwrap(), "GET my%20file\n");
    assert!(matches!(client.stat("x"), Err(ClientError::Io(_))));
}

#[test]
fn malformed_replies_are_protocol_errors() {
    for reply in [&b"HELLO\n"[..], b"OK -1\n", b"ERR nonsense what\n", b"OK 1"] {
        let (addr, server) = fake_server(reply);
        let mut client = Client::connect_timeout(addr, LIMIT).unwrap();
        let result = client.get_to("x", 7, &mut Vec::new());
        assert_eq!(server.join().unwrap(), "GET x 7\n");
        match (reply, result) {
            // A line cut short by the close is a connection error.
            (b"OK 1", Err(ClientError::Io(_))) | (_, Err(ClientError::Protocol(_))) => {}
            (_, other) => panic!("{reply:?}: got {other:?}"),
        }
    }
}

/// What one `fsc` run did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: String,
}

/// Runs `fsc --timeout 20 <args>` in `cwd`, with no input, killed if it
/// outlives `LIMIT`.
pub(crate) fn fsc(cwd: &Path, args: &[&str]) -> Run {
    let child = Command::new(env!("CARGO_BIN_EXE_fsc"))
        .args(["--timeout", "20"])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if finished.recv_timeout(LIMIT) == Err(mpsc::RecvTimeoutError::Timeout) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    });
    let output = child.wait_with_output().unwrap();
    drop(done);
    watchdog.join().unwrap();
    Run {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Asserts a quiet success and returns stdout.
pub(crate) fn success(run: Run) -> Vec<u8> {
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stderr, "", "no progress bar or message off a terminal");
    run.stdout
}

/// Asserts a failure with one `fsc: ` line on stderr, and returns it.
fn failure(run: &Run, code: i32) -> &str {
    assert_eq!(run.code, Some(code), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.starts_with("fsc: "), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    run.stderr.trim_end()
}

#[test]
fn fsc_gets_to_a_file_to_stdout_and_resumes() {
    let dir = TempDir::new("client");
    let data = content(100_000);
    fs::create_dir(dir.root().join("docs")).unwrap();
    fs::write(dir.root().join("docs/data.bin"), &data).unwrap();
    let server = serve(&dir, |config| config);
    let addr = server.local_addr().to_string();
    let local = local_dir(&dir);

    let stdout = success(fsc(&local, &[&addr, "get", "docs/data.bin", "-"]));
    assert_eq!(stdout, data);

    // Named after the remote file, in the current directory.
    assert!(success(fsc(&local, &[&addr, "get", "docs/data.bin"])).is_empty());
    assert_eq!(fs::read(local.join("data.bin")).unwrap(), data);

    // A partial file is completed; a directory receives the remote name.
    fs::write(local.join("part"), &data[..40_000]).unwrap();
    success(fsc(&local, &[&addr, "get", "docs/data.bin", "part"]));
    assert_eq!(fs::read(local.join("part")).unwrap(), data);
    fs::create_dir(local.join("into")).unwrap();
    success(fsc(&local, &[&addr, "get", "/docs/data.bin", "into"]));
    assert_eq!(fs::read(local.join("into/data.bin")).unwrap(), data);

    // --no-resume starts over.
    fs::write(local.join("part"), b"garbage").unwrap();
    success(fsc(
        &local,
        &[&addr, "get", "--no-resume", "docs/data.bin", "part"],
    ));
    assert_eq!(fs::read(local.join("part")).unwrap(), data);
}

#[test]
fn fsc_puts_and_gets_back() {
    let dir = TempDir::new("client");
    fs::create_dir(dir.root().join("up")).unwrap();
    let data = content(70_000);
    fs::write(local_dir(&dir).join("my file.bin"), &data).unwrap();
    let server = serve(&dir, |config| config.allow_put(true));
    let addr = server.local_addr().to_string();
    let local = local_dir(&dir);

    success(fsc(&local, &[&addr, "put", "my file.bin"]));
    assert_eq!(dir.read("my file.bin"), data);
    success(fsc(&local, &[&addr, "put", "my file.bin", "up/"]));
    success(fsc(&local, &[&addr, "put", "my file.bin", "up/renamed"]));
    assert_eq!(dir.read("up/my file.bin"), data);
    assert_eq!(dir.read("up/renamed"), data);

    let stdout = success(fsc(&local, &[&addr, "get", "up/renamed", "-"]));
    assert_eq!(stdout, data);
}

#[test]
fn fsc_lists_and_stats() {
    let dir = TempDir::new("client");
    let root = dir.root();
    fs::write(root.join("a b.txt"), b"hello").unwrap();
    fs::write(root.join("big.bin"), content(70_000)).unwrap();
    fs::write(root.join("line\nbreak"), b"x").unwrap();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"bad\xFF")), b"").unwrap();
    fs::create_dir(root.join("dir")).unwrap();
    let dir_size = fs::metadata(root.join("dir")).unwrap().len();
    File::options()
        .write(true)
        .open(root.join("a b.txt"))
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .unwrap();
    let server = serve(&dir, |config| config);
    let addr = server.local_addr().to_string();

    let listing = success(fsc(&local_dir(&dir), &[&addr, "ls"]));
    assert!(dir_size < 100_000, "sizes fit in five columns");
    assert_eq!(
        String::from_utf8(listing).unwrap(),
        format!(
            "f     5 'a b.txt'\n\
             f     0 $'bad\\xFF'\n\
             f 70000 big.bin\n\
             d {dir_size:>5} dir\n\
             f     1 $'line\\nbreak'\n"
        )
    );
    assert!(success(fsc(&local_dir(&dir), &[&addr, "ls", "dir"])).is_empty());

    let stat = success(fsc(&local_dir(&dir), &[&addr, "stat", "a b.txt"]));
    assert_eq!(
        String::from_utf8(stat).unwrap(),
        "kind: file\nsize: 5\nmodified: 2023-11-14 22:13:20 UTC (1700000000)\n"
    );
    let stat = success(fsc(&local_dir(&dir), &[&addr, "stat", "dir"]));
    assert!(
        String::from_utf8(stat)
            .unwrap()
            .starts_with("kind: directory\n")
    );
}

#[test]
fn fsc_reports_failures_with_exit_codes() {
    let dir = TempDir::new("client");
    fs::write(dir.root().join("five"), b"12345").unwrap();
    fs::write(local_dir(&dir).join("upload"), b"data").unwrap();
    let server = serve(&dir, |config| config);
    let addr = server.local_addr().to_string();
    let local = local_dir(&dir);

    // Refusals by the server: 1, naming the command and its path.
    let run = fsc(&local, &[&addr, "get", "missing"]);
    assert!(
        failure(&run, 1).starts_with("fsc: get missing: server refused: not-found "),
        "{run:?}"
    );
    assert!(!local.join("missing").exists());
    let run = fsc(&local, &[&addr, "stat", "../five"]);
    assert!(failure(&run, 1).starts_with("fsc: stat ../five: server refused: forbidden "));
    let run = fsc(&local, &[&addr, "put", "upload"]);
    assert_eq!(
        failure(&run, 1),
        "fsc: put upload: server refused: forbidden uploads are disabled \
         (a filesrv server accepts them when started with --allow-put)"
    );
    let run = fsc(&local, &[&addr, "ls", "five"]);
    assert!(failure(&run, 1).starts_with("fsc: ls five: server refused: bad-request "));
    let names: Vec<_> = fs::read_dir(&local)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["upload"], "no partial file left");
    // A local file longer than the remote one is not a partial download:
    // it is replaced.
    fs::write(local.join("five"), b"1234567").unwrap();
    success(fsc(&local, &[&addr, "get", "five"]));
    assert_eq!(fs::read(local.join("five")).unwrap(), b"12345");

    // Everything else: 2.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let run = fsc(&local, &[&closed, "ls"]);
    assert!(failure(&run, 2).starts_with(&format!("fsc: cannot connect to {closed}: ")));
    let run = fsc(&local, &[&addr, "put", "no-such-file"]);
    assert!(failure(&run, 2).starts_with("fsc: put no-such-file: local file no-such-file: "));
    // The partial file cannot be made: the line names the path given.
    fs::write(local.join("plain"), b"").unwrap();
    let run = fsc(&local, &[&addr, "get", "five", "plain/five"]);
    let line = failure(&run, 2);
    assert!(
        line.starts_with("fsc: get five: local file plain/.five.")
            && line.ends_with(
                "(the partial download of plain/five (it becomes that file once complete))"
            ),
        "{line}"
    );
    fs::remove_file(local.join("plain")).unwrap();
    let run = fsc(&local, &[&addr, "get", "/"]);
    assert!(failure(&run, 2).contains("give LOCAL"));

    // Usage errors come from the argument parser, also with 2.
    for args in [&[][..], &[&addr[..]], &[&addr[..], "fetch", "x"]] {
        let run = fsc(&local, args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains("Usage:"), "{args:?}: {run:?}");
    }
    let run = fsc(&local, &["--help"]);
    assert_eq!(run.code, Some(0));
    let help = String::from_utf8(run.stdout).unwrap();
    assert!(help.contains("Exit status:"), "{help}");
    let run = fsc(&local, &["--version"]);
    assert_eq!(run.code, Some(0));
    assert!(String::from_utf8(run.stdout).unwrap().starts_with("fsc "));
}

#[test]
fn fsc_upload_refusals_name_the_directory_and_the_limit() {
    let dir = TempDir::new("client-put-errors");
    let local = local_dir(&dir);
    fs::write(local.join("eleven"), b"hello world").unwrap();
    fs::write(local.join("three"), b"abc").unwrap();
    let server = serve(&dir, |config| config.allow_put(true).max_upload(10));
    let addr = server.local_addr().to_string();
    let run = fsc(&local, &[&addr, "put", "three", "nodir/sub/x"]);
    let line = failure(&run, 1);
    assert!(
        line.starts_with("fsc: put nodir/sub/x: server refused: not-found ")
            && line.ends_with(" (the server has no directory nodir/sub)"),
        "{line}"
    );
    let run = fsc(&local, &[&addr, "put", "eleven"]);
    assert_eq!(
        failure(&run, 1),
        "fsc: put eleven: server refused: too-large upload of 11 bytes exceeds the size \
         limit of 10 bytes"
    );
}

/// A scripted server for one connection: `GET x` answered `OK 3\nabc`,
/// then `SUM x` answered with the digest of `abd`. Returns the request
/// lines it read.
fn server_whose_file_changes() -> (SocketAddr, thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        let mut reader = BufReader::new(&stream);
        let mut lines = Vec::new();
        for reply in [
            &b"OK 3\nabc"[..],
            // A digest that is not that of `abc`.
            b"OK sha256 a52b286a3e7f4d91f4bb0e9b0fc4c1d8c2b9c8e1f2a3b4c5d6e7f8091a2b3c4d 3\n",
        ] {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            lines.push(line);
            (&stream).write_all(reply).unwrap();
        }
        lines
    });
    (addr, handle)
}

#[test]
fn fsc_get_to_stdout_is_checked_against_the_servers_sum() {
    let dir = TempDir::new("client-stdout-sum");
    let local = local_dir(&dir);
    let (addr, server) = server_whose_file_changes();
    let run = fsc(&local, &[&addr.to_string(), "get", "x", "-"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert_eq!(run.stdout, b"abc");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        run.stderr
            .starts_with("fsc: get x: the file does not match the server's: ")
            && run.stderr.trim_end().ends_with(
                "(what was written to standard output is not the server's file (it changed \
                 meanwhile?): discard it)"
            ),
        "{run:?}"
    );
    assert_eq!(server.join().unwrap(), ["GET x\n", "SUM x\n"]);

    // --no-verify: no SUM asked, so none to disagree.
    let (addr, server) = server_whose_file_changes();
    let run = fsc(&local, &[&addr.to_string(), "get", "x", "-", "--no-verify"]);
    assert_eq!(
        (run.code, &run.stdout[..]),
        (Some(0), &b"abc"[..]),
        "{run:?}"
    );
    assert_eq!(server.join().unwrap(), ["GET x\n", "QUIT\n"]);
}

#[test]
fn fsc_takes_options_anywhere_and_the_server_after_the_command() {
    let dir = TempDir::new("client-order");
    fs::write(dir.root().join("a.txt"), b"abc").unwrap();
    let server = serve(&dir, |config| config);
    let addr = server.local_addr().to_string();
    let local = local_dir(&dir);
    let listing = b"f 3 a.txt\n";
    assert_eq!(
        success(fsc(&local, &[&addr, "ls", "--timeout", "5"])),
        listing
    );
    assert_eq!(success(fsc(&local, &["ls", &addr])), listing);
    assert_eq!(
        success(fsc(&local, &["--timeout=5", "ls", &addr, "--timeout", "6"])),
        listing
    );
    assert_eq!(
        success(fsc(&local, &["get", &addr, "a.txt", "-", "--no-verify"])),
        b"abc"
    );
}

#[test]
fn client_types_are_send() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<Client>();
    send_sync::<ClientError>();
}

/// A hostile server on 127.0.0.1 for one connection: it reads the request
/// line, sends each part the number of times given, and closes. Returns
/// its address.
fn hostile_server(parts: Vec<(Vec<u8>, usize)>) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let thread = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        stream.set_write_timeout(Some(LIMIT)).unwrap();
        let mut request = String::new();
        BufReader::new(&stream).read_line(&mut request).unwrap();
        for (bytes, times) in parts {
            for _ in 0..times {
                // The client may give up first.
                if (&stream).write_all(&bytes).is_err() {
                    return;
                }
            }
        }
    });
    (addr, thread)
}

#[test]
fn fsc_ls_streams_an_endless_listing_in_bounded_memory() {
    let dir = TempDir::new("client-endless");
    // The largest count there is, 48 MiB of entries (8 million, about
    // 500 MB as a list in memory), then a line that is no entry.
    let (addr, server) = hostile_server(vec![
        (b"OK 18446744073709551615\n".to_vec(), 1),
        (b"f 1 x\n".repeat(1 << 20), 8),
        (b"not an entry\n".to_vec(), 1),
    ]);
    // 64 MiB of address space: fsc needs under 16.
    let run = Command::new("prlimit")
        .arg(format!("--as={}", 64 << 20))
        .arg(env!("CARGO_BIN_EXE_fsc"))
        .args(["--timeout", "20", &addr, "ls"])
        .current_dir(local_dir(&dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr, "fsc: ls: malformed reply: expected `<f|d> <size> <name>`\n",
        "fsc did not read to the last line"
    );
}

#[test]
fn fsc_escapes_control_characters_a_server_sends() {
    let dir = TempDir::new("client-escapes");
    // A title change and a screen clear in an error message.
    let (addr, server) = hostile_server(vec![(
        b"ERR not-found \x1b]0;pwned\x07\x1b[2Jgone\n".to_vec(),
        1,
    )]);
    let run = fsc(&local_dir(&dir), &[&addr, "stat", "x"]);
    server.join().unwrap();
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        run.stderr,
        "fsc: stat x: server refused: not-found \\u{1b}]0;pwned\\u{7}\\u{1b}[2Jgone\n"
    );
}

#[test]
fn fsc_get_refuses_a_symlink_planted_at_its_partial_name() {
    let dir = TempDir::new("client-planted");
    dir.write("notes.txt", "server notes\n");
    let victim = dir.write("../victim", "precious\n");
    let server = serve(&dir, |config| config);
    let addr = server.local_addr().to_string();
    let local = local_dir(&dir);
    let partial = Client::partial_path(&local.join("notes.txt"), "notes.txt");
    std::os::unix::fs::symlink(&victim, &partial).unwrap();
    for args in [
        &["get", "notes.txt"][..],
        &["get", "--no-resume", "notes.txt"],
    ] {
        let mut all = vec![&addr[..]];
        all.extend_from_slice(args);
        let run = fsc(&local, &all);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("not a regular file of this user's"),
            "{run:?}"
        );
        assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
        assert!(!local.join("notes.txt").exists());
    }
    // Another user's file there is refused as well.
    fs::remove_file(&partial).unwrap();
    fs::write(&partial, b"theirs").unwrap();
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&partial, Some(65534), None).unwrap();
        let run = fsc(&local, &[&addr, "get", "notes.txt"]);
        assert_eq!(run.code, Some(2), "{run:?}");
        assert_eq!(fs::read(&partial).unwrap(), b"theirs");
    }
}

/// `fsc get` on a terminal (a pty through util-linux's `script`): the
/// check of the partial file and the final check are shown as what they
/// are, and the summary gives the body's time and the checks' apart.
#[test]
fn fsc_shows_its_checks_on_a_terminal() {
    let dir = TempDir::new("client-tty");
    let data = content(4 << 20);
    fs::write(dir.root().join("big.bin"), &data).unwrap();
    let local = local_dir(&dir);
    let partial = Client::partial_path(&local.join("big.bin"), "big.bin");
    fs::write(&partial, &data[..1 << 20]).unwrap();
    let server = serve(&dir, |config| config);
    let command = format!(
        "{} --timeout 20 {} get big.bin",
        env!("CARGO_BIN_EXE_fsc"),
        server.local_addr()
    );
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(&local)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    assert_eq!(fs::read(local.join("big.bin")).unwrap(), data);
    for part in [
        "big.bin: checking the partial download (1.00 MiB) against the server's",
        "big.bin (resumed at 1.00 MiB)",
        "big.bin: checking its SHA-256 with the server's",
        "big.bin: 3.00 MiB in ",
    ] {
        assert!(shown.contains(part), "no {part:?} in {shown:?}");
    }
    let checks = shown.find("checking its SHA-256").unwrap();
    assert!(shown.find("(resumed at").unwrap() < checks, "{shown:?}");
}

/// `fsc` without a TLS option, against a server that speaks TLS: one
/// line saying so and naming the options, not "the server closed the
/// connection", whether the command is the first thing sent or a login is.
/// (Not an upload: the server closes with the body unread, and the reset
/// that sends may destroy its alert before fsc reads it.)
#[test]
fn fsc_without_tls_options_says_the_server_speaks_tls() {
    let dir = TempDir::new("client");
    fs::write(dir.root().join("five"), b"12345").unwrap();
    let local = local_dir(&dir);
    let server = serve(&dir, |config| config.tls_self_signed(true));
    let addr = server.local_addr().to_string();
    for args in [
        &[&*addr, "ls"][..],
        &[&addr, "get", "five", "-"],
        &["--user", "ann", &addr, "ls"],
    ] {
        let child = Command::new(env!("CARGO_BIN_EXE_fsc"))
            .args(["--timeout", "20"])
            .args(args)
            .current_dir(&local)
            .env("FSC_PASSWORD", "pw")
            .output()
            .unwrap();
        let run = Run {
            code: child.status.code(),
            stdout: child.stdout,
            stderr: String::from_utf8(child.stderr).unwrap(),
        };
        let line = failure(&run, 2);
        assert!(
            line.contains("the server speaks TLS") && line.contains("--pin"),
            "{args:?}: {line}"
        );
    }
    server.shutdown();
}

/// A self-signed certificate as `openssl req -x509` makes it by default
/// (marked as a CA), given to `fsc --ca`: trusted as itself, with the
/// name still checked, as curl's `--cacert` does.
#[test]
fn fsc_ca_trusts_a_default_openssl_req_certificate_and_checks_its_name() {
    let Some(openssl) = crate::support::tools::require("openssl") else {
        return;
    };
    let dir = TempDir::new("client");
    fs::write(dir.root().join("five"), b"12345").unwrap();
    let status = Command::new(openssl)
        .current_dir(dir.path())
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let mut command = crate::support::ChildServer::command(&dir.root(), 2);
    command
        .arg("--tls-cert")
        .arg(dir.path().join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.path().join("key.pem"));
    let server = crate::support::ChildServer::spawn(command);
    let port = server.addr().port();
    let local = local_dir(&dir);
    let ca = dir.path().join("cert.pem");
    let ca = ca.to_str().unwrap();
    let got = success(fsc(
        &local,
        &["--ca", ca, &format!("localhost:{port}"), "get", "five", "-"],
    ));
    assert_eq!(got, b"12345");
    let run = fsc(&local, &["--ca", ca, &format!("127.0.0.1:{port}"), "ls"]);
    assert!(
        failure(&run, 1).contains("NotValidForName"),
        "the name is still checked: {run:?}"
    );
}

/// A server of `five` whose one user, `ann`, logs in with `password`.
fn serve_with_ann(password: &[u8]) -> (TempDir, Server) {
    let dir = TempDir::new("client");
    fs::write(dir.root().join("five"), b"12345").unwrap();
    let users = dir.path().join("users");
    let hash = filesrv::protocol::hash_password(password).unwrap();
    fs::write(&users, format!("ann:{hash}\n")).unwrap();
    let server = serve(&dir, |config| config.users(Some(users)));
    (dir, server)
}

/// `fsc --user` without TLS to an address that is not loopback refuses
/// before connecting: the password would cross the network in clear
/// (the server refuses it, but only after reading it). To 127.0.0.1 it
/// logs in as before.
#[test]
fn fsc_user_without_tls_goes_only_to_loopback() {
    let (dir, server) = serve_with_ann(b"pw");
    let local = local_dir(&dir);
    let run = |addr: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_fsc"))
            .args(["--timeout", "20", "--user", "ann", addr, "stat", "five"])
            .current_dir(&local)
            .env("FSC_PASSWORD", "pw")
            .output()
            .unwrap();
        Run {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    };
    // 192.0.2.1 is a documentation address (RFC 5737), never routed.
    let refused = run("192.0.2.1:9");
    let line = failure(&refused, 2);
    assert!(line.contains("--user") && line.contains("--pin"), "{line}");
    let stat = success(run(&server.local_addr().to_string()));
    assert!(stat.starts_with(b"kind: file"), "{stat:?}");
    server.shutdown();
}

/// `fsc --user` without `FSC_PASSWORD` asks on its terminal with echo
/// off: it logs in, and the password is never shown.
#[test]
fn fsc_asks_for_the_password_on_its_terminal_without_showing_it() {
    let (_dir, server) = serve_with_ann(b"ann's secret");
    let addr = server.local_addr().to_string();
    let fsc = Path::new(env!("CARGO_BIN_EXE_fsc"));
    let args = ["--timeout", "20", "--user", "ann", &addr, "stat", "five"];
    let (mut terminal, child) = Terminal::spawn(fsc, &args);
    terminal.expect("Password: ");
    terminal.type_line("ann's secret");
    let out = child.wait_with_output().unwrap();
    assert_eq!(terminal.closed(), "Password: \r\n");
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.starts_with(b"kind: file"), "{out:?}");
    server.shutdown();
}
