//! Programs the tests and benches drive (haproxy, curl, nginx, groff,
//! openssl, socat, htpasswd, wget, setsid, chromium, wrk, apache2, redbot): found
//! on the system (redbot in the virtual environment
//! `scripts/install-test-deps` makes for it), never installed from here. When one is missing, the first
//! test that asks prints one line (past the test harness's capture)
//! naming every missing program, its package and the tests that need it,
//! and `scripts/install-test-deps`; those tests then pass without running.
//! Under `CI=true` they fail instead, naming the same.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Once;

/// Each program the tests drive: its Debian package (the smallest that
/// has it; `scripts/install-test-deps` installs the same) and who needs it.
const PROGRAMS: &[(&str, &str, &str)] = &[
    (
        "haproxy",
        "haproxy",
        "proxy::haproxy_*, deploy::*, the transfer bench's proxy scenario",
    ),
    (
        "curl",
        "curl",
        "proxy::curl_*, the transfer bench's tls scenario",
    ),
    (
        "nginx",
        "nginx",
        "the transfer bench's connections, http and tls scenarios",
    ),
    (
        "groff",
        "groff-base",
        "cli::the_man_page_renders_with_every_option",
    ),
    (
        "openssl",
        "openssl",
        "tls::*, end_to_end::fsc_ca_*, the transfer bench's tls scenario",
    ),
    ("socat", "socat", "tls::openssl_and_socat_*"),
    ("htpasswd", "apache2-utils", "users::*"),
    ("wget", "wget", "http::wget_*"),
    (
        "setsid",
        "util-linux",
        "cli::hash_password_on_a_terminal_*, end_to_end::fsc_asks_*",
    ),
    ("chromium", "chromium", "http::chromium_*"),
    (
        "wrk",
        "wrk",
        "the transfer bench's idle, http and tls scenarios",
    ),
    (
        "apache2",
        "apache2-bin",
        "the transfer bench's idle scenario",
    ),
    (
        "redbot",
        "redbot from PyPI, in a virtual environment",
        "http::redbot_*",
    ),
];

/// The path of `program`, or `None` (after the one line saying so) when
/// it is not installed: the caller returns, its test passing unrun.
/// Under `CI=true` a missing program fails the test instead.
pub fn require(program: &str) -> Option<PathBuf> {
    if let Some(path) = find(program) {
        return Some(path);
    }
    let (_, package, _) = PROGRAMS
        .iter()
        .find(|(name, ..)| *name == program)
        .unwrap_or_else(|| panic!("{program} is not in tools::PROGRAMS"));
    assert!(
        std::env::var_os("CI").is_none_or(|ci| ci.is_empty() || ci == "false"),
        "{program} is not installed (CI is set, so this test fails instead of \
         skipping): install package {package}, e.g. with scripts/install-test-deps"
    );
    static ANNOUNCE: Once = Once::new();
    ANNOUNCE.call_once(|| {
        let missing: Vec<String> = PROGRAMS
            .iter()
            .filter(|(name, ..)| find(name).is_none())
            .map(|(name, package, who)| format!("{name} (package {package}) for {who}"))
            .collect();
        // Straight to the process's stderr: the harness captures eprintln!.
        let _ = writeln!(
            std::io::stderr(),
            "note: skipped, not installed: {}; scripts/install-test-deps installs them \
             (with CI=true these tests fail)",
            missing.join("; ")
        );
    });
    None
}

/// The path of `program`, for a test that cannot go on without it: a
/// missing one fails the test with the same one line.
pub fn need(program: &str) -> PathBuf {
    require(program).unwrap_or_else(|| {
        panic!("{program} is not installed: scripts/install-test-deps installs it")
    })
}

/// `program` on `PATH`, in the sbin directories a non-root `PATH` may
/// lack (Debian puts haproxy in /usr/sbin), or in the virtual environment
/// `scripts/install-test-deps` makes for the tools from PyPI.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")));
    let venv = cache.map(|cache| cache.join("filesrv-test-tools/venv/bin"));
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .chain(venv)
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
