//! `fsc`, the command-line client of the `filesrv` file server.
// Argument docs double as clap's --help text, where `[::1]:9000` must
// read as written, not as an intra-doc link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::error::Error;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use filesrv::protocol::{Client, ClientError, EntryKind};
use indicatif::{ProgressBar, ProgressStyle};

/// Exit status when the server refused the request.
const EXIT_REFUSED: u8 = 1;
/// Exit status for bad usage and every other failure.
const EXIT_FAILED: u8 = 2;

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
  fsc localhost:9000 ls
  fsc localhost:9000 get docs/report.pdf
  fsc localhost:9000 get notes.txt - | less
  fsc localhost:9000 put backup.tar archive/backup.tar

Exit status:
  0  success
  1  the server refused the request (its `ERR <code> <message>` reply is shown)
  2  bad usage, no connection, a broken transfer, or a local file error"
)]
struct Cli {
    /// Give up when connecting, or when the server is silent, for this
    /// many seconds (fractions allowed; 0 waits forever).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    timeout: Duration,

    /// The server, as HOST:PORT (e.g. localhost:9000 or [::1]:9000).
    #[arg(value_name = "HOST:PORT")]
    server: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a file.
    ///
    /// If LOCAL already exists it is taken as a partial download and only
    /// the rest is fetched (use --no-resume to start over).
    Get {
        /// The file on the server.
        remote: String,
        /// Where to write it: a file, a directory to put it in, or `-` for
        /// standard output. Defaults to REMOTE's last component, in the
        /// current directory.
        local: Option<PathBuf>,
        /// Download the whole file, replacing LOCAL if it exists.
        #[arg(long)]
        no_resume: bool,
    },
    /// Upload a file (the server must allow uploads).
    Put {
        /// The file to send.
        local: PathBuf,
        /// Where to store it on the server; ending in `/`, a directory to
        /// put it in. Defaults to LOCAL's file name, in the served root.
        remote: Option<String>,
    },
    /// List a directory: type (f or d), size in bytes, and name per line.
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
    /// The client failed.
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Client(error)
    }
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Client(ClientError::Server { .. }) => EXIT_REFUSED,
            _ => EXIT_FAILED,
        }
    }

    /// The message, followed by every source in the chain.
    fn message(&self) -> String {
        match self {
            Failure::Usage(message) => message.clone(),
            Failure::Client(error) => {
                let mut message = error.to_string();
                let mut source = error.source();
                while let Some(cause) = source {
                    let _ = write!(message, ": {cause}");
                    source = cause.source();
                }
                message
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
            eprintln!("fsc: {}", failure.message());
            ExitCode::from(failure.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    // Every argument is checked before connecting.
    let command = Plan::new(cli.command)?;
    // On the command line 0 waits forever; in the library that is "no
    // timeout", not a zero one.
    let mut client = if cli.timeout.is_zero() {
        Client::connect(&cli.server)?
    } else {
        Client::connect_timeout(&cli.server, cli.timeout)?
    };
    match command {
        Plan::Get {
            remote,
            local,
            resume,
        } => with_progress(&mut client, |client| match &local {
            Some(local) => client.get_file(&remote, local, resume),
            None => client.get_to(&remote, 0, &mut io::stdout().lock()),
        })?,
        Plan::Put { local, remote } => {
            with_progress(&mut client, |client| client.put_file(&local, &remote))?
        }
        Plan::List { dir } => print_list(&mut client, &dir)?,
        Plan::Stat { path } => print_stat(&mut client, &path)?,
    };
    // The work is done: a failed goodbye changes nothing for the user.
    let _ = client.quit();
    Ok(())
}

/// A command with every default filled in.
enum Plan {
    /// `local` is `None` for standard output.
    Get {
        remote: String,
        local: Option<PathBuf>,
        resume: bool,
    },
    Put {
        local: PathBuf,
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
    fn new(command: Command) -> Result<Plan, Failure> {
        Ok(match command {
            Command::Get {
                remote,
                local,
                no_resume,
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
                    resume: !no_resume,
                }
            }
            Command::Put { local, remote } => {
                let remote = match remote {
                    Some(remote) if !remote.is_empty() && !remote.ends_with('/') => remote,
                    prefix => prefix.unwrap_or_default() + local_name(&local)?,
                };
                Plan::Put { local, remote }
            }
            Command::List { dir } => Plan::List {
                dir: dir.unwrap_or_default(),
            },
            Command::Stat { path } => Plan::Stat { path },
        })
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

/// Runs a transfer with a progress bar on stderr, if stderr is a terminal.
fn with_progress(
    client: &mut Client,
    transfer: impl FnOnce(&mut Client) -> Result<u64, ClientError>,
) -> Result<(), ClientError> {
    if !io::stderr().is_terminal() {
        return transfer(client).map(drop);
    }
    let style = ProgressStyle::with_template(
        "{bytes:>10} / {total_bytes:<10} [{wide_bar}] {binary_bytes_per_sec:>12} eta {eta}",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    let bar = ProgressBar::new(0).with_style(style);
    let shown = bar.clone();
    client.set_progress(move |progress| {
        shown.set_length(progress.total);
        shown.set_position(progress.done);
    });
    let result = transfer(client);
    bar.finish_and_clear();
    result.map(drop)
}

fn print_list(client: &mut Client, dir: &str) -> Result<(), ClientError> {
    let entries = client.list(dir)?;
    let width = entries
        .iter()
        .map(|entry| entry.size.to_string().len())
        .max()
        .unwrap_or(0);
    let mut out = io::stdout().lock();
    for entry in &entries {
        writeln!(
            out,
            "{} {:>width$} {}",
            entry.kind,
            entry.size,
            printable(&entry.name)
        )
        .map_err(ClientError::Local)?;
    }
    out.flush().map_err(ClientError::Local)
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

/// A raw name for the terminal: control characters and backslashes
/// escaped the way Rust writes them, invalid UTF-8 bytes as `\xNN`.
fn printable(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02X}");
        }
    }
    out
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
    fn names_are_printable() {
        assert_eq!(printable(b"plain name.txt"), "plain name.txt");
        assert_eq!(printable(b"a\nb\tc\\d"), "a\\nb\\tc\\\\d");
        assert_eq!(printable("\u{1}\u{85}é".as_bytes()), "\\u{1}\\u{85}é");
        assert_eq!(printable(b"bad\xFF"), "bad\\xFF");
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
    fn seconds() {
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("0"), Ok(Duration::ZERO));
        for text in ["", "-1", "nan", "inf", "1s"] {
            assert!(parse_secs(text).is_err(), "{text:?}");
        }
    }
}
