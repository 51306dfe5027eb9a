//! The wire protocol end to end: every request and every error code of
//! the protocol document, over real TCP to a server on 127.0.0.1, with the
//! exact bytes written and read through raw sockets.
//!
//! No sleeps for synchronisation: replies are read with a bounded timeout,
//! the order of the accepting thread and of the queue stands in for
//! handshakes, and the few waits on time itself use short configured
//! timeouts with generous, bounded slack.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use filesrv::ShutdownReport;
use filesrv::protocol::{Server, ServerConfig};

use crate::support::{Conn, LIMIT, NOTES, SHORT, TestServer, begin_upload, running_and_waiting};

/// The content of `notes.txt`, which every test serves.
/// A server whose root holds `notes.txt` and `sub/inner.txt`.
fn serve(label: &str, configure: impl FnOnce(ServerConfig) -> ServerConfig) -> TestServer {
    let t = TestServer::start(label, configure);
    t.dir.write("notes.txt", NOTES);
    t.dir.write("sub/inner.txt", "inner\n");
    t
}

/// Ends `c` with QUIT: the reply, then a clean close with nothing after it.
fn quit(c: &mut Conn) {
    c.send(b"QUIT\n");
    assert_eq!(c.line(), "OK bye");
    c.expect_closed();
}

/// Sends each line on one connection and asserts each gets `ERR <code>`
/// and leaves the connection open.
fn each_refused_and_kept(t: &TestServer, code: &str, lines: &[&[u8]]) {
    let mut c = t.connect();
    for line in lines {
        c.send(line);
        let reply = c.line();
        assert!(
            reply.starts_with(&format!("ERR {code} ")),
            "{:?}: expected ERR {code}, got {reply:?}",
            String::from_utf8_lossy(line)
        );
    }
    c.assert_get("notes.txt", NOTES);
    quit(&mut c);
}

/// Sends `request` on a fresh connection and asserts `ERR <code>` followed
/// by the server closing the connection.
fn refused_and_closed(t: &TestServer, code: &str, request: &[u8]) {
    let mut c = t.connect();
    c.send(request);
    c.expect_final_err(code);
}

/// The `STAT` reply for a file or directory beneath the root.
fn stat_line(t: &TestServer, rel: &str) -> String {
    let metadata = fs::metadata(t.dir.root().join(rel)).unwrap();
    let kind = if metadata.is_dir() { "d" } else { "f" };
    let mtime = metadata
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("OK {kind} {} {mtime}", metadata.len())
}

/// The size LIST shows for a directory beneath the root.
fn dir_size(t: &TestServer, rel: &str) -> u64 {
    fs::metadata(t.dir.root().join(rel)).unwrap().len()
}

/// Asserts `LIST <dir>` (the root for `""`) replies exactly `lines`.
fn assert_list(c: &mut Conn, dir: &str, lines: &[String]) {
    let request = if dir.is_empty() {
        "LIST\n".to_owned()
    } else {
        format!("LIST {dir}\n")
    };
    c.send(request.as_bytes());
    assert_eq!(c.line(), format!("OK {}", lines.len()));
    let got: Vec<String> = lines.iter().map(|_| c.line()).collect();
    assert_eq!(got, lines);
}

fn set_mtime(path: &Path, mtime: SystemTime) {
    File::open(path).unwrap().set_modified(mtime).unwrap();
}

/// Asserts that a timer of `at_least` fired no earlier than it should:
/// `elapsed` was taken from before the server could start it. How late it
/// fired is not asserted (a busy machine delays it by seconds); the wait
/// for it was bounded by [`LIMIT`].
fn assert_fired(elapsed: Duration, at_least: Duration) {
    assert!(
        elapsed >= at_least,
        "fired after {elapsed:?}, before its {at_least:?}"
    );
}

// ---------------------------------------------------------------- GET

#[test]
fn get_sends_the_whole_file_exactly() {
    let t = serve("get-whole", |c| c);
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    t.dir.write("data.bin", &data);
    let mut c = t.connect();
    c.send(b"GET data.bin\n");
    assert_eq!(c.line(), "OK 300000");
    assert_eq!(c.body(data.len()), data);
    quit(&mut c);
}

#[test]
fn get_with_offset_sends_the_tail() {
    let t = serve("get-offset", |c| c);
    let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    t.dir.write("data.bin", &data);
    let mut c = t.connect();
    c.assert_get("data.bin 65536", &data[65536..]);
    c.assert_get("notes.txt 7", b"world\n");
    quit(&mut c);
}

#[test]
fn get_at_offset_equal_to_size_sends_ok_0() {
    let t = serve("get-at-end", |c| c);
    t.dir.write("empty.txt", "");
    let mut c = t.connect();
    c.send(b"GET notes.txt 13\n");
    assert_eq!(c.line(), "OK 0");
    c.send(b"GET empty.txt\n");
    assert_eq!(c.line(), "OK 0");
    c.send(b"GET empty.txt 0\n");
    assert_eq!(c.line(), "OK 0");
    quit(&mut c);
}

#[test]
fn get_past_the_end_is_range_and_keeps_the_connection() {
    let t = serve("get-range", |c| c);
    let mut c = t.connect();
    c.send(b"GET notes.txt 14\n");
    c.expect_err("range");
    c.send(b"GET notes.txt 18446744073709551615\n");
    c.expect_err("range");
    c.assert_get("notes.txt", NOTES);
    quit(&mut c);
}

#[test]
fn get_of_a_directory_is_bad_request_and_keeps_the_connection() {
    let t = serve("get-dir", |c| c);
    each_refused_and_kept(&t, "bad-request", &[b"GET sub\n", b"GET /\n"]);
}

#[test]
fn get_of_a_fifo_is_bad_request_at_once() {
    let t = serve("get-fifo", |c| c);
    t.dir.mkfifo("pipe");
    let mut c = t.connect();
    // Opening a FIFO without a writer would block forever: a short bound.
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    c.send(b"GET pipe\n");
    c.expect_err("bad-request");
    c.send(b"GET pipe 0\n");
    c.expect_err("bad-request");
    c.assert_get("notes.txt", NOTES);
    quit(&mut c);
}

#[test]
fn get_of_a_missing_file_is_not_found_and_keeps_the_connection() {
    let t = serve("get-missing", |c| c);
    each_refused_and_kept(
        &t,
        "not-found",
        &[
            b"GET nope.txt\n",
            b"GET nodir/x.txt\n",
            b"GET notes.txt/x\n",
        ],
    );
}

#[test]
fn get_outside_the_root_is_forbidden() {
    let t = serve("get-outside", |c| c);
    fs::write(t.dir.path().join("secret.txt"), "secret\n").unwrap();
    symlink("../secret.txt", t.dir.root().join("escape.txt")).unwrap();
    symlink("..", t.dir.root().join("up")).unwrap();
    each_refused_and_kept(
        &t,
        "forbidden",
        &[
            b"GET ../secret.txt\n",
            b"GET sub/../../secret.txt\n",
            b"GET escape.txt\n",
            b"GET up/secret.txt\n",
            // Beyond an escaping symlink, even a missing name is forbidden.
            b"GET up/missing.txt\n",
        ],
    );
}

#[test]
fn reserved_temporary_names_are_forbidden() {
    let t = serve("get-reserved", |c| c);
    t.dir.write(".filesrv-1-2-3", "partial");
    each_refused_and_kept(
        &t,
        "forbidden",
        &[
            b"GET .filesrv-1-2-3\n",
            b"STAT .filesrv-1-2-3\n",
            b"LIST .filesrv-x\n",
        ],
    );
}

// ---------------------------------------------------------------- LIST

#[test]
fn list_of_the_root_gives_exact_lines() {
    let t = serve("list-root", |c| c);
    let mut c = t.connect();
    let lines = [
        "f 13 notes.txt".to_owned(),
        format!("d {} sub", dir_size(&t, "sub")),
    ];
    assert_list(&mut c, "", &lines);
    assert_list(&mut c, "/", &lines);
    assert_list(&mut c, ".", &lines);
    quit(&mut c);
}

#[test]
fn list_of_a_subdirectory_gives_its_entries() {
    let t = serve("list-sub", |c| c);
    t.dir.write("sub/deeper/x.bin", [0u8; 1000]);
    let mut c = t.connect();
    let lines = [
        format!("d {} deeper", dir_size(&t, "sub/deeper")),
        "f 6 inner.txt".to_owned(),
    ];
    assert_list(&mut c, "sub", &lines);
    assert_list(&mut c, "/sub/", &lines);
    assert_list(&mut c, "sub/deeper", &["f 1000 x.bin".to_owned()]);
    quit(&mut c);
}

#[test]
fn list_of_an_empty_directory_is_ok_0() {
    let t = serve("list-empty", |c| c);
    fs::create_dir(t.dir.root().join("empty")).unwrap();
    let mut c = t.connect();
    assert_list(&mut c, "empty", &[]);
    quit(&mut c);
}

#[test]
fn list_of_a_file_is_bad_request_and_of_a_missing_dir_not_found() {
    let t = serve("list-bad", |c| c);
    each_refused_and_kept(&t, "bad-request", &[b"LIST notes.txt\n"]);
    each_refused_and_kept(&t, "not-found", &[b"LIST nope\n", b"LIST nope/deeper\n"]);
}

#[test]
fn list_encodes_special_names_and_they_stay_reachable() {
    let t = TestServer::start("list-encode", |c| c);
    // (raw name on disk, encoded name on the wire)
    let names: [(&[u8], &str); 9] = [
        (b"100%", "100%25"),
        (b"Z", "Z"),
        (b"a b", "a%20b"),
        ("c1\u{85}".as_bytes(), "c1%C2%85"),
        (b"del\x7f", "del%7F"),
        (b"new\nline", "new%0Aline"),
        (b"raw\xffname", "raw%FFname"),
        (b"tab\tname", "tab%09name"),
        ("\u{e9}t\u{e9}".as_bytes(), "\u{e9}t\u{e9}"),
    ];
    for (raw, _) in names {
        fs::write(t.dir.root().join(OsStr::from_bytes(raw)), raw).unwrap();
    }
    let mut c = t.connect();
    let lines: Vec<String> = names
        .iter()
        .map(|(raw, encoded)| format!("f {} {encoded}", raw.len()))
        .collect();
    assert_list(&mut c, "", &lines);
    for (raw, encoded) in names {
        c.send(format!("GET {encoded}\n").as_bytes());
        assert_eq!(c.line(), format!("OK {}", raw.len()), "GET {encoded}");
        assert_eq!(c.body(raw.len()), raw, "GET {encoded}");
    }
    quit(&mut c);
}

#[test]
fn list_sorts_bytewise_by_raw_name() {
    let t = TestServer::start("list-sort", |c| c);
    for name in ["b", "a.txt", "B", "aa", "a", "_", "\u{e9}", "A b"] {
        t.dir.write(name, "");
    }
    let mut c = t.connect();
    let expected = ["A%20b", "B", "_", "a", "a.txt", "aa", "b", "\u{e9}"];
    let lines: Vec<String> = expected.iter().map(|n| format!("f 0 {n}")).collect();
    assert_list(&mut c, "", &lines);
    quit(&mut c);
}

#[test]
fn list_hides_temporary_files_fifos_and_unusable_symlinks() {
    let t = serve("list-hidden", |c| c.hidden(true));
    let root = t.dir.root();
    fs::write(t.dir.path().join("outside.txt"), "outside\n").unwrap();
    t.dir.write(".filesrv-123-0-abc", "partial upload");
    t.dir.write("sub/.filesrv-9-9-9", "partial upload");
    t.dir.write(".hidden", "dot\n");
    t.dir.mkfifo("pipe");
    symlink("missing.txt", root.join("broken")).unwrap();
    symlink("../outside.txt", root.join("escape")).unwrap();
    symlink("loop", root.join("loop")).unwrap();
    let mut c = t.connect();
    let lines = [
        "f 4 .hidden".to_owned(),
        "f 13 notes.txt".to_owned(),
        format!("d {} sub", dir_size(&t, "sub")),
    ];
    assert_list(&mut c, "", &lines);
    assert_list(&mut c, "sub", &["f 6 inner.txt".to_owned()]);
    quit(&mut c);
}

#[test]
fn list_shows_a_symlink_as_its_target() {
    let t = serve("list-symlink", |c| c);
    symlink("notes.txt", t.dir.root().join("link.txt")).unwrap();
    symlink("sub", t.dir.root().join("linkdir")).unwrap();
    symlink("../notes.txt", t.dir.root().join("sub/up.txt")).unwrap();
    let mut c = t.connect();
    let sub = dir_size(&t, "sub");
    let lines = [
        "f 13 link.txt".to_owned(),
        format!("d {sub} linkdir"),
        "f 13 notes.txt".to_owned(),
        format!("d {sub} sub"),
    ];
    assert_list(&mut c, "", &lines);
    let lines = ["f 6 inner.txt".to_owned(), "f 13 up.txt".to_owned()];
    assert_list(&mut c, "linkdir", &lines);
    quit(&mut c);
}

// ---------------------------------------------------------------- STAT

#[test]
fn stat_of_a_file_gives_type_size_and_exact_mtime() {
    let t = serve("stat-file", |c| c);
    let mtime = UNIX_EPOCH + Duration::new(1_234_567_890, 999_000_000);
    set_mtime(&t.dir.root().join("notes.txt"), mtime);
    let mut c = t.connect();
    c.send(b"STAT notes.txt\n");
    assert_eq!(c.line(), "OK f 13 1234567890");
    quit(&mut c);
}

#[test]
fn stat_of_a_directory_gives_d_and_exact_mtime() {
    let t = serve("stat-dir", |c| c);
    set_mtime(
        &t.dir.root().join("sub"),
        UNIX_EPOCH + Duration::from_secs(1_000_000_000),
    );
    let mut c = t.connect();
    c.send(b"STAT sub\n");
    assert_eq!(c.line(), format!("OK d {} 1000000000", dir_size(&t, "sub")));
    c.send(b"STAT /\n");
    assert_eq!(c.line(), stat_line(&t, ""));
    quit(&mut c);
}

#[test]
fn stat_clamps_an_mtime_before_1970_to_0() {
    let t = serve("stat-old", |c| c);
    set_mtime(
        &t.dir.root().join("notes.txt"),
        UNIX_EPOCH - Duration::from_secs(86_400),
    );
    let mut c = t.connect();
    c.send(b"STAT notes.txt\n");
    assert_eq!(c.line(), "OK f 13 0");
    quit(&mut c);
}

#[test]
fn stat_of_a_fifo_is_bad_request_and_of_a_missing_file_not_found() {
    let t = serve("stat-bad", |c| c);
    t.dir.mkfifo("pipe");
    each_refused_and_kept(&t, "bad-request", &[b"STAT pipe\n"]);
    each_refused_and_kept(&t, "not-found", &[b"STAT nope\n", b"STAT sub/nope\n"]);
}

// ---------------------------------------------------------------- QUIT

#[test]
fn quit_says_bye_and_closes() {
    let t = serve("quit", |c| c);
    let mut c = t.connect();
    c.send(b"QUIT\n");
    assert_eq!(c.read_until_closed(), b"OK bye\n");
}

// ------------------------------------------------------- request lines

#[test]
fn verbs_are_case_insensitive() {
    let t = serve("verbs", |c| c);
    let mut c = t.connect();
    c.send(b"get notes.txt\n");
    assert_eq!(c.line(), "OK 13");
    assert_eq!(c.body(13), NOTES);
    c.send(b"GeT notes.txt 12\n");
    assert_eq!(c.line(), "OK 1");
    assert_eq!(c.body(1), b"\n");
    c.send(b"sTaT notes.txt\n");
    assert_eq!(c.line(), stat_line(&t, "notes.txt"));
    c.send(b"list sub\n");
    assert_eq!(c.line(), "OK 1");
    assert_eq!(c.line(), "f 6 inner.txt");
    c.send(b"Quit\n");
    assert_eq!(c.line(), "OK bye");
    c.expect_closed();
}

#[test]
fn percent_escapes_are_decoded_once_in_either_case() {
    let t = serve("percent", |c| c);
    t.dir.write("%41", "literal percent name\n");
    let mut c = t.connect();
    for request in [
        &b"GET %6Eotes.txt\n"[..],
        b"GET %6eotes%2Etxt\n",
        b"GET %6E%6F%74%65%73%2E%74%78%74\n",
    ] {
        c.send(request);
        assert_eq!(c.line(), "OK 13");
        assert_eq!(c.body(13), NOTES);
    }
    // `%2541` is `%41` once decoded, not `A`.
    c.assert_get("%2541", b"literal percent name\n");
    quit(&mut c);
}

#[test]
fn encoded_slash_is_a_separator() {
    let t = serve("percent-slash", |c| c);
    let mut c = t.connect();
    for request in [
        &b"GET sub%2Finner.txt\n"[..],
        b"GET sub%2finner.txt\n",
        b"GET %2Fsub%2F%2Finner.txt\n",
    ] {
        c.send(request);
        assert_eq!(c.line(), "OK 6");
        assert_eq!(c.body(6), b"inner\n");
    }
    quit(&mut c);
}

#[test]
fn encoded_dot_dot_is_forbidden() {
    let t = serve("percent-dotdot", |c| c);
    fs::write(t.dir.path().join("secret.txt"), "secret\n").unwrap();
    each_refused_and_kept(
        &t,
        "forbidden",
        &[
            b"GET %2e%2e/secret.txt\n",
            b"GET %2E%2E%2Fsecret.txt\n",
            b"GET sub/%2e%2e/%2e%2e/secret.txt\n",
            b"GET sub%2F..%2Fnotes.txt\n",
            b"STAT %2e%2e\n",
            b"LIST ..\n",
            b"GET notes%00.txt\n",
            b"GET sub%5Cinner.txt\n",
            b"GET sub\\inner.txt\n",
        ],
    );
}

#[test]
fn bad_percent_escapes_are_bad_request() {
    let t = serve("percent-bad", |c| c);
    each_refused_and_kept(
        &t,
        "bad-request",
        &[
            b"GET %\n",
            b"GET notes.txt%4\n",
            b"GET %g1otes.txt\n",
            b"GET %%6Eotes.txt\n",
            b"GET %+6otes.txt\n",
            b"STAT %zz\n",
        ],
    );
}

#[test]
fn leading_slash_and_empty_or_dot_components_are_ignored() {
    let t = serve("path-forms", |c| c);
    let mut c = t.connect();
    for request in [
        &b"GET /sub/inner.txt\n"[..],
        b"GET ./sub//./inner.txt\n",
        b"GET //sub/.//inner.txt/\n",
    ] {
        c.send(request);
        assert_eq!(c.line(), "OK 6", "{}", String::from_utf8_lossy(request));
        assert_eq!(c.body(6), b"inner\n");
    }
    quit(&mut c);
}

#[test]
fn numbers_allow_leading_zeros() {
    let t = serve("numbers-zeros", |c| c);
    let mut c = t.connect();
    c.assert_get("notes.txt 007", b"world\n");
    // More digits than a u64 has, but a small value.
    c.send(b"GET notes.txt 000000000000000000000000000000000000013\n");
    assert_eq!(c.line(), "OK 0");
    c.assert_get("notes.txt 0", NOTES);
    quit(&mut c);
}

#[test]
fn malformed_numbers_are_bad_request() {
    let t = serve("numbers-bad", |c| c);
    each_refused_and_kept(
        &t,
        "bad-request",
        &[
            b"GET notes.txt +1\n",
            b"GET notes.txt -1\n",
            b"GET notes.txt 0x1\n",
            b"GET notes.txt 1e3\n",
            b"GET notes.txt 1.0\n",
            b"GET notes.txt 1_000\n",
            "GET notes.txt \u{ff11}\n".as_bytes(),
            b"GET notes.txt  1\n",
            b"GET notes.txt 1 \n",
            b"GET notes.txt \n",
            // One more than u64::MAX, and far more.
            b"GET notes.txt 18446744073709551616\n",
            b"GET notes.txt 99999999999999999999999999\n",
        ],
    );
}

#[test]
fn wrong_field_counts_and_unknown_verbs_are_bad_request() {
    let t = serve("fields", |c| c);
    each_refused_and_kept(
        &t,
        "bad-request",
        &[
            b"GET\n",
            b"GET notes.txt 1 2\n",
            b"STAT\n",
            b"STAT notes.txt sub\n",
            b"LIST sub sub\n",
            b"LIST \n",
            b"QUIT now\n",
            b"\n",
            b" GET notes.txt\n",
            b"GET  notes.txt\n",
            b"DELETE notes.txt\n",
            b"GETT notes.txt\n",
        ],
    );
}

/// `GET //.../notes.txt` padded with empty components to `len` bytes,
/// counting the line ending.
fn padded_get(len: usize, ending: &str) -> Vec<u8> {
    let slashes = len - "GET notes.txt".len() - ending.len();
    format!("GET {}notes.txt{ending}", "/".repeat(slashes)).into_bytes()
}

#[test]
fn line_of_exactly_4096_bytes_is_served() {
    let t = serve("line-4096", |c| c);
    let mut c = t.connect();
    for ending in ["\n", "\r\n"] {
        let line = padded_get(4096, ending);
        assert_eq!(line.len(), 4096);
        c.send(&line);
        assert_eq!(c.line(), "OK 13", "ending {ending:?}");
        assert_eq!(c.body(13), NOTES);
    }
    quit(&mut c);
}

#[test]
fn line_of_4097_bytes_is_bad_request_and_closes() {
    let t = serve("line-4097", |c| c);
    for ending in ["\n", "\r\n"] {
        refused_and_closed(&t, "bad-request", &padded_get(4097, ending));
    }
    // Much longer, with no newline at all, is cut just the same.
    refused_and_closed(&t, "bad-request", &[b'a'; 10_000]);
}

#[test]
fn crlf_line_endings_are_accepted() {
    let t = serve("crlf", |c| c);
    let mut c = t.connect();
    c.send(b"GET notes.txt\r\nSTAT sub/inner.txt\r\nLIST sub\r\n");
    assert_eq!(c.line(), "OK 13");
    assert_eq!(c.body(13), NOTES);
    assert_eq!(c.line(), stat_line(&t, "sub/inner.txt"));
    assert_eq!(c.line(), "OK 1");
    assert_eq!(c.line(), "f 6 inner.txt");
    c.send(b"QUIT\r\n");
    assert_eq!(c.line(), "OK bye");
    c.expect_closed();
}

#[test]
fn non_utf8_line_is_bad_request_and_closes() {
    let t = serve("not-utf8", |c| c);
    refused_and_closed(&t, "bad-request", b"GET \xff\xfe.txt\n");
    refused_and_closed(&t, "bad-request", b"GET notes.txt\xc3\n");
    refused_and_closed(&t, "bad-request", b"STAT \xed\xa0\x80\n");
}

#[test]
fn control_byte_in_line_is_bad_request_and_keeps_the_connection() {
    let t = serve("control", |c| c);
    each_refused_and_kept(
        &t,
        "bad-request",
        &[
            b"GET no\x01tes.txt\n",
            b"GET notes.txt\tx\n",
            b"GET notes\r.txt\n",
            b"GET notes.txt\r\r\n",
            b"GET notes.txt\x7f\n",
            b"\x00\n",
        ],
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let t = serve("pipeline", |c| c);
    let stat = stat_line(&t, "notes.txt");
    let mut requests = Vec::new();
    for i in 0..100 {
        let offset = i % 14;
        requests.extend_from_slice(
            format!("GET notes.txt {offset}\nSTAT notes.txt\nBOGUS\n").as_bytes(),
        );
    }
    requests.extend_from_slice(b"QUIT\n");
    let mut c = t.connect();
    c.send(&requests);
    for i in 0..100 {
        let offset = i % 14;
        assert_eq!(c.line(), format!("OK {}", 13 - offset));
        assert_eq!(c.body(13 - offset), &NOTES[offset..]);
        assert_eq!(c.line(), stat);
        c.expect_err("bad-request");
    }
    assert_eq!(c.line(), "OK bye");
    c.expect_closed();
}

#[test]
fn half_closed_client_gets_every_reply_then_eof() {
    let t = serve("half-close", |c| c);
    let mut c = t.connect();
    c.send(b"GET notes.txt\nSTAT nope\nGET sub/inner.txt 2\n");
    c.half_close();
    get_notes_body(&mut c);
    c.expect_err("not-found");
    assert_eq!(c.line(), "OK 4");
    assert_eq!(c.body(4), b"ner\n");
    c.expect_closed();
}

/// The reply to a `GET notes.txt` already sent.
fn get_notes_body(c: &mut Conn) {
    assert_eq!(c.line(), "OK 13");
    assert_eq!(c.body(13), NOTES);
}

#[test]
fn incomplete_last_line_before_eof_is_bad_request() {
    let t = serve("partial-eof", |c| c);
    let mut c = t.connect();
    c.send(b"GET notes.txt\nGET notes.txt");
    c.half_close();
    get_notes_body(&mut c);
    c.expect_final_err("bad-request");
}

// ---------------------------------------------------------------- PUT

#[test]
fn put_when_disabled_is_forbidden_and_closes() {
    let t = serve("put-off", |c| c);
    refused_and_closed(&t, "forbidden", b"PUT new.txt 5\nhello");
    refused_and_closed(&t, "forbidden", b"PUT notes.txt 0\n");
    assert_eq!(t.dir.names(""), ["notes.txt", "sub"]);
    assert_eq!(t.dir.read("notes.txt"), NOTES);
}

#[test]
fn put_creates_a_file_with_the_exact_bytes() {
    let t = serve("put-create", |c| c.allow_put(true));
    let data: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    let mut c = t.connect();
    c.send(b"PUT sub/new.bin 200000\n");
    c.send(&data);
    assert_eq!(c.line(), "OK 200000");
    assert_eq!(t.dir.read("sub/new.bin"), data);
    // The stream is still in step: the next request is served.
    c.assert_get("sub/new.bin 199990", &data[199_990..]);
    quit(&mut c);
    assert_eq!(t.dir.names("sub"), ["inner.txt", "new.bin"]);
}

#[test]
fn put_replaces_an_existing_file() {
    let t = serve("put-replace", |c| c.allow_put(true));
    let mut c = t.connect();
    // The body and the next request in one write.
    c.send(b"PUT notes.txt 4\nbye\nGET notes.txt\n");
    assert_eq!(c.line(), "OK 4");
    assert_eq!(c.line(), "OK 4");
    assert_eq!(c.body(4), b"bye\n");
    quit(&mut c);
    assert_eq!(t.dir.read("notes.txt"), b"bye\n");
    assert_eq!(t.dir.names(""), ["notes.txt", "sub"]);
}

#[test]
fn put_of_size_0_creates_an_empty_file() {
    let t = serve("put-empty", |c| c.allow_put(true));
    let mut c = t.connect();
    c.send(b"PUT empty.txt 0\nSTAT empty.txt\n");
    assert_eq!(c.line(), "OK 0");
    assert_eq!(c.line(), stat_line(&t, "empty.txt"));
    quit(&mut c);
    assert_eq!(t.dir.read("empty.txt"), b"");
}

#[test]
fn put_over_the_limit_is_too_large_closes_and_leaves_nothing() {
    let t = serve("put-too-large", |c| c.allow_put(true).max_upload(10));
    refused_and_closed(&t, "too-large", b"PUT big.txt 11\nhello world");
    refused_and_closed(&t, "too-large", b"PUT big.txt 18446744073709551615\n");
    assert_eq!(t.dir.names(""), ["notes.txt", "sub"]);
    // The limit itself is allowed.
    let mut c = t.connect();
    c.send(b"PUT ten.txt 10\n0123456789");
    assert_eq!(c.line(), "OK 10");
    quit(&mut c);
    assert_eq!(t.dir.names(""), ["notes.txt", "sub", "ten.txt"]);
}

#[test]
fn put_with_a_missing_parent_is_not_found_and_closes() {
    let t = serve("put-no-parent", |c| c.allow_put(true));
    refused_and_closed(&t, "not-found", b"PUT nodir/x.txt 3\nabc");
    refused_and_closed(&t, "not-found", b"PUT notes.txt/x.txt 3\nabc");
    assert_eq!(t.dir.names(""), ["notes.txt", "sub"]);
}

#[test]
fn put_onto_a_directory_is_bad_request_and_closes() {
    let t = serve("put-dir", |c| c.allow_put(true));
    refused_and_closed(&t, "bad-request", b"PUT sub 3\nabc");
    refused_and_closed(&t, "bad-request", b"PUT / 3\nabc");
    assert_eq!(t.dir.names("sub"), ["inner.txt"]);
}

#[test]
fn put_with_a_bad_line_is_refused_and_closes() {
    let t = serve("put-bad-line", |c| c.allow_put(true));
    refused_and_closed(&t, "bad-request", b"PUT x.txt -1\n");
    refused_and_closed(&t, "bad-request", b"PUT x.txt 18446744073709551616\n");
    refused_and_closed(&t, "bad-request", b"PUT x.txt\n");
    refused_and_closed(&t, "forbidden", b"PUT ../x.txt 3\nabc");
    refused_and_closed(&t, "forbidden", b"PUT .filesrv-x 3\nabc");
    assert_eq!(t.dir.names(""), ["notes.txt", "sub"]);
}

#[test]
fn stalled_upload_body_times_out_and_leaves_nothing() {
    let t = serve("put-stall", |c| {
        c.allow_put(true).stall_timeout(Some(SHORT))
    });
    let mut c = t.connect();
    let began = Instant::now();
    c.send(b"PUT up.txt 10\nhello");
    c.expect_err("timeout");
    assert_fired(began.elapsed(), SHORT);
    c.expect_closed();
    assert_eq!(t.dir.names(""), ["notes.txt", "sub"]);
}

// ----------------------------------------------------------- admission

#[test]
fn full_server_without_queue_refuses_with_one_busy_line() {
    let t = serve("busy", |c| c.max_running(1).max_waiting(0));
    let mut first = t.connect();
    first.assert_get("notes.txt", NOTES);
    let mut second = t.connect();
    let reply = second.read_until_closed();
    let reply = String::from_utf8(reply).unwrap();
    assert!(
        reply.starts_with("ERR busy ") && reply.ends_with('\n') && reply.lines().count() == 1,
        "{reply:?}"
    );
    // The running client is unaffected.
    first.assert_get("notes.txt", NOTES);
    quit(&mut first);
}

#[test]
fn refusal_line_survives_requests_sent_before_it() {
    let t = serve("busy-pipelined", |c| c.max_running(1).max_waiting(0));
    let mut first = t.connect();
    first.assert_get("notes.txt", NOTES);
    let mut second = t.connect();
    second.send(&b"GET notes.txt\n".repeat(1000));
    second.expect_final_err("busy");
    quit(&mut first);
}

#[test]
fn per_source_cap_refuses_a_second_connection_from_one_address() {
    let t = serve("per-source", |c| c.max_running(4).max_per_source(1));
    let mut first = t.connect();
    first.assert_get("notes.txt", NOTES);
    let mut second = t.connect();
    second.expect_final_err("busy");
    first.assert_get("notes.txt", NOTES);
    quit(&mut first);
}

#[test]
fn queue_timeout_refuses_a_waiting_client_while_the_first_runs() {
    let t = serve("queue-timeout", |c| {
        c.max_running(1).queue_timeout(Some(SHORT))
    });
    let mut first = t.connect();
    first.assert_get("notes.txt", NOTES);
    let began = Instant::now();
    let mut waiting = t.connect();
    waiting.expect_err("busy");
    assert_fired(began.elapsed(), SHORT);
    waiting.expect_closed();
    // Refused on its timer, not on reaching the head: the first still runs.
    first.assert_get("notes.txt", NOTES);
    quit(&mut first);
}

#[test]
fn waiting_client_is_served_once_a_slot_frees() {
    let t = serve("queue-order", |c| c.max_running(1));
    let mut first = t.connect();
    first.assert_get("notes.txt", NOTES);
    let mut second = t.connect();
    // Pipelined while waiting: the requests simply wait in the socket.
    second.send(b"GET notes.txt\nQUIT\n");
    quit(&mut first);
    get_notes_body(&mut second);
    assert_eq!(second.line(), "OK bye");
    second.expect_closed();
}

/// A client queued behind a running one leaves by `leave` before its
/// turn: it is dropped unrun, and counted abandoned.
fn assert_dropped_unrun(label: &str, leave: impl FnOnce(Conn)) {
    let t = serve(label, |c| c.max_running(1).max_waiting(2));
    let mut first = t.connect();
    first.assert_get("notes.txt", NOTES);
    let leaving = t.connect();
    let mut third = t.connect();
    // Both queued, not still in the backlog: the queue is full.
    t.connect().expect_final_err("busy");
    leave(leaving);
    third.send(b"GET notes.txt\nQUIT\n");
    quit(&mut first);
    // FIFO: the one that left reached the head before `third` ran.
    get_notes_body(&mut third);
    assert_eq!(third.line(), "OK bye");
    third.expect_closed();
    // Counted before `third` started, so before its replies.
    assert_eq!(t.server.stats().abandoned, 1);
}

#[test]
fn a_waiting_client_that_hung_up_is_dropped_unrun() {
    assert_dropped_unrun("abandoned", drop);
}

#[test]
fn a_waiting_client_that_sent_a_request_and_reset_is_dropped_unrun() {
    // Its request stays readable in the server's socket after the reset.
    assert_dropped_unrun("abandoned-reset", |mut c| {
        c.send(b"GET notes.txt\n");
        c.reset();
    });
}

// ------------------------------------------------------------ timeouts

#[test]
fn idle_client_gets_timeout_then_eof() {
    let t = serve("idle", |c| c.idle_timeout(Some(SHORT)));
    let began = Instant::now();
    let mut c = t.connect();
    c.expect_err("timeout");
    assert_fired(began.elapsed(), SHORT);
    c.expect_closed();
}

#[test]
fn idle_timeout_restarts_after_each_reply() {
    let idle = Duration::from_millis(500);
    let t = serve("idle-restart", |c| c.idle_timeout(Some(idle)));
    // Requests 100 ms apart (pacing, not synchronisation) for two idle
    // periods: each reply starts a new one. On a busy machine this thread
    // may be held up past an idle period between two requests; the server
    // then rightly cuts the client, and the attempt is made again
    // (bounded). A server that does not restart the period cuts every
    // attempt although no gap reached it.
    let starved = |gap: Duration| gap >= idle;
    for attempt in 1.. {
        let mut c = t.connect();
        let began = Instant::now();
        let mut sent = began;
        let (mut gaps_ok, mut cut) = (true, false);
        while began.elapsed() < 2 * idle {
            let now = Instant::now();
            // The server's period began after the previous request was
            // sent, so it was idle no longer than this gap.
            gaps_ok &= !starved(now - sent);
            sent = now;
            // Cut meanwhile: the write or the read may meet the close.
            let line = c
                .try_send(b"GET notes.txt\n")
                .ok()
                .and_then(|()| c.try_line());
            match line.as_deref() {
                Some("OK 13") => {}
                Some(line) if line.starts_with("ERR timeout ") => cut = true,
                None => cut = true,
                Some(line) => panic!("{line}"),
            }
            if cut {
                break;
            }
            assert_eq!(c.body(NOTES.len()), NOTES);
            thread::sleep(Duration::from_millis(100));
        }
        if cut {
            assert!(
                !gaps_ok,
                "cut after {:?} although requests came every 100 ms",
                began.elapsed()
            );
            assert!(attempt < 5, "five attempts held up past the idle period");
            continue;
        }
        // Taken before the request: the server's new period starts after it.
        let last = Instant::now();
        c.assert_get("notes.txt", NOTES);
        c.expect_err("timeout");
        assert_fired(last.elapsed(), idle);
        c.expect_closed();
        return;
    }
}

#[test]
fn trickling_bytes_does_not_extend_the_idle_timeout() {
    let t = serve("idle-trickle", |c| c.idle_timeout(Some(SHORT)));
    let began = Instant::now();
    let mut c = t.connect();
    let mut writer = c.stream().try_clone().unwrap();
    // One byte every 100 ms, no newline, until stopped or for LIMIT at
    // most: the server's timeout must come while bytes still trickle in.
    // A server that extended its deadline on each byte would answer only
    // after the trickle ended.
    let (stop, stopped) = mpsc::channel::<()>();
    let trickler = thread::spawn(move || {
        let bytes = LIMIT.as_millis() / 100;
        for _ in 0..bytes {
            if writer.write_all(b"a").is_err() {
                return true;
            }
            if stopped.recv_timeout(Duration::from_millis(100))
                != Err(mpsc::RecvTimeoutError::Timeout)
            {
                return true;
            }
        }
        false
    });
    c.expect_err("timeout");
    assert_fired(began.elapsed(), SHORT);
    drop(stop);
    assert!(
        trickler.join().unwrap(),
        "the timeout came only after the trickle ended"
    );
    c.expect_closed();
}

#[test]
fn time_in_the_queue_does_not_count_against_the_idle_timeout() {
    let idle = Duration::from_millis(500);
    let t = serve("idle-queue", |c| c.max_running(1).idle_timeout(Some(idle)));
    // Served one after another, each cut by the idle timeout: the last
    // waits two idle periods in the queue.
    let mut first = t.connect();
    let mut second = t.connect();
    let mut third = t.connect();
    first.expect_final_err("timeout");
    second.expect_final_err("timeout");
    // Its own idle period began when it started running.
    third.assert_get("notes.txt", NOTES);
    quit(&mut third);
}

// ------------------------------------------------------------ shutdown

/// Shuts `server` down on another thread while `during` runs on this one;
/// returns the shutdown's report, waiting at most [`LIMIT`] for it.
fn shutdown_while(server: Server, during: impl FnOnce()) -> ShutdownReport {
    let (done, report) = mpsc::channel();
    let thread = thread::spawn(move || done.send(server.shutdown()).unwrap());
    during();
    let report = report.recv_timeout(LIMIT).expect("shutdown did not finish");
    thread.join().unwrap();
    report
}

#[test]
fn shutdown_refuses_waiting_and_idle_clients_with_unavailable() {
    let t = serve("shutdown", |c| c.max_running(1).max_waiting(1));
    let (mut running, mut waiting) = running_and_waiting(|| t.connect());
    let TestServer { server, dir: _dir } = t;
    let report = shutdown_while(server, || {
        running.expect_final_err("unavailable");
        waiting.expect_final_err("unavailable");
    });
    assert_eq!(
        (report.refused_waiting, report.running_at_start, report.cut),
        (1, 1, 0)
    );
}

#[test]
fn shutdown_lets_a_request_in_progress_finish_then_refuses_the_next() {
    // Long enough that no delay on a busy machine reaches it.
    let t = serve("shutdown-busy", |c| c.allow_put(true).shutdown_grace(LIMIT));
    let mut uploader = t.connect();
    begin_upload(&mut uploader, &t.dir, "up.txt", 10, b"hello");
    let mut idle = t.connect();
    idle.assert_get("notes.txt", NOTES);
    let TestServer { server, dir } = t;
    let report = shutdown_while(server, || {
        // The idle client's refusal shows the graceful stop has begun.
        idle.expect_final_err("unavailable");
        uploader.send(b"world");
        assert_eq!(uploader.line(), "OK 10");
        // Idle between requests now: refused at once, not cut at the end
        // of the grace period.
        uploader.expect_final_err("unavailable");
    });
    // Nobody was cut at the end of the grace: the upload finished, then
    // its client was refused as idle.
    assert_eq!((report.running_at_start, report.cut), (2, 0));
    assert_eq!(dir.read("up.txt"), b"helloworld");
    assert!(dir.temp_files("").is_empty());
}

// ------------------------------------------------------------ messages

#[test]
fn error_messages_never_show_host_paths() {
    let t = serve("messages", |c| c);
    fs::write(t.dir.path().join("secret.txt"), "secret\n").unwrap();
    symlink("..", t.dir.root().join("up")).unwrap();
    t.dir.mkfifo("pipe");
    let mut c = t.connect();
    let mut messages = Vec::new();
    for (request, code) in [
        ("GET missing.txt", "not-found"),
        ("GET nodir/missing.txt", "not-found"),
        ("STAT sub/missing", "not-found"),
        ("GET sub", "bad-request"),
        ("GET pipe", "bad-request"),
        ("LIST notes.txt", "bad-request"),
        ("GET %zz", "bad-request"),
        ("FROB", "bad-request"),
        ("GET notes.txt 99", "range"),
        ("GET ../secret.txt", "forbidden"),
        ("GET up/secret.txt", "forbidden"),
        ("LIST up", "forbidden"),
        ("GET .filesrv-x", "forbidden"),
    ] {
        c.send(format!("{request}\n").as_bytes());
        messages.push((request, c.err_message(code)));
    }
    let mut put = t.connect();
    put.send(b"PUT new.txt 1\nx");
    messages.push(("PUT new.txt 1", put.err_message("forbidden")));
    let root = t.dir.root().to_string_lossy().into_owned();
    let temp = std::env::temp_dir().to_string_lossy().into_owned();
    for (request, message) in messages {
        assert!(
            !message.contains(&root) && !message.contains(&temp) && !message.contains('/'),
            "{request}: {message:?} shows a path"
        );
    }
}

/// Settings out of range are an error from `Server::bind`, naming the
/// setting, never a panic. (`max_running = 0` set directly on the public
/// field skipped the setter's check and panicked in the manager.)
#[test]
fn settings_out_of_range_are_an_error_not_a_panic() {
    let dir = crate::support::TempDir::new("bad-settings");
    let addr = "127.0.0.1:0".parse().unwrap();
    type Set = fn(ServerConfig) -> ServerConfig;
    let cases: [(&str, Set); 4] = [
        ("max_running", |c| c.max_running(0)),
        ("idle_timeout", |c| c.idle_timeout(Some(Duration::ZERO))),
        ("min_rate", |c| c.min_rate(Some(0))),
        ("proxy_timeout", |c| c.proxy_timeout(Duration::ZERO)),
    ];
    for (name, set) in cases {
        match Server::bind(addr, set(ServerConfig::new(dir.root()))) {
            Err(filesrv::protocol::ServerError::Config { setting, .. }) => {
                assert_eq!(setting, name);
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}
