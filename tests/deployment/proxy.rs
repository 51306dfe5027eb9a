//! PROXY protocol v1 and v2 from trusted proxies: the header's source is
//! the client for per-source caps; untrusted peers' headers are protocol
//! data; a trusted peer without a header is refused without reaching the
//! manager; a trickled header is cut at its deadline without stalling
//! anyone else. Senders: our own encoder, `curl --haproxy-protocol` (v1)
//! and a real HAProxy (`send-proxy-v2`).

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use filesrv::protocol::ServerConfig;
use proxy_header::{ProxiedAddress, ProxyHeader};

use crate::support::{Conn, HaProxy, LIMIT, TestServer, connect_from, tools};

const PROXY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// A server that trusts 127.0.0.1 as a proxy, with a cap of one
/// connection per source.
fn serve(label: &str, configure: impl FnOnce(ServerConfig) -> ServerConfig) -> TestServer {
    TestServer::start(label, |c| {
        configure(
            c.max_running(4)
                .max_per_source(1)
                .proxy_from(["127.0.0.1/32".parse().unwrap()]),
        )
    })
}

#[derive(Clone, Copy, Debug)]
enum Version {
    V1,
    V2,
}

/// The header a proxy sends for a client at `source`.
fn header(version: Version, source: &str) -> Vec<u8> {
    let source: std::net::SocketAddr = source.parse().unwrap();
    let destination = if source.is_ipv6() {
        "[2001:db8::200]:9000"
    } else {
        "192.0.2.200:9000"
    };
    let address = ProxiedAddress::stream(source, destination.parse().unwrap());
    let mut bytes = Vec::new();
    let header = ProxyHeader::with_address(address);
    match version {
        Version::V1 => header.encode_v1(&mut bytes).unwrap(),
        Version::V2 => header.encode_v2(&mut bytes).unwrap(),
    }
    bytes
}

/// A connection from `from` that begins with `prefix`.
/// The index of the first of `conns` with something to read, within
/// [`LIMIT`].
fn first_readable(conns: &[Conn]) -> usize {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds: Vec<PollFd<'_>> = conns
        .iter()
        .map(|c| PollFd::new(c.stream(), PollFlags::IN))
        .collect();
    let limit = Timespec {
        tv_sec: i64::try_from(LIMIT.as_secs()).unwrap(),
        tv_nsec: 0,
    };
    let ready = poll(&mut fds, Some(&limit)).unwrap();
    assert!(ready > 0, "none was refused");
    fds.iter().position(|fd| !fd.revents().is_empty()).unwrap()
}

/// Whether `conn` has something to read now.
fn is_readable(conn: &Conn) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(conn.stream(), PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&now)).unwrap() > 0
}

fn connect(server: &TestServer, from: Ipv4Addr, prefix: &[u8]) -> Conn {
    let mut conn = Conn::from_stream(connect_from(from, server.addr()).unwrap());
    conn.send(prefix);
    conn
}

/// Asserts that `conn` is served: a `STAT /` is answered (and it now
/// holds a running place).
fn assert_served(conn: &mut Conn) {
    conn.send(b"STAT /\n");
    let line = conn.line();
    assert!(line.starts_with("OK d "), "{line}");
}

#[test]
fn ipv6_clients_are_counted_per_64() {
    for version in [Version::V1, Version::V2] {
        let t = serve("proxy-v6", |c| c);
        let mut first = connect(&t, PROXY, &header(version, "[2001:db8::1]:1000"));
        assert_served(&mut first);
        // Another address of the same /64, which one host holds whole.
        let mut same = connect(&t, PROXY, &header(version, "[2001:db8::2]:1000"));
        same.expect_final_err("busy");
        // Another /64 is another source.
        let mut other = connect(&t, PROXY, &header(version, "[2001:db8:0:1::1]:1000"));
        assert_served(&mut other);
        drop((first, other));
    }
}

fn headers_name_the_client_for_per_source_caps(version: Version) {
    let t = serve("proxy-caps", |c| c);
    let mut first = connect(&t, PROXY, &header(version, "192.0.2.1:1000"));
    assert_served(&mut first);
    // Same proxy, another client: its own cap, though the peer is the same.
    let mut other = connect(&t, PROXY, &header(version, "192.0.2.2:1000"));
    assert_served(&mut other);
    // The first client again: over its cap of one.
    let mut again = connect(&t, PROXY, &header(version, "192.0.2.1:1001"));
    again.expect_final_err("busy");
    // A third client is served as well (the first two still hold theirs).
    t.assert_serves_through(&header(version, "192.0.2.3:1000"));
    drop((first, other));
}

#[test]
fn v1_headers_name_the_client_for_per_source_caps() {
    headers_name_the_client_for_per_source_caps(Version::V1);
}

#[test]
fn v2_headers_name_the_client_for_per_source_caps() {
    headers_name_the_client_for_per_source_caps(Version::V2);
}

#[test]
fn a_v2_local_header_is_served_as_the_proxy_itself() {
    // HAProxy's health checks on a send-proxy-v2 server send this.
    let t = serve("proxy-local", |c| c.max_per_source(0));
    let mut local = Vec::new();
    ProxyHeader::with_local().encode_v2(&mut local).unwrap();
    let mut check = connect(&t, PROXY, &local);
    assert_served(&mut check);
    // Closing right after the header, as a health check does, is quiet.
    let mut quiet = connect(&t, PROXY, &local);
    quiet.half_close();
    assert_eq!(quiet.try_line(), None);
}

#[test]
fn an_untrusted_peers_header_is_protocol_data() {
    let t = serve("proxy-untrusted", |c| c);
    let untrusted = Ipv4Addr::new(127, 0, 0, 2);
    let mut conn = connect(&t, untrusted, &header(Version::V1, "192.0.2.1:1000"));
    // The header line is just a bad request; the session goes on.
    conn.expect_err("bad-request");
    assert_served(&mut conn);
    // The cap counts the real peer, whatever a header claims.
    connect(&t, untrusted, &header(Version::V1, "192.0.2.9:1000")).expect_final_err("busy");
}

#[test]
fn a_trusted_peer_without_a_header_is_refused_before_the_queue() {
    // A deadline longer than any wait here: every refusal below is for
    // what was sent, not for what was not.
    let t = serve("proxy-missing", |c| c.proxy_timeout(LIMIT * 2));
    let mut conn = connect(&t, PROXY, b"STAT /\n");
    let message = conn.err_message("bad-request");
    assert!(message.contains("PROXY"), "{message}");
    conn.expect_closed();
    // A v2 signature with a broken version byte is malformed as well.
    let mut broken = header(Version::V2, "192.0.2.1:1000");
    broken[12] = 0x10;
    connect(&t, PROXY, &broken).expect_last_err("bad-request");
    // A v1 line that runs past the longest valid header is malformed at
    // once, long before the header deadline.
    let mut endless = b"PROXY TCP4 ".to_vec();
    endless.extend([b'1'; 150]);
    connect(&t, PROXY, &endless).expect_last_err("bad-request");
    // None took a waiting place: the manager never saw them.
    assert_eq!(t.server.stats().submitted, 0);
    t.assert_serves_through(&header(Version::V2, "192.0.2.1:1000"));
}

#[test]
fn what_can_never_become_a_header_is_refused_at_once() {
    // A deadline longer than any wait here: each refusal is for what was
    // sent.
    let t = serve("proxy-strict", |c| c.proxy_timeout(LIMIT * 2));
    let mut unknown = b"PROXY UNKNOWN ".to_vec();
    unknown.resize(200, b'x');
    unknown.extend_from_slice(b"\r\n");
    let never: [&[u8]; 3] = [
        // Not the signature: `PROXY` must be followed by a space.
        b"PROXYX TCP4 192.0.2.1 192.0.2.2 1000 9000\r\n",
        // Longer than the 107 bytes the specification allows.
        &unknown,
        // LF without CR.
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 9000\n",
    ];
    for bytes in never {
        let mut conn = connect(&t, PROXY, bytes);
        let message = conn.err_message("bad-request");
        assert!(message.contains("PROXY"), "{message}");
    }
    assert_eq!(t.server.stats().submitted, 0);
}

#[test]
fn one_trusted_source_cannot_fill_the_handshake() {
    let t = TestServer::start("proxy-per-source", |c| {
        c.max_running(4)
            .proxy_from(["127.0.0.0/8".parse().unwrap()])
            .proxy_timeout(LIMIT * 2)
    });
    // One trusted host holds its share of handshakes, silent, and past
    // it one is refused at once: whichever (several threads accept, so
    // the last to connect is not always the last to reach the
    // handshake), while the others stay silent.
    let host = Ipv4Addr::new(127, 0, 0, 3);
    let mut silent: Vec<Conn> = (0..129).map(|_| connect(&t, host, b"")).collect();
    let refused = first_readable(&silent);
    silent[refused].expect_final_err("busy");
    silent.remove(refused);
    assert_eq!(
        silent.iter().filter(|c| is_readable(c)).count(),
        0,
        "only one is refused"
    );
    // ...while the other proxy's clients are served.
    let mut other = connect(&t, PROXY, &header(Version::V2, "192.0.2.1:1000"));
    assert_served(&mut other);
    drop(silent);
}

#[test]
fn a_trickled_header_is_cut_at_its_deadline_and_stalls_nobody() {
    // Long enough that a prompt client is served before it on any machine.
    let deadline = Duration::from_secs(5);
    let t = serve("proxy-trickle", |c| c.proxy_timeout(deadline));
    let whole = header(Version::V1, "192.0.2.1:1000");
    let mut slow = connect(&t, PROXY, &whole[..1]);
    let began = Instant::now();
    // One byte every 500 ms, far slower than the deadline allows (20 s or
    // more for the header); the trickle ends when the server cuts the
    // connection or the test stops it: it says whether it ended so, before
    // the whole header was sent.
    let writer = slow.stream().try_clone().unwrap();
    let (done, stop) = crossbeam_channel::bounded::<()>(0);
    let trickler = std::thread::spawn(move || {
        for byte in &whole[1..] {
            if stop.recv_timeout(Duration::from_millis(500))
                != Err(crossbeam_channel::RecvTimeoutError::Timeout)
                || (&writer).write_all(&[*byte]).is_err()
            {
                return true;
            }
        }
        false
    });
    // Meanwhile a prompt client is accepted and served at once: before
    // the trickled one is cut, which a server handling one header at a
    // time could not do.
    let mut prompt = connect(&t, PROXY, &header(Version::V1, "192.0.2.2:1000"));
    assert_served(&mut prompt);
    slow.stream().set_nonblocking(true).unwrap();
    let answered = slow.stream().peek(&mut [0; 1]);
    assert!(
        matches!(&answered, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the trickled header was answered before another client was served: {answered:?}"
    );
    slow.stream().set_nonblocking(false).unwrap();
    let message = slow.err_message("timeout");
    let waited = began.elapsed();
    assert!(message.contains("PROXY"), "{message}");
    assert!(waited >= deadline, "cut after {waited:?}");
    drop(done);
    assert!(
        trickler.join().unwrap(),
        "the deadline came only after the whole header"
    );
    assert_eq!(t.server.stats().submitted, 1);
}

#[test]
fn curl_sends_a_v1_header_that_is_honoured() {
    let Some(curl) = tools::require("curl") else {
        return;
    };
    let t = serve("proxy-curl", |c| {
        c.proxy_from(["127.0.0.0/8".parse().unwrap()])
    });
    t.dir.write("hello.txt", "hi\n");
    let mut command = Command::new(curl);
    command
        .args(["-s", "--haproxy-protocol", "--max-time", "20"])
        .args(["--interface", "127.0.0.5"])
        .arg(format!("telnet://{}", t.addr()));
    let output = tools::run_with_input(&mut command, b"GET hello.txt\nQUIT\n");
    // Without the header understood, the first reply would be an error.
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "OK 3\nhi\nOK bye\n"
    );
}

#[test]
fn haproxy_send_proxy_v2_gives_each_client_its_own_cap() {
    if tools::require("haproxy").is_none() {
        return;
    }
    let t = serve("proxy-haproxy", |c| c);
    let haproxy = HaProxy::forwarding(
        "haproxy-v2",
        &format!("{} send-proxy-v2 check inter 100ms", t.addr()),
    );
    let through = |from| {
        let stream: TcpStream = connect_from(from, haproxy.addr()).unwrap();
        Conn::from_stream(stream)
    };
    let two = Ipv4Addr::new(127, 0, 0, 2);
    let mut first = through(two);
    assert_served(&mut first);
    // Another real client behind the same proxy has a cap of its own...
    let mut other = through(Ipv4Addr::new(127, 0, 0, 3));
    assert_served(&mut other);
    // ...and the first one's cap holds.
    let mut again = through(two);
    again.expect_err("busy");
}

impl TestServer {
    /// Asserts that a client behind the trusted proxy is served.
    fn assert_serves_through(&self, header: &[u8]) {
        let mut conn = connect(self, PROXY, header);
        assert_served(&mut conn);
        conn.send(b"QUIT\n");
        assert_eq!(conn.line(), "OK bye");
        conn.expect_eof();
    }
}

#[test]
fn a_shutdown_refuses_headers_still_coming() {
    let t = serve("proxy-shutdown", |c| c.proxy_timeout(LIMIT * 2));
    let mut partial = connect(&t, PROXY, b"PROXY TCP4 192.0");
    // Accepted and handed over after the partial one, so once this one is
    // served the partial one is in the handshake.
    let mut served = connect(&t, PROXY, &header(Version::V2, "192.0.2.2:1000"));
    assert_served(&mut served);
    let began = Instant::now();
    t.server.shutdown();
    assert!(
        began.elapsed() < LIMIT,
        "the handshake held the shutdown up"
    );
    partial.expect_last_err("unavailable");
    served.expect_last_err("unavailable");
}

/// A writer the test reads back: the access log's lines.
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The access log names the client the header gives; the proxy's own
/// health checks (a v2 LOCAL header) are left out unless asked for.
fn access_log_behind_a_proxy(checks: bool) -> Vec<String> {
    let log = Shared::default();
    let t = serve("proxy-access-log", |c| {
        c.access_log(Some(filesrv::protocol::AccessLog::to_writer(log.clone())))
            .access_log_checks(checks)
    });
    let mut local = Vec::new();
    ProxyHeader::with_local().encode_v2(&mut local).unwrap();
    for prefix in [local, header(Version::V2, "192.0.2.7:4000")] {
        let mut c = connect(&t, PROXY, &prefix);
        c.send(b"STAT /\nQUIT\n");
        assert!(c.line().starts_with("OK d "));
        assert_eq!(c.line(), "OK bye");
        // Logged before the close.
        c.expect_eof();
    }
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|line| {
            line.split(' ')
                .skip(1)
                .take(5)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn the_access_log_names_the_relayed_client_and_leaves_out_health_checks() {
    assert_eq!(
        access_log_behind_a_proxy(false),
        ["192.0.2.7:4000 - STAT / OK", "192.0.2.7:4000 - QUIT - OK"]
    );
    let with_checks = access_log_behind_a_proxy(true);
    assert_eq!(with_checks.len(), 4, "{with_checks:?}");
    assert!(with_checks[0].starts_with("127.0.0.1:"), "{with_checks:?}");
    assert!(with_checks[0].ends_with(" - STAT / OK"), "{with_checks:?}");
}
