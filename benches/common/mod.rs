//! What the benches share: statistics, random files, a temporary
//! directory, the command line, a server binary as a child process.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use filesrv_testkit::tools;

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub(crate) fn list(values: &[f64], decimals: usize) -> String {
    let parts: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    parts.join(" ")
}

/// Bytes from a xorshift generator: incompressible, and unlike a sparse
/// file they have to be read from the page cache.
pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

pub(crate) fn write_random_file(path: &Path, size: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let mut file = io::BufWriter::new(File::create(path)?);
    let mut written = 0;
    while written < size {
        let len = (size - written).min(CHUNK);
        let chunk = random_bytes(
            usize::try_from(len).expect("at most CHUNK"),
            written / CHUNK + 1000,
        );
        file.write_all(&chunk)?;
        written += len;
    }
    file.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()
}

/// A directory under the system's temporary directory, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("filesrv-{label}-{}", std::process::id()));
        fs::create_dir(&path)?;
        Ok(TempDir(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The command line of a bench binary: `--bench` (as `cargo bench` passes
/// it) for the full run, else a quick smoke test (as `cargo test` runs
/// it); other words select scenarios by name.
pub(crate) struct BenchArgs {
    /// Whether `--bench` was given.
    pub(crate) full: bool,
    filter: Vec<String>,
}

impl BenchArgs {
    pub(crate) fn parse() -> BenchArgs {
        let args: Vec<String> = std::env::args().skip(1).collect();
        BenchArgs {
            full: args.iter().any(|a| a == "--bench"),
            filter: args.into_iter().filter(|a| !a.starts_with('-')).collect(),
        }
    }

    /// Whether the scenario `name` is to run: every one without a filter.
    pub(crate) fn wanted(&self, name: &str) -> bool {
        self.filter.is_empty() || self.filter.iter().any(|f| name.contains(f.as_str()))
    }
}

/// A `filesrv` binary (this build's, or an earlier build's as a baseline)
/// as a child process on 127.0.0.1, ready once it logs its address (no
/// polling); its log is drained, request lines switched off; killed on
/// drop. It serves a listener made here with the congestion control the
/// bench pins ([`machine::pinned_listener`](super::machine::pinned_listener)),
/// passed down as systemd's socket activation passes one (`LISTEN_FDS`,
/// the descriptor in `LISTEN_FDS_FIRST_FD`); a build without socket
/// activation binds its own, with the system's default.
pub(crate) struct ChildServer {
    pub(crate) child: Child,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
}

impl ChildServer {
    pub(crate) fn start(
        program: &Path,
        root: &Path,
        max_running: usize,
        extra: &[&str],
    ) -> io::Result<ChildServer> {
        let listener = super::machine::pinned_listener()?;
        let pinned = listener.local_addr()?;
        let passed = tools::Inherited::new(&listener);
        let child = Command::new(program)
            .args(["-v", "--bind", "127.0.0.1", "0"])
            .arg(max_running.to_string())
            .arg("--root")
            .arg(root)
            .args(extra)
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDS_FIRST_FD", passed.raw().to_string())
            .env_remove("LISTEN_PID")
            // The address line only: per-request lines would cost the
            // server time (the session module's path in older builds too,
            // and HTTP's requests), nor rustls' warning for each client
            // that names the server by its IP address (wrk's SNI).
            .env(
                "RUST_LOG",
                "filesrv::protocol::session=off,filesrv::protocol::server::session=off,\
                 filesrv::protocol::server::http=off,rustls=off",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        drop(passed);
        // The child holds its own copy now.
        drop(listener);
        let mut child = child?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let addr = loop {
            let Some(line) = lines.next().transpose()? else {
                return Err(io::Error::other("filesrv did not start"));
            };
            if let Some((_, addr)) = line.split_once("serving on ") {
                break addr.trim().parse().map_err(io::Error::other)?;
            }
        };
        if addr != pinned {
            println!(
                "  {} serves a listener of its own (no socket activation), with the \
                 system's congestion control",
                program.display()
            );
        }
        // Keep draining the log so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Ok(ChildServer { child, addr })
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
