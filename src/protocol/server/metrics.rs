//! Prometheus metrics: the counters the server keeps as it goes, the
//! manager's statistics read at scrape time, and the HTTP/1.0 endpoint
//! (`--metrics ADDR`, `GET /metrics`) on a sidecar thread.
//!
//! Names follow Prometheus' conventions (`_total` counters, base units)
//! and HAProxy's where one fits (`current_sessions`, `current_queue`).
//! The text is the classic Prometheus format (0.0.4), which
//! `promtool check metrics` accepts without lint warnings (the tests
//! check the same rules).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::proxy::NoHeader;
use super::request_counts::{Answer, RequestCounts};
use super::sidecar::Sidecar;
use crate::protocol::wire::Request;
use crate::{Refusal, Stats};

/// What the server counts as it goes; shared by the accepting thread,
/// the handshake thread and every session. Counting is an atomic add
/// (for a request, one in a table indexed by verb and result).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    accepted: Counter,
    requests: RequestCounts,
    bytes_sent: Counter,
    bytes_received: Counter,
    /// Trusted connections refused in the PROXY handshake, by
    /// [`NoHeader`]; they never reach the manager's counts.
    proxy_refused: [AtomicU64; 4],
}

impl Metrics {
    /// A connection was accepted (before any header or admission).
    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    /// A request was answered: its verb (`invalid` for a line that did
    /// not parse), how it ended and its body bytes.
    pub(crate) fn request(&self, request: Option<&Request>, answer: Answer, bytes: u64) {
        self.requests.count(request, answer);
        // `bytes` is a body's size: received for PUT, sent for GET and
        // LIST; for SUM it is what was hashed, which never crossed the wire.
        match request {
            Some(Request::Put { .. }) => self.bytes_received.inc_by(bytes),
            Some(Request::Get { .. } | Request::List { .. }) => self.bytes_sent.inc_by(bytes),
            _ => 0,
        };
    }

    /// A trusted connection was refused in the PROXY handshake.
    pub(crate) fn proxy_refused(&self, reason: NoHeader) {
        self.proxy_refused[proxy_index(reason)].fetch_add(1, Relaxed);
    }
}

const PROXY_REASONS: [NoHeader; 4] = [
    NoHeader::Malformed,
    NoHeader::Timeout,
    NoHeader::Full,
    NoHeader::ShuttingDown,
];

fn proxy_index(reason: NoHeader) -> usize {
    PROXY_REASONS
        .iter()
        .position(|&r| r == reason)
        .expect("every reason is listed")
}

/// The `reason` label of a refusal.
fn refusal_label(reason: Refusal) -> &'static str {
    match reason {
        Refusal::QueueFull => "queue_full",
        Refusal::SourceLimit => "source_limit",
        Refusal::QueueTimeout => "queue_timeout",
        Refusal::Overloaded => "overloaded",
        Refusal::ShuttingDown => "shutting_down",
        Refusal::Unavailable => "unavailable",
    }
}

fn proxy_label(reason: NoHeader) -> &'static str {
    match reason {
        NoHeader::Malformed => "proxy_header_malformed",
        NoHeader::Timeout => "proxy_header_timeout",
        NoHeader::Full => "proxy_handshakes_full",
        NoHeader::ShuttingDown => "proxy_shutting_down",
    }
}

/// Everything a scrape shows (help texts end with a full stop, as the
/// registry writes its own): the running counters and a snapshot of the
/// manager's statistics.
pub(crate) fn encode(metrics: &Metrics, stats: &Stats, max_running: usize) -> String {
    let mut registry = Registry::with_prefix("filesrv");
    let counters = [
        (
            "connections_accepted",
            "Connections accepted, before any PROXY header or admission",
            &metrics.accepted,
        ),
        (
            "bytes_sent",
            "Body bytes sent (GET and LIST replies)",
            &metrics.bytes_sent,
        ),
        (
            "bytes_received",
            "Body bytes received (PUT)",
            &metrics.bytes_received,
        ),
    ];
    for (name, help, counter) in counters {
        registry.register(name, help, counter.clone());
    }
    registry.register(
        "requests",
        "Requests answered, by verb and result (OK or the error code)",
        metrics.requests.snapshot(),
    );
    registry.register_collector(Box::new(Snapshot {
        stats: *stats,
        max_running,
        proxy_refused: metrics.proxy_refused.each_ref().map(|c| c.load(Relaxed)),
    }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// The manager's statistics at one scrape, as metrics.
#[derive(Debug)]
struct Snapshot {
    stats: Stats,
    max_running: usize,
    proxy_refused: [u64; 4],
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = &self.stats;
        let e = &mut encoder;
        gauge(e, "current_sessions", "Clients being served now", s.running)?;
        gauge(
            e,
            "current_queue",
            "Clients waiting for a slot now",
            s.waiting,
        )?;
        gauge(
            e,
            "limit_sessions",
            "Clients served at once at most (MAX_RUNNING)",
            self.max_running,
        )?;
        gauge(
            e,
            "queue_oldest_seconds",
            "Age of the oldest waiting client",
            s.oldest_waiting.as_secs_f64(),
        )?;
        counter(
            e,
            "queue_time_seconds",
            "Time clients that started running spent waiting, summed",
            s.queue_wait_total.as_secs_f64(),
        )?;
        gauge(
            e,
            "queue_time_max_seconds",
            "Longest time a client that started running waited",
            s.queue_wait_max.as_secs_f64(),
        )?;
        counter(
            e,
            "sessions_submitted",
            "Connections offered to the admission policy",
            s.submitted,
        )?;
        counter(
            e,
            "sessions_admitted",
            "Connections queued by the admission policy",
            s.admitted,
        )?;
        let ended = [
            ("completed", s.completed),
            ("failed", s.failed),
            ("panicked", s.panicked),
            ("abandoned", s.abandoned),
        ];
        family(e, "sessions_ended", "Sessions ended, by how", "how", &ended)?;
        let refusals: Vec<_> = Refusal::ALL
            .iter()
            .map(|&r| (refusal_label(r), s.refused(r)))
            .chain(
                PROXY_REASONS
                    .iter()
                    .map(|&r| (proxy_label(r), self.proxy_refused[proxy_index(r)])),
            )
            .collect();
        family(
            e,
            "refusals",
            "Connections refused, by reason",
            "reason",
            &refusals,
        )
    }
}

fn gauge<N>(e: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    single(e, name, help, &ConstGauge::new(value))
}

fn counter<N>(e: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> fmt::Result
where
    ConstCounter<N>: EncodeMetric,
{
    single(e, name, help, &ConstCounter::new(value))
}

/// One metric without labels.
fn single(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> fmt::Result {
    let help = format!("{help}.");
    metric.encode(e.encode_descriptor(name, &help, None, metric.metric_type())?)
}

/// A counter family with one label.
fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> fmt::Result {
    let kind = ConstCounter::new(0u64).metric_type();
    let help = format!("{help}.");
    let mut descriptor = e.encode_descriptor(name, &help, None, kind)?;
    for &(value, count) in values {
        let labels = [(label, value)];
        ConstCounter::new(count).encode(descriptor.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Serves `GET /metrics` on `addr`, with the text `scrape` makes.
pub(crate) fn serve(
    addr: SocketAddr,
    scrape: impl Fn() -> String + Send + 'static,
) -> io::Result<Sidecar> {
    Sidecar::start("filesrv-metrics", addr, move |mut stream| {
        if let Err(e) = answer(&mut stream, &scrape) {
            log::debug!("metrics: {e}");
        }
    })
}

/// The largest request head read; a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;

/// Reads one HTTP request head and answers it, then closes.
fn answer(stream: &mut TcpStream, scrape: &dyn Fn() -> String) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return respond(stream, "400 Bad Request", "text/plain", "bad request\n");
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.trim_ascii().split(|&b| b == b' ');
    match (words.next(), words.next()) {
        (Some(b"GET"), Some(b"/metrics")) => respond(
            stream,
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &scrape(),
        ),
        (Some(b"GET"), _) => respond(stream, "404 Not Found", "text/plain", "not found\n"),
        _ => respond(stream, "405 Method Not Allowed", "text/plain", "only GET\n"),
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
