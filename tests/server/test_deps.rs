//! Test dependencies announce themselves: without curl, `cargo test`
//! says in one line which tests need which package and how to install
//! it, and passes those tests unrun; with `CI=true` it fails them.
//! Shown on this test binary run again with a `PATH` that has no curl.

use std::process::{Command, Output};

use crate::support::TempDir;

/// Runs the curl test alone in a new process of this binary, with no
/// program on `PATH` and `CI` as given.
fn curl_test_without_curl(ci: Option<&str>) -> Output {
    let empty = TempDir::new("no-programs");
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "deployment::proxy::curl_sends_a_v1_header_that_is_honoured",
        ])
        .args(["--test-threads", "1"])
        .env("PATH", empty.path())
        .env_remove("CI");
    if let Some(ci) = ci {
        command.env("CI", ci);
    }
    command.output().unwrap()
}

#[test]
fn a_missing_program_is_announced_in_one_line_and_its_test_skipped() {
    let output = curl_test_without_curl(None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let notes: Vec<&str> = stderr.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    for part in [
        "curl (package curl) for proxy::curl_*",
        "scripts/install-test-deps",
    ] {
        assert!(notes[0].contains(part), "{}", notes[0]);
    }
}

#[test]
fn under_ci_a_missing_program_fails_its_test() {
    let output = curl_test_without_curl(Some("true"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("curl is not installed") && stdout.contains("package curl"),
        "{stdout}"
    );
}
