//! A file server embedded in the test, and the states a test puts a
//! server in (an upload in progress; one client running, one waiting).

use std::net::SocketAddr;

use filesrv::protocol::{Server, ServerConfig};

use super::{Conn, DirWatch, TempDir, init};

/// A server embedded in the test, on 127.0.0.1:0; shut down on drop.
pub(crate) struct TestServer {
    pub(crate) server: Server,
    pub(crate) dir: TempDir,
}

impl TestServer {
    /// Serves a new temporary root with the defaults changed by `configure`.
    pub(crate) fn start(
        label: &str,
        configure: impl FnOnce(ServerConfig) -> ServerConfig,
    ) -> TestServer {
        init();
        let dir = TempDir::new(label);
        let config = configure(ServerConfig::new(dir.root()));
        let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).unwrap();
        TestServer { server, dir }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub(crate) fn connect(&self) -> Conn {
        Conn::connect(self.addr())
    }

    /// Asserts that a fresh client is served normally: the server is
    /// still healthy after whatever the test did.
    pub(crate) fn assert_serves(&self) {
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

/// Sends `PUT <name> <size>` and the `first` bytes of the body on `c`,
/// and waits (on the directory, at most [`LIMIT`]) until the server has
/// created the upload's temporary file beneath `dir`'s root: the request
/// is then in progress.
pub(crate) fn begin_upload(c: &mut Conn, dir: &TempDir, name: &str, size: usize, first: &[u8]) {
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
pub(crate) fn running_and_waiting(connect: impl Fn() -> Conn) -> (Conn, Conn) {
    let mut running = connect();
    running.send(b"STAT /\n");
    assert!(running.line().starts_with("OK d "));
    let waiting = connect();
    connect().expect_final_err("busy");
    (running, waiting)
}
