//! The `tls` scenario of the transfer bench: what TLS costs `filesrv`,
//! each figure against its baseline in the same run, rounds interleaved
//! (each round starts one row further along), medians with every round's
//! figure, and the server's CPU (its processes' threads, from `/proc`).
//!
//! - A large GET by `curl -s -k -o /dev/null` over `https://` against the
//!   same download over `http://`, from `filesrv` (HTTP/1.1 on its port)
//!   and from nginx with an `ssl` listener and a plaintext one: GB/s, and
//!   the server's and curl's CPU per MiB (curl's is read from its
//!   finished process before it is reaped). The file is read through
//!   and checked resident before every download, the listeners have
//!   `cubic` (`common/machine.rs`), as in the `large` scenario.
//! - New connections: `wrk -t2 -c8 -H 'Connection: close'` over
//!   `https://`, a TLS handshake per request, `filesrv <port> 8` against
//!   nginx with session resumption off (every handshake full) and with
//!   nginx's defaults (tickets on). wrk offers each connection's session
//!   again on the next one, so a server that resumes does a full
//!   handshake only on a connection's first; which server resumes is
//!   probed once with `openssl s_client -sess_out`/`-sess_in` and printed.
//! - Keep-alive: `wrk -t2 -c64` 4 KiB GETs over `https://`,
//!   `filesrv <port> 64` against nginx (a full run only).
//!
//! One certificate for both servers: an ECDSA P-256 key and a
//! self-signed certificate made by `openssl req` (the key type
//! `--tls-self-signed` generates), given to `filesrv` as `--tls-cert` and
//! `--tls-key` and to nginx as `ssl_certificate`. What each negotiates
//! with OpenSSL's clients (curl, wrk and `openssl s_client` share its
//! defaults) is printed: TLS 1.3 with `TLS_AES_256_GCM_SHA384`, OpenSSL's
//! first choice, which both servers take as they follow the client's
//! order. Neither server has kTLS here, so neither uses `sendfile` over
//! TLS.
//!
//! `FILESRV_BASELINE=<an earlier build's filesrv>` adds that build, with
//! the same arguments, as a row of every table: a change's before and
//! after in the same run. Without curl,
//! wrk, nginx or openssl installed, one line says so and the scenario is
//! left out.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};

use super::common::{ChildServer, TempDir, write_random_file};
use super::connections::cpu::Cpu;
use super::idle::wrk::{self, Load};
use super::idle::{Measured, Target, measure};
use super::nginx::{Nginx, Ssl};
use super::{Params, SMALL, list, median, runs_of, warmed_rounds};
use filesrv_testkit::tools;

/// wrk's connections for new connections, and for keep-alive.
const HANDSHAKE_CLIENTS: usize = 8;
const KEEP_ALIVE_CLIENTS: usize = 64;

/// The large file's name beneath the served root.
const LARGE: &str = "tls-large.bin";

pub(crate) fn tls(root: &Path, file: &str, params: &Params) -> io::Result<()> {
    let (Some(curl), Some(wrk), Some(_), Some(openssl)) = (
        tools::require("curl"),
        tools::require("wrk"),
        tools::require("nginx"),
        tools::require("openssl"),
    ) else {
        return Ok(());
    };
    let program = Path::new(env!("CARGO_BIN_EXE_filesrv"));
    let keys = TempDir::new("tls-keys")?;
    let (cert, key) = certificate(&openssl, keys.path())?;
    let rounds = runs_of(params.idle_runs);
    println!(
        "\ntls: ECDSA P-256 self-signed certificate (openssl req), the same files for \
         filesrv (--tls-cert/--tls-key) and nginx (ssl_certificate); {rounds} rounds"
    );
    let tls_args = ["--tls-cert", path_str(&cert)?, "--tls-key", path_str(&key)?];
    let ssl = |resumption| Ssl {
        cert: &cert,
        key: &key,
        resumption,
    };
    let baseline = std::env::var_os("FILESRV_BASELINE").map(PathBuf::from);
    let start_baseline = |slots| {
        baseline
            .as_ref()
            .map(|program| ChildServer::start(program, root, slots, &tls_args))
            .transpose()
    };
    if let Some(program) = &baseline {
        println!("  baseline: {}", program.display());
    }
    let secure8 = ChildServer::start(program, root, HANDSHAKE_CLIENTS, &tls_args)?;
    let base8 = start_baseline(HANDSHAKE_CLIENTS)?;
    let nginx_full = Nginx::start_ssl(root, &ssl(false))?;
    let nginx_resuming = Nginx::start_ssl(root, &ssl(true))?;
    for (name, addr) in [
        ("filesrv", secure8.addr),
        ("nginx ssl, resumption off", nginx_full.addr),
        ("nginx ssl, its defaults", nginx_resuming.addr),
    ] {
        println!("  {name:<26} {}", negotiated(&openssl, &curl, addr, file)?);
    }

    let servers = Servers {
        filesrv: Target {
            name: "filesrv https".to_owned(),
            addr: secure8.addr,
            pid: secure8.child.id(),
        },
        nginx: Target {
            name: "nginx https".to_owned(),
            addr: nginx_full.addr,
            pid: nginx_full.pid(),
        },
    };
    download(root, &curl, &servers, base8.as_ref(), params)?;

    let handshake = Load {
        connections: HANDSHAKE_CLIENTS,
        seconds: params.wrk_seconds,
        close: true,
        tls: true,
    };
    let mut targets = vec![servers.filesrv, servers.nginx];
    targets[1].name = "nginx, resumption off".to_owned();
    if params.full_rows {
        targets.push(Target {
            name: "nginx, its defaults (resumes)".to_owned(),
            addr: nginx_resuming.addr,
            pid: nginx_resuming.pid(),
        });
    }
    targets.extend(base8.as_ref().map(baseline_target));
    println!(
        "\n  new TLS connections: wrk -t2 -c{HANDSHAKE_CLIENTS} -d{}s -H 'Connection: close' \
         https://, {SMALL} B GETs, filesrv <port> {HANDSHAKE_CLIENTS}",
        params.wrk_seconds
    );
    compare(&wrk, &targets, file, handshake, rounds, params)?;
    drop((secure8, base8, nginx_resuming));

    if params.full_rows {
        let secure64 = ChildServer::start(program, root, KEEP_ALIVE_CLIENTS, &tls_args)?;
        let base64 = start_baseline(KEEP_ALIVE_CLIENTS)?;
        let mut targets = vec![
            Target {
                name: format!("filesrv {KEEP_ALIVE_CLIENTS}"),
                addr: secure64.addr,
                pid: secure64.child.id(),
            },
            Target {
                name: "nginx".to_owned(),
                addr: nginx_full.addr,
                pid: nginx_full.pid(),
            },
        ];
        targets.extend(base64.as_ref().map(baseline_target));
        println!(
            "\n  keep-alive over TLS: wrk -t2 -c{KEEP_ALIVE_CLIENTS} -d{}s https://, \
             {SMALL} B GETs, filesrv <port> {KEEP_ALIVE_CLIENTS}",
            params.wrk_seconds
        );
        let load = Load {
            connections: KEEP_ALIVE_CLIENTS,
            close: false,
            ..handshake
        };
        compare(&wrk, &targets, file, load, rounds, params)?;
    }
    Ok(())
}

/// A row for the baseline build.
fn baseline_target(server: &ChildServer) -> Target {
    Target {
        name: "baseline filesrv".to_owned(),
        addr: server.addr,
        pid: server.child.id(),
    }
}

/// The TLS servers of the download rows.
struct Servers {
    filesrv: Target,
    nginx: Target,
}

/// Makes an ECDSA P-256 key (PKCS#8) and a self-signed certificate for
/// `localhost` and 127.0.0.1 in `dir`.
fn certificate(openssl: &Path, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec"])
        .args([
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok((cert, key))
}

fn path_str(path: &Path) -> io::Result<&str> {
    path.to_str()
        .ok_or_else(|| io::Error::other(format!("not UTF-8: {}", path.display())))
}

/// What OpenSSL's clients get from the TLS server at `addr`: the version,
/// suite, key exchange and signature `openssl s_client` reports, curl's
/// version and suite, and whether the server resumed the session
/// `s_client` offered on a second connection.
fn negotiated(openssl: &Path, curl: &Path, addr: SocketAddr, file: &str) -> io::Result<String> {
    let dir = TempDir::new(&format!("tls-session-{}", addr.port()))?;
    let session = dir.path().join("session.pem");
    let first = s_client(openssl, addr, file, &session, "-sess_out")?;
    let again = s_client(openssl, addr, file, &session, "-sess_in")?;
    let field = |text: &str, prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map_or_else(|| "?".to_owned(), |v| v.trim().to_owned())
    };
    let resumed = if again.lines().any(|l| l.starts_with("Reused,")) {
        "resumes"
    } else {
        "does not resume"
    };
    let out = Command::new(curl)
        .args(["-s", "-k", "-v", "-o", "/dev/null"])
        .arg(format!("https://{addr}/{file}"))
        .stdin(Stdio::null())
        .output()?;
    let curl_line = field(
        &String::from_utf8_lossy(&out.stderr),
        "* SSL connection using ",
    );
    Ok(format!(
        "s_client: {}, key exchange {}, {} signature; curl: {curl_line}; a session \
         offered again: {resumed}",
        field(&first, "New, "),
        field(&first, "Server Temp Key:"),
        field(&first, "Peer signature type:"),
    ))
}

/// One `openssl s_client` connection that GETs `file` (HTTP/1.0, so the
/// server closes after it) with `session` saved (`-sess_out`) or offered
/// (`-sess_in`); returns what it printed.
fn s_client(
    openssl: &Path,
    addr: SocketAddr,
    file: &str,
    session: &Path,
    how: &str,
) -> io::Result<String> {
    let mut child = Command::new(openssl)
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "localhost", "-ign_eof", how])
        .arg(session)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    write!(
        stdin,
        "GET /{file} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    drop(stdin);
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One download: seconds (curl's `time_total`), and the server's and
/// curl's CPU time over it.
#[derive(Clone, Copy, Debug)]
struct Download {
    seconds: f64,
    server: Duration,
    client: Duration,
}

/// A row of the download table: what it is called, its URL, and where
/// the server's CPU time is read.
struct Fetch {
    label: String,
    url: String,
    cpu: Cpu,
}

/// The large download by curl over TLS and in plaintext, from `filesrv`
/// and nginx (and a baseline build of `filesrv` over TLS, if given).
fn download(
    root: &Path,
    curl: &Path,
    servers: &Servers,
    baseline: Option<&ChildServer>,
    params: &Params,
) -> io::Result<()> {
    let path = root.join(LARGE);
    let size = params.tls_large;
    write_random_file(&path, size)?;
    let rounds = runs_of(params.idle_runs);
    let program = Path::new(env!("CARGO_BIN_EXE_filesrv"));
    let plain = ChildServer::start(program, root, HANDSHAKE_CLIENTS, &[])?;
    let nginx_plain = Nginx::start(root, false)?;
    let row = |label: &str, scheme: &str, addr: SocketAddr, pid: u32| Fetch {
        label: label.to_owned(),
        url: format!("{scheme}://{addr}/{LARGE}"),
        cpu: Cpu::Process(pid),
    };
    let mut fetches = vec![
        row(
            "filesrv https",
            "https",
            servers.filesrv.addr,
            servers.filesrv.pid,
        ),
        row("filesrv http", "http", plain.addr, plain.child.id()),
        row(
            "nginx https",
            "https",
            servers.nginx.addr,
            servers.nginx.pid,
        ),
        row("nginx http", "http", nginx_plain.addr, nginx_plain.pid()),
    ];
    if let Some(b) = baseline {
        fetches.push(row("baseline filesrv https", "https", b.addr, b.child.id()));
    }
    println!(
        "\n  {} MiB GET by curl -s -k -o /dev/null, https:// vs http://, the file read \
         through before each; filesrv <port> {HANDSHAKE_CLIENTS}",
        size >> 20,
    );
    if params.full_rows {
        for fetch in &fetches {
            curl_get(curl, fetch, size)?;
        }
    }
    let (runs, least_resident) = warmed_rounds(&path, rounds, fetches.len(), |i| {
        curl_get(curl, &fetches[i], size)
    })?;
    drop((plain, nginx_plain));
    std::fs::remove_file(&path)?;
    if let Some(f) = least_resident {
        println!(
            "  resident before each download: at least {:.1}%",
            f * 100.0
        );
    }
    let mib = size as f64 / f64::from(1 << 20);
    let gbps = |i: usize| -> Vec<f64> {
        runs[i]
            .iter()
            .map(|d: &Download| size as f64 / d.seconds / 1e9)
            .collect()
    };
    let per_mib = |i: usize, f: fn(&Download) -> Duration| {
        median(
            &runs[i]
                .iter()
                .map(|d| f(d).as_secs_f64() * 1e6 / mib)
                .collect::<Vec<_>>(),
        )
    };
    println!(
        "  {:<26} {:>8} {:>16} {:>14}   runs (GB/s)",
        "", "GB/s", "server µs/MiB", "curl µs/MiB"
    );
    for (i, fetch) in fetches.iter().enumerate() {
        println!(
            "  {:<26} {:>8.2} {:>16.0} {:>14.0}   {}",
            fetch.label,
            median(&gbps(i)),
            per_mib(i, |d| d.server),
            per_mib(i, |d| d.client),
            list(&gbps(i), 2)
        );
    }
    let ratio = |label: &str, a: usize, b: usize, target: &str| {
        let ratios: Vec<f64> = gbps(a).iter().zip(gbps(b)).map(|(a, b)| a / b).collect();
        println!(
            "  {label:<34} {:>6.2}x  ({target}the same-round ratios {})",
            median(&ratios),
            list(&ratios, 2)
        );
    };
    ratio("filesrv https / filesrv http", 0, 1, "target >= 0.8x; ");
    ratio("nginx https / nginx http", 2, 3, "");
    ratio("filesrv https / nginx https", 0, 2, "");
    // Issue 25's plaintext target, the same client and rounds.
    ratio("filesrv http / nginx http", 1, 3, "target >= 1.0x; ");
    if fetches.len() > 4 {
        ratio("filesrv https / baseline https", 0, 4, "");
    }
    Ok(())
}

/// One download of `fetch` by curl, checked whole.
fn curl_get(curl: &Path, fetch: &Fetch, size: u64) -> io::Result<Download> {
    let before = fetch.cpu.used()?;
    let mut child = Command::new(curl)
        .args(["-s", "-k", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{size_download} %{time_total}"])
        .arg(&fetch.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    // Exited but not reaped: its CPU time is still in /proc.
    waitid(
        WaitId::Pid(Pid::from_child(&child)),
        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
    )?;
    let client = Cpu::Process(child.id()).used();
    let server = fetch.cpu.used()?.saturating_sub(before);
    let stdout = child.stdout.take().expect("piped");
    let out = child.wait_with_output()?;
    let text = io::read_to_string(stdout)?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    match (out.status.success(), fields.as_slice()) {
        (true, ["200", bytes, seconds]) if bytes.parse() == Ok(size) => Ok(Download {
            seconds: seconds.parse().map_err(io::Error::other)?,
            server,
            client: client?,
        }),
        _ => Err(io::Error::other(format!(
            "{}: curl {}: {text}",
            fetch.url, out.status
        ))),
    }
}

/// The same wrk load against each of `targets` (the first is `filesrv`),
/// rounds interleaved; prints each one's rate, CPU per request and
/// context switches per request, and `filesrv`'s same-round ratio to each
/// other.
fn compare(
    wrk: &Path,
    targets: &[Target],
    file: &str,
    load: Load,
    rounds: usize,
    params: &Params,
) -> io::Result<()> {
    for t in targets.iter().filter(|_| params.full_rows) {
        wrk::run(wrk, t.addr, file, Load { seconds: 1, ..load })?;
    }
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            runs[i].push(measure(wrk, &targets[i], None, file, load)?);
        }
    }
    let pick = |i: usize, f: fn(&Measured) -> f64| runs[i].iter().map(f).collect::<Vec<_>>();
    let errors = pick(0, |m| m.socket_errors as f64);
    if errors.iter().any(|&e| e > 0.0) {
        return Err(io::Error::other(format!(
            "{}: wrk saw socket errors: {}",
            targets[0].name,
            list(&errors, 0)
        )));
    }
    println!(
        "  {:<34} {:>10} {:>12} {:>8}   runs (req/s)",
        "", "req/s", "µs CPU/req", "cs/req"
    );
    for (i, t) in targets.iter().enumerate() {
        let rates = pick(i, |m| m.rate);
        println!(
            "  {:<34} {:>10.0} {:>12.1} {:>8.2}   {}",
            t.name,
            median(&rates),
            median(&pick(i, |m| m.cpu)),
            median(&pick(i, |m| m.switches)),
            list(&rates, 0)
        );
    }
    for (i, t) in targets.iter().enumerate().skip(1) {
        let ratios: Vec<f64> = runs[0]
            .iter()
            .zip(&runs[i])
            .map(|(a, b)| a.rate / b.rate)
            .collect();
        let cpu: Vec<f64> = runs[0]
            .iter()
            .zip(&runs[i])
            .map(|(a, b)| a.cpu / b.cpu)
            .collect();
        println!(
            "  {:<34} {:>6.2}x  CPU per request {:.2}x  (the same-round ratios {}; CPU {})",
            format!("filesrv / {}", t.name),
            median(&ratios),
            median(&cpu),
            list(&ratios, 2),
            list(&cpu, 2)
        );
        let theirs = pick(i, |m| m.socket_errors as f64);
        if theirs.iter().any(|&e| e > 0.0) {
            println!(
                "  {}: wrk's socket errors, per round: {}",
                t.name,
                list(&theirs, 0)
            );
        }
    }
    Ok(())
}
