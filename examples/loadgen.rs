//! Loads a running file server with the transfer bench's clients.
//!
//! ```text
//! cargo run --release --example loadgen -- ADDR PATH... [--clients N]
//!     [--seconds S] [--warmup S] [--per-request] [--http]
//! cargo run --release --example loadgen -- ADDR --bulk PATH [--times N]
//! ```
//!
//! The first form runs a closed loop of `--clients` clients (default 64)
//! asking for the `PATH`s in turn, on persistent connections or, with
//! `--per-request`, a new connection per request; it prints requests/s and
//! latency percentiles over `--seconds` (default 5) after `--warmup`
//! (default 1). With `--http` the clients speak HTTP (`GET /PATH`,
//! HTTP/1.1 kept alive, or HTTP/1.0 under `--per-request`), to load a web server
//! such as nginx serving the same files (the first form only). The second downloads one file `--times` times (default 3)
//! and prints GB/s. For example, against a server started with
//! `cargo run --release --bin filesrv -- 9000 64 --root DIR --bind 127.0.0.1`:
//!
//! ```text
//! cargo run --release --example loadgen -- 127.0.0.1:9000 a.txt b.txt
//! ```
//!
//! Only loopback and the machine's own test addresses are meant as
//! targets; every run is bounded in time.

use filesrv_testkit::loadgen;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use loadgen::{Load, Mode, Protocol};

const USAGE: &str =
    "usage: loadgen ADDR PATH... [--clients N] [--seconds S] [--warmup S] [--per-request] [--http]
       loadgen ADDR --bulk PATH [--times N]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .ok_or(USAGE)?
        .to_socket_addrs()
        .map_err(|e| format!("bad address: {e}"))?
        .next()
        .ok_or("the address resolves to nothing")?;
    let mut paths = Vec::new();
    let mut clients = 64;
    let mut seconds = 5.0;
    let mut warmup = 1.0;
    let mut mode = Mode::Persistent;
    let mut protocol = Protocol::Filesrv;
    let mut bulk = None;
    let mut times = 3;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--clients" => clients = number(&value("--clients")?)?,
            "--seconds" => seconds = number(&value("--seconds")?)?,
            "--warmup" => warmup = number(&value("--warmup")?)?,
            "--per-request" => mode = Mode::PerRequest,
            "--http" => protocol = Protocol::Http,
            "--bulk" => bulk = Some(value("--bulk")?),
            "--times" => times = number(&value("--times")?)?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            flag if flag.starts_with("--") => {
                return Err(format!("unknown option {flag}\n{USAGE}"));
            }
            _ => paths.push(arg),
        }
    }
    if let Some(path) = bulk {
        for _ in 0..times {
            let began = Instant::now();
            let bytes = loadgen::fetch(addr, &path).map_err(|e| format!("GET {path}: {e}"))?;
            let took = began.elapsed();
            println!(
                "{bytes} bytes in {took:.2?}: {:.2} GB/s",
                bytes as f64 / took.as_secs_f64() / 1e9
            );
        }
        return Ok(());
    }
    if paths.is_empty() || clients == 0 {
        return Err(USAGE.to_owned());
    }
    let duration = |s: f64| Duration::try_from_secs_f64(s).map_err(|e| e.to_string());
    let load = Load {
        addr,
        paths: &paths,
        clients,
        mode,
        warmup: duration(warmup)?,
        duration: duration(seconds)?,
    };
    let report = match protocol {
        Protocol::Filesrv => loadgen::run(&load),
        Protocol::Http => loadgen::run_speaking(&load, Protocol::Http),
    }
    .map_err(|e| e.to_string())?;
    println!(
        "{} requests in {:?} ({} in all; {:?}, {clients} clients): {:.0} req/s, {:.1} MB/s, {} errors",
        report.requests,
        report.window,
        report.completed,
        mode,
        report.rate(),
        report.bytes as f64 / report.window.as_secs_f64() / 1e6,
        report.errors
    );
    for (label, per_mille) in [("p50", 500), ("p90", 900), ("p99", 990), ("max", 1000)] {
        println!("  {label} {:?}", report.latency(per_mille));
    }
    match report.first_error {
        Some(error) => Err(format!("the first failure: {error}")),
        None => Ok(()),
    }
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("not a number: {text}"))
}
