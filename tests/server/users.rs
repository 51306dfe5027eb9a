//! Users and rights: a users file with an argon2id line from
//! `filesrv --hash-password` and a bcrypt line from `htpasswd -nbB`,
//! per-user roots and rights refused as the contract says, the log that
//! names users and never passwords, reloads, and the throttle of guesses
//! counted in password checks, not in time.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use crate::server::http::without_date;
use crate::server::metrics::sample;
use crate::server::tls::{metrics_addr, scrape};
use crate::support::{ChildServer, Conn, TempDir, connect_from, tools};

const ALICE_PW: &str = "alice's pass phrase";
const BOB_PW: &str = "b0b-secret";

/// `filesrv --hash-password` of `password`.
fn argon2_line(password: &str) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_filesrv"));
    let out = tools::run_with_input(
        command.arg("--hash-password"),
        format!("{password}\n").as_bytes(),
    );
    assert!(out.status.success(), "{out:?}");
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    hash.trim().to_owned()
}

/// `htpasswd -nbB name password`: `name:$2y$...`.
fn htpasswd_line(name: &str, password: &str) -> String {
    let out = Command::new(tools::need("htpasswd"))
        .args(["-nbB", name, password])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Alice (argon2id, rw, root `alice/`) and Bob (bcrypt, ro, root `bob/`),
/// with a file each, a public file, and in Alice's root a symlink to
/// Bob's file.
fn users_dir() -> TempDir {
    let dir = TempDir::new("users");
    dir.write("public.txt", "public\n");
    dir.write("alice/a.txt", "alice\n");
    dir.write("bob/b.txt", "bob\n");
    dir.symlink("../bob/b.txt", "alice/link-to-bob");
    let users = format!(
        "# test users\n\nalice:{}:rw,root=alice\n{}:ro,root=bob\n",
        argon2_line(ALICE_PW),
        htpasswd_line("bob", BOB_PW)
    );
    std::fs::write(dir.path().join("users"), users).unwrap();
    dir
}

fn serve(dir: &TempDir, extra: &[&str]) -> ChildServer {
    let mut command = ChildServer::command(&dir.root(), 4);
    command
        .arg("--users")
        .arg(dir.path().join("users"))
        .args(extra);
    ChildServer::spawn(command)
}

fn auth(c: &mut Conn, name: &str, password: &str) -> String {
    let encoded = password.replace('%', "%25").replace(' ', "%20");
    c.send(format!("AUTH {name} {encoded}\n").as_bytes());
    c.line()
}

#[test]
fn each_user_sees_only_its_root_with_its_rights() {
    let dir = users_dir();
    let server = serve(&dir, &["--allow-put"]);
    let mut c = server.connect();
    // Before AUTH: only AUTH and QUIT.
    c.send(b"LIST\n");
    assert!(c.line().starts_with("ERR denied authentication required"));
    c.send(b"PUT x 1\n");
    c.expect_final_err("denied");

    let mut alice = server.connect();
    assert_eq!(auth(&mut alice, "alice", ALICE_PW), "OK alice");
    // The symlink leads out of her root: not listed.
    alice.send(b"LIST\n");
    assert_eq!(alice.line(), "OK 1");
    assert_eq!(alice.line(), "f 6 a.txt");
    alice.assert_get("a.txt", b"alice\n");
    for refused in ["../bob/b.txt", "link-to-bob"] {
        alice.send(format!("GET {refused}\n").as_bytes());
        alice.expect_err("forbidden");
    }
    // Paths are hers: /bob is beneath her root, and there is none.
    alice.send(b"GET /bob/b.txt\n");
    alice.expect_err("not-found");
    alice.send(b"GET public.txt\n");
    alice.expect_err("not-found");
    alice.send(b"PUT new.txt 3\nnew");
    assert_eq!(alice.line(), "OK 3");
    assert_eq!(dir.read("alice/new.txt"), b"new");
    alice.send(format!("AUTH bob {BOB_PW}\n").as_bytes());
    alice.expect_err("bad-request");

    let mut bob = server.connect();
    assert_eq!(auth(&mut bob, "bob", BOB_PW), "OK bob");
    bob.assert_get("b.txt", b"bob\n");
    bob.send(b"PUT b.txt 1\nx");
    bob.expect_final_err("forbidden");

    // Wrong password and unknown name: the same reply; the third failure
    // closes.
    let mut guess = server.connect();
    assert_eq!(
        auth(&mut guess, "alice", "wrong"),
        "ERR denied bad credentials"
    );
    assert_eq!(
        auth(&mut guess, "nobody", "wrong"),
        "ERR denied bad credentials"
    );
    guess.send(b"AUTH bob wrong\n");
    guess.expect_final_err("denied");

    // The log names the user and never a password, not even a wrong one.
    let line = server.wait_log("(alice): PUT new.txt").unwrap();
    assert!(!line.contains(ALICE_PW));
    drop(server);
}

#[test]
fn the_log_never_shows_a_password() {
    let dir = users_dir();
    let server = serve(&dir, &[]);
    let mut c = server.connect();
    assert_eq!(auth(&mut c, "alice", ALICE_PW), "OK alice");
    assert_eq!(
        auth(&mut c, "bob", "hunter2 wrong"),
        "ERR bad-request already logged in"
    );
    let mut d = server.connect();
    assert_eq!(
        auth(&mut d, "bob", "hunter2 wrong"),
        "ERR denied bad credentials"
    );
    d.send(b"AUTH bob pass%zz\n");
    d.expect_err("bad-request");
    for (needle, secret) in [
        ("AUTH alice", ALICE_PW),
        ("AUTH bob", "hunter2"),
        ("AUTH bob", "hunter2"),
        ("AUTH bob", "pass%zz"),
    ] {
        let line = server.wait_log(needle).unwrap();
        assert!(line.contains(&format!("{needle} ***")), "{line}");
        assert!(!line.contains(secret), "{line}");
    }
}

#[test]
fn the_access_log_names_the_user_a_connection_logged_in_as() {
    let dir = users_dir();
    let log = dir.path().join("access.log");
    let server = serve(&dir, &["--access-log", log.to_str().unwrap()]);
    let mut c = server.connect();
    c.send(b"LIST\n");
    assert!(c.line().starts_with("ERR denied authentication required"));
    assert_eq!(auth(&mut c, "alice", ALICE_PW), "OK alice");
    c.assert_get("a.txt", b"alice\n");
    c.send(b"QUIT\n");
    assert_eq!(c.line(), "OK bye");
    c.read_until_closed();
    // And over HTTP, with Basic auth: written before the server closes.
    use base64::Engine as _;
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("alice:{ALICE_PW}"));
    let mut h = server.connect();
    h.send(
        format!(
            "GET /a.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let reply = String::from_utf8_lossy(&h.read_until_closed()).into_owned();
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    // Each line is written before the next request is read (the last,
    // before the connection closes): all are there now. The fields after
    // the time and the client: the user, the verb, the path, the result.
    let text = std::fs::read_to_string(&log).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|line| line.split(' ').skip(2).take(4).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["-", "LIST", ".", "denied"],
            ["alice", "AUTH", "alice", "OK"],
            ["alice", "GET", "a.txt", "OK"],
            ["alice", "QUIT", "-", "OK"],
            ["alice", "GET", "/a.txt", "200"],
        ],
        "{text}"
    );
}

#[test]
fn anonymous_read_serves_reads_before_auth_and_never_put() {
    let dir = users_dir();
    let server = serve(&dir, &["--anonymous-read", "--allow-put"]);
    let mut c = server.connect();
    c.assert_get("public.txt", b"public\n");
    c.assert_get("bob/b.txt", b"bob\n");
    c.send(b"PUT x 1\nx");
    c.expect_final_err("denied");
}

#[test]
fn uploads_need_both_allow_put_and_rw() {
    let dir = users_dir();
    let server = serve(&dir, &[]);
    let mut alice = server.connect();
    assert_eq!(auth(&mut alice, "alice", ALICE_PW), "OK alice");
    alice.send(b"PUT new.txt 3\nnew");
    alice.expect_final_err("forbidden");
}

#[test]
fn a_changed_users_file_and_sighup_are_read_again() {
    let dir = users_dir();
    let server = serve(&dir, &[]);
    let mut users = std::fs::read_to_string(dir.path().join("users")).unwrap();
    users.push_str(&format!("carol:{}\n", argon2_line("carol pw")));
    // Written beside and renamed over, as editors do.
    std::fs::write(dir.path().join("users.new"), &users).unwrap();
    std::fs::rename(dir.path().join("users.new"), dir.path().join("users")).unwrap();
    server.wait_log("reloaded: 3 users").unwrap();
    let mut c = server.connect();
    assert_eq!(auth(&mut c, "carol", "carol pw"), "OK carol");
    c.assert_get("public.txt", b"public\n");
    // A broken file keeps the table loaded before.
    std::fs::write(dir.path().join("users"), "carol:not-a-hash\n").unwrap();
    server.wait_log("keeping the users loaded before").unwrap();
    server.signal(rustix::process::Signal::HUP);
    server.wait_log("keeping the users loaded before").unwrap();
    let mut d = server.connect();
    assert_eq!(auth(&mut d, "carol", "carol pw"), "OK carol");
}

#[test]
fn a_thousand_guesses_check_only_the_limit_and_another_source_logs_in() {
    const GUESSES: usize = 1000;
    const LIMIT: usize = 10;
    let dir = users_dir();
    let server = serve(
        &dir,
        &[
            "--max-auth-failures",
            &LIMIT.to_string(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let metrics = metrics_addr(&server);
    let addr: SocketAddr = server.addr();
    let guesser = Ipv4Addr::new(127, 0, 0, 1);
    let mut answers = Vec::new();
    let mut c = Conn::from_stream(connect_from(guesser, addr).unwrap());
    for i in 0..GUESSES {
        // Three failures close a connection: a new one for each three.
        if i > 0 && i % 3 == 0 {
            c.expect_closed();
            c = Conn::from_stream(connect_from(guesser, addr).unwrap());
        }
        answers.push(auth(&mut c, "alice", &format!("guess {i}")));
    }
    assert!(
        answers[..LIMIT]
            .iter()
            .all(|a| a == "ERR denied bad credentials")
    );
    assert!(
        answers[LIMIT..]
            .iter()
            .all(|a| a == "ERR denied too many failed logins"),
        "{:?}",
        &answers[LIMIT..LIMIT + 3]
    );
    // Another source logs in at once, its guesser still throttled.
    let mut other = Conn::from_stream(connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).unwrap());
    assert_eq!(auth(&mut other, "alice", ALICE_PW), "OK alice");
    let mut again = Conn::from_stream(connect_from(guesser, addr).unwrap());
    assert_eq!(
        auth(&mut again, "alice", ALICE_PW),
        "ERR denied too many failed logins"
    );
    let text = scrape(&metrics);
    // The limit's checks and the other source's login: no more.
    assert_eq!(
        sample(&text, "filesrv_password_checks_total"),
        (LIMIT + 1) as f64
    );
    assert_eq!(
        sample(&text, "filesrv_logins_total{result=\"throttled\"}"),
        (GUESSES - LIMIT + 1) as f64
    );
    assert_eq!(
        sample(&text, "filesrv_logins_total{result=\"denied\"}"),
        LIMIT as f64
    );
    assert_eq!(sample(&text, "filesrv_logins_total{result=\"ok\"}"), 1.0);
}

/// `curl -s -o BODY -w '%{http_code}' [ARGS] URL` against the child
/// server: the status and the body.
fn curl_status(server: &ChildServer, args: &[&str], path: &str) -> (String, String) {
    let body = tempfile_path();
    let url = format!("http://{}{path}", server.addr());
    let out = Command::new(tools::need("curl"))
        .args(["-s", "--max-time", "20", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(&url)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&body).unwrap_or_default();
    let _ = std::fs::remove_file(&body);
    (String::from_utf8(out.stdout).unwrap(), text)
}

fn tempfile_path() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "filesrv-curl-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// HTTP Basic auth checks the users file as AUTH does: each user in its
/// own root with its rights, a wrong password and no credentials `401`
/// with the challenge, reads before login only under --anonymous-read.
/// (Before, every HTTP request was served anonymously on the whole root,
/// past the users' rules.)
#[test]
fn curl_with_basic_auth_sees_only_its_root_with_its_rights() {
    let dir = users_dir();
    let server = serve(&dir, &["--allow-put"]);
    let alice = format!("alice:{ALICE_PW}");
    let bob = format!("bob:{BOB_PW}");
    // No credentials, or wrong ones: 401.
    assert_eq!(curl_status(&server, &[], "/public.txt").0, "401");
    let (status, _) = curl_status(&server, &["-u", "alice:wrong"], "/a.txt");
    assert_eq!(status, "401");
    let challenge = Command::new(tools::need("curl"))
        .args(["-s", "-D", "-", "-o", "/dev/null"])
        .arg(format!("http://{}/a.txt", server.addr()))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&challenge.stdout).to_ascii_lowercase();
    assert!(
        head.contains("www-authenticate: basic realm=\"filesrv\""),
        "{head}"
    );
    // Each in its own root.
    assert_eq!(
        curl_status(&server, &["-u", &alice], "/a.txt"),
        ("200".to_owned(), "alice\n".to_owned())
    );
    assert_eq!(curl_status(&server, &["-u", &bob], "/a.txt").0, "404");
    assert_eq!(
        curl_status(&server, &["-u", &bob], "/b.txt"),
        ("200".to_owned(), "bob\n".to_owned())
    );
    assert_eq!(
        curl_status(&server, &["-u", &alice], "/link-to-bob").0,
        "403"
    );
    // Rights: Bob is ro, Alice rw.
    let upload = dir.path().join("upload.txt");
    std::fs::write(&upload, "new\n").unwrap();
    let upload = upload.to_str().unwrap();
    assert_eq!(
        curl_status(&server, &["-u", &bob, "-T", upload], "/up.txt").0,
        "403"
    );
    assert_eq!(
        curl_status(&server, &["-u", &alice, "-T", upload], "/up.txt").0,
        "201"
    );
    assert_eq!(dir.read("alice/up.txt"), b"new\n");
    // --anonymous-read: reads without credentials, on the whole root.
    let open = serve(&dir, &["--anonymous-read", "--allow-put"]);
    assert_eq!(
        curl_status(&open, &[], "/public.txt"),
        ("200".to_owned(), "public\n".to_owned())
    );
    assert_eq!(curl_status(&open, &["-T", upload], "/up2.txt").0, "401");
}

/// A read-only user's PUT says why in PUT's words: the `rw` right it
/// lacks. (Before, the body was the status line alone.)
#[test]
fn http_put_of_a_read_only_user_says_why() {
    let dir = users_dir();
    let server = serve(&dir, &["--allow-put"]);
    let upload = dir.path().join("upload.txt");
    std::fs::write(&upload, "new\n").unwrap();
    let bob = format!("bob:{BOB_PW}");
    let args = ["-u", &bob, "-T", upload.to_str().unwrap()];
    assert_eq!(
        curl_status(&server, &args, "/up.txt"),
        (
            "403".to_owned(),
            "403 Forbidden: this user may not upload\n".to_owned()
        )
    );
    let mut c = server.connect();
    assert_eq!(auth(&mut c, "bob", BOB_PW), "OK bob");
    c.send(b"PUT up.txt 4\n");
    assert_eq!(c.err_message("forbidden"), "this user may not upload");
    assert!(!dir.root().join("bob/up.txt").exists());
}

/// No credentials, a wrong password, an unknown name: `401`s that say
/// why in `AUTH`'s words, the last two the same to the byte (but the
/// `Date`), as `ERR denied bad credentials` is.
#[test]
fn http_wrong_password_and_unknown_user_get_the_same_bytes() {
    let dir = users_dir();
    let server = serve(&dir, &[]);
    assert_eq!(
        curl_status(&server, &[], "/a.txt").1,
        "401 Unauthorized: authentication required\n"
    );
    let wrong = curl_status(&server, &["-i", "-u", "alice:wrong"], "/a.txt");
    let unknown = curl_status(&server, &["-i", "-u", "mallory:wrong"], "/a.txt");
    assert_eq!(wrong.0, "401");
    assert_eq!(without_date(&wrong.1), without_date(&unknown.1));
    let body = "\r\n\r\n401 Unauthorized: bad credentials\n";
    assert!(wrong.1.ends_with(body), "{}", wrong.1);
    let mut c = server.connect();
    assert_eq!(auth(&mut c, "alice", "wrong"), "ERR denied bad credentials");
    assert_eq!(
        auth(&mut c, "mallory", "wrong"),
        "ERR denied bad credentials"
    );
}

/// Clients failing `AUTH` never keep a user out: on two running slots,
/// two guessers that failed twice and then sit idle are made to leave
/// (`ERR timeout`, the busy idle timeout) as soon as a user waits, and
/// two others guessing without pause (three failures a connection, then a
/// new one) queue behind the user, who logs in and is served.
#[test]
fn clients_failing_auth_never_hold_every_slot() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let dir = users_dir();
    let mut command = ChildServer::command(&dir.root(), 2);
    command.arg("--users").arg(dir.path().join("users")).args([
        "--busy-idle-timeout",
        "1",
        "--max-auth-failures",
        "0",
    ]);
    let server = ChildServer::spawn(command);
    let addr = server.addr();
    let from =
        |last: u8| Conn::from_stream(connect_from(Ipv4Addr::new(127, 0, 0, last), addr).unwrap());
    let mut idle: Vec<Conn> = (3..5).map(from).collect();
    for c in &mut idle {
        for _ in 0..2 {
            assert_eq!(auth(c, "alice", "guess"), "ERR denied bad credentials");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let guessers: Vec<_> = (5..7)
        .map(|last| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut tries = 0;
                while !stop.load(SeqCst) && tries < 300 {
                    let mut c = Conn::from_stream(
                        connect_from(Ipv4Addr::new(127, 0, 0, last), addr).unwrap(),
                    );
                    for _ in 0..3 {
                        tries += 1;
                        if auth(&mut c, "alice", "guess") != "ERR denied bad credentials" {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    let mut user = from(2);
    assert_eq!(auth(&mut user, "alice", ALICE_PW), "OK alice");
    user.assert_get("a.txt", b"alice\n");
    stop.store(true, SeqCst);
    for guesser in guessers {
        guesser.join().unwrap();
    }
    for c in &mut idle {
        assert_eq!(c.line(), "ERR timeout idle too long while clients wait");
    }
}

/// A users line whose hash is of the empty password (`htpasswd -nbB bob
/// ''`) is a user nobody logs in as: an empty password gets the same
/// refusal as a wrong one, by `AUTH` and by HTTP Basic auth. Before, both
/// logged in.
#[test]
fn an_empty_password_never_logs_in_even_against_a_hash_of_one() {
    let dir = users_dir();
    let users = format!(
        "{}\n{}:ro\n",
        std::fs::read_to_string(dir.path().join("users")).unwrap(),
        htpasswd_line("eve", "")
    );
    std::fs::write(dir.path().join("users"), users).unwrap();
    let server = serve(&dir, &[]);
    let mut c = server.connect();
    assert_eq!(auth(&mut c, "eve", ""), "ERR denied bad credentials");
    let (status, _) = curl_status(&server, &["-u", "eve:"], "/public.txt");
    assert_eq!(status, "401");
    // The file's other users still log in.
    let mut c = server.connect();
    assert_eq!(auth(&mut c, "bob", BOB_PW), "OK bob");
}
