//! The `connections` scenario of the transfer bench: what a new connection
//! costs, `filesrv` against nginx from the distribution's packages.
//!
//! 4 KiB GETs (the `small` scenario's 64 files) from a closed loop of
//! clients, all in one run, the two servers interleaved (which goes first
//! alternates from run to run):
//!
//! - `per-request, 8 clients`: a new connection per request, the figure
//!   this scenario is for. `filesrv` speaks its protocol (`GET`, `QUIT`,
//!   end of stream), nginx HTTP/1.1 (`GET /path` with `Connection: close`,
//!   end of stream); in both the server closes first.
//! - `keep-alive, 8 and 64 clients`: one connection per client, for
//!   context.
//!
//! `filesrv` is a [`Server`] in this process with its default settings
//! and `max_running` equal to the clients, so no connection ever waits
//! for a slot: a thread-per-connection server is deployed with enough
//! slots for its concurrency, as nginx's two workers (one per core,
//! `worker_processes auto`) each take up to 1,024 connections at once.
//! nginx runs as a child process ([`Nginx`]).
//!
//! With `FILESRV_BASELINE=<path to an earlier build's filesrv>`, the
//! per-request load also runs against this build's `filesrv` binary and
//! the earlier one, both as child processes with the same arguments,
//! interleaved: the same-run before/after figure of a change.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use filesrv::protocol::ServerConfig;

use super::common::ChildServer;
use super::loadgen::{self, Load, Mode, Protocol, Report};
use super::nginx::Nginx;
use super::{Params, SMALL, list, median, median_by, micros, rates, serve};

/// The loads of the scenario: connection use and clients.
const LOADS: [(Mode, usize); 3] = [
    (Mode::PerRequest, 8),
    (Mode::Persistent, 8),
    (Mode::Persistent, 64),
];

/// One server under load: its name, address and protocol.
struct Contender {
    name: &'static str,
    addr: SocketAddr,
    protocol: Protocol,
}

pub(crate) fn connections(root: &Path, paths: &[String], params: &Params) -> io::Result<()> {
    println!(
        "\nconnections: {SMALL} B files, filesrv (max_running = clients) vs nginx, \
         {:?} warm-up + {:?} window per run, {} runs",
        params.warmup, params.window, params.small_runs
    );
    let nginx = Nginx::start(root)?;
    println!(
        "  {:<34} {:>10} {:>8} {:>9} {:>9}   runs (req/s)",
        "", "req/s", "x nginx", "p50", "p99"
    );
    for (mode, clients) in LOADS {
        let server = serve(ServerConfig::new(root).max_running(clients))?;
        let contenders = [
            Contender {
                name: "filesrv",
                addr: server.local_addr(),
                protocol: Protocol::Filesrv,
            },
            Contender {
                name: "nginx",
                addr: nginx.addr,
                protocol: Protocol::Http,
            },
        ];
        let label = match mode {
            Mode::Persistent => format!("keep-alive, {clients} clients"),
            Mode::PerRequest => format!("per-request, {clients} clients"),
        };
        compare(&label, &contenders, mode, clients, paths, params)?;
        let stats = server.stats();
        assert_eq!(
            stats.failed + stats.panicked + stats.refused_total(),
            0,
            "{stats:?}"
        );
        server.shutdown();
    }
    drop(nginx);
    if let Some(baseline) = std::env::var_os("FILESRV_BASELINE") {
        let (mode, clients) = LOADS[0];
        let program = Path::new(env!("CARGO_BIN_EXE_filesrv"));
        let ours = ChildServer::start(program, root, clients, &[])?;
        let theirs = ChildServer::start(Path::new(&baseline), root, clients, &[])?;
        let contenders = [
            Contender {
                name: "this build",
                addr: ours.addr,
                protocol: Protocol::Filesrv,
            },
            Contender {
                name: "baseline",
                addr: theirs.addr,
                protocol: Protocol::Filesrv,
            },
        ];
        println!("  (child processes; the ratio is to the baseline)");
        compare("per-request", &contenders, mode, clients, paths, params)?;
    }
    Ok(())
}

/// Runs the load against each contender `params.small_runs` times,
/// interleaved, and prints each one's median against the last one's, with
/// the ratio of the first to the last in every run.
fn compare(
    label: &str,
    contenders: &[Contender; 2],
    mode: Mode,
    clients: usize,
    paths: &[String],
    params: &Params,
) -> io::Result<()> {
    let mut reports: [Vec<Report>; 2] = [Vec::new(), Vec::new()];
    for run in 0..params.small_runs {
        // Alternating who goes first spreads a drift of the machine's
        // speed evenly.
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let report = checked_run(&contenders[i], mode, clients, paths, params)?;
            reports[i].push(report);
        }
    }
    let base = median(&rates(&reports[1]));
    let ratios: Vec<f64> = reports[0]
        .iter()
        .zip(&reports[1])
        .map(|(ours, theirs)| ours.rate() / theirs.rate())
        .collect();
    for (contender, reports) in contenders.iter().zip(&reports) {
        let r = rates(reports);
        let m = median(&r);
        println!(
            "  {:<34} {m:>10.0} {:>8.2} {:>9} {:>9}   {}",
            format!("{label} {}", contender.name),
            m / base,
            micros(median_by(reports, |r| r.latency(500))),
            micros(median_by(reports, |r| r.latency(990))),
            list(&r, 0),
        );
    }
    println!(
        "  {:<34} {:>10.2}   (the median of the same-run ratios {})",
        format!("{label} {} / {}", contenders[0].name, contenders[1].name),
        median(&ratios),
        list(&ratios, 2)
    );
    Ok(())
}

/// One closed-loop run, checked: no failure, and every body whole.
fn checked_run(
    contender: &Contender,
    mode: Mode,
    clients: usize,
    paths: &[String],
    params: &Params,
) -> io::Result<Report> {
    let load = Load {
        addr: contender.addr,
        paths,
        clients,
        mode,
        warmup: params.warmup,
        duration: params.window,
    };
    let report = loadgen::run_speaking(&load, contender.protocol)?;
    assert_eq!(
        report.errors, 0,
        "{}: requests failed, the first: {:?}",
        contender.name, report.first_error
    );
    assert!(
        report.requests > 0,
        "{}: no request completed",
        contender.name
    );
    assert_eq!(report.bytes, report.requests * SMALL as u64);
    Ok(report)
}
