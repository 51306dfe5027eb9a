//! A real HAProxy in front of servers under test.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};

use super::{TempDir, tools};

/// An `haproxy` child process, killed and reaped on drop.
///
/// The frontend's listening socket is bound by the test (127.0.0.1, port
/// 0) and inherited by haproxy (`bind fd@N`), so clients can connect at
/// once: until haproxy accepts, they wait in the socket's backlog. No
/// readiness polling is needed.
pub(crate) struct HaProxy {
    child: Child,
    addr: SocketAddr,
    /// Holds the configuration and the stats socket.
    _dir: TempDir,
}

impl HaProxy {
    /// Starts haproxy on `config`, in which `@FRONTEND@` stands for the
    /// frontend's address (`fd@N`) and `@STATS@` for the stats socket's
    /// path.
    pub(crate) fn start(label: &str, config: &str) -> HaProxy {
        let haproxy = tools::require("haproxy");
        let dir = TempDir::new(label);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inherited = tools::Inherited::new(&listener);
        let config = config
            .replace("@FRONTEND@", &format!("fd@{}", inherited.raw()))
            .replace("@STATS@", dir.path().join("stats.sock").to_str().unwrap());
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        drop(inherited);
        drop(listener);
        HaProxy {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The frontend's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
