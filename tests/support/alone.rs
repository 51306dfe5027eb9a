//! A test run alone in a child process of the test binary, so that what it
//! measures of the process (its resident set) is its own.

use std::process::Command;

/// Runs the `#[ignore]`d test `name` (its full path, e.g.
/// `core::races::expiry_alone`) alone in a new process of this test binary and
/// asserts that it passed.
pub(crate) fn run_alone(name: &str) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--test-threads", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A name that matches nothing would pass with nothing run.
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{name} did not run:\n{stdout}"
    );
}

/// This process's resident set, in KiB.
pub(crate) fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
