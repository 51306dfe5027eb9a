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
    pub fn rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
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
