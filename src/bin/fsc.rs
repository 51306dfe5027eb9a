//! `fsc`, the command-line client of the `filesrv` file server.
// Argument docs double as clap's --help text, where `[::1]:9000` must
// read as written, not as an intra-doc link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::error::Error;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use filesrv::protocol::wire::{EntryKind, ErrorCode, ListEntry};
use filesrv::protocol::{Client, ClientError, ClientTls, Stage, TransferOptions};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// Exit status when the server refused the request.
const EXIT_REFUSED: u8 = 1;
/// Exit status for bad usage and every other failure.
const EXIT_FAILED: u8 = 2;
/// The port when HOST has none: the one the README's examples use.
const DEFAULT_PORT: u16 = 9000;
/// What to do when the server speaks TLS and fsc was not told to.
const TLS_HINT: &str = "use --pin sha256//... as `filesrv --tls-self-signed` prints it, \
                        --ca FILE or --tls";
/// The commands' names, to find the server after one (`fsc ls HOST`).
const COMMANDS: [&str; 5] = ["get", "put", "sum", "ls", "stat"];

/// Fetch, store and list files on a filesrv server.
///
/// Remote paths are relative to the directory the server serves, `/`
/// separated; write them as they are named on the server: the client
/// escapes spaces and other special characters itself.
#[derive(Parser)]
#[command(
    name = "fsc",
    version,
    after_help = "\
Examples:
  fsc localhost ls                  (port 9000 when none is given)
  fsc localhost:9000 get docs/report.pdf
  fsc localhost get notes.txt - | less
  fsc ls localhost:9000 docs        (the command may come first)
  fsc localhost:9000 sum docs/report.pdf | sha256sum -c
  fsc localhost:9000 put backup.tar archive/backup.tar --timeout 5
  fsc --pin sha256//BASE64 localhost:9000 ls     TLS, trusting one server key
  FSC_PASSWORD=... fsc --tls --user alice files.example.org:9000 ls

Options may come anywhere on the line.

Exit status:
  0  success
  1  the server refused the request (its `ERR <code> <message>` reply is
     shown), or failed TLS verification (unknown CA, wrong name or pin)
  2  bad usage, no connection, a broken transfer, or a local file error"
)]
struct Cli {
    /// Give up when connecting, or when the server is silent, for this
    /// many seconds (fractions allowed; 0 waits forever).
    #[arg(long, global = true, overrides_with = "timeout", value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    timeout: Duration,

    /// Speak TLS, trusting the system's CA certificates (unless --ca or
    /// --pin says otherwise).
    #[arg(long)]
    tls: bool,

    /// TLS, trusting only the CA certificates in this PEM file (a
    /// self-signed server certificate works).
    #[arg(long, value_name = "FILE", conflicts_with = "pin")]
    ca: Option<PathBuf>,

    /// TLS, trusting only a server whose public key has this pin, as
    /// `filesrv --tls-self-signed` prints it (curl's --pinnedpubkey).
    #[arg(long, value_name = "sha256//BASE64")]
    pin: Option<String>,

    /// Log in as NAME; the password comes from FSC_PASSWORD, or is asked
    /// for on the terminal without echo. Never give it on the command line.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,

    /// The server, as HOST[:PORT] (e.g. localhost, localhost:9000 or
    /// [::1]:9000); the port is 9000 when none is given.
    #[arg(value_name = "HOST[:PORT]")]
    server: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a file.
    ///
    /// The bytes go to a partial file beside LOCAL
    /// (`.NAME.XXXXXXXX.fsc-part`), which replaces LOCAL only once complete
    /// and matching the server's SHA-256. A download that was cut off
    /// resumes from its partial file when its bytes still match the
    /// server's; otherwise it starts over, saying so. An existing LOCAL is
    /// never appended to.
    Get {
        /// The file on the server.
        remote: String,
        /// Where to write it: a file, a directory to put it in, or `-` for
        /// standard output. Defaults to REMOTE's last component, in the
        /// current directory.
        local: Option<PathBuf>,
        /// Start over, discarding a partial download.
        #[arg(long)]
        no_resume: bool,
        /// Do not check the file (or a partial one) against the server's
        /// SHA-256 (for a server without SUM).
        #[arg(long)]
        no_verify: bool,
    },
    /// Upload a file (the server must allow uploads), then check the
    /// stored file's SHA-256 against what was sent.
    Put {
        /// The file to send.
        local: PathBuf,
        /// Where to store it on the server; ending in `/`, a directory to
        /// put it in. Defaults to LOCAL's file name, in the served root.
        remote: Option<String>,
        /// Do not check the stored file's SHA-256.
        #[arg(long)]
        no_verify: bool,
    },
    /// Print a remote file's SHA-256 as sha256sum does: `HEX  NAME`, NAME
    /// being the file name `fsc get` saves it under, so that
    /// `fsc HOST:PORT sum FILE | sha256sum -c` checks a downloaded copy.
    Sum {
        /// The file on the server.
        remote: String,
    },
    /// List a directory: type (f or d), size in bytes, and name per line.
    ///
    /// Names are quoted as a shell reads them back: plain when safe, else
    /// in single quotes, or as $'...' with escapes for control characters
    /// and bytes that are not UTF-8; each can be pasted into `fsc get`.
    #[command(name = "ls")]
    List {
        /// The directory on the server; the served root by default.
        dir: Option<String>,
    },
    /// Show the type, size and modification time of a file or directory.
    Stat {
        /// The file or directory on the server.
        path: String,
    },
}

/// Why `fsc` failed.
#[derive(Debug)]
enum Failure {
    /// The arguments make no sense together.
    Usage(String),
    /// The client failed before a command ran (connecting).
    Client(ClientError),
    /// The command failed: its whole line, and whether the server
    /// refused it.
    Command { line: String, refused: bool },
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Client(error)
    }
}

impl Failure {
    /// `command` failed with `error`: the line names the command (`get
    /// docs/a.txt`) and adds what the error alone does not say ([`hint`]).
    fn command(command: &Plan, error: &ClientError) -> Failure {
        let line = format!("{}: {}", command.context(), explained(Some(command), error));
        let refused = matches!(error, ClientError::Server { .. });
        Failure::Command { line, refused }
    }

    fn exit_code(&self) -> u8 {
        match self {
            Failure::Client(ClientError::Server { .. } | ClientError::Tls { .. })
            | Failure::Command { refused: true, .. } => EXIT_REFUSED,
            _ => EXIT_FAILED,
        }
    }

    /// The message, as one line.
    fn message(&self) -> String {
        match self {
            Failure::Usage(message) => message.clone(),
            Failure::Client(error) => explained(None, error),
            Failure::Command { line, .. } => line.clone(),
        }
    }
}

/// `error`'s chain, then what it alone does not say ([`hint`]), for the
/// command that failed if any.
fn explained(command: Option<&Plan>, error: &ClientError) -> String {
    let mut line = chain(error);
    if let Some(hint) = hint(command, error) {
        let _ = write!(line, " ({hint})");
    }
    line
}

/// `error`'s message followed by every source in its chain.
fn chain(error: &ClientError) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    message
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(server_first(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_FAILED)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("fsc: {}", printable(&failure.message()));
            ExitCode::from(failure.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    // Every argument is checked before connecting.
    let command = Plan::new(cli.command)?;
    let tls = trust(cli.tls, cli.ca.as_deref(), cli.pin.as_deref())?;
    let password = cli.user.as_ref().map(|_| password()).transpose()?;
    // On the command line 0 waits forever; in the library that is "no
    // timeout", not a zero one.
    let server = with_default_port(&cli.server);
    if cli.user.is_some() && tls.is_none() && !loopback_only(&server) {
        return Err(Failure::Usage(
            "--user sends a password, in clear without TLS: use --pin, --ca FILE or --tls \
             (only a server on this machine, at a loopback address, may go without)"
                .to_owned(),
        ));
    }
    let timeout = (!cli.timeout.is_zero()).then_some(cli.timeout);
    let connected = match (&tls, timeout) {
        (Some(tls), timeout) => Client::connect_tls(&server, timeout, tls),
        (None, None) => Client::connect(&server),
        (None, Some(timeout)) => Client::connect_timeout(&server, timeout),
    };
    let mut client = connected.map_err(|error| match error {
        ClientError::Resolve(source) => Failure::Usage(format!(
            "cannot resolve the server address {server}: {source} (give HOST or HOST:PORT)"
        )),
        error => error.into(),
    })?;
    if let (Some(user), Some(password)) = (&cli.user, password) {
        client.login(user, password.as_bytes())?;
    }
    client.set_notice(|message| eprintln!("fsc: {}", printable(message)));
    let done = match &command {
        Plan::Get {
            remote,
            local: Some(local),
            options,
        } => with_progress(&mut client, remote, |client| {
            client.get_file(remote, local, options)
        })
        .map(drop),
        Plan::Get {
            remote,
            local: None,
            options,
        } => {
            let sent = with_progress(&mut client, remote, |client| {
                client.get_to_checked(remote, &mut io::stdout().lock(), options)
            });
            match sent {
                // The reader (`| head`) has all it wanted: stop quietly,
                // with success, as `cat` does in a pipeline.
                Err(ClientError::Local(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return Ok(());
                }
                sent => sent.map(drop),
            }
        }
        Plan::Put {
            local,
            remote,
            options,
        } => with_progress(&mut client, remote, |client| {
            client.put_file(local, remote, options)
        })
        .map(drop),
        Plan::Sum { remote } => print_sum(&mut client, remote),
        Plan::List { dir } => print_list(&mut client, dir),
        Plan::Stat { path } => print_stat(&mut client, path),
    };
    done.map_err(|error| Failure::command(&command, &error))?;
    // The work is done: a failed goodbye changes nothing for the user.
    let _ = client.quit();
    Ok(())
}

/// What to add to `error`'s line so that it names what the user can act
/// on: the directory missing for an upload, the option that allows
/// uploads, the partial file behind a local path, what a mismatch on
/// standard output means, the options for a server that speaks TLS
/// (whether connecting or running `command`).
fn hint(command: Option<&Plan>, error: &ClientError) -> Option<String> {
    match (command, error) {
        (Some(Plan::Put { remote, .. }), ClientError::Server { code, .. })
            if *code == ErrorCode::NotFound =>
        {
            let (dir, _) = remote.trim_start_matches('/').rsplit_once('/')?;
            Some(format!("the server has no directory {dir}"))
        }
        (Some(Plan::Put { .. }), ClientError::Server { code, message })
            if *code == ErrorCode::Forbidden && message.contains("uploads are disabled") =>
        {
            Some("a filesrv server accepts them when started with --allow-put".to_owned())
        }
        (
            Some(Plan::Get {
                remote,
                local: Some(local),
                ..
            }),
            ClientError::File { path, .. },
        ) if *path == Client::partial_path(local, remote) => Some(format!(
            "the partial download of {} (it becomes that file once complete)",
            local.display()
        )),
        (_, ClientError::ServerSpeaksTls) => Some(TLS_HINT.to_owned()),
        (Some(Plan::Get { local: None, .. }), ClientError::Mismatch { .. }) => Some(
            "what was written to standard output is not the server's file (it changed \
             meanwhile?): discard it"
                .to_owned(),
        ),
        _ => None,
    }
}

/// A command with every default filled in.
enum Plan {
    /// `local` is `None` for standard output.
    Get {
        remote: String,
        local: Option<PathBuf>,
        options: TransferOptions,
    },
    Put {
        local: PathBuf,
        remote: String,
        options: TransferOptions,
    },
    Sum {
        remote: String,
    },
    List {
        dir: String,
    },
    Stat {
        path: String,
    },
}

impl Plan {
    /// The command as the user would name it: `get docs/a.txt`, `put
    /// up/b.txt`, `ls docs` (`ls` for the root).
    fn context(&self) -> String {
        match self {
            Plan::Get { remote, .. } => format!("get {remote}"),
            Plan::Put { remote, .. } => format!("put {remote}"),
            Plan::Sum { remote } => format!("sum {remote}"),
            Plan::List { dir } if dir.is_empty() => "ls".to_owned(),
            Plan::List { dir } => format!("ls {dir}"),
            Plan::Stat { path } => format!("stat {path}"),
        }
    }

    fn new(command: Command) -> Result<Plan, Failure> {
        Ok(match command {
            Command::Get {
                remote,
                local,
                no_resume,
                no_verify,
            } => {
                let local = match local {
                    Some(local) if local.as_os_str() == "-" => None,
                    Some(local) if local.is_dir() => Some(local.join(remote_name(&remote)?)),
                    Some(local) => Some(local),
                    None => Some(PathBuf::from(remote_name(&remote)?)),
                };
                Plan::Get {
                    remote,
                    local,
                    options: TransferOptions::default()
                        .resume(!no_resume)
                        .verify(!no_verify),
                }
            }
            Command::Put {
                local,
                remote,
                no_verify,
            } => {
                let remote = match remote {
                    Some(remote) if !remote.is_empty() && !remote.ends_with('/') => remote,
                    prefix => prefix.unwrap_or_default() + local_name(&local)?,
                };
                Plan::Put {
                    local,
                    remote,
                    options: TransferOptions::default().verify(!no_verify),
                }
            }
            Command::Sum { remote } => {
                remote_name(&remote)?;
                Plan::Sum { remote }
            }
            Command::List { dir } => Plan::List {
                dir: dir.unwrap_or_default(),
            },
            Command::Stat { path } => Plan::Stat { path },
        })
    }
}

/// Whom to trust, if TLS is asked for (by --tls, --ca or --pin).
fn trust(tls: bool, ca: Option<&Path>, pin: Option<&str>) -> Result<Option<ClientTls>, Failure> {
    let trust = match (ca, pin) {
        (Some(ca), _) => ClientTls::ca_file(ca),
        (None, Some(pin)) => ClientTls::pin(pin),
        (None, None) if tls => ClientTls::platform(),
        (None, None) => return Ok(None),
    };
    trust.map(Some).map_err(|e| {
        let mut message = e.to_string();
        if let Some(cause) = e.source() {
            let _ = write!(message, ": {cause}");
        }
        Failure::Usage(message)
    })
}

/// Whether every address `server` resolves to is a loopback one, where a
/// password may go without TLS (as the server accepts it). One that does
/// not resolve counts as loopback: connecting then fails, sending nothing.
fn loopback_only(server: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    server.to_socket_addrs().map_or(true, |mut addrs| {
        addrs.all(|addr| addr.ip().to_canonical().is_loopback())
    })
}

/// The password for --user: FSC_PASSWORD, or asked for on the terminal
/// with echo off.
fn password() -> Result<String, Failure> {
    if let Ok(password) = std::env::var("FSC_PASSWORD") {
        return Ok(password);
    }
    filesrv::protocol::ask_password("Password: ").map_err(|e| {
        Failure::Usage(format!(
            "--user needs FSC_PASSWORD or a terminal to ask on: {e}"
        ))
    })
}

/// The arguments with the server before the command: `fsc ls HOST dir`
/// is read as `fsc HOST ls dir`. The first two arguments that are not
/// options are swapped when the first is a command's name.
fn server_first(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut positional = Vec::new();
    let mut i = 1;
    while i < args.len() && positional.len() < 2 {
        let arg = args[i].to_string_lossy();
        if arg == "--" {
            break;
        } else if ["--timeout", "--ca", "--pin", "--user"].contains(&&*arg) {
            i += 1; // its value
        } else if !arg.starts_with('-') || arg == "-" {
            positional.push(i);
        }
        i += 1;
    }
    if let [command, server] = positional[..] {
        if COMMANDS.contains(&&*args[command].to_string_lossy()) {
            args.swap(command, server);
        }
    }
    args
}

/// `server` with [`DEFAULT_PORT`] added when it has no port: `host`,
/// `192.0.2.1`, `[::1]` and a bare IPv6 address such as `::1` get one;
/// `host:port` and `[::1]:port` are kept.
fn with_default_port(server: &str) -> String {
    match server.matches(':').count() {
        0 => format!("{server}:{DEFAULT_PORT}"),
        _ if server.starts_with('[') && server.ends_with(']') => {
            format!("{server}:{DEFAULT_PORT}")
        }
        1 => server.to_owned(),
        _ if server.starts_with('[') => server.to_owned(),
        _ => format!("[{server}]:{DEFAULT_PORT}"),
    }
}

/// The last component of a remote path, to name the local copy after.
fn remote_name(remote: &str) -> Result<&str, Failure> {
    match remote.rsplit('/').find(|name| !name.is_empty()) {
        Some(name) if name != "." && name != ".." => Ok(name),
        _ => Err(Failure::Usage(format!(
            "cannot name a local file after {remote:?}: give LOCAL"
        ))),
    }
}

/// The file name of a local path, to name the remote copy after.
fn local_name(local: &Path) -> Result<&str, Failure> {
    local
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| {
            Failure::Usage(format!(
                "cannot name a remote file after {}: give REMOTE",
                local.display()
            ))
        })
}

/// Runs a transfer with a progress bar on stderr, if stderr is a terminal,
/// and leaves a one-line summary there when it succeeds.
///
/// The bar counts the bytes this run moves (a resumed download's earlier
/// bytes are shown as where it resumed), so speed and time left are real.
/// The checks before and after the body (a partial download compared with
/// the server's, the whole file with the server's SHA-256) are shown as
/// what they are, and the summary's speed is the body's alone.
fn with_progress(
    client: &mut Client,
    name: &str,
    transfer: impl FnOnce(&mut Client) -> Result<u64, ClientError>,
) -> Result<u64, ClientError> {
    if !io::stderr().is_terminal() {
        return transfer(client);
    }
    let bar_style = ProgressStyle::with_template(
        "{msg} {bytes:>10} / {total_bytes:<10} [{wide_bar}] {binary_bytes_per_sec:>12} eta {eta}",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    let check_style =
        ProgressStyle::with_template("{msg} {spinner}").expect("the template is valid");
    let bar = ProgressBar::new(0)
        .with_style(bar_style.clone())
        .with_message(name.to_owned());
    let shown = bar.clone();
    let label = name.to_owned();
    // When the body began and ended to flow.
    let body = Arc::new(Mutex::new((None::<Instant>, None::<Instant>)));
    let timed = body.clone();
    let mut start = None;
    client.set_progress(move |progress| {
        let mut body = timed.lock().unwrap_or_else(PoisonError::into_inner);
        match progress.stage {
            Stage::ResumeCheck => {
                shown.set_style(check_style.clone());
                shown.set_message(format!(
                    "{label}: checking the partial download ({}) against the server's",
                    HumanBytes(progress.done)
                ));
                // Drawn now, however soon the check ends.
                shown.force_draw();
                shown.enable_steady_tick(Duration::from_millis(100));
            }
            Stage::Verify => {
                body.1 = Some(Instant::now());
                shown.set_style(check_style.clone());
                shown.set_message(format!("{label}: checking its SHA-256 with the server's"));
                // Drawn now, however soon the check ends.
                shown.force_draw();
                shown.enable_steady_tick(Duration::from_millis(100));
            }
            _ => {
                let from = *start.get_or_insert_with(|| {
                    shown.disable_steady_tick();
                    shown.set_style(bar_style.clone());
                    shown.set_message(if progress.done > 0 {
                        format!("{label} (resumed at {})", HumanBytes(progress.done))
                    } else {
                        label.clone()
                    });
                    shown.reset();
                    body.0 = Some(Instant::now());
                    progress.done
                });
                shown.set_length(progress.total - from);
                shown.set_position(progress.done - from);
                body.1 = Some(Instant::now());
            }
        }
    });
    let began = Instant::now();
    let result = transfer(client);
    bar.finish_and_clear();
    if let Ok(bytes) = result {
        let ended = Instant::now();
        let (body_began, body_ended) = *body.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = body_ended.unwrap_or(ended) - body_began.unwrap_or(began);
        let rate = bytes.checked_mul(1000).map_or(0, |milli| {
            milli / u64::try_from(elapsed.as_millis().max(1)).unwrap_or(u64::MAX)
        });
        let mut line = format!(
            "{name}: {} in {:.2?} ({}/s)",
            HumanBytes(bytes),
            elapsed,
            HumanBytes(rate)
        );
        let checks = (ended - began).saturating_sub(elapsed);
        if checks >= Duration::from_millis(10) {
            let _ = write!(line, ", checked in {checks:.2?}");
        }
        eprintln!("{line}");
    }
    result
}

fn print_sum(client: &mut Client, remote: &str) -> Result<(), ClientError> {
    let sum = client.sum(remote, None)?;
    // Checked before connecting.
    let name = remote_name(remote).unwrap_or(remote);
    // sha256sum's own form for a name with a backslash or a newline.
    let line = if name.contains(['\\', '\n']) {
        let escaped = name.replace('\\', "\\\\").replace('\n', "\\n");
        format!("\\{}  {escaped}", sum.hex())
    } else {
        format!("{}  {name}", sum.hex())
    };
    println!("{line}");
    Ok(())
}

/// How many entries `ls` aligns at a time: the memory it holds, whatever
/// the server announces or sends.
const LIST_BATCH: usize = 1024;

fn print_list(client: &mut Client, dir: &str) -> Result<(), ClientError> {
    let mut out = io::stdout().lock();
    let mut batch = Vec::with_capacity(LIST_BATCH);
    client.list_each(dir, |entry| {
        batch.push(entry);
        if batch.len() == LIST_BATCH {
            print_entries(&mut out, &mut batch)?;
        }
        Ok(())
    })?;
    print_entries(&mut out, &mut batch)?;
    out.flush().map_err(ClientError::Local)
}

/// Prints `entries`, their sizes aligned, and empties it.
fn print_entries(out: &mut impl Write, entries: &mut Vec<ListEntry>) -> Result<(), ClientError> {
    let width = entries
        .iter()
        .map(|entry| entry.size.to_string().len())
        .max()
        .unwrap_or(0);
    for entry in entries.drain(..) {
        writeln!(
            out,
            "{} {:>width$} {}",
            entry.kind,
            entry.size,
            shell_quoted(&entry.name)
        )
        .map_err(ClientError::Local)?;
    }
    Ok(())
}

/// `text` with its control characters escaped (`\u{1b}`, `\n`), so that
/// what a server sent cannot drive the terminal it is printed on.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn print_stat(client: &mut Client, path: &str) -> Result<(), ClientError> {
    let stat = client.stat(path)?;
    let kind = match stat.kind {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
    };
    println!(
        "kind: {kind}\nsize: {}\nmodified: {} ({})",
        stat.size,
        utc(stat.mtime),
        stat.mtime
    );
    Ok(())
}

/// A raw name as a POSIX shell reads it back: as it is when it holds
/// only safe characters, in single quotes when it is UTF-8 without
/// control characters, else as `$'...'` with C escapes (bash, zsh, ksh).
fn shell_quoted(raw: &[u8]) -> String {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"%+,-./:=@_^".contains(&b) || b >= 0x80;
    match std::str::from_utf8(raw) {
        Ok(text) if !text.chars().any(char::is_control) => {
            if !text.is_empty() && raw.iter().all(|&b| safe(b)) {
                text.to_owned()
            } else {
                format!("'{}'", text.replace('\'', r"'\''"))
            }
        }
        _ => {
            let mut out = String::from("$'");
            for chunk in raw.utf8_chunks() {
                for c in chunk.valid().chars() {
                    match c {
                        '\n' => out.push_str(r"\n"),
                        '\t' => out.push_str(r"\t"),
                        '\r' => out.push_str(r"\r"),
                        '\\' | '\'' => {
                            out.push('\\');
                            out.push(c);
                        }
                        c if c.is_control() => {
                            let mut buf = [0; 4];
                            for byte in c.encode_utf8(&mut buf).bytes() {
                                let _ = write!(out, r"\x{byte:02X}");
                            }
                        }
                        c => out.push(c),
                    }
                }
                for byte in chunk.invalid() {
                    let _ = write!(out, r"\x{byte:02X}");
                }
            }
            out.push('\'');
            out
        }
    }
}

/// Unix seconds as a UTC date and time, `2023-11-14 22:13:20 UTC`.
fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date, after H. Hinnant's
    // `civil_from_days`, in eras of 400 years starting on March 1st.
    let z = days + 719_468;
    let (era, day_of_era) = (z / 146_097, z % 146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| "expected a number of seconds, such as 30 or 0.5".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(4_107_542_399), "2100-02-28 23:59:59 UTC");
    }

    #[test]
    fn names_are_shell_quoted() {
        assert_eq!(shell_quoted(b"plain-name_1.txt"), "plain-name_1.txt");
        assert_eq!(shell_quoted("café".as_bytes()), "café");
        assert_eq!(shell_quoted(b"my notes.txt"), "'my notes.txt'");
        assert_eq!(shell_quoted(b"it's"), r"'it'\''s'");
        assert_eq!(shell_quoted(b"a*b;$(x)"), "'a*b;$(x)'");
        assert_eq!(shell_quoted(b"new\nline"), r"$'new\nline'");
        assert_eq!(shell_quoted(b"bad\xFF\x01"), r"$'bad\xFF\x01'");
        assert_eq!(shell_quoted("\u{85}".as_bytes()), r"$'\xC2\x85'");
        // What bash makes of each is the name again.
        for raw in [
            &b"new\nline"[..],
            b"it's here",
            b"x\xFFy",
            b"back\\slash'\t",
            b"-x",
        ] {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quoted(raw)))
                .output()
                .unwrap();
            assert_eq!(out.stdout, raw, "{}", shell_quoted(raw));
        }
    }

    #[test]
    fn default_names() {
        assert_eq!(remote_name("docs/report.pdf").unwrap(), "report.pdf");
        assert_eq!(remote_name("/docs/sub/").unwrap(), "sub");
        for remote in ["", "/", "a/..", "."] {
            assert!(remote_name(remote).is_err(), "{remote:?}");
        }
        assert_eq!(local_name(Path::new("dir/a.txt")).unwrap(), "a.txt");
        assert!(local_name(Path::new("..")).is_err());
    }

    #[test]
    fn a_server_without_a_port_gets_the_default() {
        for (given, used) in [
            ("localhost", "localhost:9000"),
            ("localhost:1234", "localhost:1234"),
            ("192.0.2.1", "192.0.2.1:9000"),
            ("[::1]", "[::1]:9000"),
            ("[::1]:1234", "[::1]:1234"),
            ("::1", "[::1]:9000"),
        ] {
            assert_eq!(with_default_port(given), used, "{given}");
        }
    }

    #[test]
    fn the_server_may_follow_the_command() {
        let args = |line: &str| -> Vec<String> {
            server_first(line.split(' ').map(Into::into).collect())
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect()
        };
        assert_eq!(args("fsc ls h:1 dir"), ["fsc", "h:1", "ls", "dir"]);
        assert_eq!(
            args("fsc --timeout 5 get h x -"),
            ["fsc", "--timeout", "5", "h", "get", "x", "-"]
        );
        assert_eq!(args("fsc h:1 ls dir"), ["fsc", "h:1", "ls", "dir"]);
        assert_eq!(args("fsc h:1 get ls"), ["fsc", "h:1", "get", "ls"]);
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("0"), Ok(Duration::ZERO));
        for text in ["", "-1", "nan", "inf", "1s"] {
            assert!(parse_secs(text).is_err(), "{text:?}");
        }
    }
}
