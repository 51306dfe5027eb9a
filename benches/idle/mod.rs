//! The `idle` and `http` scenarios of the transfer bench: HTTP/1.1 loads
//! from one client, `wrk` (Debian's package), against the `filesrv`
//! binary, nginx and Apache httpd's event MPM, all in one run, rounds
//! interleaved, medians of the same-round ratios.
//!
//! - `idle`: thousands of idle keep-alive connections (each did one GET
//!   of the 4 KiB file and then stays silent, held by this process; see
//!   [`hold`]) open while `wrk -t2 -c64` runs keep-alive GETs of the same
//!   file. Per round, each in its turn:
//!   - `filesrv <port> 8 --park-idle` with the idle connections, and the
//!     same server without them (the idle connections' cost to the
//!     load);
//!   - nginx and Apache's event MPM with the same idle connections (and,
//!     in a full run, without them, for context);
//!   - `filesrv 64` and `filesrv 64 --park-idle`, no idle connections:
//!     what parking and waking up cost per request, the slots equal.
//!
//!   With the idle connections open, the server's resident memory
//!   (`VmRSS`, its processes summed) is read before and after they are
//!   opened: the memory an idle connection costs. After the load every
//!   idle connection is checked still open: a server that closed some to
//!   keep up is said so (and for `filesrv` it is an error). Each server's
//!   CPU time (user + system, its processes summed) over the load divided
//!   by the requests wrk counted is its CPU per request, and its threads'
//!   context switches divided likewise the wake-ups a request costs.
//! - `http`: the same client on the loads of issue 25: 4 KiB keep-alive
//!   GETs with 64 and 8 connections, and with `Connection: close` (a new
//!   connection per request, the server closing first) with 8, then the
//!   same with both servers deferring accept (`--defer-accept`, nginx's
//!   `deferred`); `filesrv <port> <clients>` (no connection ever waits
//!   for a slot) against nginx.
//!
//! `filesrv` runs as the binary (`CARGO_BIN_EXE_filesrv`) with
//! `--idle-timeout 600` in `idle`, nginx as in the `connections` scenario
//! with `worker_connections` for all the idle connections and
//! `keepalive_timeout 600s`, httpd as [`Apache`] sets it up: no server
//! closes an idle connection for its age during the run. Without `wrk`,
//! nginx or `apache2` installed, one line says so and the scenarios are
//! left out (under `CI=true` they fail). A `filesrv` without
//! `--park-idle` is measured without it, and the rows that need it are
//! left out with a line saying so.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::apache::{self, Apache};
use super::common::ChildServer;
use super::connections::cpu::Cpu;
use super::nginx::Nginx;
use super::{Params, SMALL, list, median, runs_of};
use filesrv_testkit::tools;
use hold::Idle;

mod hold;
pub(crate) mod wrk;

/// Slots of the parking `filesrv` under the idle load.
const PARKING_SLOTS: usize = 8;
/// wrk's connections in the `idle` scenario.
const CLIENTS: usize = 64;

/// A server as a child process: what the rows call it, where it listens,
/// and its process id (its children are counted with it).
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) pid: u32,
}

/// One row of the `idle` scenario: a server, and whether the idle
/// connections are open during its load.
struct Row<'a> {
    target: &'a Target,
    idle: bool,
    runs: Vec<Measured>,
}

impl Row<'_> {
    fn label(&self, idle: usize) -> String {
        if self.idle {
            format!("{}, {} idle", self.target.name, thousands(idle))
        } else {
            self.target.name.clone()
        }
    }
}

/// What one load of one row gave.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Measured {
    pub(crate) rate: f64,
    /// Server CPU per request, µs.
    pub(crate) cpu: f64,
    /// The server's context switches per request (its threads', voluntary
    /// or not): the wake-ups a request costs.
    pub(crate) switches: f64,
    /// VmRSS before and with the idle connections (KiB), the server's
    /// threads with them, and how many the server closed during the load.
    rss: Option<(u64, u64)>,
    threads: u64,
    closed: usize,
    /// wrk's socket errors: keep-alive connections the server closed
    /// under the load (an error for `filesrv`).
    pub(crate) socket_errors: u64,
}

pub(crate) fn idle(root: &Path, file: &str, params: &Params) -> io::Result<()> {
    let (Some(wrk), Some(_), Some(_)) = (
        tools::require("wrk"),
        tools::require("nginx"),
        tools::require("apache2"),
    ) else {
        return Ok(());
    };
    let program = Path::new(env!("CARGO_BIN_EXE_filesrv"));
    let parks = parks(program)?;
    let idle = params.idle;
    let load = wrk::Load {
        connections: CLIENTS,
        seconds: params.wrk_seconds,
        close: false,
        tls: false,
    };
    let rounds = runs_of(params.idle_runs);
    let max_parked = (idle + 1000).to_string();
    let parking: &[&str] = &["--park-idle", "--max-parked", &max_parked];
    let timeout = ["--idle-timeout", "600"];
    println!(
        "\nidle: {} idle keep-alive connections (one GET each, then silent) beside \
         wrk -t2 -c{CLIENTS} -d{}s of {SMALL} B keep-alive GETs; {rounds} rounds\n  \
         filesrv --idle-timeout 600 [--park-idle --max-parked {max_parked}]; nginx \
         worker_connections {}, keepalive_timeout 600s; apache2 event MPM: {}",
        thousands(idle),
        params.wrk_seconds,
        idle + 2 * CLIENTS,
        apache::EVENT_MPM.replace('\n', ", ")
    );
    if !parks {
        println!(
            "  this filesrv has no --park-idle: the rows with it (and the idle \
             connections on filesrv) are left out"
        );
    }
    let flags = |park: bool| -> Vec<&str> {
        let mut flags = timeout.to_vec();
        if park && parks {
            flags.extend_from_slice(parking);
        }
        flags
    };
    let parked8 = ChildServer::start(program, root, PARKING_SLOTS, &flags(true))?;
    let plain64 = ChildServer::start(program, root, CLIENTS, &flags(false))?;
    let parked64 = ChildServer::start(program, root, CLIENTS, &flags(true))?;
    let nginx = Nginx::start_sized(root, false, idle + 2 * CLIENTS)?;
    let apache = Apache::start(root)?;
    let park_word = if parks { " --park-idle" } else { "" };
    let target = |name: String, server: &ChildServer| Target {
        name,
        addr: server.addr,
        pid: server.child.id(),
    };
    let targets = [
        target(format!("filesrv {PARKING_SLOTS}{park_word}"), &parked8),
        Target {
            name: "nginx".to_owned(),
            addr: nginx.addr,
            pid: nginx.pid(),
        },
        Target {
            name: "apache2 event".to_owned(),
            addr: apache.addr,
            pid: apache.pid(),
        },
        target(format!("filesrv {CLIENTS}"), &plain64),
        target(format!("filesrv {CLIENTS} --park-idle"), &parked64),
    ];
    let [ours, nginx_t, apache_t, plain_t, parked64_t] = &targets;
    let row = |target, idle| Row {
        target,
        idle,
        runs: Vec::new(),
    };
    let mut rows = Vec::new();
    if parks {
        // Without parking, 8 slots cannot hold the idle connections.
        rows.push(row(ours, true));
    }
    rows.extend([
        row(ours, false),
        row(nginx_t, true),
        row(apache_t, true),
        row(plain_t, false),
    ]);
    if parks {
        // Without parking this would be `filesrv 64` again.
        rows.push(row(parked64_t, false));
    }
    if params.full_rows {
        rows.extend([row(nginx_t, false), row(apache_t, false)]);
    }
    // Warm-up: every server's workers and buffers, once.
    for t in targets.iter().filter(|_| params.full_rows) {
        wrk::run(&wrk, t.addr, file, wrk::Load { seconds: 1, ..load })?;
    }
    for round in 0..rounds {
        // Each round starts one row further along.
        for k in 0..rows.len() {
            let i = (round + k) % rows.len();
            let row = &rows[i];
            let measured = measure(&wrk, row.target, row.idle.then_some(idle), file, load)?;
            if (measured.closed > 0 || measured.socket_errors > 0) && row.target.pid == ours.pid {
                return Err(io::Error::other(format!(
                    "{}: closed {} idle connections during the load, wrk saw {} socket errors",
                    row.label(idle),
                    measured.closed,
                    measured.socket_errors
                )));
            }
            rows[i].runs.push(measured);
        }
    }
    drop((parked8, plain64, parked64, nginx, apache));
    report_idle(&rows, idle, ours, parks);
    Ok(())
}

/// One load of `wrk` against `target`, with `idle` connections held open
/// meanwhile if given.
pub(crate) fn measure(
    wrk: &Path,
    target: &Target,
    idle: Option<usize>,
    file: &str,
    load: wrk::Load,
) -> io::Result<Measured> {
    let mut measured = Measured::default();
    let held = match idle {
        Some(count) => {
            let before = rss_kib(target.pid)?;
            let held = Idle::open(target.addr, count, file, SMALL)
                .map_err(|e| io::Error::other(format!("{}: {e}", target.name)))?;
            measured.rss = Some((before, rss_kib(target.pid)?));
            measured.threads = threads(target.pid)?;
            Some(held)
        }
        None => None,
    };
    let cpu = Cpu::Process(target.pid);
    let cpu_before = cpu.used()?;
    let switches_before = switches(target.pid)?;
    let run = wrk::run(wrk, target.addr, file, load)
        .map_err(|e| io::Error::other(format!("{}: {e}", target.name)))?;
    let used = cpu.used()?.saturating_sub(cpu_before);
    let switched = switches(target.pid)?.saturating_sub(switches_before);
    measured.rate = run.rate;
    measured.cpu = used.as_secs_f64() * 1e6 / run.requests as f64;
    measured.switches = switched as f64 / run.requests as f64;
    measured.socket_errors = run.socket_errors;
    if let Some(held) = &held {
        measured.closed = held.closed()?;
    }
    Ok(measured)
}

fn report_idle(rows: &[Row<'_>], idle: usize, ours: &Target, parks: bool) {
    println!(
        "  {:<40} {:>10} {:>12} {:>10}   runs (req/s)",
        "", "req/s", "µs CPU/req", "cs/req"
    );
    for row in rows {
        let pick = |f: fn(&Measured) -> f64| row.runs.iter().map(f).collect::<Vec<f64>>();
        let rates = pick(|m| m.rate);
        println!(
            "  {:<40} {:>10.0} {:>12.1} {:>10.2}   {}",
            row.label(idle),
            median(&rates),
            median(&pick(|m| m.cpu)),
            median(&pick(|m| m.switches)),
            list(&rates, 0)
        );
    }
    let find = |name: &str, idle: bool| {
        rows.iter()
            .find(|r| r.target.name.starts_with(name) && r.idle == idle)
    };
    let ratio = |label: &str, a: Option<&Row<'_>>, b: Option<&Row<'_>>, target: &str| {
        let (Some(a), Some(b)) = (a, b) else { return };
        let ratios: Vec<f64> = a
            .runs
            .iter()
            .zip(&b.runs)
            .map(|(a, b)| a.rate / b.rate)
            .collect();
        println!(
            "  {label:<44} {:>6.2}x  (target {target}; the same-round ratios {})",
            median(&ratios),
            list(&ratios, 2)
        );
    };
    let ours_idle = rows.iter().find(|r| r.target.pid == ours.pid && r.idle);
    let ours_alone = rows.iter().find(|r| r.target.pid == ours.pid && !r.idle);
    ratio(
        "filesrv with idle / without",
        ours_idle,
        ours_alone,
        ">= 0.9x",
    );
    ratio(
        "filesrv with idle / nginx with idle",
        ours_idle,
        find("nginx", true),
        ">= 1.0x",
    );
    ratio(
        "filesrv with idle / apache2 event with idle",
        ours_idle,
        find("apache2", true),
        ">= 1.0x",
    );
    // Park cost: CPU per request, same slots, same round.
    let plain =
        find(&format!("filesrv {CLIENTS}"), false).filter(|r| !r.target.name.contains("park"));
    for (label, parked) in [
        (
            format!("filesrv {CLIENTS} --park-idle"),
            find(&format!("filesrv {CLIENTS} --park-idle"), false),
        ),
        (ours.name.clone(), ours_alone),
    ] {
        let (Some(parked), Some(plain), true) = (parked, plain, parks) else {
            continue;
        };
        let extra: Vec<f64> = parked
            .runs
            .iter()
            .zip(&plain.runs)
            .map(|(a, b)| a.cpu - b.cpu)
            .collect();
        println!(
            "  park cost: {label} − filesrv {CLIENTS}: {:+.1} µs CPU per request \
             (target <= +10; the same-round differences {})",
            median(&extra),
            list(&extra, 1)
        );
    }
    // Memory: the first round's server had never held idle connections.
    for row in rows.iter().filter(|r| r.idle) {
        let per: Vec<f64> = row
            .runs
            .iter()
            .filter_map(|m| m.rss)
            .map(|(before, with)| (with as f64 - before as f64) / idle as f64)
            .collect();
        let first = row.runs[0].rss.unwrap_or_default();
        println!(
            "  memory: {:<32} {:>6.2} KiB per idle connection (VmRSS {:.1} -> {:.1} MiB \
             in round 1; every round: {}){}",
            row.target.name,
            per[0],
            first.0 as f64 / 1024.0,
            first.1 as f64 / 1024.0,
            list(&per, 2),
            if row.target.pid == ours.pid {
                format!(", {} threads with them", row.runs[0].threads)
            } else {
                String::new()
            }
        );
        let closed: Vec<f64> = row.runs.iter().map(|m| m.closed as f64).collect();
        if closed.iter().any(|&c| c > 0.0) {
            println!(
                "  {}: idle connections it closed during the load, per round: {}",
                row.target.name,
                list(&closed, 0)
            );
        }
    }
    for row in rows {
        let errors: Vec<f64> = row.runs.iter().map(|m| m.socket_errors as f64).collect();
        if errors.iter().any(|&e| e > 0.0) {
            println!(
                "  {}: wrk's socket errors (connections closed under it), per round: {}",
                row.label(idle),
                list(&errors, 0)
            );
        }
    }
}

/// `http`: issue 25's loads, `filesrv` against nginx, the same `wrk`.
pub(crate) fn http(root: &Path, file: &str, params: &Params) -> io::Result<()> {
    let (Some(wrk), Some(_)) = (tools::require("wrk"), tools::require("nginx")) else {
        return Ok(());
    };
    let program = Path::new(env!("CARGO_BIN_EXE_filesrv"));
    let rounds = runs_of(params.idle_runs);
    println!(
        "\nhttp: wrk -t2 -d{}s, {SMALL} B GETs, filesrv <port> <clients> vs nginx; {rounds} rounds",
        params.wrk_seconds
    );
    println!(
        "  {:<40} {:>10} {:>10} {:>12} {:>12} {:>8} {:>8}   runs filesrv / nginx (req/s)",
        "", "filesrv", "nginx", "µs CPU/req", "nginx µs", "cs/req", "nginx"
    );
    let nginx = Nginx::start(root, false)?;
    let deferring_nginx = Nginx::start(root, true)?;
    // The last: both servers deferring accept (`--defer-accept`, nginx's
    // `deferred`), so that a connection reaches them with its request.
    // Each with issue 25's target, if it has one.
    let loads = [
        (64, false, false, "target >= 1.3x; "),
        (8, false, false, "target >= 1.3x; "),
        (8, true, false, "target >= 1.0x; "),
        (8, true, true, ""),
    ];
    let loads = loads.map(|(connections, close, deferred, target)| {
        let load = wrk::Load {
            connections,
            seconds: params.wrk_seconds,
            close,
            tls: false,
        };
        (load, deferred, target)
    });
    // A smoke run: the new connection per request only (keep-alive is
    // the `idle` scenario's load).
    let loads = if params.full_rows {
        &loads[..]
    } else {
        &loads[2..3]
    };
    for &(load, deferred, target) in loads {
        let flags: &[&str] = if deferred { &["--defer-accept"] } else { &[] };
        let server = ChildServer::start(program, root, load.connections, flags)?;
        let nginx = if deferred { &deferring_nginx } else { &nginx };
        let label = format!(
            "{}{}",
            load.label(),
            if deferred { ", both deferred" } else { "" }
        );
        let targets = [
            Target {
                name: "filesrv".to_owned(),
                addr: server.addr,
                pid: server.child.id(),
            },
            Target {
                name: "nginx".to_owned(),
                addr: nginx.addr,
                pid: nginx.pid(),
            },
        ];
        for t in targets.iter().filter(|_| params.full_rows) {
            wrk::run(&wrk, t.addr, file, wrk::Load { seconds: 1, ..load })?;
        }
        let mut runs: [Vec<Measured>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                runs[i].push(measure(&wrk, &targets[i], None, file, load)?);
            }
        }
        let errors = |i: usize| {
            runs[i]
                .iter()
                .map(|m| m.socket_errors as f64)
                .collect::<Vec<_>>()
        };
        if errors(0).iter().any(|&e| e > 0.0) {
            return Err(io::Error::other(format!(
                "filesrv, {label}: wrk saw socket errors: {}",
                list(&errors(0), 0)
            )));
        }
        let rate = |i: usize| runs[i].iter().map(|m| m.rate).collect::<Vec<_>>();
        let cpu = |i: usize| runs[i].iter().map(|m| m.cpu).collect::<Vec<_>>();
        let cs = |i: usize| median(&runs[i].iter().map(|m| m.switches).collect::<Vec<_>>());
        let ratios: Vec<f64> = rate(0).iter().zip(rate(1)).map(|(a, b)| a / b).collect();
        let cpu_ratios: Vec<f64> = cpu(0).iter().zip(cpu(1)).map(|(a, b)| a / b).collect();
        println!(
            "  {:<40} {:>10.0} {:>10.0} {:>12.1} {:>12.1} {:>8.2} {:>8.2}   {} / {}",
            label,
            median(&rate(0)),
            median(&rate(1)),
            median(&cpu(0)),
            median(&cpu(1)),
            cs(0),
            cs(1),
            list(&rate(0), 0),
            list(&rate(1), 0)
        );
        println!(
            "  {:<40} {:>10.2}x  CPU per request {:.2}x  ({target}the same-round ratios {}; CPU {})",
            "  filesrv / nginx",
            median(&ratios),
            median(&cpu_ratios),
            list(&ratios, 2),
            list(&cpu_ratios, 2)
        );
        if errors(1).iter().any(|&e| e > 0.0) {
            println!(
                "  nginx: wrk's socket errors, per round: {}",
                list(&errors(1), 0)
            );
        }
    }
    Ok(())
}

/// Whether the `filesrv` at `program` has `--park-idle`.
fn parks(program: &Path) -> io::Result<bool> {
    let out = Command::new(program).arg("--help").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--park-idle"))
}

/// The `VmRSS` of `pid` and its children, KiB.
fn rss_kib(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for pid in family(pid)? {
        total += status_field(pid, "VmRSS:")?;
    }
    Ok(total)
}

/// The threads of `pid` (its own, not its children's).
fn threads(pid: u32) -> io::Result<u64> {
    status_field(pid, "Threads:")
}

/// The context switches of every thread of `pid` and its children so
/// far; a thread that ends meanwhile is left out.
fn switches(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for pid in family(pid)? {
        for task in fs::read_dir(format!("/proc/{pid}/task"))? {
            let Ok(status) = fs::read_to_string(task?.path().join("status")) else {
                continue;
            };
            total += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(total)
}

/// `pid` and its children.
fn family(pid: u32) -> io::Result<Vec<u32>> {
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    Ok(std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect())
}

/// A number field of `/proc/<pid>/status`.
fn status_field(pid: u32, field: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// `10000` as `10,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
