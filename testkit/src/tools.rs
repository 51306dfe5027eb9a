//! Programs the tests and benches drive (haproxy, promtool, curl, nginx):
//! found on the system, or installed by `scripts/install-test-deps` when
//! missing. A test that needs one fails loudly when it cannot be had; it
//! never skips.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Once;

/// The path of `program`, installing the test dependencies first if it
/// is not found. Panics, naming the script, when it still is not there.
pub fn require(program: &str) -> PathBuf {
    if let Some(path) = find(program) {
        return path;
    }
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install-test-deps");
        let status = Command::new(script).status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "{script} failed ({status:?}); install haproxy, prometheus (promtool), curl and nginx"
        );
    });
    find(program).unwrap_or_else(|| {
        panic!("{program} is missing even after scripts/install-test-deps; this test needs it")
    })
}

/// `program` on `PATH`, or in the sbin directories a non-root `PATH` may
/// lack (Debian puts haproxy in /usr/sbin).
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `command` with `input` on its stdin; its stdout and stderr are
/// captured.
pub fn run_with_input(command: &mut Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// While alive, `fd` is inherited by spawned children (close-on-exec
/// cleared), at its own number; dropped, it is close-on-exec again. A
/// child another test spawns meanwhile inherits it too: it never uses it,
/// and its copy closes when it exits.
pub struct Inherited<'a>(BorrowedFd<'a>);

impl<'a> Inherited<'a> {
    pub fn new(fd: &'a impl AsFd) -> Inherited<'a> {
        let fd = fd.as_fd();
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).unwrap();
        Inherited(fd)
    }

    /// The number the child sees.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Drop for Inherited<'_> {
    fn drop(&mut self) {
        let _ = rustix::io::fcntl_setfd(self.0, rustix::io::FdFlags::CLOEXEC);
    }
}
