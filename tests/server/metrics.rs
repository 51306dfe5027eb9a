//! The Prometheus endpoint (`--metrics`) and the HAProxy agent
//! (`--agent`): values that add up with what the clients saw and with
//! the manager's own statistics, the exposition format, and the agent's
//! `up`/`drain` through a shutdown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use filesrv::Refusal;

use crate::support::{Conn, LIMIT, TestServer, begin_upload};

pub(crate) fn local() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// `GET path HTTP/1.0` on `addr`: the status line and the body.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, LIMIT).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head.lines().next().unwrap().to_owned();
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    (status, body.to_owned())
}

pub(crate) fn scrape(server: &TestServer) -> String {
    let (status, body) = http_get(server.server.metrics_addr().unwrap(), "/metrics");
    assert_eq!(status, "HTTP/1.0 200 OK");
    body
}

/// The value of the sample `name` (with its labels, as written).
pub(crate) fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .parse()
        .unwrap()
}

/// Checks `text` against the Prometheus text exposition format (0.0.4)
/// and the naming rules `promtool check metrics` lints: every family has
/// one `# HELP` and one `# TYPE` (counter or gauge here) before its
/// samples, which follow one another and carry its name; names and labels
/// well formed, no series twice; counters named `..._total` and never
/// negative. Ours rather than promtool, whose only Debian package is the
/// whole Prometheus server (about 340 MB with its dependencies).
fn assert_exposition(text: &str) {
    let fail = |line: &str, why: &str| panic!("{why}: {line:?} in\n{text}");
    let is_name = |s: &str, colons: bool| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
    };
    assert!(text.ends_with('\n'), "no final newline:\n{text}");
    let mut families: Vec<&str> = Vec::new();
    let (mut help, mut kind): (Option<&str>, Option<&str>) = (None, None);
    let mut series = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let (keyword, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if !matches!(keyword, "HELP" | "TYPE") {
                continue;
            }
            if families.last() != Some(&name) {
                if families.contains(&name) {
                    fail(line, "a family again after another");
                }
                families.push(name);
                (help, kind) = (None, None);
            }
            if !is_name(name, true) || name.contains(':') {
                fail(line, "a bad family name");
            }
            let slot = if keyword == "HELP" {
                &mut help
            } else {
                &mut kind
            };
            if slot.replace(value).is_some() || value.is_empty() {
                fail(line, "a second or empty HELP or TYPE");
            }
            continue;
        }
        let (series_id, value) = line.rsplit_once(' ').unwrap_or(("", line));
        let (name, labels) = match series_id.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').unwrap_or("\u{0}")),
            None => (series_id, ""),
        };
        if families.last() != Some(&name) || help.is_none() {
            fail(line, "a sample without its HELP and TYPE just before");
        }
        match kind {
            Some("counter") if name.ends_with("_total") => {}
            Some("gauge") if !name.ends_with("_total") => {}
            _ => fail(line, "not a counter named _total or a gauge"),
        }
        if ["counter", "gauge"].iter().any(|t| name.contains(t)) {
            fail(line, "a type in the name");
        }
        let mut label_names = Vec::new();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (label, quoted) = pair.split_once('=').unwrap_or((pair, ""));
            let inner = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"'));
            if !is_name(label, false)
                || label.starts_with("__")
                || label_names.contains(&label)
                || inner.is_none_or(|v| v.contains(['"', '\\', '\n']))
            {
                fail(line, "a bad label");
            }
            label_names.push(label);
        }
        match value.parse::<f64>() {
            Ok(v) if kind != Some("counter") || v >= 0.0 => {}
            _ => fail(line, "a bad value"),
        }
        if !series.insert(series_id) {
            fail(line, "a series twice");
        }
    }
}

#[test]
fn the_exposition_check_refuses_broken_text() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n";
    assert_exposition(good);
    for bad in [
        "# TYPE a_total counter\na_total 3\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total 3",
        "# HELP a A.\n# TYPE a counter\na 3\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total -1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=1} 3\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total 3\na_total 4\n",
        "# HELP a_total A.\n# TYPE a_total counter\nb_total 3\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total x\n",
        "# HELP g A.\n# TYPE g gauge\ng 1\n# HELP h A.\n# TYPE h gauge\n# HELP g A.\n",
    ] {
        let result = std::panic::catch_unwind(|| assert_exposition(bad));
        assert!(result.is_err(), "accepted {bad:?}");
    }
}

const CLIENTS: usize = 8;
const ROUNDS: usize = 10;
const BODY: usize = 4096;

#[test]
fn metrics_under_load_add_up_with_the_clients_and_the_manager() {
    let t = TestServer::start("metrics-load", |c| {
        c.max_running(2).max_waiting(1).metrics(local())
    });
    t.dir.write("4k.bin", vec![b'x'; BODY]);
    // Every client pipelines a GET, a STAT of nothing and a QUIT; some are
    // refused (a queue of one), which is fine: they are counted too.
    let served: usize = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(|| {
                    let mut served = 0;
                    for _ in 0..ROUNDS {
                        let mut c = t.connect();
                        c.send(b"GET 4k.bin\nSTAT missing\nQUIT\n");
                        let first = c.line();
                        if first.starts_with("ERR busy") {
                            c.expect_closed();
                            continue;
                        }
                        assert_eq!(first, format!("OK {BODY}"));
                        c.body(BODY);
                        c.expect_err("not-found");
                        assert_eq!(c.line(), "OK bye");
                        // Closed after QUIT: every count of this
                        // connection's requests is made.
                        c.expect_eof();
                        served += 1;
                    }
                    served
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).sum()
    });
    let connections = CLIENTS * ROUNDS;
    let refused = connections - served;
    let before = t.server.stats();
    let text = scrape(&t);
    let after = t.server.stats();
    assert_exposition(&text);

    // What the clients saw, exactly.
    let n = |name: &str| sample(&text, name);
    assert_eq!(n("filesrv_connections_accepted_total"), connections as f64);
    assert_eq!(
        n(r#"filesrv_requests_total{verb="GET",result="OK"}"#),
        served as f64
    );
    assert_eq!(
        n(r#"filesrv_requests_total{verb="STAT",result="not-found"}"#),
        served as f64
    );
    assert_eq!(
        n(r#"filesrv_requests_total{verb="QUIT",result="OK"}"#),
        served as f64
    );
    assert_eq!(n("filesrv_bytes_sent_total"), (served * BODY) as f64);
    assert_eq!(n("filesrv_bytes_received_total"), 0.0);
    assert_eq!(
        n(r#"filesrv_refusals_total{reason="queue_full"}"#),
        refused as f64
    );
    // The manager's own statistics, between the snapshots around the scrape.
    let between = |name: &str, low: u64, high: u64| {
        let value = n(name);
        assert!(
            low as f64 <= value && value <= high as f64,
            "{name} = {value}, not in {low}..={high}"
        );
    };
    between(
        "filesrv_sessions_submitted_total",
        before.submitted,
        after.submitted,
    );
    between(
        "filesrv_sessions_admitted_total",
        before.admitted,
        after.admitted,
    );
    between(
        r#"filesrv_sessions_ended_total{how="completed"}"#,
        before.completed,
        after.completed,
    );
    for (reason, label) in [
        (Refusal::QueueFull, "queue_full"),
        (Refusal::SourceLimit, "source_limit"),
        (Refusal::ShuttingDown, "shutting_down"),
    ] {
        let name = format!(r#"filesrv_refusals_total{{reason="{label}"}}"#);
        between(&name, before.refused(reason), after.refused(reason));
    }
    assert_eq!(after.submitted, connections as u64);
    assert_eq!(after.refused(Refusal::QueueFull), refused as u64);

    // A known moment: both slots taken, one waiting (shown by a refusal).
    let mut running: Vec<Conn> = (0..2)
        .map(|_| {
            let mut c = t.connect();
            c.send(b"STAT /\n");
            assert!(c.line().starts_with("OK d "));
            c
        })
        .collect();
    let waiting = t.connect();
    t.connect().expect_final_err("busy");
    let text = scrape(&t);
    assert_eq!(sample(&text, "filesrv_current_sessions"), 2.0);
    assert_eq!(sample(&text, "filesrv_current_queue"), 1.0);
    assert_eq!(sample(&text, "filesrv_limit_sessions"), 2.0);
    assert_exposition(&text);
    running.clear();
    drop(waiting);
}

#[test]
fn the_metrics_endpoint_answers_only_get_metrics() {
    let t = TestServer::start("metrics-http", |c| c.metrics(local()));
    let addr = t.server.metrics_addr().unwrap();
    assert_eq!(http_get(addr, "/").0, "HTTP/1.0 404 Not Found");
    let mut post = TcpStream::connect(addr).unwrap();
    post.set_read_timeout(Some(LIMIT)).unwrap();
    post.write_all(b"POST /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    post.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 405 "), "{response}");
    // A silent client is cut after the sidecar's deadline; the endpoint
    // then answers the next one.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(LIMIT)).unwrap();
    let mut nothing = Vec::new();
    silent.read_to_end(&mut nothing).unwrap();
    assert!(scrape(&t).contains("filesrv_current_sessions 0"));
}

/// Whether the server still holds `peer` open: nothing to read, and no
/// end of stream.
fn still_open(peer: &TcpStream) -> bool {
    peer.set_nonblocking(true).unwrap();
    let open = matches!(
        (&*peer).read(&mut [0u8; 1]),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    peer.set_nonblocking(false).unwrap();
    open
}

#[test]
fn silent_and_trickling_peers_do_not_hold_a_scrape() {
    let t = TestServer::start("metrics-silent", |c| c.metrics(local()).agent(local()));
    let addr = t.server.metrics_addr().unwrap();
    let agent = t.server.agent_addr().unwrap();
    // Silent peers (the agent answers them at once, the metrics endpoint
    // waits for their request), and one that sends half a request.
    let _agent_peers: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(agent).unwrap()).collect();
    let mut peers: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut trickling = TcpStream::connect(addr).unwrap();
    trickling.write_all(b"GET /metr").unwrap();
    peers.push(trickling);
    // Answered while every one of them is still held: they were not
    // served (and waited out) first.
    assert!(scrape(&t).contains("filesrv_current_sessions 0"));
    assert!(agent_check(&t).starts_with("up ready 100%"));
    for (i, peer) in peers.iter().enumerate() {
        assert!(still_open(peer), "peer {i} was closed before the scrape");
    }
}

#[test]
fn a_trickling_peer_is_cut_at_the_whole_request_deadline() {
    let t = TestServer::start("metrics-trickle", |c| c.metrics(local()));
    let mut trickling = TcpStream::connect(t.server.metrics_addr().unwrap()).unwrap();
    // A byte whenever 300 ms pass with nothing from the server: each read
    // alone is well within 2 s, the request never ends.
    trickling
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let began = std::time::Instant::now();
    let mut sent = 0;
    loop {
        match trickling.read(&mut [0u8; 64]) {
            Ok(0) | Err(_) if began.elapsed() > LIMIT => panic!("still open after {sent} bytes"),
            Ok(0) => break,
            Ok(_) => panic!("an answer to an incomplete request"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        if trickling.write_all(b"x").is_err() {
            break;
        }
        sent += 1;
    }
    eprintln!("cut after {sent} bytes in {:?}", began.elapsed());
    assert!(scrape(&t).contains("filesrv_current_sessions 0"));
}

/// One agent check: the line the agent sends before closing.
pub(crate) fn agent_check(server: &TestServer) -> String {
    let mut stream =
        TcpStream::connect_timeout(&server.server.agent_addr().unwrap(), LIMIT).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn the_agent_reports_load_then_drains_for_the_whole_grace_period() {
    let t = TestServer::start("agent", |c| {
        c.max_running(1)
            .max_waiting(2)
            .allow_put(true)
            .agent(local())
            .shutdown_grace(LIMIT)
    });
    assert_eq!(agent_check(&t), "up ready 100% maxconn:1\n");
    // One running (an upload half sent), two waiting (shown by a third
    // that finds the queue full): a third of the weight.
    let mut uploading = t.connect();
    begin_upload(&mut uploading, &t.dir, "up.bin", 4, b"ab");
    let mut waiting = t.connect();
    let mut more_waiting = t.connect();
    t.connect().expect_final_err("busy");
    assert_eq!(agent_check(&t), "up ready 33% maxconn:1\n");
    std::thread::scope(|scope| {
        let stopping = scope.spawn(|| t.server.shutdown());
        // The waiting clients are refused once the shutdown has begun...
        waiting.expect_final_err("unavailable");
        more_waiting.expect_final_err("unavailable");
        // ...and while the upload may still finish, the agent drains.
        assert_eq!(agent_check(&t), "drain\n");
        assert_eq!(agent_check(&t), "drain\n");
        uploading.send(b"cd");
        assert_eq!(uploading.line(), "OK 4");
        uploading.expect_final_err("unavailable");
        let report = stopping.join().unwrap();
        assert_eq!(report.cut, 0);
    });
    assert_eq!(t.dir.read("up.bin"), b"abcd");
}
