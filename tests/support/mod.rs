//! Shared test support: temporary directories, servers on 127.0.0.1:0
//! that shut down on drop, and raw protocol connections with bounded
//! waits. No sleeps: every wait is a blocking call with a timeout.
#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use filesrv::protocol::{Server, ServerConfig};

/// The longest any single wait in a test may take.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A fresh directory under the system's temporary directory, removed on
/// drop. `root()` is a subdirectory to serve; `path()` is the whole, so
/// tests can put files *outside* the served root next to it.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "filesrv-{label}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("root")).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn root(&self) -> PathBuf {
        self.0.join("root")
    }

    /// A directory outside the root for the client's own files.
    pub fn local(&self) -> PathBuf {
        let local = self.0.join("local");
        fs::create_dir_all(&local).unwrap();
        local
    }

    /// Writes a file beneath the root, creating parent directories.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.root().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
        path
    }

    /// The names in a directory beneath the root, sorted.
    pub fn names(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root().join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A server embedded in the test, on 127.0.0.1:0; shut down on drop.
pub struct TestServer {
    pub server: Server,
    pub dir: TempDir,
}

impl TestServer {
    /// Serves a new temporary root with the defaults changed by `configure`.
    pub fn start(label: &str, configure: impl FnOnce(ServerConfig) -> ServerConfig) -> TestServer {
        init();
        let dir = TempDir::new(label);
        let config = configure(ServerConfig::new(dir.root()));
        let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).unwrap();
        TestServer { server, dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr())
    }

    /// Asserts that a fresh client is served normally: the server is
    /// still healthy after whatever the test did.
    pub fn assert_serves(&self) {
        self.dir.write("health.txt", "ok\n");
        let mut c = self.connect();
        c.send(b"GET health.txt\n");
        assert_eq!(c.line(), "OK 3");
        assert_eq!(c.body(3), b"ok\n");
        c.send(b"QUIT\n");
        assert_eq!(c.line(), "OK bye");
        c.expect_eof();
    }
}

/// A raw protocol connection: write bytes, read exact replies. Reads time
/// out after [`LIMIT`], so a hung server fails the test instead of hanging.
pub struct Conn {
    pub reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, LIMIT).unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        stream.set_write_timeout(Some(LIMIT)).unwrap();
        Conn {
            reader: BufReader::new(stream),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream().write_all(bytes).unwrap();
    }

    /// Like [`Conn::send`], but reports failure (the server may have closed).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream().write_all(bytes)
    }

    /// Shuts the write side, as `nc -N` does after its input.
    pub fn half_close(&mut self) {
        self.stream().shutdown(Shutdown::Write).unwrap();
    }

    /// The next reply line without its `\n`; panics on end of stream.
    pub fn line(&mut self) -> String {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).unwrap();
        assert_eq!(
            line.last(),
            Some(&b'\n'),
            "no complete line: {:?}",
            String::from_utf8_lossy(&line)
        );
        line.pop();
        String::from_utf8(line).unwrap()
    }

    /// Asserts the next line is `ERR <code> <non-empty message>`.
    pub fn expect_err(&mut self, code: &str) {
        let line = self.line();
        let prefix = format!("ERR {code} ");
        assert!(
            line.starts_with(&prefix) && line.len() > prefix.len(),
            "expected ERR {code}, got {line:?}"
        );
    }

    /// Exactly `n` body bytes.
    pub fn body(&mut self, n: usize) -> Vec<u8> {
        let mut body = vec![0; n];
        self.reader.read_exact(&mut body).unwrap();
        body
    }

    /// Everything until the server closes.
    /// A reset counts as the end; a server that never closes fails the
    /// test after [`LIMIT`].
    pub fn rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        if let Err(e) = self.reader.read_to_end(&mut rest) {
            assert!(
                !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "the server did not close the connection within {LIMIT:?}"
            );
        }
        rest
    }

    /// Asserts the server closes the connection with nothing more to say.
    pub fn expect_eof(&mut self) {
        let rest = self.rest();
        assert!(
            rest.is_empty(),
            "expected end of stream, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

// Strict waits, added with tests/protocol.rs and tests/cli.rs.

impl Conn {
    /// Everything until the server closes. Unlike [`Conn::rest`], fails the
    /// test when the server does not close within the read timeout, or
    /// resets the connection (which may have destroyed replies).
    pub fn read_until_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        if let Err(e) = self.reader.read_to_end(&mut rest) {
            panic!(
                "connection not closed cleanly: {e}; read so far: {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
        rest
    }

    /// Asserts the server closes the connection cleanly, with nothing more
    /// to say, within the read timeout.
    pub fn expect_closed(&mut self) {
        let rest = self.read_until_closed();
        assert!(
            rest.is_empty(),
            "expected end of stream, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Asserts the next line is `ERR <code> <non-empty message>`; returns
    /// the message.
    pub fn err_message(&mut self, code: &str) -> String {
        let line = self.line();
        let message = line
            .strip_prefix(&format!("ERR {code} "))
            .map(str::to_owned);
        match message {
            Some(message) if !message.is_empty() => message,
            _ => panic!("expected ERR {code}, got {line:?}"),
        }
    }

    /// Asserts the next line is `ERR <code> <message>`, and that the server
    /// then closes the connection cleanly.
    pub fn expect_final_err(&mut self, code: &str) {
        self.expect_err(code);
        self.expect_closed();
    }

    /// Sends `GET <args>` (a path, and an offset if wanted) and asserts
    /// the reply is `OK <n>` and exactly `contents`.
    pub fn assert_get(&mut self, args: &str, contents: &[u8]) {
        self.send(format!("GET {args}\n").as_bytes());
        assert_eq!(self.line(), format!("OK {}", contents.len()), "GET {args}");
        assert_eq!(self.body(contents.len()), contents, "GET {args}");
    }
}

impl TempDir {
    /// The upload temporary files in a directory beneath the root, sorted.
    pub fn temp_files(&self, rel: &str) -> Vec<String> {
        let mut names = self.names(rel);
        names.retain(|name| name.starts_with(".filesrv-"));
        names
    }
}

/// Sends `PUT <name> <size>` and the `first` bytes of the body on `c`,
/// and waits (on the directory, at most [`LIMIT`]) until the server has
/// created the upload's temporary file beneath `dir`'s root: the request
/// is then in progress.
pub fn begin_upload(c: &mut Conn, dir: &TempDir, name: &str, size: usize, first: &[u8]) {
    let watch = DirWatch::new(&dir.root());
    c.send(format!("PUT {name} {size}\n").as_bytes());
    c.send(first);
    assert!(
        watch.wait_until(|| dir.temp_files("").len() == 1),
        "the upload did not begin"
    );
}

/// For a server with one running slot and a queue of one: a client that
/// is running (it was answered) and idle, and one waiting in the queue,
/// shown to be there by a third that is refused `ERR busy` (queue full).
pub fn running_and_waiting(connect: impl Fn() -> Conn) -> (Conn, Conn) {
    let mut running = connect();
    running.send(b"STAT /\n");
    assert!(running.line().starts_with("OK d "));
    let waiting = connect();
    connect().expect_final_err("busy");
    (running, waiting)
}

// ---------------------------------------------------------------------
// Helpers of the hostile suites (tests/hostile_*.rs): a tree of escaping
// links, sockets bound to other loopback addresses, the filesrv binary as
// a child process, and waiting on a directory without polling.
// ---------------------------------------------------------------------

/// The content of the only file outside the served root: no reply may
/// ever contain it.
pub const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-ROOT\n";

/// Plants, beneath `dir`, a secret outside the root and links that try to
/// reach it every way a link can, next to benign files and links:
///
/// - `outside/secret.txt` ([`SECRET`]), and `root-evil/secret.txt`, a
///   sibling whose name starts with the root's (the prefix-comparison bug
///   of CVE-2014-6394 in Node's `send`);
/// - inside: `file.txt` ("inside\n"), `sub/inner.txt` ("inner\n"),
///   `sub/up` -> `../file.txt`, `to_sub` -> `sub`, `sub/self` -> `.`,
///   `deep/a/b/ok` -> `../../../file.txt`;
/// - escaping: `out_file` -> `../outside/secret.txt`, `out_dir` ->
///   `../outside`, `slash` -> `/`, `abs_inside` -> the absolute path of
///   `file.txt`, `evil_sibling` -> `../root-evil/secret.txt`,
///   `deep/a/b/c` -> `../../../../outside`, `proc_root` ->
///   `/proc/self/root`, `dangling_out` -> `../outside/nowhere`;
/// - broken: `dangling` -> `nowhere`, `loop_a` <-> `loop_b`, `self_loop`.
pub fn plant_hostile_tree(dir: &TempDir) {
    use std::os::unix::fs::symlink;
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret.txt"), SECRET).unwrap();
    let evil = dir.path().join("root-evil");
    fs::create_dir_all(&evil).unwrap();
    fs::write(evil.join("secret.txt"), SECRET).unwrap();

    dir.write("file.txt", "inside\n");
    dir.write("sub/inner.txt", "inner\n");
    dir.write("deep/a/b/.keep", "");
    let root = dir.root();
    let link = |target: &str, name: &str| symlink(target, root.join(name)).unwrap();
    link("../file.txt", "sub/up");
    link("sub", "to_sub");
    link(".", "sub/self");
    link("../../../file.txt", "deep/a/b/ok");
    link("../outside/secret.txt", "out_file");
    link("../outside", "out_dir");
    link("/", "slash");
    link(root.join("file.txt").to_str().unwrap(), "abs_inside");
    link("../root-evil/secret.txt", "evil_sibling");
    link("../../../../outside", "deep/a/b/c");
    link("/proc/self/root", "proc_root");
    link("../outside/nowhere", "dangling_out");
    link("nowhere", "dangling");
    link("loop_b", "loop_a");
    link("loop_a", "loop_b");
    link("self_loop", "self_loop");
}

/// The names in the directory outside the root, to prove nothing was
/// written there.
pub fn outside_names(dir: &TempDir) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.path().join("outside"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

/// Where an open descriptor points, as the kernel tells it.
pub fn fd_path(fd: &impl std::os::fd::AsRawFd) -> PathBuf {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
}

/// Whether `haystack` holds `needle` anywhere.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A TCP connection to `addr` from the loopback address `from` (any of
/// 127.0.0.0/8), so that tests can play many distinct sources. `std`
/// cannot bind before connecting, so the socket is made with rustix. The
/// connect is bounded by [`LIMIT`] (Linux applies the send timeout to it).
pub fn connect_from(from: std::net::Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    use rustix::net::{self, AddressFamily, SocketFlags, SocketType, sockopt};
    assert!(from.is_loopback() && addr.ip().is_loopback());
    // Close-on-exec, as std's sockets are: a child spawned meanwhile by
    // another test must not inherit it.
    let fd = net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(LIMIT))?;
    net::bind(&fd, &std::net::SocketAddrV4::new(from, 0))?;
    net::connect(&fd, &addr)?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(LIMIT))?;
    stream.set_write_timeout(Some(LIMIT))?;
    Ok(stream)
}

impl Conn {
    /// Wraps a stream connected elsewhere (e.g. by [`connect_from`]).
    pub fn from_stream(stream: TcpStream) -> Conn {
        Conn {
            reader: BufReader::new(stream),
        }
    }

    /// The next reply line, or `None` when the server closed (or reset)
    /// the connection first; a server that does neither fails the test
    /// after [`LIMIT`].
    pub fn try_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                Some(String::from_utf8_lossy(&line).into_owned())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("neither a line nor the end within {LIMIT:?}")
            }
            _ => None,
        }
    }

    /// Closes with a reset (SO_LINGER 0) instead of a FIN.
    pub fn reset(self) {
        let stream = self.reader.into_inner();
        rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO)).unwrap();
    }
}

/// The `filesrv` binary as a child process on 127.0.0.1, with its log
/// (`-v`) drained by a thread and offered line by line. Killed and reaped
/// on drop.
pub struct ChildServer {
    child: std::process::Child,
    addr: SocketAddr,
    log: crossbeam_channel::Receiver<String>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl ChildServer {
    /// `filesrv -v --bind 127.0.0.1 0 <max_running> --root <root>`; add
    /// options before spawning.
    pub fn command(root: &Path, max_running: usize) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_filesrv"));
        command
            .args(["-v", "--bind", "127.0.0.1", "0"])
            .arg(max_running.to_string())
            .arg("--root")
            .arg(root)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command
    }

    /// Starts the command and waits (at most [`LIMIT`]) for its
    /// `serving on <addr>` log line.
    pub fn spawn(mut command: std::process::Command) -> ChildServer {
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = crossbeam_channel::unbounded();
        let drain = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // The receiver may be gone; keep draining so the child
                // never blocks on a full pipe.
                let _ = tx.send(line);
            }
        });
        let mut server = ChildServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            drain: Some(drain),
        };
        let line = server
            .wait_log("serving on ")
            .expect("the server did not start");
        let addr = line.rsplit("serving on ").next().unwrap().trim();
        server.addr = addr.parse().unwrap();
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap()
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// The next log line containing `needle`, waiting at most [`LIMIT`];
    /// `None` if the log ended first.
    pub fn wait_log(&self, needle: &str) -> Option<String> {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            match self.log.recv_deadline(deadline) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    panic!("no log line with {needle:?} within {LIMIT:?}")
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Sends `signal` to the server.
    pub fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(self.pid(), signal).unwrap();
    }

    /// Waits (at most `limit`) for the server to exit; its log closing is
    /// the sign. Returns the exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            match self.log.recv_deadline(deadline) {
                Ok(_) => {}
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    panic!("the server did not exit within {limit:?}")
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.child.wait().unwrap()
    }

    /// The CPU time the server has used so far, user plus system, read
    /// from `/proc/<pid>/stat` (clock ticks taken as 100 per second, as
    /// on every Linux configuration in use).
    pub fn cpu_time(&self) -> Duration {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name in parentheses: state is the 3rd
        // field overall, utime the 14th and stime the 15th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// The server's peak resident memory (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Sets one of the server's resource limits (both soft and hard).
    pub fn set_limit(&self, resource: rustix::process::Resource, value: u64) {
        let limit = rustix::process::Rlimit {
            current: Some(value),
            maximum: Some(value),
        };
        rustix::process::prlimit(Some(self.pid()), resource, limit).unwrap();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}

/// Waits on a directory's changes with inotify, so a test can wait for a
/// file to appear or grow without sleeping.
pub struct DirWatch {
    inotify: std::sync::Arc<std::os::fd::OwnedFd>,
    watch: i32,
    changed: crossbeam_channel::Receiver<()>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl DirWatch {
    pub fn new(dir: &Path) -> DirWatch {
        use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
        let inotify = std::sync::Arc::new(inotify::init(CreateFlags::CLOEXEC).unwrap());
        let flags = WatchFlags::CREATE
            | WatchFlags::MODIFY
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::MOVED_TO
            | WatchFlags::MOVED_FROM
            | WatchFlags::DELETE;
        let watch = inotify::add_watch(&*inotify, dir, flags).unwrap();
        let (tx, changed) = crossbeam_channel::bounded(1);
        let fd = inotify.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut events = inotify::Reader::new(&*fd, &mut buf);
            // Ends on IN_IGNORED: the watch was removed (by drop) or the
            // directory is gone.
            while let Ok(event) = events.next() {
                if event.events().contains(ReadFlags::IGNORED) {
                    break;
                }
                if let Err(crossbeam_channel::TrySendError::Disconnected(())) = tx.try_send(()) {
                    break;
                }
            }
        });
        DirWatch {
            inotify,
            watch,
            changed,
            reader: Some(reader),
        }
    }

    /// Waits until `done()` holds, checking after each change in the
    /// directory; false if [`LIMIT`] passed first.
    pub fn wait_until(&self, mut done: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            if done() {
                return true;
            }
            if self.changed.recv_deadline(deadline).is_err() {
                return done();
            }
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // Removing the watch queues IN_IGNORED, which ends the reader.
        let _ = rustix::fs::inotify::remove_watch(&*self.inotify, self.watch);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Conn {
    /// Asserts a last `ERR <code> ...` line, after which the connection
    /// ends, closed or reset (as when the client was still sending).
    pub fn expect_last_err(&mut self, code: &str) {
        self.expect_err(code);
        assert_eq!(self.try_line(), None, "the connection stayed open");
    }

    /// Sends each request line in turn and asserts its `ERR <code>` reply;
    /// the connection stays open.
    pub fn expect_refusals(&mut self, refusals: &[(&str, &str)]) {
        for (request, code) in refusals {
            self.send(format!("{request}\n").as_bytes());
            self.expect_err(code);
        }
    }
}
