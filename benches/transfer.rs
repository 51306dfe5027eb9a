//! The file server end to end over loopback, against the baselines that
//! bound it.
//!
//! Servers run in this process on 127.0.0.1 (the waiting-cost servers in a
//! child process, so that their memory is theirs alone); the clients are
//! threads of this process, speaking the protocol through the `loadgen`
//! module, which `examples/loadgen.rs` also runs on its own.
//!
//! # Scenarios
//!
//! - `large`: one 1 GiB file of random bytes, read through into the page
//!   cache before every download and checked resident (`fincore`),
//!   downloaded whole, time from `connect` to the last byte, in GB/s
//!   (10⁹ bytes/s), the servers taking turns in each round:
//!   - `filesrv`: a `GET` to [`Server`] (header with `MSG_MORE`, then
//!     `sendfile`), the body read into a 256 KiB buffer and dropped;
//!   - `nginx`: an HTTP/1.0 `GET` to the distribution's nginx
//!     (`sendfile on`), the same reader;
//!   - `bare sendfile` (the limit): no protocol, a thread that accepts and
//!     `sendfile`s the file, the same reader;
//!   - `Client::get_to(sink)`: the bundled client, 64 KiB reads into
//!     `io::sink()`;
//!   - `Client::get_file`: the bundled client writing a local file on the
//!     same disk, `fsync` included, so mostly the disk.
//! - `small`: 4 KiB files (64 distinct), a closed loop of 64 clients, each
//!   sending its next `GET` when the previous body is in; requests/s and
//!   latency percentiles over a timed window after a warm-up:
//!   - `persistent`: one connection per client;
//!   - `per-request`: a new connection per request (`GET`, then `QUIT`,
//!     then read to the end of the stream);
//!   - against `filesrv` with `max_running` 64, and against `lab`: a
//!     spawn-a-thread-per-connection server written here (lines read
//!     through a `BufReader`, files sent with `io::copy`, which is
//!     `sendfile` on Linux; `TCP_NODELAY` set, so that it is not held up by
//!     Nagle and delayed ACKs and what is compared is the design).
//! - `waiting`: the resident memory (`VmRSS`) of a server process idle,
//!   then holding 64 running connections (each did one `GET`), then 1,000
//!   more connections waiting for a slot (`max_waiting` 1,000); `lab`
//!   for comparison, which gives each of those connections a thread.
//! - `stats`: `small`'s persistent load on `filesrv`, plain and with each
//!   client reading `Server::stats()` after every response (more runs,
//!   interleaved, and the median of the paired ratios): what the snapshot
//!   costs read on every request.
//! - `connections` (`connections/mod.rs`): 4 KiB GETs with a new
//!   connection per request (8 clients) and with keep-alive (8 and 64),
//!   `filesrv` against the distribution's nginx; `baseline`: the same
//!   loads against an earlier build (`FILESRV_BASELINE`); `protocols`:
//!   one `filesrv`, keep-alive, HTTP/1.1 against the line protocol from
//!   the same client.
//! - `idle` and `http` (`idle/mod.rs`): HTTP loads from `wrk` against the
//!   `filesrv` binary, nginx and Apache httpd's event MPM: 10,000 idle
//!   keep-alive connections beside 64 busy ones (`--park-idle`), the
//!   memory an idle connection costs, what parking costs per request;
//!   and keep-alive and `Connection: close` GETs against nginx.
//! - `tls` (`tls/mod.rs`): what TLS costs: a 1 GiB GET by curl over
//!   `https://` against the same over `http://` (`filesrv` and nginx),
//!   new TLS connections per second from `wrk` (8 clients, a handshake
//!   per request) and 4 KiB keep-alive GETs over TLS (64 clients),
//!   `filesrv` against nginx's `ssl` listener, with each server's CPU.
//!
//! Every scenario runs several times, the implementations interleaved, and
//! the medians are printed with every run's figure.
//!
//! Every listening socket the bench creates has `cubic` congestion
//! control (`common/machine.rs` says why), printed with the system's
//! default at the start.
//!
//! # Running
//!
//! `cargo bench --bench transfer` runs everything (about 1.5 minutes);
//! `cargo bench --bench transfer -- small` runs the scenarios whose name
//! holds `small`; `FILESRV_BENCH_RUNS=N` sets the rounds of `large`,
//! `connections`, `idle`, `http` and `tls`. On two cores the large-file figures swing 2-3x from run
//! to run with where the scheduler puts sender and receiver; `taskset -c 0
//! cargo bench --bench transfer -- large` puts both on one core and gives
//! steady figures (a third of the throughput). Without `--bench` (as `cargo test --all-targets` runs
//! it) a smoke version with tiny sizes checks that everything works, in a
//! second or two. docs/BENCHMARKS.md has the figures.

#[path = "common/apache.rs"]
mod apache;
mod common;
mod connections;
mod idle;
#[path = "common/machine.rs"]
mod machine;
#[path = "common/nginx.rs"]
mod nginx;
#[path = "common/process.rs"]
mod process;
mod proxy;
mod tls;

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{BenchArgs, TempDir, list, median, random_bytes, write_random_file};
use filesrv::protocol::wire::MAX_LINE;
use filesrv::protocol::{Client, Server, ServerConfig};
use filesrv_testkit::loadgen::{self, BULK_BUF, Conn, Load, Mode, Report};
use filesrv_testkit::tools;
use nginx::Nginx;
use rustix::io::Errno;

/// Sizes and counts of one run of the bench.
struct Params {
    /// The large file's size.
    large: u64,
    /// Runs of each large-file variant (`get_file`: fewer, it is slow).
    large_runs: usize,
    file_runs: usize,
    /// Concurrent clients and `max_running` of the small-file scenario.
    clients: usize,
    small_runs: usize,
    warmup: Duration,
    window: Duration,
    /// Connections held by the waiting-cost scenario.
    running: usize,
    waiting: usize,
    waiting_runs: usize,
    /// Idle keep-alive connections held by the `idle` scenario, its rounds
    /// (and `http`'s), each `wrk` run's seconds, and whether the warm-up
    /// runs and the rows that are context only run.
    idle: usize,
    idle_runs: usize,
    wrk_seconds: u32,
    full_rows: bool,
    /// The `tls` scenario's large file.
    tls_large: u64,
}

const FULL: Params = Params {
    large: 1 << 30,
    large_runs: 15,
    file_runs: 3,
    clients: 64,
    small_runs: 5,
    warmup: Duration::from_millis(500),
    window: Duration::from_secs(2),
    running: 64,
    waiting: 1000,
    waiting_runs: 3,
    idle: 10_000,
    idle_runs: 3,
    wrk_seconds: 5,
    full_rows: true,
    tls_large: 1 << 30,
};

/// `cargo test --all-targets`: everything once, tiny.
const SMOKE: Params = Params {
    large: 1 << 20,
    large_runs: 1,
    file_runs: 1,
    clients: 2,
    small_runs: 1,
    warmup: Duration::ZERO,
    window: Duration::from_millis(200),
    running: 4,
    waiting: 20,
    waiting_runs: 1,
    idle: 200,
    idle_runs: 1,
    wrk_seconds: 1,
    full_rows: false,
    tls_large: 4 << 20,
};

/// The size of each small file.
const SMALL: usize = 4096;
/// How many distinct small files the clients go round.
const SMALL_FILES: usize = 64;
/// Chooses the waiting-cost server in a child process: `filesrv` or `lab`.
const CHILD_ENV: &str = "FILESRV_TRANSFER_CHILD";

fn main() -> io::Result<()> {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        return child(&role);
    }
    let args = BenchArgs::parse();
    let full = args.full;
    let wanted = |name: &str| args.wanted(name);
    let params = if full { &FULL } else { &SMOKE };
    raise_fd_limit();

    let dir = TempDir::new("transfer")?;
    let smalls: Vec<String> = (0..SMALL_FILES).map(|i| format!("s/{i:03}.bin")).collect();
    fs::create_dir(dir.path().join("s"))?;
    for (i, name) in smalls.iter().enumerate() {
        fs::write(dir.path().join(name), random_bytes(SMALL, i as u64 + 1))?;
    }
    println!(
        "transfer bench ({}): {} cores, kernel {}, {}",
        if full { "full" } else { "smoke test" },
        thread::available_parallelism().map_or(0, std::num::NonZero::get),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        machine::congestion_line(&machine::pinned_listener()?)
    );
    if wanted("large") {
        large(dir.path(), params)?;
    }
    if wanted("small") {
        small(dir.path(), &smalls, params)?;
    }
    if wanted("stats") {
        stats_cost(dir.path(), &smalls, params)?;
    }
    // nginx and haproxy: when not installed, one line says so (see
    // tests/support/tools.rs) and the scenario is left out.
    if wanted("connections") && tools::require("nginx").is_some() {
        connections::connections(dir.path(), &smalls, params)?;
    }
    if wanted("baseline") {
        connections::against_baseline(dir.path(), &smalls, params)?;
    }
    if wanted("protocols") {
        connections::protocols(dir.path(), &smalls, params)?;
    }
    if wanted("proxy") && tools::require("haproxy").is_some() {
        proxy::proxy(dir.path(), &smalls, params)?;
    }
    if wanted("waiting") {
        waiting(dir.path(), &smalls[0], params)?;
    }
    // wrk, nginx and apache2: as above when not installed.
    if wanted("idle") {
        idle::idle(dir.path(), &smalls[0], params)?;
    }
    if wanted("http") {
        idle::http(dir.path(), &smalls[0], params)?;
    }
    // curl, wrk, nginx and openssl: as above when not installed.
    if wanted("tls") {
        tls::tls(dir.path(), &smalls[0], params)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Large file

fn large(root: &Path, params: &Params) -> io::Result<()> {
    let name = "large.bin";
    let path = root.join(name);
    let size = params.large;
    let made = Instant::now();
    write_random_file(&path, size)?;
    let runs = runs_of(params.large_runs);
    println!(
        "\nlarge: {} MiB file written in {:.1?}; {runs} rounds, the file read through \
         and checked resident before each download",
        size >> 20,
        made.elapsed()
    );
    let server = serve(ServerConfig::new(root))?;
    let addr = server.local_addr();
    let nginx = Nginx::start(root, false)?;
    let nginx_addr = nginx.addr;
    // The contenders, in the order of the first round; later rounds
    // start one further along.
    let fetches: [(&str, &dyn Fn() -> io::Result<u64>); 4] = [
        ("bare sendfile (the limit)", &|| bare_sendfile(&path)),
        ("filesrv GET", &|| loadgen::fetch(addr, name)),
        ("nginx GET", &|| loadgen::fetch_http(nginx_addr, name)),
        ("Client::get_to(sink)", &|| {
            let mut client =
                Client::connect_timeout(addr, Duration::from_secs(10)).map_err(io::Error::other)?;
            client
                .get_to(name, 0, &mut io::sink())
                .map_err(io::Error::other)
        }),
    ];
    // Warm-up: the socket buffers' growth, nginx's workers.
    for (_, fetch) in &fetches {
        fetch()?;
    }
    let (runs_of_each, least_resident) =
        warmed_rounds(&path, runs, fetches.len(), |i| timed(fetches[i].1))?;
    let local = root.join("downloaded.bin");
    let mut file = Vec::new();
    for _ in 0..params.file_runs {
        machine::warm(&path)?;
        file.push(timed(|| {
            let mut client =
                Client::connect_timeout(addr, Duration::from_secs(10)).map_err(io::Error::other)?;
            client
                .get_file(
                    name,
                    &local,
                    &filesrv::protocol::TransferOptions::default()
                        .resume(false)
                        .verify(false),
                )
                .map_err(io::Error::other)
        })?);
        fs::remove_file(&local)?;
    }
    drop(nginx);
    server.shutdown();
    fs::remove_file(&path)?;
    match least_resident {
        Some(f) => println!(
            "  resident before each download: at least {:.1}%",
            f * 100.0
        ),
        None => println!("  resident before each download: unknown (no fincore)"),
    }

    let gbps = |runs: &[(u64, Duration)]| -> Vec<f64> {
        runs.iter()
            .map(|&(bytes, took)| {
                assert_eq!(bytes, size, "a download came back short");
                bytes as f64 / took.as_secs_f64() / 1e9
            })
            .collect()
    };
    let limit = median(&gbps(&runs_of_each[0]));
    let nginx_rate = median(&gbps(&runs_of_each[2]));
    println!(
        "  {:<28} {:>8} {:>8} {:>8} {:>12}   runs",
        "", "GB/s", "x limit", "x nginx", "range"
    );
    let labelled = fetches.iter().map(|(label, _)| *label).zip(&runs_of_each);
    for (label, runs) in labelled.chain([("Client::get_file (fsync)", &file)]) {
        let rates = gbps(runs);
        let m = median(&rates);
        let (low, high) = rates
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &r| (l.min(r), h.max(r)));
        println!(
            "  {label:<28} {m:>8.2} {:>8.2} {:>8.2} {:>12}   {}",
            m / limit,
            m / nginx_rate,
            format!("{low:.2}-{high:.2}"),
            list(&rates, 2)
        );
    }
    // Each filesrv download against the others of its round: drift
    // between rounds cancels out.
    for (other, label) in [(0, "bare sendfile"), (2, "nginx")] {
        let ratios: Vec<f64> = gbps(&runs_of_each[1])
            .iter()
            .zip(gbps(&runs_of_each[other]))
            .map(|(ours, theirs)| ours / theirs)
            .collect();
        println!(
            "  filesrv / {label:<17} {:>8.2}   (the median of the same-round ratios {})",
            median(&ratios),
            list(&ratios, 2)
        );
    }
    Ok(())
}

/// `rounds` rounds of `contenders` downloads of the file at `path`, each
/// by `fetch(i)`, the file read through ([`machine::warm`]) before each,
/// each round starting one contender further along. Returns each
/// contender's results and the least fraction of the file found resident
/// (`None` if `fincore` cannot say).
fn warmed_rounds<T>(
    path: &Path,
    rounds: usize,
    contenders: usize,
    mut fetch: impl FnMut(usize) -> io::Result<T>,
) -> io::Result<(Vec<Vec<T>>, Option<f64>)> {
    let mut runs: Vec<Vec<T>> = (0..contenders).map(|_| Vec::new()).collect();
    let mut least_resident: Option<f64> = None;
    for round in 0..rounds {
        for k in 0..contenders {
            let i = (round + k) % contenders;
            if let Some(resident) = machine::warm(path)? {
                least_resident = Some(least_resident.map_or(resident, |l| l.min(resident)));
            }
            runs[i].push(fetch(i)?);
        }
    }
    Ok((runs, least_resident))
}

/// `default`, or `FILESRV_BENCH_RUNS` when set: more rounds for a
/// steadier median on a busy machine.
fn runs_of(default: usize) -> usize {
    std::env::var("FILESRV_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// The limit: `sendfile` of the whole file to a fresh loopback connection,
/// no protocol; received as `filesrv`'s bodies are. Returns the bytes.
fn bare_sendfile(path: &Path) -> io::Result<u64> {
    let listener = machine::pinned_listener()?;
    let addr = listener.local_addr()?;
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    thread::scope(|scope| {
        let sender = scope.spawn(|| -> io::Result<()> {
            let (stream, _) = listener.accept()?;
            let mut offset = 0;
            while offset < size {
                let left = usize::try_from(size - offset).unwrap_or(usize::MAX);
                match rustix::fs::sendfile(&stream, &file, Some(&mut offset), left) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        });
        let mut conn = Conn::connect(addr, BULK_BUF)?;
        conn.discard(size)?;
        sender.join().expect("the sendfile thread panicked")?;
        Ok(size)
    })
}

// ---------------------------------------------------------------------------
// Small files

fn small(root: &Path, paths: &[String], params: &Params) -> io::Result<()> {
    println!(
        "\nsmall: {} B files, {} clients, {:?} warm-up + {:?} window per run\n  \
         (lab: a thread-per-connection server written in this bench, the baseline)",
        SMALL, params.clients, params.warmup, params.window
    );
    let server = serve(ServerConfig::new(root).max_running(params.clients))?;
    let lab = Lab::start(root)?;
    println!(
        "  {:<24} {:>10} {:>8} {:>9} {:>9}   runs (req/s)",
        "", "req/s", "x lab", "p50", "p99"
    );
    for mode in [Mode::Persistent, Mode::PerRequest] {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..params.small_runs {
            for (addr, reports) in [(server.local_addr(), &mut ours), (lab.addr, &mut theirs)] {
                let report = small_run(addr, paths, params, mode)?;
                reports.push(report);
            }
        }
        let label = match mode {
            Mode::Persistent => "persistent",
            Mode::PerRequest => "per-request",
        };
        let base = median(&rates(&theirs));
        for (name, reports) in [("filesrv", &ours), ("lab", &theirs)] {
            print_rates(24, &format!("{label} {name}"), reports, base);
        }
    }
    shut_down_clean(&server);
    lab.stop();
    Ok(())
}

/// One closed-loop run of the small-file load, checked: no failure, and
/// every body whole.
fn small_run(
    addr: SocketAddr,
    paths: &[String],
    params: &Params,
    mode: Mode,
) -> io::Result<Report> {
    let report = loadgen::run(&Load {
        addr,
        paths,
        clients: params.clients,
        mode,
        warmup: params.warmup,
        duration: params.window,
    })?;
    Ok(checked(report))
}

/// A small-file run's report, checked: no failure, and every body whole.
fn checked(report: Report) -> Report {
    assert_eq!(
        report.errors, 0,
        "requests failed, the first: {:?}",
        report.first_error
    );
    // Completed at all, not necessarily inside the window: on a busy
    // machine a smoke run's short window may hold none.
    assert!(report.completed > 0, "no request completed: {report:?}");
    assert_eq!(report.bytes, report.requests * SMALL as u64);
    report
}

// ---------------------------------------------------------------------------
// The stats snapshot read on every request

/// Keep-alive 4 KiB GETs to [`Server`] (as `small`'s persistent filesrv),
/// plain and with every client reading [`Server::stats`] after each
/// response, runs interleaved: what reading the snapshot on every request
/// costs. It goes through whatever the manager does for a snapshot, so it
/// can be rerun unchanged after the manager changes.
fn stats_cost(root: &Path, paths: &[String], params: &Params) -> io::Result<()> {
    // More runs than the other scenarios: the difference sought is ~1%.
    let runs = 2 * params.small_runs - 1;
    println!(
        "\nstats: {} B files, {} clients, persistent, {:?} warm-up + {:?} window per run, {runs} runs each",
        SMALL, params.clients, params.warmup, params.window
    );
    let server = serve(ServerConfig::new(root).max_running(params.clients))?;
    let load = Load {
        addr: server.local_addr(),
        paths,
        clients: params.clients,
        mode: Mode::Persistent,
        warmup: params.warmup,
        duration: params.window,
    };
    let read_stats = || {
        std::hint::black_box(server.stats());
    };
    let mut plain = Vec::new();
    let mut reading = Vec::new();
    for _ in 0..runs {
        plain.push(checked(loadgen::run(&load)?));
        reading.push(checked(loadgen::run_with(&load, &read_stats)?));
    }
    let base = median(&rates(&plain));
    println!(
        "  {:<24} {:>10} {:>8} {:>9} {:>9}   runs (req/s)",
        "", "req/s", "x plain", "p50", "p99"
    );
    print_rates(24, "plain", &plain, base);
    print_rates(24, "stats() per request", &reading, base);
    // Each run against the plain run just before it: drift cancels out.
    let pairs: Vec<f64> = rates(&reading)
        .iter()
        .zip(rates(&plain))
        .map(|(with, without)| with / without)
        .collect();
    println!(
        "  median of the {runs} paired ratios: {:.4}   ({})",
        median(&pairs),
        list(&pairs, 4)
    );
    shut_down_clean(&server);
    Ok(())
}

/// Checks that `server` failed, panicked on and refused nothing, then
/// shuts it down.
fn shut_down_clean(server: &Server) {
    let stats = server.stats();
    assert_eq!(
        stats.failed + stats.panicked + stats.refused_total(),
        0,
        "{stats:?}"
    );
    server.shutdown();
}

/// One result line: the median rate, its ratio to `base`, the median p50
/// and p99, and every run's rate.
fn print_rates(width: usize, label: &str, reports: &[Report], base: f64) {
    let r = rates(reports);
    let m = median(&r);
    println!(
        "  {label:<width$} {m:>10.0} {:>8.2} {:>9} {:>9}   {}",
        m / base,
        micros(median_by(reports, |r| r.latency(500))),
        micros(median_by(reports, |r| r.latency(990))),
        list(&r, 0),
    );
}

fn rates(reports: &[Report]) -> Vec<f64> {
    reports.iter().map(Report::rate).collect()
}

fn median_by(reports: &[Report], f: impl Fn(&Report) -> Duration) -> Duration {
    Duration::from_secs_f64(median(
        &reports
            .iter()
            .map(|r| f(r).as_secs_f64())
            .collect::<Vec<_>>(),
    ))
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// What the lab's server amounts to: an accept loop that spawns a thread
/// per connection, which reads request lines through a `BufReader` and
/// sends files with `io::copy`. `GET` and `QUIT` only, and no confinement
/// beneath the root: the bench asks only for its own files.
struct Lab {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    /// Returns the connection threads still running when it ends.
    accept: JoinHandle<Vec<JoinHandle<()>>>,
}

impl Lab {
    fn start(root: &Path) -> io::Result<Lab> {
        let listener = machine::pinned_listener()?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(AtomicUsize::new(0));
        let (stopping, counting, root) = (stop.clone(), live.clone(), root.to_owned());
        let accept = thread::Builder::new()
            .name("lab-accept".to_owned())
            .spawn(move || {
                let mut sessions: Vec<JoinHandle<()>> = Vec::new();
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (root, live) = (root.clone(), counting.clone());
                    // The lab detaches its threads; here finished ones are
                    // let go (detached) as new ones come, and the rest
                    // are handed to `stop` to join.
                    sessions.retain(|s| !s.is_finished());
                    if let Ok(session) = thread::Builder::new().spawn(move || {
                        live.fetch_add(1, Ordering::SeqCst);
                        let _ = lab_session(stream, &root);
                        live.fetch_sub(1, Ordering::SeqCst);
                    }) {
                        sessions.push(session);
                    }
                }
                sessions
            })?;
        Ok(Lab {
            addr,
            stop,
            live,
            accept,
        })
    }

    /// Stops accepting and joins the connection threads; every client
    /// must have closed already, which ends its session's read.
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        for session in self.accept.join().unwrap_or_default() {
            let _ = session.join();
        }
    }
}

fn lab_session(stream: TcpStream, root: &Path) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request = line.trim_end();
        if let Some(path) = request.strip_prefix("GET ") {
            match File::open(root.join(path)) {
                Ok(mut file) => {
                    let len = file.metadata()?.len();
                    // One write for the header (`writeln!` on the bare
                    // socket would make three).
                    out.write_all(format!("OK {len}\n").as_bytes())?;
                    io::copy(&mut file, &mut out)?;
                }
                Err(_) => out.write_all(b"ERR not-found no such file\n")?,
            }
        } else if request.eq_ignore_ascii_case("QUIT") {
            return out.write_all(b"OK bye\n");
        } else {
            out.write_all(b"ERR bad-request unknown request\n")?;
        }
    }
}

// ---------------------------------------------------------------------------
// Waiting cost

fn waiting(root: &Path, small: &str, params: &Params) -> io::Result<()> {
    println!(
        "\nwaiting: server VmRSS (child process), {} running + {} waiting connections\n  \
         (lab: a thread-per-connection server written in this bench, the baseline)",
        params.running, params.waiting
    );
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..params.waiting_runs {
        ours.push(hold(root, small, "filesrv", params)?);
        theirs.push(hold(root, small, "lab", params)?);
    }
    println!(
        "  {:<8} {:>9} {:>12} {:>14} {:>16}",
        "", "idle", "+running", "+waiting", "per waiting conn"
    );
    for (name, runs) in [("filesrv", &ours), ("lab", &theirs)] {
        let pick =
            |f: fn(&[u64; 3]) -> u64| median(&runs.iter().map(|r| f(r) as f64).collect::<Vec<_>>());
        let (idle, running, all) = (pick(|r| r[0]), pick(|r| r[1]), pick(|r| r[2]));
        println!(
            "  {name:<8} {:>9} {:>12} {:>14} {:>13.1} KiB   runs (all): {}",
            mib(idle),
            mib(running),
            mib(all),
            (all - running) / params.waiting as f64,
            list(
                &runs
                    .iter()
                    .map(|r| r[2] as f64 / 1024.0)
                    .collect::<Vec<_>>(),
                1
            )
        );
    }
    Ok(())
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// Starts a server (`filesrv` or `lab`) in a child process, and returns its
/// VmRSS in KiB: idle, with `running` connections served one `GET` each,
/// and with `waiting` more connections admitted.
fn hold(root: &Path, small: &str, role: &str, params: &Params) -> io::Result<[u64; 3]> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, role)
        .env("FILESRV_TRANSFER_ROOT", root)
        .env("FILESRV_TRANSFER_RUNNING", params.running.to_string())
        .env("FILESRV_TRANSFER_WAITING", params.waiting.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_child = child.stdin.take().expect("piped");
    let mut from_child = BufReader::new(child.stdout.take().expect("piped"));
    let mut read_line = || -> io::Result<String> {
        let mut line = String::new();
        from_child.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    };
    let addr: SocketAddr = read_line()?.parse().map_err(io::Error::other)?;
    let mut stats = || -> io::Result<[u64; 3]> {
        writeln!(to_child, "stats")?;
        let line = read_line()?;
        let mut fields = line.split(' ').map(str::parse::<u64>);
        let mut next = || {
            fields
                .next()
                .and_then(Result::ok)
                .ok_or_else(|| io::Error::other(line.clone()))
        };
        Ok([next()?, next()?, next()?])
    };
    let idle = stats()?[2];
    let mut running = Vec::with_capacity(params.running);
    for _ in 0..params.running {
        let mut conn = Conn::connect(addr, 8192)?;
        conn.get(small)?;
        running.push(conn);
    }
    let [run_count, _, with_running] = stats()?;
    assert_eq!(run_count, params.running as u64);
    let mut waiting: Vec<Conn> = (0..params.waiting)
        .map(|_| Conn::connect(addr, MAX_LINE))
        .collect::<io::Result<_>>()?;
    // A handshake, not a poll, tells when all of them are in place.
    if role == "lab" {
        // The lab runs every connection at once: one reply each proves
        // its thread is up.
        for conn in &mut waiting {
            conn.get(small)?;
        }
    } else {
        // The server's queue holds exactly `waiting`, and the accepting
        // thread admits in order: the next connection's `ERR busy` means
        // every earlier one was admitted.
        let mut marker = Conn::connect(addr, MAX_LINE)?;
        let line = marker.line()?;
        if !line.starts_with(b"ERR busy") {
            return Err(io::Error::other(format!(
                "{role}: expected ERR busy, got {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
    }
    let [run_now, wait_now, with_waiting] = stats()?;
    if run_now + wait_now != (params.running + params.waiting) as u64 {
        return Err(io::Error::other(format!(
            "{role}: {run_now} running, {wait_now} waiting"
        )));
    }
    drop(waiting);
    drop(running);
    drop(to_child);
    child.wait()?;
    Ok([idle, with_running, with_waiting])
}

/// The child process of the waiting-cost scenario: serves on 127.0.0.1:0,
/// prints the address, answers each `stats` line on stdin with `<running>
/// <waiting> <VmRSS KiB>`, and stops at the end of stdin.
fn child(role: &str) -> io::Result<()> {
    let var = |name: &str| std::env::var(name).map_err(io::Error::other);
    let root = PathBuf::from(var("FILESRV_TRANSFER_ROOT")?);
    let running: usize = var("FILESRV_TRANSFER_RUNNING")?
        .parse()
        .map_err(io::Error::other)?;
    let waiting: usize = var("FILESRV_TRANSFER_WAITING")?
        .parse()
        .map_err(io::Error::other)?;
    raise_fd_limit();
    let mut out = io::stdout().lock();
    let stats: Box<dyn Fn() -> (usize, usize)> = match role {
        "filesrv" => {
            let server = serve(
                ServerConfig::new(&root)
                    .max_running(running)
                    .max_waiting(waiting)
                    .idle_timeout(None)
                    // Held connections stay: nobody is asked to make room.
                    .busy_idle_timeout(None)
                    .busy_session_limit(None)
                    .shutdown_grace(Duration::from_secs(1)),
            )?;
            writeln!(out, "{}", server.local_addr())?;
            Box::new(move || {
                let stats = server.stats();
                (stats.running, stats.waiting)
            })
        }
        "lab" => {
            let lab = Lab::start(&root)?;
            writeln!(out, "{}", lab.addr)?;
            // Every connection runs in the lab: count them all as running.
            Box::new(move || (lab.live.load(Ordering::SeqCst), 0))
        }
        _ => return Err(io::Error::other(format!("unknown role {role}"))),
    };
    out.flush()?;
    for line in io::stdin().lock().lines() {
        if line? == "stats" {
            let (running, waiting) = stats();
            writeln!(out, "{running} {waiting} {}", vm_rss_kib()?)?;
            out.flush()?;
        }
    }
    // Dropping the server shuts it down; the lab's threads die with us.
    drop(stats);
    Ok(())
}

fn vm_rss_kib() -> io::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/self/status"))
}

// ---------------------------------------------------------------------------
// Helpers

/// Starts a [`Server`] on 127.0.0.1 with a free port, on a listener with
/// the pinned congestion control.
fn serve(config: ServerConfig) -> io::Result<Server> {
    Server::from_listener(machine::pinned_listener()?, config).map_err(io::Error::other)
}

/// Raises the soft limit on open files to the hard one: the waiting-cost
/// scenario holds two descriptors per connection in the parent and one in
/// the child.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

fn timed(f: impl FnOnce() -> io::Result<u64>) -> io::Result<(u64, Duration)> {
    let began = Instant::now();
    let bytes = f()?;
    Ok((bytes, began.elapsed()))
}
