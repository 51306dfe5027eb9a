//! HTTP/1.1 on the line protocol's port, driven by clients no one here
//! wrote (curl, wget) and, for the framing rules, by exact bytes over raw
//! TCP.

use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use filesrv::protocol::{AccessLog, ServerConfig};

use crate::support::{DirWatch, LIMIT, NOTES, TempDir, TestServer, tools};

fn serve(label: &str, configure: impl FnOnce(ServerConfig) -> ServerConfig) -> TestServer {
    let t = TestServer::start(label, configure);
    t.dir.write("notes.txt", NOTES);
    t
}

fn url(t: &TestServer, path: &str) -> String {
    format!("http://{}{path}", t.addr())
}

/// Runs curl (silent, failing on no status, bounded in time) with `args`.
fn curl(args: &[&str]) -> Output {
    let output = Command::new(tools::need("curl"))
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The status code and the head (`-D -`) of a curl run writing its body
/// to `body` (`-o`).
fn curl_head(args: &[&str], body: &Path) -> (u16, String) {
    let body = body.to_str().unwrap();
    let mut all = vec!["-D", "-", "-o", body, "-w", "%{http_code}"];
    all.extend_from_slice(args);
    let out = String::from_utf8(curl(&all).stdout).unwrap();
    let (head, code) = out.split_at(out.len() - 3);
    (code.parse().unwrap(), head.to_owned())
}

/// The value of `name` in a reply head (case-insensitive).
fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Sends `request` on a fresh connection and returns everything until the
/// server closes.
fn raw(t: &TestServer, request: &[u8]) -> String {
    let mut c = t.connect();
    c.send(request);
    String::from_utf8_lossy(&c.read_until_closed()).into_owned()
}

/// A reply without its `Date` field, the one part two replies sent in
/// different seconds may not share.
pub(crate) fn without_date(reply: &str) -> String {
    let lines = reply.split_inclusive('\n');
    lines.filter(|line| !line.starts_with("Date: ")).collect()
}

#[test]
fn curl_get_and_head_beside_the_line_protocol() {
    let t = serve("http-get", |c| c);
    let out = TempDir::new("http-get-out");
    let body = out.path().join("body");
    let (code, head) = curl_head(&[&url(&t, "/notes.txt")], &body);
    assert_eq!(code, 200);
    assert_eq!(std::fs::read(&body).unwrap(), NOTES);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(field(&head, "content-length"), Some("13"));
    assert_eq!(field(&head, "content-type"), Some("text/plain"));
    assert_eq!(field(&head, "accept-ranges"), Some("bytes"));
    for name in ["date", "last-modified", "etag"] {
        assert!(field(&head, name).is_some(), "no {name}: {head}");
    }
    let modified = std::fs::metadata(t.dir.root().join("notes.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let modified = httpdate_of(modified);
    assert_eq!(field(&head, "last-modified"), Some(modified.as_str()));
    // HEAD: the same head, no body.
    let head_only = curl(&["-I", &url(&t, "/notes.txt")]);
    let text = String::from_utf8(head_only.stdout).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
    assert_eq!(field(&text, "content-length"), Some("13"));
    assert!(text.ends_with("\r\n\r\n"));
    // Unknown types are octet streams; missing and hidden files are 404.
    t.dir.write("data.zzqx", "z");
    t.dir.write(".env", "SECRET");
    let (_, head) = curl_head(&[&url(&t, "/data.zzqx")], &body);
    assert_eq!(
        field(&head, "content-type"),
        Some("application/octet-stream")
    );
    for path in ["/nothing.txt", "/.env", "/sub/.env"] {
        assert_eq!(curl_head(&[&url(&t, path)], &body).0, 404, "{path}");
    }
    // Containment through the same resolver as the line protocol.
    std::os::unix::fs::symlink("/etc/hostname", t.dir.root().join("out")).unwrap();
    assert_eq!(curl_head(&[&url(&t, "/out")], &body).0, 403);
    assert_eq!(
        curl_head(&["--path-as-is", &url(&t, "/../x")], &body).0,
        403
    );
    assert_eq!(curl_head(&[&url(&t, "/bad%zz")], &body).0, 400);
    // The line protocol on the same port is unchanged.
    let mut c = t.connect();
    c.assert_get("notes.txt", NOTES);
    c.send(b"GET /notes.txt\n");
    assert_eq!(c.line(), "OK 13");
}

fn httpdate_of(time: std::time::SystemTime) -> String {
    // Whole seconds, as Last-Modified carries them.
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{secs}"),
            "+%a, %d %b %Y %H:%M:%S GMT",
        ])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn curl_reuses_one_connection_and_http10_closes() {
    let t = serve("http-reuse", |c| c);
    let u = url(&t, "/notes.txt");
    let out = curl(&["-v", &u, &u]);
    assert_eq!(out.stdout, [NOTES, NOTES].concat());
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("Connected to").count(), 1, "{log}");
    assert!(log.contains("Re-using existing connection") || log.contains("Reusing existing"));
    // HTTP/1.0: closed after the reply.
    let out = curl(&["-v", "--http1.0", &u, &u]);
    assert_eq!(out.stdout, [NOTES, NOTES].concat());
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("Connected to").count(), 2, "{log}");
    // HTTP/1.0 asking to keep alive is kept; pipelined requests are
    // answered in order.
    let mut c = t.connect();
    c.send(
        b"GET /notes.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
          HEAD /notes.txt HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let all = String::from_utf8(c.read_until_closed()).unwrap();
    let statuses: Vec<&str> = all.lines().filter(|l| l.starts_with("HTTP/1.1 ")).collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found"
        ]
    );
    assert!(all.contains("Connection: keep-alive\r\n"));
    assert!(all.contains("\r\n\r\nhello, world\nHTTP/1.1 200 OK\r\n"));
    // A request after `Connection: close` is never read, and the reply
    // before it arrives whole, closed cleanly (no reset).
    let all = raw(
        &t,
        b"GET /notes.txt HTTP/1.1\r\nConnection: close\r\n\r\nGET /notes.txt HTTP/1.1\r\n\r\n",
    );
    assert_eq!(all.matches("HTTP/1.1 ").count(), 1, "{all}");
    assert!(all.ends_with("\r\n\r\nhello, world\n"), "{all}");
}

#[test]
fn curl_ranges_and_resume() {
    let t = serve("http-range", |c| c);
    let out = TempDir::new("http-range-out");
    let body = out.path().join("body");
    let u = url(&t, "/notes.txt");
    let cases: [(&str, &[u8], &str); 4] = [
        ("0-0", b"h", "bytes 0-0/13"),
        ("2-5", b"llo,", "bytes 2-5/13"),
        ("-3", b"ld\n", "bytes 10-12/13"),
        ("7-", b"world\n", "bytes 7-12/13"),
    ];
    for (range, expected, content_range) in cases {
        let (code, head) = curl_head(&["-r", range, &u], &body);
        assert_eq!(code, 206, "{range}");
        assert_eq!(std::fs::read(&body).unwrap(), expected, "{range}");
        assert_eq!(field(&head, "content-range"), Some(content_range));
    }
    let (code, head) = curl_head(&["-r", "13-", &u], &body);
    assert_eq!(code, 416);
    assert_eq!(field(&head, "content-range"), Some("bytes */13"));
    // -C -: resume a cut download.
    std::fs::write(&body, &NOTES[..5]).unwrap();
    let (code, _) = curl_head(&["-C", "-", &u], &body);
    assert_eq!(code, 206);
    assert_eq!(std::fs::read(&body).unwrap(), NOTES);
    // If-Range that does not match: the whole file.
    let (code, _) = curl_head(&["-r", "0-0", "-H", "If-Range: \"old\"", &u], &body);
    assert_eq!(code, 200);
    assert_eq!(std::fs::read(&body).unwrap(), NOTES);
}

#[test]
fn curl_conditionals_give_304_and_repr_digest() {
    let t = serve("http-cond", |c| c);
    let out = TempDir::new("http-cond-out");
    let body = out.path().join("body");
    let u = url(&t, "/notes.txt");
    let (_, head) = curl_head(&[&u], &body);
    let etag = field(&head, "etag").unwrap().to_owned();
    let (code, head) = curl_head(&["-H", &format!("If-None-Match: {etag}"), &u], &body);
    assert_eq!(code, 304);
    assert_eq!(field(&head, "etag"), Some(etag.as_str()));
    let (code, _) = curl_head(&["-H", "If-None-Match: \"other\"", &u], &body);
    assert_eq!(code, 200);
    // -z: If-Modified-Since from the file's own date.
    let file = t.dir.root().join("notes.txt");
    let (code, _) = curl_head(&["-z", file.to_str().unwrap(), &u], &body);
    assert_eq!(code, 304);
    let (code, _) = curl_head(&["-z", "1 Jan 2000", &u], &body);
    assert_eq!(code, 200);
    // Repr-Digest: `sha256sum notes.txt | xxd -r -p | base64`.
    let (code, head) = curl_head(
        &["-H", "Want-Repr-Digest: sha-256=1", "-r", "0-1", &u],
        &body,
    );
    assert_eq!(code, 206);
    assert_eq!(
        field(&head, "repr-digest"),
        Some("sha-256=:hT/5N2Kgbdv3IsTr6d3WbY9j3a6pf1IcPswg2nyXYCA=:")
    );
}

#[test]
fn curl_uploads_only_when_allowed() {
    let out = TempDir::new("http-put-out");
    let local = out.path().join("up.bin");
    std::fs::write(&local, vec![7u8; 100_000]).unwrap();
    let local = local.to_str().unwrap();
    let t = serve("http-put-off", |c| c);
    let (code, _) = curl_head(&["-T", local, &url(&t, "/up.bin")], &out.path().join("b"));
    assert_eq!(code, 403);
    assert!(!t.dir.root().join("up.bin").exists());

    let t = serve("http-put", |c| c.allow_put(true).max_upload(200_000));
    let b = out.path().join("b");
    let u = url(&t, "/up.bin");
    let (code, _) = curl_head(&["-T", local, "-H", "Expect: 100-continue", &u], &b);
    assert_eq!(code, 201);
    assert_eq!(t.dir.read("up.bin"), vec![7u8; 100_000]);
    let (code, _) = curl_head(&["-T", local, &u], &b);
    assert_eq!(code, 204);
    assert!(t.dir.temp_files("").is_empty());
    let big = out.path().join("big.bin");
    std::fs::write(&big, vec![1u8; 300_000]).unwrap();
    let args = [
        "-T",
        big.to_str().unwrap(),
        "-H",
        "Expect: 100-continue",
        &u,
    ];
    let (code, _) = curl_head(&args, &b);
    assert_eq!(code, 413);
    assert_eq!(t.dir.read("up.bin"), vec![7u8; 100_000]);
    // The line protocol's words for the same upload.
    let mut c = t.connect();
    c.send(b"PUT up.bin 300000\n");
    let why = c.err_message("too-large");
    assert_eq!(
        why,
        "upload of 300000 bytes exceeds the size limit of 200000 bytes"
    );
    assert_eq!(
        std::fs::read_to_string(&b).unwrap(),
        format!("413 Content Too Large: {why}\n")
    );
    // The other methods: 405 naming what is allowed.
    let (code, head) = curl_head(&["-X", "DELETE", &u], &b);
    assert_eq!(code, 405);
    assert_eq!(field(&head, "allow"), Some("GET, HEAD, PUT"));
}

/// An upload while uploads are off says why, as `ERR forbidden` does.
/// (Before, the body was the status line alone: `403 Forbidden`.)
#[test]
fn curl_upload_without_allow_put_says_uploads_are_disabled() {
    let t = serve("http-why-put", |c| c);
    let out = TempDir::new("http-why-put-out");
    let local = out.path().join("a.txt");
    std::fs::write(&local, "hello\n").unwrap();
    let u = url(&t, "/b.txt");
    let body = curl(&["-T", local.to_str().unwrap(), &u]).stdout;
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "403 Forbidden: uploads are disabled\n"
    );
    let mut c = t.connect();
    c.send(b"PUT b.txt 6\n");
    assert_eq!(c.err_message("forbidden"), "uploads are disabled");
    assert!(!t.dir.root().join("b.txt").exists());
}

/// A symlink out of the root: the resolver's reason, as the line
/// protocol gives it, in a body whose length the head states exactly,
/// with no host path in it (and none after HEAD).
#[test]
fn a_path_out_of_the_root_says_why_and_no_host_path() {
    let t = serve("http-why-out", |c| c);
    let outside = TempDir::new("http-why-outside");
    let secret = outside.write("secret.txt", "secret\n");
    std::os::unix::fs::symlink(&secret, t.dir.root().join("out")).unwrap();
    let mut c = t.connect();
    c.send(b"GET out\n");
    let why = c.err_message("forbidden");
    assert_eq!(why, "path leads outside the served root");
    let reply = String::from_utf8(curl(&["-i", &url(&t, "/out")]).stdout).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
    assert_eq!(body, format!("403 Forbidden: {why}\n"));
    let length = body.len().to_string();
    assert_eq!(field(head, "content-length"), Some(length.as_str()));
    // HEAD: the same head, no body.
    let head_only = String::from_utf8(curl(&["-I", &url(&t, "/out")]).stdout).unwrap();
    assert_eq!(
        without_date(&head_only),
        without_date(&format!("{head}\r\n\r\n"))
    );
    for text in [&reply, &head_only] {
        for path in [outside.path(), &t.dir.root()] {
            assert!(!text.contains(path.to_str().unwrap()), "{text}");
        }
    }
}

/// A hidden name and a missing one: the same `ERR` line, and replies
/// that differ in no byte but the `Date`.
#[test]
fn hidden_and_missing_names_get_the_same_bytes() {
    let t = serve("http-why-hidden", |c| c);
    t.dir.write(".env", "SECRET");
    t.dir.write("sub/.env", "SECRET");
    let mut c = t.connect();
    c.send(b"GET .env\nGET env\nGET sub/.env\nGET sub/env\n");
    let lines: Vec<String> = (0..4).map(|_| c.line()).collect();
    assert_eq!(lines, ["ERR not-found no such file or directory"; 4]);
    for (hidden, missing) in [("/.env", "/env"), ("/sub/.env", "/sub/env")] {
        for how in ["-i", "-I"] {
            let reply = |path| String::from_utf8(curl(&[how, &url(&t, path)]).stdout).unwrap();
            let (hidden, missing) = (reply(hidden), reply(missing));
            assert_eq!(without_date(&hidden), without_date(&missing));
            let expected = if how == "-i" {
                "\r\n\r\n404 Not Found: no such file or directory\n"
            } else {
                "\r\nContent-Length: 41\r\n\r\n"
            };
            assert!(hidden.ends_with(expected), "{hidden}");
        }
    }
}

#[test]
fn wget_resumes_a_download_cut_by_killing_it() {
    let t = TestServer::start("http-wget", |c| c.min_rate(None));
    let contents: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    t.dir.write("big.bin", &contents);
    let out = TempDir::new("http-wget-out");
    let wget = tools::need("wget");
    let target = out.path().join("big.bin");
    let watch = DirWatch::new(out.path());
    let mut child = Command::new(&wget)
        .args(["-q", "--limit-rate=1m", "-O"])
        .arg(&target)
        .arg(url(&t, "/big.bin"))
        .spawn()
        .unwrap();
    let size = || std::fs::metadata(&target).map_or(0, |m| m.len());
    assert!(watch.wait_until(|| size() > 0), "wget wrote nothing");
    child.kill().unwrap();
    child.wait().unwrap();
    let cut = size();
    assert!(cut > 0 && cut < contents.len() as u64, "{cut}");
    let status = Command::new(&wget)
        .args(["-q", "-c", "-O"])
        .arg(&target)
        .arg(url(&t, "/big.bin"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(std::fs::read(&target).unwrap() == contents);
}

#[test]
fn the_access_log_has_a_line_per_http_request() {
    let dir = TempDir::new("http-access-log");
    let log = dir.path().join("access.log");
    let opened = AccessLog::file(&log).unwrap();
    let t = serve("http-access-log", |c| c.access_log(Some(opened)));
    // Pipelined on one connection, so one worker answers them in order:
    // each line is written before the next request is read, and the
    // refused head's (a space before a colon) before its reply.
    let replies = raw(
        &t,
        b"GET /notes.txt HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /notes.txt HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /no%20such HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /notes.txt HTTP/1.1\r\nHost : x\r\n\r\n",
    );
    let statuses: Vec<&str> = replies
        .lines()
        .filter(|line| line.starts_with("HTTP/1.1 "))
        .collect();
    assert_eq!(statuses.len(), 4, "{replies}");
    // The fields after the time and the client: user, verb, path,
    // result, bytes.
    let text = std::fs::read_to_string(&log).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|line| line.split(' ').skip(2).take(5).collect())
        .collect();
    let size = NOTES.len().to_string();
    assert_eq!(
        rows,
        [
            ["-", "GET", "/notes.txt", "200", size.as_str()],
            ["-", "HEAD", "/notes.txt", "200", "0"],
            ["-", "GET", "/no%20such", "404", "0"],
            ["-", "invalid", "-", "400", "0"],
        ],
        "{text}"
    );
}

#[test]
fn framing_refusals_get_exact_statuses_and_close() {
    let t = serve("http-framing", |c| c.allow_put(true));
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9 * 1024));
    let big_head = format!(
        "GET /notes.txt HTTP/1.1\r\n{}\r\n",
        "X-Pad: 0123456789012345678901234567890123456789\r\n".repeat(420)
    );
    let many = format!(
        "GET /notes.txt HTTP/1.1\r\n{}\r\n",
        "X-A: 1\r\n".repeat(101)
    );
    let cases: [(&[u8], &str); 10] = [
        (
            b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            b"GET /notes.txt HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            b"GET /notes.txt HTTP/1.1\r\nHost : x\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (b"GET /notes.txt HTTP/1.1\n\n", "HTTP/1.1 400 Bad Request"),
        (long_line.as_bytes(), "HTTP/1.1 414 URI Too Long"),
        (
            big_head.as_bytes(),
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            many.as_bytes(),
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "HTTP/1.1 411 Length Required",
        ),
        (
            b"GET /notes.txt HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
    ];
    for (request, status) in cases {
        let reply = raw(&t, request);
        assert_eq!(reply.lines().next(), Some(status), "{reply}");
        assert!(reply.contains("\r\nConnection: close\r\n"), "{reply}");
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    }
    // The body says why.
    let reply = raw(&t, b"PUT /a HTTP/1.1\r\n\r\n");
    assert!(
        reply.ends_with("\r\n\r\n411 Length Required: uploads need a Content-Length\n"),
        "{reply}"
    );
    // A request smuggled after a refused one is never executed.
    let smuggled = raw(
        &t,
        b"PUT /a HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n\
          PUT /smuggled HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert!(smuggled.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    assert!(!t.dir.root().join("smuggled").exists());
    assert!(!t.dir.root().join("a").exists());
    // 405 keeps the connection; so does a PUT that succeeded.
    let mut c = t.connect();
    c.send(b"OPTIONS /notes.txt HTTP/1.1\r\n\r\nPUT /b HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
    let all = String::from_utf8(c.read_until_closed()).unwrap();
    let statuses: Vec<&str> = all.lines().filter(|l| l.starts_with("HTTP/1.1 ")).collect();
    assert_eq!(
        statuses,
        ["HTTP/1.1 405 Method Not Allowed", "HTTP/1.1 201 Created"]
    );
    assert!(all.contains("\r\nAllow: GET, HEAD, PUT\r\n"));
    assert_eq!(t.dir.read("b"), b"hi");
    // A first line that is not HTTP stays on the line protocol.
    let mut c = t.connect();
    c.send(b"GET /notes.txt\n");
    assert_eq!(c.line(), "OK 13");
    t.assert_serves();
}

#[test]
fn directory_listing_redirects_and_escapes() {
    let t = serve("http-dir", |c| c);
    for name in ["<b>bold", "a&b", "q\"uote", "sp ace", "100%", ".hidden"] {
        t.dir.write(&format!("d/{name}"), name);
    }
    std::fs::write(
        t.dir
            .root()
            .join("d")
            .join(std::ffi::OsStr::from_bytes(b"raw\xFF")),
        "r",
    )
    .unwrap();
    let out = TempDir::new("http-dir-out");
    let body = out.path().join("body");
    let (code, head) = curl_head(&[&url(&t, "/d?x=1")], &body);
    assert_eq!(code, 301);
    assert_eq!(field(&head, "location"), Some("/d/"));
    let (code, head) = curl_head(&[&url(&t, "/d/")], &body);
    assert_eq!(code, 200);
    assert_eq!(
        field(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    let page = String::from_utf8(std::fs::read(&body).unwrap()).unwrap();
    for expected in [
        "<a href=\"./%3Cb%3Ebold\">&lt;b&gt;bold</a></td><td>7</td>",
        "<a href=\"./a%26b\">a&amp;b</a>",
        "<a href=\"./q%22uote\">q&quot;uote</a>",
        "<a href=\"./sp%20ace\">sp ace</a>",
        "<a href=\"./100%25\">100%</a>",
        "<a href=\"./raw%FF\">raw\u{FFFD}</a>",
        "<a href=\"../\">../</a>",
    ] {
        assert!(page.contains(expected), "{expected} not in {page}");
    }
    assert!(!page.contains("hidden"));
    // The links lead to those exact files.
    for (link, contents) in [
        ("%3Cb%3Ebold", "<b>bold"),
        ("100%25", "100%"),
        ("raw%FF", "r"),
    ] {
        let got = curl(&[&url(&t, &format!("/d/{link}"))]).stdout;
        assert_eq!(got, contents.as_bytes());
    }
}

#[test]
fn busy_gives_curl_503_and_nc_err_busy() {
    let t = serve("http-busy", |c| c.max_running(1).max_waiting(0));
    let mut running = t.connect();
    running.send(b"STAT /\n");
    assert!(running.line().starts_with("OK d "));
    let out = TempDir::new("http-busy-out");
    let (code, head) = curl_head(&[&url(&t, "/notes.txt")], &out.path().join("b"));
    assert_eq!(code, 503);
    assert_eq!(field(&head, "retry-after"), Some("1"));
    assert_eq!(field(&head, "connection"), Some("close"));
    // A line-protocol client that sends its request at once, and one
    // that sends nothing (as `nc` before its user types), get `ERR busy`.
    let mut eager = t.connect();
    eager.send(b"GET notes.txt\n");
    eager.expect_final_err("busy");
    t.connect().expect_final_err("busy");
    // An HTTP request line split across writes is still recognised.
    let mut split = t.connect();
    split.send(b"GET /notes");
    split.send(b".txt HTTP/1.1\r\nHost: x\r\n\r\n");
    let reply = String::from_utf8(split.read_until_closed()).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{reply}"
    );
    // Its slot is free once the server is idle, not when its client
    // sees the end of the stream.
    drop(running);
    assert!(t.server.wait_idle_timeout(LIMIT));
    t.assert_serves();
}

#[test]
fn metrics_count_http_requests_by_method_and_class() {
    let t = serve("http-metrics", |c| {
        c.metrics(Some("127.0.0.1:0".parse().unwrap()))
    });
    let mut c = t.connect();
    c.send(
        b"GET /notes.txt HTTP/1.1\r\n\r\nHEAD /nope HTTP/1.1\r\n\r\n\
          DELETE /notes.txt HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    c.read_until_closed();
    raw(&t, b"GET /notes.txt HTTP/1.1\r\nA : b\r\n\r\n");
    let text = super::metrics::scrape(&t);
    let n = |name: &str| super::metrics::sample(&text, name);
    for (method, class) in [
        ("GET", "2xx"),
        ("HEAD", "4xx"),
        ("other", "4xx"),
        ("invalid", "4xx"),
    ] {
        let name = format!("filesrv_http_requests_total{{method=\"{method}\",class=\"{class}\"}}");
        assert_eq!(n(&name), 1.0, "{name}");
    }
    assert_eq!(n("filesrv_bytes_sent_total"), NOTES.len() as f64);
}

#[test]
fn curl_haproxy_protocol_header_comes_before_http() {
    let t = serve("http-proxy", |c| {
        c.proxy_from(["127.0.0.0/8".parse().unwrap()])
    });
    let u = url(&t, "/notes.txt");
    let out = curl(&["--haproxy-protocol", &u, &u]);
    assert_eq!(out.stdout, [NOTES, NOTES].concat());
    // From a trusted proxy, a connection without the header is refused.
    let refused = Command::new(tools::need("curl"))
        .args(["-sS", "--max-time", "20", &u])
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

/// Runs headless Chromium on `url` with `args`, bounded in time.
fn chromium(profile: &Path, args: &[&str], url: &str) -> Output {
    let output = Command::new("timeout")
        .arg("60")
        .arg(tools::need("chromium"))
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "chromium: {output:?}");
    output
}

#[test]
fn chromium_shows_a_listing_whose_links_lead_to_the_exact_files() {
    let t = serve("http-chromium", |c| c);
    let script = "<img src=x onerror=\"document.body.setAttribute(`data-pwned`,1)\">";
    let names: [&[u8]; 7] = [
        b"<b>bold",
        b"a&b",
        b"q\"uote",
        b"sp ace",
        b"100%",
        b"raw\xFF",
        script.as_bytes(),
    ];
    let dir = t.dir.root().join("d");
    std::fs::create_dir(&dir).unwrap();
    for name in names {
        std::fs::write(dir.join(std::ffi::OsStr::from_bytes(name)), name).unwrap();
    }
    let profile = TempDir::new("http-chromium-profile");
    let page = url(&t, "/d/");
    let dom = chromium(profile.path(), &["--dump-dom"], &page).stdout;
    let dom = String::from_utf8(dom).unwrap();
    // No script from a file name ran.
    assert!(
        dom.contains("<body>") && !dom.contains("data-pwned=\""),
        "{dom}"
    );
    // Every entry's link, followed, gives back exactly the file named.
    let links: Vec<&str> = dom
        .split("<a href=\"./")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert_eq!(links.len(), names.len(), "{dom}");
    let mut fetched: Vec<Vec<u8>> = links
        .iter()
        .map(|link| curl(&[&url(&t, &format!("/d/{link}"))]).stdout)
        .collect();
    fetched.sort();
    let mut expected: Vec<Vec<u8>> = names.iter().map(|n| n.to_vec()).collect();
    expected.sort();
    assert_eq!(fetched, expected);
    // A picture of the page, kept for people to look at.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("http-listing.png");
    let arg = format!("--screenshot={}", shot.display());
    chromium(profile.path(), &[&arg, "--window-size=800,400"], &page);
    assert!(std::fs::metadata(&shot).unwrap().len() > 0);
}

#[test]
fn timeouts_hidden_puts_and_shutdown() {
    let t = serve("http-timeouts", |c| {
        c.idle_timeout(Some(crate::support::SHORT)).allow_put(true)
    });
    // Part of a head, then nothing: 408 and close.
    let reply = raw(&t, b"GET /notes.txt HTTP/1.1\r\n");
    assert!(
        reply.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{reply}"
    );
    // An idle keep-alive connection is closed without a reply.
    let mut c = t.connect();
    c.send(b"GET /notes.txt HTTP/1.1\r\n\r\n");
    let reply = String::from_utf8(c.read_until_closed()).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\nhello, world\n"));
    // Hidden names may not be written; a missing parent is 404; both close.
    let hidden = raw(&t, b"PUT /.env HTTP/1.1\r\nContent-Length: 1\r\n\r\nx");
    assert!(hidden.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{hidden}");
    let missing = raw(&t, b"PUT /no/x HTTP/1.1\r\nContent-Length: 1\r\n\r\nx");
    assert!(
        missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{missing}"
    );
    assert!(!t.dir.root().join(".env").exists());
    // HEAD of a directory: the listing's head, no body.
    let head = raw(&t, b"HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    // Shutdown: an idle keep-alive connection is closed without a reply.
    let t = serve("http-shutdown", |c| c);
    let mut c = t.connect();
    c.send(b"GET /notes.txt HTTP/1.1\r\n\r\n");
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        head.push_str(&c.line());
        head.push('\n');
    }
    assert_eq!(c.body(NOTES.len()), NOTES);
    t.server.shutdown();
    c.expect_closed();
}

/// REDbot's notes on `url`, as (note id, level) pairs read from its HAR
/// output (levels GOOD, INFO, WARN, BAD), bounded in time by `timeout`.
fn redbot_notes(redbot: &Path, url: &str) -> Vec<(String, String)> {
    let output = Command::new("timeout")
        .arg("60")
        .arg(redbot)
        .args(["-o", "har", url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "redbot {url} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value = |line: &str, key: &str| {
        let rest = line.trim().strip_prefix(&format!("\"{key}\": \""))?;
        Some(rest.split('"').next()?.to_owned())
    };
    let mut notes = Vec::new();
    let mut id = None;
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        if let Some(note) = value(line, "note_id") {
            id = Some(note);
        } else if let Some(level) = value(line, "level") {
            notes.push((id.take().expect("a level after its note_id"), level));
        }
    }
    notes
}

#[test]
fn redbot_finds_no_error_in_a_file_a_range_and_a_listing() {
    let Some(redbot) = tools::require("redbot") else {
        return;
    };
    let t = serve("http-redbot", |c| c);
    let contents: Vec<u8> = (0..64u32 << 10).map(|i| (i * 7 % 251) as u8).collect();
    t.dir.write("data/file.bin", &contents);
    t.dir.write("data/notes & <more>.txt", NOTES);
    // REDbot checks a file's ranges and validators itself, with requests
    // of its own (Range, If-None-Match, If-Modified-Since).
    let file = ["CL_CORRECT", "RANGE_CORRECT", "INM_304", "IMS_304"];
    for (path, expected) in [
        ("/data/file.bin", &file[..]),
        ("/data/", &["CL_CORRECT"][..]),
    ] {
        let notes = redbot_notes(&redbot, &url(&t, path));
        let bad: Vec<_> = notes.iter().filter(|(_, level)| level == "BAD").collect();
        assert!(bad.is_empty(), "{path}: REDbot errors {bad:?} in {notes:?}");
        // The one warning allowed: without Cache-Control, caches choose
        // their own freshness lifetime (nginx's defaults do the same).
        let warned: Vec<_> = notes
            .iter()
            .filter(|(id, level)| level == "WARN" && id != "FRESHNESS_HEURISTIC")
            .collect();
        assert!(warned.is_empty(), "{path}: REDbot warns {warned:?}");
        for id in expected {
            assert!(
                notes.iter().any(|(n, level)| n == id && level == "GOOD"),
                "{path}: no {id} among {notes:?}"
            );
        }
    }
}
