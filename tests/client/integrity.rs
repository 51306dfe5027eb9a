//! SUM on the wire, and the bundled client's integrity: downloads into a
//! partial file checked against SUM, resumed only when the prefix still
//! matches, uploads checked the same way.

use std::fs;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;

use filesrv::protocol::Client;

use super::end_to_end::{content, fsc, local_dir, serve, success};
use crate::support::{DirWatch, TempDir, TestServer};

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

/// A proxy for one connection that forwards everything from the client,
/// but only the first `budget` bytes from the server: the download then
/// stands still at a known byte, and the test can kill the client there.
fn stalling_proxy(upstream: SocketAddr, budget: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let server = TcpStream::connect(upstream).unwrap();
        let (mut client_in, mut server_out) =
            (client.try_clone().unwrap(), server.try_clone().unwrap());
        thread::spawn(move || {
            let _ = io::copy(&mut client_in, &mut server_out);
            let _ = server_out.shutdown(Shutdown::Write);
        });
        let mut from_server = (&server).take(budget);
        let _ = io::copy(&mut from_server, &mut &client);
        // Hold both ends open until the client is killed, so that it
        // waits for the rest instead of seeing an end.
        let mut sink = [0; 1];
        let _ = (&client).read(&mut sink);
    });
    addr
}

/// The length of a reply line `OK <rest>\n`.
fn reply_len(rest: &str) -> u64 {
    (rest.len() + 4) as u64
}

#[test]
fn fsc_get_killed_five_times_resumes_to_the_servers_sum() {
    let size: u64 = 64 << 20;
    let dir = TempDir::new("kill-resume");
    // Eight bytes at a time: fast in a debug build.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let data: Vec<u8> = (0..size / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    let remote = dir.root().join("big.bin");
    fs::write(&remote, &data).unwrap();
    let server = serve(&dir, |config| config);
    let local = local_dir(&dir);
    // A local file of the same name that is not a partial download.
    fs::write(local.join("big.bin"), b"old local notes\n").unwrap();
    let partial = Client::partial_path(&local.join("big.bin"), "big.bin");
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into();
    seed |= 1;
    eprintln!("kill points seed {seed}");
    let mut held = 0;
    for _ in 0..5 {
        // A random cut in what is left, at least one byte on each side.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let cut = held + 1 + seed % (size - held - 1);
        let mut before = 0;
        if held > 0 {
            let sum = format!("sha256 {} {held}", "0".repeat(64));
            before += reply_len(&sum);
        }
        before += reply_len(&(size - held).to_string());
        let proxy = stalling_proxy(server.local_addr(), before + (cut - held));
        let watch = DirWatch::new(&local);
        let mut child = Command::new(env!("CARGO_BIN_EXE_fsc"))
            .args(["--timeout", "20", &proxy.to_string(), "get", "big.bin"])
            .current_dir(&local)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let reached = watch.wait_until(|| fs::metadata(&partial).is_ok_and(|m| m.len() == cut));
        child.kill().unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(reached, "the download did not reach byte {cut}");
        assert_eq!(output.stderr, b"", "resumed, not restarted");
        assert_eq!(
            fs::read(local.join("big.bin")).unwrap(),
            b"old local notes\n"
        );
        held = cut;
    }
    let addr = server.local_addr().to_string();
    success(fsc(&local, &[&addr, "get", "big.bin"]));
    assert!(!partial.exists());
    let got = sha256sum(&local.join("big.bin"));
    assert_eq!(got, sha256sum(&remote));
    // And as the server says it.
    let sum = success(fsc(&local, &[&addr, "sum", "big.bin"]));
    assert_eq!(String::from_utf8_lossy(&sum), format!("{got}  big.bin\n"));
    fs::write(local.join("SUMS"), sum).unwrap();
    let check = Command::new("sha256sum")
        .args(["-c", "SUMS"])
        .current_dir(&local)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn fsc_get_replaces_local_files_it_did_not_leave_partial() {
    let dir = TempDir::new("get-replaces");
    let notes = b"VERSION 2 -- the server file is longer now, much longer\n";
    dir.write("notes.txt", notes);
    let server = serve(&dir, |config| config);
    let addr = server.local_addr().to_string();
    let local = local_dir(&dir);
    // Shorter, same size, longer: each is replaced, never resumed.
    for old in [
        &b"old local notes\n"[..],
        &b"X".repeat(notes.len()),
        &b"Y".repeat(notes.len() * 3),
    ] {
        fs::write(local.join("notes.txt"), old).unwrap();
        success(fsc(&local, &[&addr, "get", "notes.txt"]));
        assert_eq!(fs::read(local.join("notes.txt")).unwrap(), notes);
    }
}

#[test]
fn fsc_get_starts_over_when_the_partial_no_longer_matches() {
    let dir = TempDir::new("get-restart");
    let data = content(300_000);
    dir.write("data.bin", &data);
    let server = serve(&dir, |config| config);
    let addr = server.local_addr().to_string();
    let local = local_dir(&dir);
    let partial = Client::partial_path(&local.join("data.bin"), "data.bin");
    // The file changed on the server since this partial was fetched; a
    // partial longer than the file is as stale.
    for stale in [
        content(1000).iter().map(|b| !b).collect::<Vec<_>>(),
        content(400_000),
    ] {
        fs::write(&partial, &stale).unwrap();
        let run = fsc(&local, &[&addr, "get", "data.bin"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(
            run.stderr
                .contains("does not match the server's file; starting over"),
            "{run:?}"
        );
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        assert_eq!(fs::read(local.join("data.bin")).unwrap(), data);
        assert!(!partial.exists());
    }
    // A partial that still matches is resumed, silently.
    fs::write(&partial, &data[..1000]).unwrap();
    success(fsc(&local, &[&addr, "get", "data.bin"]));
    assert_eq!(fs::read(local.join("data.bin")).unwrap(), data);
}

#[test]
fn fsc_put_verifies_and_sum_prints_what_sha256sum_does() {
    let dir = TempDir::new("put-verify");
    let local = local_dir(&dir);
    let data = content(200_000);
    fs::write(local.join("up.bin"), &data).unwrap();
    let server = serve(&dir, |config| config.allow_put(true));
    let addr = server.local_addr().to_string();
    success(fsc(&local, &[&addr, "put", "up.bin", "stored.bin"]));
    assert_eq!(dir.read("stored.bin"), data);
    let printed = success(fsc(&local, &[&addr, "sum", "stored.bin"]));
    let expected = format!("{}  stored.bin\n", sha256sum(&local.join("up.bin")));
    assert_eq!(String::from_utf8(printed).unwrap(), expected);
    // Against a server without SUM (a raw line server here would do; the
    // option is what is tested): --no-verify asks nothing more.
    success(fsc(
        &local,
        &[&addr, "put", "--no-verify", "up.bin", "again.bin"],
    ));
    assert_eq!(dir.read("again.bin"), data);
}

#[test]
fn fsc_get_to_a_closed_pipe_exits_quietly() {
    let dir = TempDir::new("get-pipe");
    dir.write("big.bin", content(8 << 20));
    let server = serve(&dir, |config| config);
    let addr = server.local_addr().to_string();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} --timeout 20 {addr} get big.bin - | head -c 10 >/dev/null",
            env!("CARGO_BIN_EXE_fsc")
        ))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn names_fsc_ls_shows_can_be_passed_back_to_fsc_get() {
    let dir = TempDir::new("ls-get");
    for name in ["new\nline", "my notes.txt", "it's", "tab\there"] {
        dir.write(name, name);
    }
    let server = serve(&dir, |config| config);
    let addr = server.local_addr().to_string();
    let local = local_dir(&dir);
    let listing = String::from_utf8(success(fsc(&local, &[&addr, "ls"]))).unwrap();
    // Each line is `<kind> <size> <quoted name>`: hand the name to a shell.
    let quoted: Vec<&str> = listing
        .lines()
        .map(|line| line[2..].trim_start().split_once(' ').unwrap().1)
        .collect();
    assert_eq!(quoted.len(), 4, "{listing}");
    for name in quoted {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{} --timeout 20 {addr} get {name} -",
                env!("CARGO_BIN_EXE_fsc")
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        // Each file holds its own name.
        let held = String::from_utf8(out.stdout).unwrap();
        assert!(
            ["new\nline", "my notes.txt", "it's", "tab\there"].contains(&held.as_str()),
            "{name}: {held:?}"
        );
    }
}

#[test]
fn on_a_terminal_a_resumed_download_shows_its_name_and_leaves_a_summary() {
    let dir = TempDir::new("get-tty");
    let data = content(3 << 20);
    dir.write("data.bin", &data);
    let server = serve(&dir, |config| config);
    let local = local_dir(&dir);
    let partial = Client::partial_path(&local.join("data.bin"), "data.bin");
    fs::write(&partial, &data[..1 << 20]).unwrap();
    // `script` gives fsc a terminal and copies what fsc writes there.
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} --timeout 20 {} get data.bin",
            env!("CARGO_BIN_EXE_fsc"),
            server.local_addr()
        ))
        .arg("/dev/null")
        .current_dir(&local)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read(local.join("data.bin")).unwrap(), data);
    let screen = String::from_utf8_lossy(&out.stdout);
    // One summary line counting the 2 MiB this run moved, not the 3 MiB
    // of the file (nor the 1 MiB it resumed from as speed).
    let summary = screen
        .lines()
        .map(|line| line.rsplit('\r').next().unwrap_or(line).trim())
        .map(|line| line.trim_start_matches("\u{1b}[2K"))
        .find(|line| line.starts_with("data.bin: "))
        .unwrap_or_else(|| panic!("no summary in {screen:?}"));
    assert!(summary.starts_with("data.bin: 2.00 MiB in "), "{summary}");
    assert!(
        screen.contains("data.bin (resumed at 1.00 MiB)"),
        "{screen:?}"
    );
    // The speed shown is this run's: never the 1 MiB offset counted as
    // moved in the first instant (which showed as GiB/s).
    assert!(!screen.contains("GiB/s"), "{screen:?}");
}
