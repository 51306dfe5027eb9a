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
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::proxy::NoHeader;
use super::sidecar::{MAX_REQUEST, SharedBackoff, Sidecar};
use crate::protocol::wire::{ErrorCode, Request};
use crate::{Refusal, Stats};

/// How a request ended, as counted and logged: the code of its reply, or
/// how its body broke off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `OK`.
    Ok,
    /// `ERR <code>`.
    Err(ErrorCode),
    /// A body sent short: the file shrank while being sent.
    Cut,
    /// A body (or a hash) cut at the end of the shutdown grace period.
    CutByShutdown,
    /// The client left in the middle of an upload's body.
    Gone,
    /// A body the client stopped reading.
    Stalled,
}

impl Answer {
    /// The answers besides `OK` and the error codes.
    const BROKEN: [Answer; 4] = [
        Answer::Cut,
        Answer::CutByShutdown,
        Answer::Gone,
        Answer::Stalled,
    ];

    /// How many answers there are: `OK`, each error code, the broken.
    const COUNT: usize = 1 + ErrorCode::ALL.len() + Answer::BROKEN.len();

    /// Every answer, in the order of their counters.
    fn all() -> impl Iterator<Item = Answer> {
        let codes = ErrorCode::ALL.into_iter().map(Answer::Err);
        std::iter::once(Answer::Ok)
            .chain(codes)
            .chain(Answer::BROKEN)
    }

    /// The place of its counter.
    fn index(self) -> usize {
        match self {
            Answer::Ok => 0,
            Answer::Err(code) => 1 + position(&ErrorCode::ALL, &code),
            broken => 1 + ErrorCode::ALL.len() + position(&Answer::BROKEN, &broken),
        }
    }

    /// The label value, as in the log: `OK`, the error code, or `cut`,
    /// `cut-by-shutdown`, `gone`, `stalled`.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Answer::Ok => "OK",
            Answer::Err(code) => code.as_str(),
            Answer::Cut => "cut",
            Answer::CutByShutdown => "cut-by-shutdown",
            Answer::Gone => "gone",
            Answer::Stalled => "stalled",
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `verb` label of `requests`: the verbs, then `invalid` for a line
/// that did not parse.
const VERBS: [&str; 8] = [
    "GET", "PUT", "LIST", "STAT", "SUM", "AUTH", "QUIT", "invalid",
];

/// The `method` label of `http_requests`; `invalid` for a refused head.
const METHODS: [&str; 5] = ["GET", "HEAD", "PUT", "other", "invalid"];

/// The `class` label of `http_requests`, by status / 100 - 1.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Requests by (verb, result), as counted and shown.
type RequestCounts<T> = [[T; Answer::COUNT]; VERBS.len()];

/// HTTP requests by (method, status class).
type HttpCounts<T> = [[T; CLASSES.len()]; METHODS.len()];

/// What the server counts as it goes; shared by the accepting thread,
/// the handshake thread and every session. A request is one atomic add
/// in a fixed table (a labelled `Family` took a read lock and a hash
/// lookup: 1.5% of a keep-alive request's server CPU).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    accepted: Counter,
    requests: RequestCounts<AtomicU64>,
    http_requests: HttpCounts<AtomicU64>,
    bytes_sent: Counter,
    bytes_received: Counter,
    /// Trusted connections refused in the PROXY handshake, by
    /// [`NoHeader`]; they never reach the manager's counts.
    proxy_refused: [AtomicU64; 4],
    /// `AUTH`s, by [`LoginResult`].
    logins: [AtomicU64; 4],
    /// Password hashes checked (throttled logins are not).
    password_checks: Counter,
    /// TLS connections that ended before their handshake completed.
    tls_handshakes_failed: Counter,
}

/// How an `AUTH` ended, for the `logins` counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoginResult {
    Ok,
    Denied,
    Throttled,
    PlaintextRefused,
}

impl LoginResult {
    const ALL: [LoginResult; 4] = [
        LoginResult::Ok,
        LoginResult::Denied,
        LoginResult::Throttled,
        LoginResult::PlaintextRefused,
    ];

    fn label(self) -> &'static str {
        match self {
            LoginResult::Ok => "ok",
            LoginResult::Denied => "denied",
            LoginResult::Throttled => "throttled",
            LoginResult::PlaintextRefused => "plaintext-refused",
        }
    }
}

impl Metrics {
    /// A connection was accepted (before any header or admission).
    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    /// A request was answered: its verb (`invalid` for a line that did
    /// not parse), how it ended and its body bytes.
    pub(crate) fn request(&self, request: Option<&Request>, answer: Answer, bytes: u64) {
        let verb = request.map_or("invalid", Request::verb);
        self.requests[position(&VERBS, &verb)][answer.index()].fetch_add(1, Relaxed);
        // `bytes` is a body's size: received for PUT, sent for GET and
        // LIST; for SUM it is what was hashed, which never crossed the wire.
        match request {
            Some(Request::Put { .. }) => self.bytes_received.inc_by(bytes),
            Some(Request::Get { .. } | Request::List { .. }) => self.bytes_sent.inc_by(bytes),
            _ => 0,
        };
    }

    /// An `AUTH` was answered.
    pub(crate) fn login(&self, result: LoginResult) {
        self.logins[result as usize].fetch_add(1, Relaxed);
    }

    /// A password hash was checked.
    pub(crate) fn password_checked(&self) {
        self.password_checks.inc();
    }

    /// A TLS connection ended before its handshake completed.
    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshakes_failed.inc();
    }

    /// An HTTP request was answered: its method, its status, whether
    /// `bytes` were received (PUT) or sent.
    pub(crate) fn http_request(
        &self,
        method: &'static str,
        status: u16,
        received: bool,
        bytes: u64,
    ) {
        let class = usize::from(status / 100).clamp(1, CLASSES.len()) - 1;
        self.http_requests[position(&METHODS, &method)][class].fetch_add(1, Relaxed);
        if received {
            self.bytes_received.inc_by(bytes);
        } else {
            self.bytes_sent.inc_by(bytes);
        }
    }

    /// A trusted connection was refused in the PROXY handshake.
    pub(crate) fn proxy_refused(&self, reason: NoHeader) {
        self.proxy_refused[position(&PROXY_REASONS, &reason)].fetch_add(1, Relaxed);
    }
}

const PROXY_REASONS: [NoHeader; 4] = [
    NoHeader::Malformed,
    NoHeader::Timeout,
    NoHeader::Full,
    NoHeader::ShuttingDown,
];

/// Where `value` is in `all`, which lists every value it can take.
fn position<T: PartialEq>(all: &[T], value: &T) -> usize {
    all.iter()
        .position(|v| v == value)
        .expect("every value is listed")
}

/// The loaded counts of a table of counters.
fn load<const N: usize, const M: usize>(table: &[[AtomicU64; M]; N]) -> [[u64; M]; N] {
    table
        .each_ref()
        .map(|row| row.each_ref().map(|c| c.load(Relaxed)))
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
        Refusal::IdleTimeout => "idle_timeout",
        Refusal::Evicted => "evicted",
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
        (
            "password_checks",
            "Password hashes checked by AUTH (throttled logins are not)",
            &metrics.password_checks,
        ),
        (
            "tls_handshakes_failed",
            "TLS connections that ended before their handshake completed",
            &metrics.tls_handshakes_failed,
        ),
    ];
    for (name, help, counter) in counters {
        registry.register(name, help, counter.clone());
    }
    registry.register_collector(Box::new(Snapshot {
        stats: *stats,
        max_running,
        requests: load(&metrics.requests),
        http_requests: load(&metrics.http_requests),
        proxy_refused: metrics.proxy_refused.each_ref().map(|c| c.load(Relaxed)),
        logins: metrics.logins.each_ref().map(|c| c.load(Relaxed)),
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
    requests: RequestCounts<u64>,
    http_requests: HttpCounts<u64>,
    proxy_refused: [u64; 4],
    logins: [u64; 4],
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = &self.stats;
        let e = &mut encoder;
        let answers: Vec<&str> = Answer::all().map(Answer::as_str).collect();
        family(
            e,
            "requests",
            "Requests answered, by verb and result (OK or the error code)",
            by_two(("verb", &VERBS), ("result", &answers), &self.requests),
        )?;
        family(
            e,
            "http_requests",
            "HTTP requests answered, by method and status class",
            by_two(
                ("method", &METHODS),
                ("class", &CLASSES),
                &self.http_requests,
            ),
        )?;
        gauge(e, "current_sessions", "Clients being served now", s.running)?;
        gauge(
            e,
            "current_queue",
            "Clients waiting for a slot now",
            s.waiting,
        )?;
        gauge(
            e,
            "parked_sessions",
            "Connections parked between requests now (--park-idle)",
            s.parked,
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
        let ended = ended.map(|(how, n)| ([("how", how)], n));
        family(e, "sessions_ended", "Sessions ended, by how", ended)?;
        let refusals = Refusal::ALL
            .iter()
            .map(|&r| (refusal_label(r), s.refused(r)))
            .chain(
                (PROXY_REASONS.iter().zip(self.proxy_refused)).map(|(&r, n)| (proxy_label(r), n)),
            )
            .map(|(reason, n)| ([("reason", reason)], n));
        let logins = LoginResult::ALL
            .iter()
            .map(|&r| ([("result", r.label())], self.logins[r as usize]));
        family(e, "logins", "AUTH requests, by result", logins)?;
        family(e, "refusals", "Connections refused, by reason", refusals)
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
/// A counter family: each series' labels and count.
fn family<'a, const L: usize>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = ([(&'static str, &'a str); L], u64)>,
) -> fmt::Result {
    let kind = ConstCounter::new(0u64).metric_type();
    let help = format!("{help}.");
    let mut descriptor = e.encode_descriptor(name, &help, None, kind)?;
    for (labels, count) in series {
        ConstCounter::new(count).encode(descriptor.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The series of a table of counts by two labels, whose values index it;
/// a label pair shows once it has counted something.
fn by_two<'a, const N: usize, const M: usize>(
    (row, rows): (&'static str, &'a [&'a str]),
    (column, columns): (&'static str, &'a [&'a str]),
    counts: &'a [[u64; M]; N],
) -> impl Iterator<Item = ([(&'static str, &'a str); 2], u64)> + 'a {
    rows.iter().zip(counts).flat_map(move |(&r, counts)| {
        (columns.iter().zip(counts))
            .filter(|&(_, &count)| count > 0)
            .map(move |(&c, &count)| ([(row, r), (column, c)], count))
    })
}

/// Serves `GET /metrics` on `addr`, with the text `scrape` makes.
pub(crate) fn serve(
    addr: SocketAddr,
    backoff: SharedBackoff,
    scrape: impl Fn() -> String + Send + 'static,
) -> io::Result<Sidecar> {
    let answer = move |head: &[u8]| answer(head, &scrape);
    Sidecar::start("filesrv-metrics", addr, backoff, Box::new(answer))
}

/// The answer to an HTTP request head read so far: `None` until it is
/// complete (a blank line), a 400 once it is longer than a sidecar reads.
fn answer(head: &[u8], scrape: &dyn Fn() -> String) -> Option<Vec<u8>> {
    let end = |blank: &[u8]| head.windows(blank.len()).any(|w| w == blank);
    if !end(b"\r\n\r\n") && !end(b"\n\n") {
        return (head.len() > MAX_REQUEST)
            .then(|| respond("400 Bad Request", "text/plain", "bad request\n"));
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.trim_ascii().split(|&b| b == b' ');
    Some(match (words.next(), words.next()) {
        (Some(b"GET"), Some(b"/metrics")) => respond(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &scrape(),
        ),
        (Some(b"GET"), _) => respond("404 Not Found", "text/plain", "not found\n"),
        _ => respond("405 Method Not Allowed", "text/plain", "only GET\n"),
    })
}

fn respond(status: &str, kind: &str, body: &str) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_has_its_own_counter_in_label_order() {
        let all: Vec<Answer> = Answer::all().collect();
        assert_eq!(all.len(), Answer::COUNT);
        for (i, answer) in all.into_iter().enumerate() {
            assert_eq!(answer.index(), i, "{answer}");
        }
    }
}
