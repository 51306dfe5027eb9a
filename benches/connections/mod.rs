//! The `connections` scenario of the transfer bench: what a new connection
//! costs, `filesrv` against nginx from the distribution's packages.
//!
//! 4 KiB GETs (the `small` scenario's 64 files) from a closed loop of
//! clients, all in one run, the two servers interleaved (which goes first
//! alternates from run to run):
//!
//! - `per-request, 8 clients`: a new connection per request, the figure
//!   this scenario is for. `filesrv` speaks its protocol (`GET`, `QUIT`,
//!   end of stream), nginx HTTP/1.0 (`GET /path`, end of stream); in both
//!   the server closes first.
//! - `per-request, 8 clients, deferred`: the same with both servers
//!   deferring accept (`filesrv` with `defer_accept`, nginx with
//!   `listen ... deferred`): a connection reaches the server with its
//!   request.
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
//! [`against_baseline`] (`baseline`) is the same-run before/after figure
//! of a change, on the same loads.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use filesrv::protocol::ServerConfig;

use super::common::ChildServer;
use super::nginx::Nginx;
use super::{Params, SMALL, list, median, print_rates, rates, serve, shut_down_clean};
use cpu::Cpu;
use filesrv_testkit::loadgen::{self, Load, Mode, Protocol, Report};

pub(crate) mod cpu;

/// The loads of the scenario: connection use, clients, and whether both
/// servers defer accepting.
const LOADS: [(Mode, usize, bool); 4] = [
    (Mode::PerRequest, 8, false),
    (Mode::PerRequest, 8, true),
    (Mode::Persistent, 8, false),
    (Mode::Persistent, 64, false),
];

/// One server under load: its name, address, protocol, and where its CPU
/// time is read.
struct Contender {
    name: &'static str,
    addr: SocketAddr,
    protocol: Protocol,
    cpu: Cpu,
}

pub(crate) fn connections(root: &Path, paths: &[String], params: &Params) -> io::Result<()> {
    println!(
        "\nconnections: {SMALL} B files, filesrv (max_running = clients) vs nginx, \
         {:?} warm-up + {:?} window per run, {} runs",
        params.warmup,
        params.window,
        runs_of(params)
    );
    let nginx = Nginx::start(root, false)?;
    let deferring_nginx = Nginx::start(root, true)?;
    println!(
        "  {:<44} {:>10} {:>8} {:>9} {:>9}   runs (req/s)",
        "", "req/s", "x nginx", "p50", "p99"
    );
    for (mode, clients, deferred) in LOADS {
        let config = ServerConfig::new(root)
            .max_running(clients)
            .defer_accept(deferred);
        let server = serve(config)?;
        let nginx = if deferred { &deferring_nginx } else { &nginx };
        let contenders = [
            Contender {
                name: "filesrv",
                addr: server.local_addr(),
                protocol: Protocol::Filesrv,
                cpu: Cpu::ServerThreads,
            },
            Contender {
                name: "nginx",
                addr: nginx.addr,
                protocol: Protocol::Http,
                cpu: Cpu::Process(nginx.pid()),
            },
        ];
        compare(&contenders, mode, clients, deferred, paths, params)?;
        shut_down_clean(&server);
    }
    Ok(())
}

/// `baseline`: with `FILESRV_BASELINE=<path to an earlier build's
/// filesrv>`, every load of [`LOADS`] against this build's `filesrv`
/// binary and the earlier one, both child processes with the same
/// arguments (`max_running` = clients; silent but for their address
/// line), runs interleaved.
pub(crate) fn against_baseline(root: &Path, paths: &[String], params: &Params) -> io::Result<()> {
    let Some(baseline) = std::env::var_os("FILESRV_BASELINE") else {
        return Ok(());
    };
    println!(
        "\nbaseline: {SMALL} B files, max_running = clients, this build's filesrv vs {}",
        baseline.to_string_lossy()
    );
    println!(
        "  {:<44} {:>10} {:>8} {:>9} {:>9}   runs (req/s)",
        "", "req/s", "x base", "p50", "p99"
    );
    let program = Path::new(env!("CARGO_BIN_EXE_filesrv"));
    // The earlier build may not have --defer-accept.
    for (mode, clients, _) in LOADS.into_iter().filter(|load| !load.2) {
        let ours = ChildServer::start(program, root, clients, &[])?;
        let theirs = ChildServer::start(Path::new(&baseline), root, clients, &[])?;
        let contenders = [
            Contender {
                name: "this build",
                addr: ours.addr,
                protocol: Protocol::Filesrv,
                cpu: Cpu::Process(ours.child.id()),
            },
            Contender {
                name: "baseline",
                addr: theirs.addr,
                protocol: Protocol::Filesrv,
                cpu: Cpu::Process(theirs.child.id()),
            },
        ];
        compare(&contenders, mode, clients, false, paths, params)?;
    }
    Ok(())
}

/// `protocols`: one `filesrv` (`max_running` = clients) and one client,
/// the bench's, speaking HTTP/1.1 and the line protocol in turn:
/// keep-alive GETs of the 4 KiB files, 8 and 64 clients. What the HTTP
/// path costs the server beside the line protocol's, per request.
pub(crate) fn protocols(root: &Path, paths: &[String], params: &Params) -> io::Result<()> {
    println!(
        "\nprotocols: {SMALL} B files, keep-alive, one filesrv (max_running = clients), \
         the same client speaking HTTP/1.1 and the line protocol, {} runs",
        runs_of(params)
    );
    println!(
        "  {:<44} {:>10} {:>8} {:>9} {:>9}   runs (req/s)",
        "", "req/s", "x line", "p50", "p99"
    );
    for clients in [8, 64] {
        let server = serve(ServerConfig::new(root).max_running(clients))?;
        let contender = |name, protocol| Contender {
            name,
            addr: server.local_addr(),
            protocol,
            cpu: Cpu::ServerThreads,
        };
        let contenders = [
            contender("HTTP", Protocol::Http),
            contender("line", Protocol::Filesrv),
        ];
        compare(&contenders, Mode::Persistent, clients, false, paths, params)?;
        shut_down_clean(&server);
    }
    Ok(())
}

fn label(mode: Mode, clients: usize, deferred: bool) -> String {
    let deferred = if deferred { ", deferred" } else { "" };
    match mode {
        Mode::Persistent => format!("keep-alive, {clients} clients{deferred}"),
        Mode::PerRequest => format!("per-request, {clients} clients{deferred}"),
    }
}

/// Runs the load against each contender [`runs_of`] times,
/// interleaved, and prints each one's median against the last one's, with
/// the ratio of the first to the last in every run; then the same for the
/// servers' CPU time per request.
fn compare(
    contenders: &[Contender; 2],
    mode: Mode,
    clients: usize,
    deferred: bool,
    paths: &[String],
    params: &Params,
) -> io::Result<()> {
    let label = &label(mode, clients, deferred);
    let mut reports: [Vec<Report>; 2] = [Vec::new(), Vec::new()];
    let mut cpu: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for run in 0..runs_of(params) {
        // Alternating who goes first spreads a drift of the machine's
        // speed evenly.
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (report, cpu_per_request) =
                checked_run(&contenders[i], mode, clients, paths, params)?;
            reports[i].push(report);
            cpu[i].push(cpu_per_request.as_secs_f64() * 1e6);
        }
    }
    let rates = reports.each_ref().map(|r| rates(r));
    let base = median(&rates[1]);
    for (contender, reports) in contenders.iter().zip(&reports) {
        print_rates(44, &format!("{label} {}", contender.name), reports, base);
    }
    print_ratios(label, contenders, &rates[0], &rates[1], "");
    for (contender, cpu) in contenders.iter().zip(&cpu) {
        println!(
            "  {:<44} {:>10.1} µs of server CPU per request   {}",
            format!("{label} {}", contender.name),
            median(cpu),
            list(cpu, 1)
        );
    }
    print_ratios(label, contenders, &cpu[0], &cpu[1], " (CPU)");
    Ok(())
}

/// `params.small_runs`, or `FILESRV_BENCH_RUNS` when set.
fn runs_of(params: &Params) -> usize {
    super::runs_of(params.small_runs)
}

/// The median of the same-run ratios of `ours` to `theirs`, and each.
fn print_ratios(
    label: &str,
    contenders: &[Contender; 2],
    ours: &[f64],
    theirs: &[f64],
    what: &str,
) {
    let ratios: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| a / b).collect();
    println!(
        "  {:<44} {:>10.2}   (the median of the same-run ratios {})",
        format!(
            "{label} {} / {}{what}",
            contenders[0].name, contenders[1].name
        ),
        median(&ratios),
        list(&ratios, 2)
    );
}

/// One closed-loop run, checked: no failure, and every body whole; with
/// the server's CPU time per request.
fn checked_run(
    contender: &Contender,
    mode: Mode,
    clients: usize,
    paths: &[String],
    params: &Params,
) -> io::Result<(Report, Duration)> {
    let load = Load {
        addr: contender.addr,
        paths,
        clients,
        mode,
        warmup: params.warmup,
        duration: params.window,
    };
    let cpu_before = contender.cpu.used()?;
    let report = loadgen::run_speaking(&load, contender.protocol)?;
    let cpu = contender.cpu.used()?.saturating_sub(cpu_before);
    assert_eq!(
        report.errors, 0,
        "{}: requests failed, the first: {:?}",
        contender.name, report.first_error
    );
    assert!(
        // At all, not necessarily inside a busy machine's short window.
        report.completed > 0,
        "{}: no request completed",
        contender.name
    );
    assert_eq!(report.bytes, report.requests * SMALL as u64);
    // The CPU time covers the warm-up too, at about the same rate.
    let served = report.rate() * (params.warmup + params.window).as_secs_f64();
    let cpu_per_request = cpu.div_f64(served);
    Ok((report, cpu_per_request))
}
