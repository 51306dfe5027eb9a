//! SUM on the wire, and the bundled client's integrity: downloads into a
//! partial file checked against SUM, resumed only when the prefix still
//! matches, uploads checked the same way.

use std::process::Command;

use crate::support::TestServer;

/// What `sha256sum` prints for `path`: the 64 hex digits.
fn sha256sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn sum_matches_sha256sum_for_files_and_prefixes() {
    let server = TestServer::start("sum", |c| c);
    let body: Vec<u8> = (0..1_000_003u32).map(|i| (i % 253) as u8).collect();
    let path = server.dir.write("data/big file.bin", &body);
    server.dir.write("prefix.bin", &body[..1000]);
    server.dir.write("empty", "");
    let mut c = server.connect();
    c.send(b"SUM data/big%20file.bin\n");
    assert_eq!(
        c.line(),
        format!("OK sha256 {} {}", sha256sum(&path), body.len())
    );
    c.send(b"sum data/big%20file.bin 1000\n");
    let prefix = sha256sum(&server.dir.root().join("prefix.bin"));
    assert_eq!(c.line(), format!("OK sha256 {prefix} 1000"));
    c.send(b"SUM empty\nSUM data/big%20file.bin 0\n");
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(c.line(), format!("OK sha256 {empty} 0"));
    assert_eq!(c.line(), format!("OK sha256 {empty} 0"));
    c.send(format!("SUM data/big%20file.bin {}\n", body.len()).as_bytes());
    assert_eq!(
        c.line(),
        format!("OK sha256 {} {}", sha256sum(&path), body.len())
    );
    // Refusals keep the connection.
    c.expect_refusals(&[
        (
            &format!("SUM data/big%20file.bin {}", body.len() + 1),
            "range",
        ),
        ("SUM data", "bad-request"),
        ("SUM missing", "not-found"),
        ("SUM ../x", "forbidden"),
        ("SUM", "bad-request"),
        ("SUM empty -1", "bad-request"),
        ("SUM empty 1 2", "bad-request"),
    ]);
    c.send(b"QUIT\n");
    assert_eq!(c.line(), "OK bye");
}
