//! Shared test support, by concern. No sleeps: every wait is a blocking
//! call with a timeout.

mod alone;
mod child;
mod conn;
mod haproxy;
mod server;
mod terminal;
mod tmpfs;
mod watch;

use std::time::Duration;

pub(crate) use alone::{rss_kib, run_alone};
pub(crate) use child::ChildServer;
pub(crate) use conn::{Conn, connect_from};
pub(crate) use filesrv_testkit::encoding::{CASES, config, encode, join_encoded};
pub(crate) use filesrv_testkit::hostile::{SECRET, contains, outside_names, plant_hostile_tree};
pub(crate) use filesrv_testkit::{TempDir, tools};
pub(crate) use haproxy::HaProxy;
pub(crate) use server::{TestServer, begin_upload, running_and_waiting};
pub(crate) use terminal::Terminal;
pub(crate) use tmpfs::Tmpfs;
pub(crate) use watch::DirWatch;

/// The longest any single wait in a test may take.
pub(crate) const LIMIT: Duration = Duration::from_secs(20);

/// The short timeout of tests that wait for one to fire.
pub(crate) const SHORT: Duration = Duration::from_millis(300);

/// The contents of `notes.txt` in the roots the protocol and command-line
/// tests serve.
pub(crate) const NOTES: &[u8] = b"hello, world\n";

/// Logs to the test output when `RUST_LOG` is set.
pub(crate) fn init() {
    let _ = env_logger::builder().is_test(true).try_init();
}
