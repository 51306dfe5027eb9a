//! The `proxy` scenario of the transfer bench: three instances behind
//! HAProxy against one instance alone, and one instance behind HAProxy to
//! show the cost of the proxy hop by itself.
//!
//! All in one run, interleaved, with the same clients (the `loadgen`
//! closed loop, 4 KiB GETs, persistent and per-request): the instances
//! are [`Server`]s in this process with `--proxy-from 127.0.0.1`, and
//! HAProxy runs as in `deploy/haproxy.cfg` (mode tcp, leastconn,
//! send-proxy-v2, `maxconn` = each instance's `max_running`), minus the
//! health checks.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use filesrv::protocol::{Server, ServerConfig};

use super::{Params, SMALL, median, print_rates, rates, serve, small_run, tools};
use filesrv_testkit::loadgen::{Mode, Report};

pub(crate) fn proxy(root: &Path, paths: &[String], params: &Params) -> io::Result<()> {
    let max_running = params.clients;
    println!(
        "\nproxy: {SMALL} B files, {} clients, max_running {max_running} per instance, \
         {:?} warm-up + {:?} window per run",
        params.clients, params.warmup, params.window
    );
    let config = || {
        ServerConfig::new(root)
            .max_running(max_running)
            .proxy_from(["127.0.0.1/32".parse().unwrap()])
    };
    let alone = serve(ServerConfig::new(root).max_running(max_running))?;
    let behind_one = [serve(config())?];
    let behind_three = [serve(config())?, serve(config())?, serve(config())?];
    let one = HaProxy::start(&behind_one, max_running)?;
    let three = HaProxy::start(&behind_three, max_running)?;
    let setups = [
        ("1 instance alone", alone.local_addr()),
        ("haproxy -> 1 instance", one.addr),
        ("haproxy -> 3 instances", three.addr),
    ];
    println!(
        "  {:<36} {:>10} {:>8} {:>9} {:>9}   runs (req/s)",
        "", "req/s", "x alone", "p50", "p99"
    );
    for mode in [Mode::Persistent, Mode::PerRequest] {
        let mut reports: Vec<Vec<Report>> = setups.iter().map(|_| Vec::new()).collect();
        for _ in 0..params.small_runs {
            for ((_, addr), runs) in setups.iter().zip(&mut reports) {
                let report = small_run(*addr, paths, params, mode)?;
                runs.push(report);
            }
        }
        let label = match mode {
            Mode::Persistent => "persistent",
            Mode::PerRequest => "per-request",
        };
        let base = median(&rates(&reports[0]));
        for ((name, _), runs) in setups.iter().zip(&reports) {
            print_rates(36, &format!("{label} {name}"), runs, base);
        }
    }
    for server in behind_one.iter().chain(&behind_three) {
        let stats = server.stats();
        assert_eq!(stats.refused_total() + stats.failed, 0, "{stats:?}");
    }
    Ok(())
}

/// HAProxy in front of `servers`, killed on drop.
struct HaProxy {
    child: Child,
    addr: SocketAddr,
    config: PathBuf,
}

impl HaProxy {
    fn start(servers: &[Server], maxconn: usize) -> io::Result<HaProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let inherited = tools::Inherited::new(&listener);
        let mut config = format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
             timeout server 30s\n  timeout queue 30s\nfrontend fe\n  bind fd@{}\n  \
             default_backend be\nbackend be\n  balance leastconn\n",
            inherited.raw()
        );
        for (i, server) in servers.iter().enumerate() {
            config += &format!(
                "  server s{i} {} send-proxy-v2 maxconn {maxconn}\n",
                server.local_addr()
            );
        }
        let file = std::env::temp_dir().join(format!("filesrv-bench-haproxy-{addr}.cfg"));
        std::fs::write(&file, config)?;
        let haproxy = tools::require("haproxy")
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "haproxy is not installed"))?;
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        drop(inherited);
        Ok(HaProxy {
            child,
            addr,
            config: file,
        })
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}
