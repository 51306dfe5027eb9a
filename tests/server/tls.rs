//! TLS on the port, driven by clients no one here wrote (`openssl
//! s_client`, `socat`) and by `fsc`: certificates from `openssl req` and
//! from `--tls-self-signed` (its pin checked against openssl's), start-up
//! errors, refusals inside TLS, silent handshakes cut as idle, and `fsc`
//! failing verification before any request.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};

use crate::server::metrics::sample;
use crate::support::{ChildServer, LIMIT, NOTES, TempDir, tools};

/// A served root with `notes.txt`.
fn root() -> TempDir {
    let dir = TempDir::new("tls");
    dir.write("notes.txt", NOTES);
    dir
}

/// `openssl req`: a self-signed P-256 certificate and key in `dir`, for
/// `names` (`DNS:...` or `IP:...`), as `<stem>.crt` and `<stem>.key`.
pub(crate) fn openssl_cert(dir: &Path, stem: &str, names: &str) {
    let status = Command::new(tools::need("openssl"))
        .current_dir(dir)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=filesrv test"])
        .args(["-addext", &format!("subjectAltName={names}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args([
            "-keyout",
            &format!("{stem}.key"),
            "-out",
            &format!("{stem}.crt"),
        ])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
}

/// `filesrv` with the certificate `<stem>.crt` and key `<stem>.key` in `dir`.
fn serve_with_cert(dir: &TempDir, stem: &str, extra: &[&str]) -> ChildServer {
    let mut command = ChildServer::command(&dir.root(), 4);
    command
        .arg("--tls-cert")
        .arg(dir.path().join(format!("{stem}.crt")))
        .arg("--tls-key")
        .arg(dir.path().join(format!("{stem}.key")))
        .args(extra);
    ChildServer::spawn(command)
}

/// `filesrv --tls-self-signed` and the pin it printed.
pub(crate) fn serve_self_signed(
    root: &Path,
    max_running: usize,
    extra: &[&str],
) -> (ChildServer, String) {
    let mut command = ChildServer::command(root, max_running);
    command.arg("--tls-self-signed").args(extra);
    let server = ChildServer::spawn(command);
    let line = server.wait_log("certificate pin").unwrap();
    let pin = line
        .strip_prefix("filesrv: certificate pin ")
        .unwrap_or_else(|| panic!("not the pin line: {line:?}"))
        .to_owned();
    (server, pin)
}

/// `openssl s_client -quiet` to `addr` with `input`: what the server
/// sent. Killed after [`LIMIT`], so a server that never answers fails the
/// test instead of hanging it.
pub(crate) fn s_client(addr: SocketAddr, input: &[u8]) -> Output {
    let mut command = Command::new("timeout");
    command
        .arg(LIMIT.as_secs().to_string())
        .arg(tools::need("openssl"))
        .args(["s_client", "-quiet", "-connect", &addr.to_string()]);
    tools::run_with_input(&mut command, input)
}

/// Where the server (started with `--metrics 127.0.0.1:0`) serves its
/// metrics, from its log; read before any later log line is waited for.
pub(crate) fn metrics_addr(server: &ChildServer) -> String {
    let line = server.wait_log("metrics on http://").unwrap();
    let addr = line.rsplit("http://").next().unwrap();
    addr.trim_end_matches("/metrics").to_owned()
}

/// The text of the metrics at `addr`.
pub(crate) fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

const SESSION: &[u8] = b"GET notes.txt\nQUIT\n";
const SESSION_REPLY: &str = "OK 13\nhello, world\nOK bye\n";

#[test]
fn openssl_and_socat_speak_the_line_protocol_over_tls_with_an_openssl_req_certificate() {
    let dir = root();
    openssl_cert(dir.path(), "server", "DNS:localhost,IP:127.0.0.1");
    let server = serve_with_cert(&dir, "server", &[]);
    let out = s_client(server.addr(), SESSION);
    assert_eq!(String::from_utf8_lossy(&out.stdout), SESSION_REPLY);
    // socat verifies the certificate against it as a CA.
    let mut socat = Command::new("timeout");
    socat
        .arg(LIMIT.as_secs().to_string())
        .arg(tools::need("socat"));
    socat.arg("-").arg(format!(
        "OPENSSL:127.0.0.1:{},cafile={},verify=1",
        server.addr().port(),
        dir.path().join("server.crt").display()
    ));
    let out = tools::run_with_input(&mut socat, SESSION);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        SESSION_REPLY,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_self_signed_pin_is_the_one_openssl_computes() {
    let dir = root();
    let (server, pin) = serve_self_signed(&dir.root(), 2, &[]);
    let pipeline = format!(
        "openssl s_client -connect {} </dev/null 2>/dev/null | openssl x509 -pubkey -noout \
         | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        server.addr()
    );
    let out = Command::new("sh").args(["-c", &pipeline]).output().unwrap();
    let expected = format!("sha256//{}", String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(pin, expected);
    let out = s_client(server.addr(), SESSION);
    assert_eq!(String::from_utf8_lossy(&out.stdout), SESSION_REPLY);
}

/// `filesrv` with `args` must not start: a non-zero exit and a message.
#[test]
fn no_session_is_resumed_so_every_handshake_is_full() {
    let dir = root();
    openssl_cert(dir.path(), "server", "DNS:localhost,IP:127.0.0.1");
    let server = serve_with_cert(&dir, "server", &[]);
    let session = dir.path().join("session.pem");
    // Not -quiet, which leaves out the line that says New or Reused.
    let connect = |version: &str, how: &str| {
        let mut command = Command::new("timeout");
        command
            .arg(LIMIT.as_secs().to_string())
            .arg(tools::need("openssl"))
            .args(["s_client", "-ign_eof", version, "-connect"])
            .arg(server.addr().to_string())
            .arg(how)
            .arg(&session);
        let out = tools::run_with_input(&mut command, SESSION);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains(SESSION_REPLY), "{text}");
        text
    };
    for (version, full) in [("-tls1_3", "\nNew, TLSv1.3"), ("-tls1_2", "\nNew, TLSv1.2")] {
        let _ = std::fs::remove_file(&session);
        let first = connect(version, "-sess_out");
        assert!(first.contains(full), "{first}");
        // TLS 1.3 offers resumption by tickets after the handshake, which
        // s_client reports; TLS 1.2 by a session id, offered again below.
        assert!(!first.contains("Session Ticket arrived"), "{first}");
        if session.exists() {
            let again = connect(version, "-sess_in");
            assert!(again.contains(full), "{again}");
        }
    }
}

fn refuses_to_start(dir: &TempDir, args: &[&str], says: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_filesrv"))
        .args(["--bind", "127.0.0.1", "0", "1", "--root"])
        .arg(dir.root())
        .current_dir(dir.path())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} started");
    assert!(stderr.contains(says), "{args:?}: {stderr}");
}

#[test]
fn a_bad_missing_or_mismatched_certificate_or_key_stops_the_start() {
    let dir = root();
    openssl_cert(dir.path(), "one", "DNS:localhost");
    openssl_cert(dir.path(), "two", "DNS:localhost");
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
    refuses_to_start(&dir, &["--tls-cert", "one.crt"], "give both or neither");
    refuses_to_start(&dir, &["--tls-key", "one.key"], "give both or neither");
    refuses_to_start(
        &dir,
        &["--tls-cert", "one.crt", "--tls-key", "two.key"],
        "unusable TLS certificate and key",
    );
    refuses_to_start(
        &dir,
        &["--tls-cert", "garbage.pem", "--tls-key", "one.key"],
        "cannot load the TLS certificate",
    );
    refuses_to_start(
        &dir,
        &["--tls-cert", "one.crt", "--tls-key", "missing.key"],
        "cannot load the TLS key",
    );
    refuses_to_start(
        &dir,
        &[
            "--tls-cert",
            "one.crt",
            "--tls-key",
            "one.key",
            "--tls-self-signed",
        ],
        "cannot be combined",
    );
}

#[test]
fn a_refused_connection_gets_its_err_line_inside_tls() {
    let dir = root();
    let (server, _pin) = serve_self_signed(&dir.root(), 1, &["--max-waiting", "0"]);
    // Holds the only slot: a TCP connection that says nothing.
    let _holder = TcpStream::connect(server.addr()).unwrap();
    server.wait_log("connected").unwrap();
    let out = s_client(server.addr(), b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ERR busy "), "{text:?}");
}

/// Refused inside TLS, an HTTPS client gets `503` as in plaintext: curl
/// (ALPN `http/1.1`) at once, and a request line without ALPN from its
/// first bytes; a line-protocol client gets its `ERR busy` line.
#[test]
fn a_refused_https_client_gets_503_inside_tls() {
    let dir = root();
    let (server, _pin) = serve_self_signed(&dir.root(), 1, &["--max-waiting", "0"]);
    let _holder = TcpStream::connect(server.addr()).unwrap();
    server.wait_log("connected").unwrap();
    let out = Command::new(tools::need("curl"))
        .args(["-sk", "-D", "-", "-o", "/dev/null", "--max-time", "20"])
        .arg(format!(
            "https://localhost:{}/notes.txt",
            server.addr().port()
        ))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(head.starts_with("HTTP/1.1 503 "), "{out:?}");
    assert!(head.contains("\r\nRetry-After: 1\r\n"), "{head}");
    let out = s_client(server.addr(), b"GET /notes.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text:?}");
    let out = s_client(server.addr(), b"STAT notes.txt\n");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ERR busy "), "{text:?}");
}

/// Bodies through TLS leave at the flush (a reply's head with the start
/// of its body, in one `sendmsg`): every size arrives whole, over HTTPS
/// to curl and over the line protocol to `openssl s_client`.
#[test]
fn bodies_of_every_size_arrive_whole_through_tls() {
    let dir = root();
    let sizes = [0, 1, 4096, 65_536, 300_001];
    for size in sizes {
        dir.write(&format!("{size}.bin"), body(size));
    }
    let (server, _pin) = serve_self_signed(&dir.root(), 2, &[]);
    for size in sizes {
        let out = Command::new(tools::need("curl"))
            .args(["-sk", "--max-time", "20"])
            .arg(format!(
                "https://localhost:{}/{size}.bin",
                server.addr().port()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{size}: {out:?}");
        assert!(
            out.stdout == body(size),
            "{size}: {} bytes",
            out.stdout.len()
        );
        let out = s_client(server.addr(), format!("GET {size}.bin\nQUIT\n").as_bytes());
        let mut expected = format!("OK {size}\n").into_bytes();
        expected.extend(body(size));
        expected.extend(b"OK bye\n");
        assert!(out.stdout == expected, "{size}: {} bytes", out.stdout.len());
    }
}

/// `len` bytes that differ from one offset to the next.
fn body(len: usize) -> Vec<u8> {
    (0..251u8).cycle().take(len).collect()
}

#[test]
fn silent_handshakes_are_cut_as_idle_while_a_tls_client_waits() {
    const SILENT: usize = 500;
    let dir = root();
    let (server, _pin) = serve_self_signed(
        &dir.root(),
        16,
        &[
            "--busy-idle-timeout",
            "0.1",
            "--max-waiting",
            "2000",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let metrics = metrics_addr(&server);
    let silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| {
            let stream = TcpStream::connect(server.addr()).unwrap();
            stream.set_read_timeout(Some(LIMIT)).unwrap();
            stream
        })
        .collect();
    // A real TLS client behind all of them in the queue is served...
    let out = s_client(server.addr(), SESSION);
    assert_eq!(String::from_utf8_lossy(&out.stdout), SESSION_REPLY);
    // ...after each silent one was cut: end of stream, no TLS, no line.
    for mut stream in silent {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
    let text = scrape(&metrics);
    assert!(sample(&text, "filesrv_tls_handshakes_failed_total") >= SILENT as f64);
}

#[test]
fn fsc_fails_a_wrong_pin_ca_or_name_before_any_request_and_downloads_with_the_right_pin() {
    let dir = root();
    // A certificate for localhost only: 127.0.0.1 is the wrong name.
    openssl_cert(dir.path(), "server", "DNS:localhost");
    openssl_cert(dir.path(), "other", "DNS:localhost");
    let server = serve_with_cert(&dir, "server", &["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    let pin = {
        let cert = std::fs::read(dir.path().join("server.crt")).unwrap();
        let pipeline = "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der \
                        | openssl dgst -sha256 -binary | base64";
        let mut sh = Command::new("sh");
        let out = tools::run_with_input(sh.args(["-c", pipeline]), &cert);
        format!("sha256//{}", String::from_utf8_lossy(&out.stdout).trim())
    };
    let port = server.addr().port();
    let fsc = |args: &[&str], host: &str| {
        Command::new(env!("CARGO_BIN_EXE_fsc"))
            .current_dir(dir.path())
            .args(args)
            .arg(format!("{host}:{port}"))
            .args(["get", "notes.txt", "got.txt"])
            .output()
            .unwrap()
    };
    let wrong_pin = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    for (args, host) in [
        (&["--pin", wrong_pin][..], "localhost"),
        (&["--ca", "other.crt"], "localhost"),
        (&["--ca", "server.crt"], "127.0.0.1"),
        (&["--tls"], "localhost"),
    ] {
        let out = fsc(args, host);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("TLS handshake"), "{args:?}: {stderr}");
        assert!(server.wait_log("closed after 0 requests").is_some());
    }
    // The server saw no request at all from them.
    let text = scrape(&metrics);
    assert!(!text.contains("filesrv_requests_total{"), "{text}");
    assert_eq!(sample(&text, "filesrv_tls_handshakes_failed_total"), 4.0);
    let out = fsc(&["--pin", &pin], "127.0.0.1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(dir.path().join("got.txt")).unwrap(), NOTES);
    let out = fsc(&["--ca", "server.crt"], "localhost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_renewed_certificate_is_used_without_a_restart() {
    let dir = root();
    openssl_cert(dir.path(), "server", "DNS:localhost");
    openssl_cert(dir.path(), "renewed", "DNS:localhost");
    let server = serve_with_cert(&dir, "server", &[]);
    let fsc_ls = |ca: &str| {
        Command::new(env!("CARGO_BIN_EXE_fsc"))
            .current_dir(dir.path())
            .args(["--ca", ca])
            .arg(format!("localhost:{}", server.addr().port()))
            .arg("ls")
            .output()
            .unwrap()
    };
    assert!(fsc_ls("renewed.crt").status.code() == Some(1));
    // Replaced the way renewals do: the key, then the certificate, each
    // by a rename.
    for (from, to) in [("renewed.key", "server.key"), ("renewed.crt", "server.crt")] {
        std::fs::copy(dir.path().join(from), dir.path().join("tmp")).unwrap();
        std::fs::rename(dir.path().join("tmp"), dir.path().join(to)).unwrap();
    }
    server.wait_log("server.crt reloaded").unwrap();
    let out = fsc_ls("renewed.crt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_library_client_connects_by_pin_and_ca_and_logs_in() {
    use filesrv::protocol::wire::ErrorCode;
    use filesrv::protocol::{Client, ClientError, ClientTls, Server, ServerConfig};
    let dir = root();
    let users = dir.path().join("users");
    let hash = filesrv::protocol::hash_password(b"pw").unwrap();
    std::fs::write(&users, format!("ann:{hash}\n")).unwrap();
    let config = ServerConfig::new(dir.root())
        .tls_self_signed(true)
        .users(Some(users));
    let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).unwrap();
    let pin = server.tls_pin().unwrap().to_owned();
    let addr = format!("localhost:{}", server.local_addr().port());
    let mut client =
        Client::connect_tls(&addr, Some(LIMIT), &ClientTls::pin(&pin).unwrap()).unwrap();
    let refused = client.stat("notes.txt").unwrap_err();
    assert!(
        matches!(
            &refused,
            ClientError::Server {
                code: ErrorCode::Denied,
                ..
            }
        ),
        "{refused:?}"
    );
    client.login("ann", b"pw").unwrap();
    let mut body = Vec::new();
    client.get_to("notes.txt", 0, &mut body).unwrap();
    assert_eq!(body, NOTES);
    client.quit().unwrap();
    let other = ClientTls::pin("sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
    let failed = Client::connect_tls(&addr, Some(LIMIT), &other).unwrap_err();
    assert!(matches!(failed, ClientError::Tls { .. }), "{failed:?}");
    assert!(ClientTls::pin("sha256//short").is_err());
    server.shutdown();
}

/// HAProxy in front, sending a PROXY v2 header and then speaking TLS to
/// the server (its `ssl` server option): the header names each client
/// inside TLS, and the per-source cap applies to it.
#[test]
fn haproxy_sends_proxy_headers_then_tls_and_each_client_keeps_its_cap() {
    use std::net::Ipv4Addr;

    use crate::support::{Conn, HaProxy, TestServer, connect_from};

    let t = TestServer::start("tls-haproxy", |c| {
        c.tls_self_signed(true)
            .proxy_from(["127.0.0.1/32".parse().unwrap()])
            .max_per_source(1)
    });
    t.dir.write("notes.txt", NOTES);
    let haproxy = HaProxy::forwarding(
        "haproxy-tls",
        &format!("{} send-proxy-v2 ssl verify none", t.addr()),
    );
    let through = |from| Conn::from_stream(connect_from(from, haproxy.addr()).unwrap());
    let two = Ipv4Addr::new(127, 0, 0, 2);
    let mut first = through(two);
    first.assert_get("notes.txt", NOTES);
    let mut other = through(Ipv4Addr::new(127, 0, 0, 3));
    other.assert_get("notes.txt", NOTES);
    // The first client's cap holds: refused inside TLS, relayed in clear.
    let mut again = through(two);
    again.expect_err("busy");
}

#[test]
fn a_client_sending_an_ip_address_as_sni_leaves_no_warning_in_the_log() {
    // wrk and other OpenSSL clients name the server by the address they
    // were given; rustls ignores such a name and said so at WARN, in the
    // `-v` log, once per connection.
    let root = root();
    let (server, _) = serve_self_signed(&root.root(), 2, &[]);
    let addr = server.addr().to_string();
    let mut command = Command::new("timeout");
    command
        .arg(LIMIT.as_secs().to_string())
        .arg(tools::need("openssl"))
        .args([
            "s_client",
            "-quiet",
            "-servername",
            "127.0.0.1",
            "-connect",
            &addr,
        ]);
    let out = tools::run_with_input(&mut command, b"STAT notes.txt\nQUIT\n");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("OK "), "{said:?}");
    let log = server.log_until("closed after");
    assert!(
        !log.iter().any(|line| line.contains("rustls")),
        "the log: {log:#?}"
    );
}
