//! `filesrv`: serve a directory over the filesrv protocol.
//!
//! Thin on purpose: parse the command line, start a
//! [`Server`](filesrv::protocol::Server), wait for SIGINT or SIGTERM, shut
//! down gracefully. Everything else lives in the library.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use filesrv::protocol::{AccessLog, Server, ServerConfig};
use ipnet::IpNet;
use listenfd::ListenFd;
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGXFSZ};
use signal_hook::iterator::Signals;

/// Serve a directory over TCP to filesrv clients (fsc, nc, any program),
/// at most MAX_RUNNING at a time; later clients wait in a queue.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = AFTER_HELP,
    override_usage = "filesrv <PORT> <MAX_RUNNING> [OPTIONS]\n       filesrv --hash-password < password"
)]
struct Args {
    /// TCP port to listen on (0 picks a free one).
    #[arg(required_unless_present = "hash_password")]
    port: Option<u16>,
    /// Clients served at the same time; later ones wait in a queue.
    #[arg(value_parser = clap::value_parser!(u64).range(1..=1 << 20), required_unless_present = "hash_password")]
    max_running: Option<u64>,
    /// Read options from a TOML file: its keys are the long options'
    /// names (`max-waiting = 64`, `allow-put = true`, `proxy-from =
    /// ["10.0.0.0/8"]`); options on the command line win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print a completion script for SHELL on stdout, then exit.
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<clap_complete::Shell>,
    /// Print the manual page (roff, for `man -l -`) on stdout, then exit.
    #[arg(long, exclusive = true)]
    man_page: bool,
    /// Directory served; nothing outside it is ever read or written.
    #[arg(long, value_name = "DIR", default_value = ".")]
    root: PathBuf,
    /// Address to listen on: an IP address or a host name (its first
    /// address).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0", value_parser = parse_bind)]
    bind: IpAddr,
    /// Bound of the waiting queue; a client finding it full gets `ERR busy`.
    /// 0 = no queue (refuse whenever all running slots are taken).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_waiting: usize,
    /// Running + waiting connections allowed from one IP address; 0 = no cap.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_per_source: usize,
    /// A client waiting longer than this gets `ERR busy`; 0 = wait forever.
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_secs)]
    queue_timeout: Secs,
    /// Time allowed for a complete request line; 0 = none.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    idle_timeout: Secs,
    /// Time allowed without progress on a body; 0 = none.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    stall_timeout: Secs,
    /// While clients wait, how long a running connection may sit idle
    /// between requests; 0 = no such limit.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    busy_idle_timeout: Secs,
    /// While clients wait, how long a connection may keep running before
    /// it is closed after its current request; 0 = no such limit.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    busy_session_limit: Secs,
    /// The slowest a body may move, in bytes per second, after the stall
    /// timeout's allowance; 0 = no minimum.
    #[arg(long, value_name = "BYTES", default_value_t = 500)]
    min_rate: u64,
    /// Accept uploads (PUT). Off by default.
    #[arg(long)]
    allow_put: bool,
    /// Largest accepted upload: bytes, or with a K/M/G suffix (powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "1G", value_parser = parse_bytes)]
    max_upload: u64,
    /// List, serve and (with --allow-put) accept uploads to names starting
    /// with `.`; without it they are `not-found` (PUT: `forbidden`).
    #[arg(long)]
    hidden: bool,
    /// The most entries one LIST returns; a larger directory gets
    /// `ERR too-large`. 0 = no cap.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_list_entries: usize,
    /// On SIGINT/SIGTERM, how long running clients may finish.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    shutdown_grace: Secs,
    /// Trusted proxies: connections from these networks must begin with a
    /// PROXY protocol v1 or v2 header, whose source address then counts as
    /// the client's (caps, logs). From elsewhere no header is believed.
    #[arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ',', value_parser = parse_net)]
    proxy_from: Vec<IpNet>,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics
    /// (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Answer HAProxy agent-check connections on ADDR: `up ready W%
    /// maxconn:N`, or `drain` while shutting down.
    #[arg(long, value_name = "ADDR")]
    agent: Option<SocketAddr>,
    /// PEM certificate (chain): the port speaks TLS; needs --tls-key.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Speak TLS with a certificate generated at start; its pin is printed
    /// as one stderr line.
    #[arg(long)]
    tls_self_signed: bool,
    /// Extra DNS name for --tls-self-signed (repeatable).
    #[arg(long, value_name = "NAME")]
    tls_name: Vec<String>,
    /// Users, password hashes and rights: `name:hash[:ro|rw,root=DIR]`.
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// With --users: GET, LIST, STAT and SUM served before AUTH.
    #[arg(long)]
    anonymous_read: bool,
    /// Accept passwords on plaintext connections from non-loopback peers.
    #[arg(long)]
    allow_plain_auth: bool,
    /// Failed logins per source per 60 s before AUTH is refused unchecked;
    /// 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = 10)]
    max_auth_failures: usize,
    /// Read a password from stdin, print its argon2id hash, exit.
    #[arg(long, conflicts_with_all = ["port", "max_running"])]
    hash_password: bool,
    /// Accept a connection only once its client has sent something, or
    /// after about a second of silence (TCP_DEFER_ACCEPT, as nginx's
    /// `deferred`); also set on a socket passed by systemd.
    #[arg(long)]
    defer_accept: bool,
    /// Write one line per request to FILE (appended), or to stderr for
    /// `-`: time, client, user, verb, path, result, bytes, seconds.
    #[arg(long, value_name = "FILE|-")]
    access_log: Option<PathBuf>,
    /// Log the requests of a trusted proxy's health checks too (its own
    /// connections, with a PROXY v2 LOCAL header); left out by default.
    #[arg(long)]
    access_log_checks: bool,
    /// A connection between requests gives its running slot back until
    /// its next request (parked: no thread, no slot; the idle timeout
    /// still applies).
    #[arg(long)]
    park_idle: bool,
    /// Most connections parked at once; past it the longest parked is
    /// closed.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_parked: usize,
    /// Log to stderr: -v connections and requests, -vv debug details.
    /// RUST_LOG works too.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

const AFTER_HELP: &str = "\
Examples:
  filesrv 9000 5                          serve the current directory
  filesrv 9000 8 --root ./inbox --allow-put --max-upload 100M
  printf 'LIST\\n' | nc -N localhost 9000   talk to it by hand

Under systemd, a listening socket passed by socket activation
(LISTEN_FDS) is served instead of PORT, and readiness and stopping are
notified (NOTIFY_SOCKET). Silent unless -v is given (-v sets the level
over RUST_LOG). SIGINT or SIGTERM stop it gracefully: waiting
clients get `ERR unavailable`, running ones may finish within
--shutdown-grace, then it exits 0; a second signal stops it at once
(running clients cut, their uploads removed; exit 0). SIGHUP reloads the
users file and the TLS certificate. Start-up errors exit 1 (bad
arguments: 2).";

/// A SECS value: fractions allowed; 0 means "none".
#[derive(Clone, Copy, Debug, PartialEq)]
struct Secs(Option<Duration>);

fn parse_secs(text: &str) -> Result<Secs, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    let duration = Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("'{text}' is not a valid number of seconds"))?;
    Ok(Secs((!duration.is_zero()).then_some(duration)))
}

/// The command line, with the options of `--config FILE` (if given)
/// before it so that its own win. Exits, as clap does, on a usage error
/// (2), on --help and --version (0), and on an unreadable or malformed
/// configuration file (2).
fn parse_args(raw: Vec<OsString>) -> Args {
    let Some(path) = option_value(&raw, "config") else {
        return Args::parse_from(raw);
    };
    let from_file = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| config_args(&text, &raw));
    let from_file = from_file.unwrap_or_else(|e| {
        eprintln!("filesrv: --config {}: {e}", Path::new(&path).display());
        std::process::exit(2)
    });
    let mut all = raw;
    all.splice(1..1, from_file);
    Args::parse_from(all)
}

/// The value of `--NAME VALUE` or `--NAME=VALUE` in `raw` (the first).
fn option_value(raw: &[OsString], name: &str) -> Option<OsString> {
    let flag = format!("--{name}");
    let with_value = format!("--{name}=");
    raw.iter().enumerate().skip(1).find_map(|(i, arg)| {
        let arg = arg.to_str()?;
        match arg.strip_prefix(&with_value) {
            Some(value) => Some(value.into()),
            None if arg == flag => raw.get(i + 1).cloned(),
            None => None,
        }
    })
}

/// A configuration file's options as command-line arguments, leaving out
/// those `raw` (the command line) gives itself. Keys are the long options'
/// names; `true` gives a flag, `false` leaves it off, an array a
/// comma-separated value, `verbose = N` N times `-v`.
fn config_args(text: &str, raw: &[OsString]) -> Result<Vec<OsString>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let command = Args::command();
    let on_line = |name: &str| {
        raw.iter().skip(1).any(|arg| {
            let arg = arg.to_string_lossy();
            arg == format!("--{name}")
                || arg.starts_with(&format!("--{name}="))
                || (name == "verbose" && arg.starts_with("-v"))
        })
    };
    let mut args = Vec::new();
    for (key, value) in table {
        let known = command
            .get_arguments()
            .any(|arg| arg.get_long() == Some(key.as_str()))
            && !["config", "completions", "man-page", "help", "version"].contains(&key.as_str());
        if !known {
            return Err(format!(
                "unknown key '{key}' (keys are the long options' names, e.g. max-waiting)"
            ));
        }
        if on_line(&key) {
            continue;
        }
        let flag = OsString::from(format!("--{key}"));
        let value = match value {
            toml::Value::Boolean(true) => {
                args.push(flag);
                continue;
            }
            toml::Value::Boolean(false) => continue,
            toml::Value::Integer(n) if key == "verbose" => {
                let times = usize::try_from(n).map_err(|_| format!("{key}: {n} is not a count"))?;
                args.extend(std::iter::repeat_n(OsString::from("-v"), times));
                continue;
            }
            toml::Value::String(text) => text,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Array(items) => {
                let items: Result<Vec<String>, String> = items
                    .into_iter()
                    .map(|item| match item {
                        toml::Value::String(text) => Ok(text),
                        other => Err(format!("{key}: {other} is not a string")),
                    })
                    .collect();
                items?.join(",")
            }
            other => return Err(format!("{key}: {other} is not a value it takes")),
        };
        args.extend([flag, OsString::from(value)]);
    }
    Ok(args)
}

/// The log `--access-log` names: `-` for stderr, else a file.
fn access_log(path: Option<&Path>) -> Result<Option<AccessLog>, String> {
    match path {
        None => Ok(None),
        Some(path) if path.as_os_str() == "-" => Ok(Some(AccessLog::stderr())),
        Some(path) => AccessLog::file(path)
            .map(Some)
            .map_err(|e| format!("--access-log {}: {e}", path.display())),
    }
}

/// `--bind`'s address: an IP address (`::1` or `[::1]`), or a host name
/// resolved to its first address.
fn parse_bind(text: &str) -> Result<IpAddr, String> {
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|b| b.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ip);
    }
    let mut addrs = (text, 0)
        .to_socket_addrs()
        .map_err(|e| format!("'{text}' is not an address, nor a host name that resolves: {e}"))?;
    addrs
        .next()
        .map(|addr| addr.ip())
        .ok_or_else(|| format!("host name '{text}' has no address"))
}

/// A network (`10.0.0.0/8`, `fd00::/8`) or one address (`127.0.0.1`).
fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{text}' is not a network (e.g. 10.0.0.0/8) or an address"))
}

/// Bytes, with an optional K, M or G suffix (powers of 1024).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let bad = || format!("'{text}' is not a size (e.g. 4096, 512K, 10M, 1G)");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let mut logger = env_logger::Builder::new();
    logger.filter_level(log::LevelFilter::Off);
    // rustls warns of what clients get wrong and it ignores, such as an
    // IP address sent as the server name (wrk and OpenSSL clients do),
    // once per connection: noise in an access log. Its errors stay.
    logger.filter_module("rustls", log::LevelFilter::Error);
    // RUST_LOG, when set, gives the level and per-module filters; an
    // explicit -v then sets the overall level over it (its module
    // filters stay).
    if let Ok(spec) = std::env::var("RUST_LOG") {
        logger.parse_filters(&spec);
    }
    if verbose > 0 {
        logger.filter_level(level);
    }
    logger.init();
}

/// `--hash-password`: one line of stdin in, its argon2id hash out. On a
/// terminal it is asked for twice with echo off, as `htpasswd` does: a
/// password typed there is neither shown nor hashed with a typo.
fn hash_password() -> Result<(), Box<dyn std::error::Error>> {
    use std::io::IsTerminal as _;
    let password = if std::io::stdin().is_terminal() {
        let password = filesrv::protocol::ask_password("Password: ")?;
        if filesrv::protocol::ask_password("Again: ")? != password {
            return Err("--hash-password: the two passwords typed differ".into());
        }
        password
    } else {
        std::io::stdin()
            .lines()
            .next()
            .transpose()?
            .unwrap_or_default()
    };
    // Empty input (`echo "$UNSET" |`, a Ctrl-D) would make a users line
    // that logs in with no password at all.
    if password.is_empty() {
        return Err(
            "--hash-password read no password: give it as one line on standard \
                    input (echo 'a long pass phrase' | filesrv --hash-password)"
                .into(),
        );
    }
    println!("{}", filesrv::protocol::hash_password(password.as_bytes())?);
    Ok(())
}

fn run(args: Args, mut passed: ListenFd) -> Result<(), Box<dyn std::error::Error>> {
    if args.hash_password {
        return hash_password();
    }
    init_logging(args.verbose);
    // Installed before serving: a write past RLIMIT_FSIZE must fail with
    // EFBIG (answered `ERR internal`), not kill the server.
    signal_hook::flag::register(SIGXFSZ, Arc::new(AtomicBool::new(false)))?;
    // SIGHUP never stops the server: it asks for a reload (logrotate,
    // `systemctl reload`), and there is nothing to reload yet.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let (port, max_running) = match (args.port, args.max_running) {
        (Some(port), Some(max_running)) => (port, max_running),
        _ => return Err("PORT and MAX_RUNNING are required".into()),
    };
    // One descriptor per waiting client: take what the hard limit allows.
    if let Err(e) = filesrv::protocol::raise_descriptor_limit() {
        log::warn!("cannot raise the open-descriptor limit: {e}");
    }
    let max_running = usize::try_from(max_running)?;
    let config = ServerConfig::new(args.root)
        .max_running(max_running)
        .max_waiting(args.max_waiting)
        .max_per_source(args.max_per_source)
        .queue_timeout(args.queue_timeout.0)
        .idle_timeout(args.idle_timeout.0)
        .stall_timeout(args.stall_timeout.0)
        .busy_idle_timeout(args.busy_idle_timeout.0)
        .busy_session_limit(args.busy_session_limit.0)
        .min_rate(Some(args.min_rate).filter(|&rate| rate > 0))
        .allow_put(args.allow_put)
        .max_upload(args.max_upload)
        .hidden(args.hidden)
        .max_list_entries(args.max_list_entries)
        .shutdown_grace(args.shutdown_grace.0.unwrap_or(Duration::ZERO))
        .proxy_from(args.proxy_from)
        .metrics(args.metrics)
        .agent(args.agent)
        .tls_cert(args.tls_cert)
        .tls_key(args.tls_key)
        .tls_self_signed(args.tls_self_signed)
        .tls_names(args.tls_name)
        .users(args.users)
        .anonymous_read(args.anonymous_read)
        .allow_plain_auth(args.allow_plain_auth)
        .max_auth_failures(args.max_auth_failures)
        .defer_accept(args.defer_accept)
        .access_log(access_log(args.access_log.as_deref())?)
        .access_log_checks(args.access_log_checks)
        .park_idle(args.park_idle)
        .max_parked(args.max_parked);
    // Socket activation: the listening socket systemd passed (PORT and
    // --bind are then ignored); it outlives a restart, with its backlog.
    let server = match passed.take_tcp_listener(0)? {
        Some(listener) => Server::from_listener(listener, config)?,
        None => Server::bind(SocketAddr::new(args.bind, port), config)?,
    };
    if args.tls_self_signed
        && let Some(pin) = server.tls_pin()
    {
        eprintln!("filesrv: certificate pin {pin}");
    }
    // Under systemd (Type=notify): ready now, stopping on a signal. Without
    // NOTIFY_SOCKET these do nothing.
    let _ = sd_notify::notify(&[NotifyState::Ready]);
    if let Some(addr) = server.metrics_addr() {
        log::info!("metrics on http://{addr}/metrics");
    }
    if let Some(addr) = server.agent_addr() {
        log::info!("agent-check on {addr}");
    }
    for signal in signals.forever() {
        if signal == SIGHUP {
            log::info!("SIGHUP: reloading the users and the certificate");
            server.reload();
            continue;
        }
        log::info!(
            "signal {signal}: shutting down; waiting up to {:?} for {} (the signal again \
             stops at once)",
            args.shutdown_grace.0.unwrap_or(Duration::ZERO),
            clients(server.stats().running)
        );
        break;
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    let handle = signals.handle();
    std::thread::scope(|scope| {
        // A second signal during the grace ends it: see `force_exit`.
        let server = &server;
        scope.spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    server.reload();
                    continue;
                }
                force_exit(server, signal);
            }
        });
        let report = server.shutdown();
        handle.close();
        log::info!(
            "stopped: {} waiting refused, {} of {} running cut",
            report.refused_waiting,
            report.cut,
            report.running_at_start
        );
    });
    Ok(())
}

/// Ends the process at once (exit 0) on a second signal: the running
/// clients' connections close with it; their uploads' temporary files
/// are removed first.
fn force_exit(server: &Server, signal: i32) -> ! {
    let running = server.stats().running;
    log::info!(
        "signal {signal}: stopping now, cutting {}",
        clients(running)
    );
    let removed = server.remove_temporary_files();
    if removed > 0 {
        log::info!("removed {removed} temporary upload files");
    }
    std::process::exit(0)
}

/// "1 running client", "2 running clients".
fn clients(n: usize) -> String {
    format!("{n} running client{}", if n == 1 { "" } else { "s" })
}

fn main() -> ExitCode {
    // Read (and cleared from the environment) before any thread starts.
    let passed = ListenFd::from_env();
    let args = parse_args(std::env::args_os().collect());
    if let Some(shell) = args.completions {
        let mut command = Args::command();
        clap_complete::generate(shell, &mut command, "filesrv", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if args.man_page {
        return match clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("filesrv: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args, passed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error, then each cause it was built from.
            let mut line = format!("filesrv: {e}");
            let mut cause = e.source();
            while let Some(inner) = cause {
                line.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_accept_fractions_and_zero_means_none() {
        assert_eq!(
            parse_secs("0.5"),
            Ok(Secs(Some(Duration::from_millis(500))))
        );
        assert_eq!(parse_secs("0"), Ok(Secs(None)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn bind_takes_an_address_or_a_host_name() {
        assert_eq!(parse_bind("0.0.0.0"), Ok("0.0.0.0".parse().unwrap()));
        assert_eq!(parse_bind("::1"), Ok("::1".parse().unwrap()));
        assert_eq!(parse_bind("[::1]"), Ok("::1".parse().unwrap()));
        let local = parse_bind("localhost").unwrap();
        assert!(local.is_loopback(), "{local}");
        let error = parse_bind("no-such-host.invalid").unwrap_err();
        assert!(
            error.starts_with("'no-such-host.invalid' is not an address"),
            "{error}"
        );
    }

    #[test]
    fn networks_take_a_prefix_or_one_address() {
        assert_eq!(parse_net("10.0.0.0/8"), Ok("10.0.0.0/8".parse().unwrap()));
        assert_eq!(parse_net("127.0.0.1"), Ok("127.0.0.1/32".parse().unwrap()));
        assert_eq!(parse_net("::1"), Ok("::1/128".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "localhost", "10.0.0.0/8,"] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("10M"), Ok(10 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        for bad in ["", "G", "1.5G", "-1", "1T", "99999999999999999999"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
