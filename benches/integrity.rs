//! What integrity and bounded memory cost.
//!
//! - `sum`: `SUM` of a 1 GiB file (page-cached) through the bundled
//!   client, against `sha256sum` of the same file, interleaved, in GB/s
//!   (10⁹ bytes/s); the time of `SUM` is the request's, the time of
//!   `sha256sum` the process's, start to exit.
//! - `list`: the peak resident memory (`VmHWM`) a `filesrv` process gains
//!   serving LIST of a directory of 100,000 files: one client that reads
//!   the reply, and eight clients that send LIST and never read (each
//!   counted once the first byte of its reply has arrived, by which time
//!   the server holds what it will hold for it). A fresh process per
//!   measurement, since the peak never goes down.
//!
//! `cargo bench --bench integrity` runs both (about a minute);
//! `cargo bench --bench integrity -- list` one. Without `--bench` (as
//! `cargo test` runs it) a smoke version with tiny sizes. The figures are
//! in docs/BENCHMARKS.md.

mod common;
// For ChildServer's listener (its congestion control pinned); the page
// cache helpers are the transfer bench's.
#[allow(dead_code)]
#[path = "common/machine.rs"]
mod machine;

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BenchArgs, ChildServer, TempDir, median, write_random_file};
use filesrv::protocol::{Client, Server, ServerConfig};

struct Params {
    sum_size: u64,
    sum_runs: usize,
    entries: usize,
    list_runs: usize,
}

const FULL: Params = Params {
    sum_size: 1 << 30,
    sum_runs: 5,
    entries: 100_000,
    list_runs: 3,
};

const SMOKE: Params = Params {
    sum_size: 1 << 20,
    sum_runs: 1,
    entries: 100,
    list_runs: 1,
};

fn main() -> io::Result<()> {
    let args = BenchArgs::parse();
    let full = args.full;
    let wanted = |name: &str| args.wanted(name);
    let params = if full { &FULL } else { &SMOKE };
    let dir = TempDir::new("integrity")?;
    println!(
        "integrity bench ({}): {} cores",
        if full { "full" } else { "smoke test" },
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
    );
    if wanted("sum") {
        sum(dir.path(), params)?;
    }
    if wanted("list") {
        list(dir.path(), params)?;
    }
    Ok(())
}

fn sum(root: &Path, params: &Params) -> io::Result<()> {
    let path = root.join("large.bin");
    write_random_file(&path, params.sum_size)?;
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::new(root))
        .map_err(io::Error::other)?;
    let mut client = Client::connect_timeout(server.local_addr(), Duration::from_secs(60))
        .map_err(io::Error::other)?;
    // Warm-up: the page cache, and one answer to compare.
    let ours = client.sum("large.bin", None).map_err(io::Error::other)?;
    let theirs = sha256sum(&path)?;
    assert_eq!(ours.hex(), theirs, "SUM and sha256sum disagree");
    let (mut filesrv, mut coreutils) = (Vec::new(), Vec::new());
    let gb = params.sum_size as f64 / 1e9;
    for _ in 0..params.sum_runs {
        let began = Instant::now();
        client.sum("large.bin", None).map_err(io::Error::other)?;
        filesrv.push(gb / began.elapsed().as_secs_f64());
        let began = Instant::now();
        sha256sum(&path)?;
        coreutils.push(gb / began.elapsed().as_secs_f64());
    }
    println!("\nsum: {} MiB file, GB/s", params.sum_size >> 20);
    for (name, runs) in [("SUM (filesrv)", &filesrv), ("sha256sum", &coreutils)] {
        println!(
            "  {name:<14} median {:.3}  runs {}",
            median(runs),
            common::list(runs, 3)
        );
    }
    println!(
        "  ratio          {:.2}",
        median(&filesrv) / median(&coreutils)
    );
    Ok(())
}

fn sha256sum(path: &Path) -> io::Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.get(..64).unwrap_or_default().to_owned())
}

fn list(root: &Path, params: &Params) -> io::Result<()> {
    let dir = root.join("many");
    fs::create_dir_all(&dir)?;
    for i in 0..params.entries {
        File::create(dir.join(format!("file-{i:06}.txt")))?;
    }
    let (mut one, mut eight, mut reply) = (Vec::new(), Vec::new(), 0);
    // A fresh server per case: peak memory only grows.
    let start = || {
        ChildServer::start(
            Path::new(env!("CARGO_BIN_EXE_filesrv")),
            root,
            8,
            &["--max-list-entries", "0"],
        )
    };
    for _ in 0..params.list_runs {
        let server = start()?;
        let base = peak_kib(&server)?;
        let mut c = TcpStream::connect(server.addr)?;
        c.write_all(b"LIST many\n")?;
        let mut sink = [0; 64 * 1024];
        let mut got = 0;
        let mut header = Vec::new();
        // The count line, then the entries to the last.
        let mut reader = BufReader::new(c);
        reader.read_until(b'\n', &mut header)?;
        let count: usize = String::from_utf8_lossy(&header).trim()[3..]
            .parse()
            .unwrap_or(0);
        assert_eq!(
            count,
            params.entries,
            "{:?}",
            String::from_utf8_lossy(&header)
        );
        let mut lines = 0;
        while lines < count {
            let n = reader.read(&mut sink)?;
            if n == 0 {
                break;
            }
            lines += sink[..n].iter().filter(|&&b| b == b'\n').count();
            got += n;
        }
        reply = header.len() + got;
        one.push(peak_kib(&server)? - base);

        let server = start()?;
        let base = peak_kib(&server)?;
        let clients: Vec<TcpStream> = (0..8)
            .map(|_| {
                let mut c = TcpStream::connect(server.addr)?;
                c.write_all(b"LIST many\n")?;
                Ok(c)
            })
            .collect::<io::Result<_>>()?;
        for c in &clients {
            // Blocks until the reply begins.
            let mut first = [0; 1];
            c.peek(&mut first)?;
        }
        eight.push(peak_kib(&server)? - base);
    }
    println!(
        "\nlist: {} entries, reply {} KiB; peak resident memory gained, KiB",
        params.entries,
        reply / 1024
    );
    for (name, runs) in [("one reader", &one), ("eight idle", &eight)] {
        let runs: Vec<f64> = runs.iter().map(|&kib| kib as f64).collect();
        println!(
            "  {name:<12} median {:.0}  runs {}",
            median(&runs),
            common::list(&runs, 0)
        );
    }
    Ok(())
}

/// The peak resident memory of the server process, in KiB (`VmHWM`).
fn peak_kib(server: &ChildServer) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{}/status", server.child.id()))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0))
}
