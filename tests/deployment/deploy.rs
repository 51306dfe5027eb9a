//! The deployment docs/DEPLOY.md shows, run for real: `deploy/haproxy.cfg`
//! (addresses and paths changed, nothing else) in front of three `filesrv`
//! instances on sockets held as systemd's socket units hold them, with
//! `send-proxy-v2`, `tcp-check` and `agent-check`. 200 transfers from
//! eight loopback addresses while one instance is stopped (SIGTERM) and
//! restarted mid-run: every transfer ends complete and correct (a client
//! may reconnect and resume), HAProxy sees the instance drain and come
//! back, and per-source caps hold per real client address.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::{ChildServer, Conn, HaProxy, LIMIT, TempDir, connect_from, tools};

const CONFIG: &str = include_str!("../../deploy/haproxy.cfg");
const DEPLOY_MD: &str = include_str!("../../docs/DEPLOY.md");

/// As in the configuration's comment and the service unit.
const MAX_RUNNING: usize = 4;
const MAX_PER_SOURCE: usize = 2;

const TRANSFERS: usize = 200;
/// The instance is stopped once this many transfers are done...
const STOP_AFTER: usize = 60;
/// ...and transfers from this one on wait until it is back.
const AFTER_RESTART: usize = 100;
const FILES: usize = 6;
const FILE_SIZE: usize = 192 * 1024;
const BIG_FILE: usize = 32 * 1024 * 1024;
/// Eight real client addresses, two clients each (the cap).
const SOURCES: u8 = 8;
/// Attempts of one transfer (each resumes where the last stopped).
const ATTEMPTS: usize = 20;
/// How long a client waits for its reply: HAProxy may keep it in its
/// queue for `timeout queue` (60 s in deploy/haproxy.cfg), which a busy
/// machine can reach while an instance restarts; beyond it, a margin.
const QUEUED: Duration = Duration::from_secs(90);

/// One instance: its socket (held here, as by `filesrv@.socket`) and
/// its agent's address, kept across restarts, and options of the test's
/// beyond the unit's.
struct Instance {
    listener: TcpListener,
    agent: Option<SocketAddr>,
    process: Option<ChildServer>,
    extra: &'static [&'static str],
}

impl Instance {
    fn start(&mut self, root: &TempDir) {
        let passed = tools::Inherited::new(&self.listener);
        let agent = self.agent.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut command = ChildServer::command(&root.root(), MAX_RUNNING);
        command
            .args(["--proxy-from", "127.0.0.1"])
            .args(["--max-per-source", &MAX_PER_SOURCE.to_string()])
            .args(["--agent", &agent.to_string()])
            .args(["--shutdown-grace", "20"])
            .args(self.extra)
            // As the unit: the access log on stderr (the journal there).
            .args(["--access-log", "-"])
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDS_FIRST_FD", passed.raw().to_string())
            .env_remove("LISTEN_PID");
        let process = ChildServer::spawn(command);
        drop(passed);
        let line = process.wait_log("agent-check on ").unwrap();
        self.agent = Some(line.rsplit(' ').next().unwrap().parse().unwrap());
        self.process = Some(process);
    }
}

/// deploy/haproxy.cfg for these instances: each documented address
/// replaced by the test's, every one of them required to be there.
fn config(instances: &[Instance]) -> String {
    let mut config = CONFIG.to_owned();
    let mut replace = |from: &str, to: &str| {
        assert!(config.contains(from), "deploy/haproxy.cfg lacks {from:?}");
        config = config.replace(from, to);
    };
    replace("bind :9000", "bind @FRONTEND@");
    replace("/run/haproxy/filesrv.sock", "@STATS@");
    for (i, instance) in instances.iter().enumerate() {
        let n = i + 1;
        let addr = instance.listener.local_addr().unwrap();
        let agent = instance.agent.unwrap().port();
        replace(
            &format!("server s{n} 127.0.0.1:900{n} port 910{n} agent-port 910{n}"),
            &format!("server s{n} {addr} port {agent} agent-port {agent}"),
        );
    }
    config
}

fn contents(file: usize) -> Vec<u8> {
    (0..FILE_SIZE)
        .map(|i| u8::try_from((i * 7 + file * 13) % 251).unwrap())
        .collect()
}

/// Fetches `name` through the proxy from `from`, reconnecting and
/// resuming (`GET name offset`) after a refusal or a cut; returns the
/// bytes and how many connections it took.
fn fetch(proxy: SocketAddr, from: Ipv4Addr, name: &str, size: usize) -> (Vec<u8>, usize) {
    let mut got = Vec::with_capacity(size);
    for attempt in 1..=ATTEMPTS {
        let Ok(stream) = connect_from(from, proxy) else {
            continue;
        };
        stream.set_read_timeout(Some(QUEUED)).unwrap();
        let mut c = Conn::from_stream(stream);
        if c.try_send(format!("GET {name} {}\n", got.len()).as_bytes())
            .is_err()
        {
            continue;
        }
        // None: closed without a reply (e.g. the instance went away).
        match c.try_line() {
            Some(line) if line.starts_with("OK ") => {
                let n: usize = line[3..].parse().unwrap();
                assert_eq!(got.len() + n, size, "{line}");
                // The body, or what came of it before a cut.
                let _ = (&mut c.reader).take(n as u64).read_to_end(&mut got);
                if got.len() == size {
                    return (got, attempt);
                }
                assert!(got.len() < size, "more than the file");
            }
            Some(line) => assert!(
                line.starts_with("ERR unavailable") || line.starts_with("ERR busy"),
                "{line}"
            ),
            None => {}
        }
    }
    panic!(
        "{name}: {} of {size} bytes after {ATTEMPTS} connections",
        got.len()
    );
}

#[test]
fn three_instances_behind_haproxy_survive_a_rolling_restart() {
    if tools::require("haproxy").is_none() {
        return;
    }
    // The test runs the configuration the docs show.
    let shown = CONFIG.trim();
    assert!(
        DEPLOY_MD.contains(shown),
        "docs/DEPLOY.md must show deploy/haproxy.cfg as is"
    );
    let root = TempDir::new("deploy");
    let files: Vec<Vec<u8>> = (0..FILES).map(contents).collect();
    for (i, file) in files.iter().enumerate() {
        root.write(&format!("f{i}.bin"), file);
    }
    // Larger than the socket buffers hold: a client that does not read
    // keeps its session running.
    let big = contents(FILES).repeat(BIG_FILE / FILE_SIZE);
    root.write("big.bin", &big);
    let mut instances: Vec<Instance> = (0..3)
        .map(|_| Instance {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
            agent: None,
            process: None,
            extra: &[],
        })
        .collect();
    for instance in &mut instances {
        instance.start(&root);
    }
    let haproxy = HaProxy::start("deploy-haproxy", &config(&instances));
    let proxy = haproxy.addr();

    // Per-source caps behind the proxy: one address fills its cap on
    // every instance (leastconn spreads it, two each) and is refused
    // beyond; another address is still served.
    let crowd = Ipv4Addr::new(127, 0, 0, 2);
    let stat = |from| {
        let mut c = Conn::from_stream(connect_from(from, proxy).unwrap());
        c.send(b"STAT /\n");
        c
    };
    let mut held: Vec<Conn> = (0..3 * MAX_PER_SOURCE)
        .map(|_| {
            let mut c = stat(crowd);
            assert!(c.line().starts_with("OK d "));
            c
        })
        .collect();
    let message = stat(crowd).err_message("busy");
    assert_eq!(message, "too many connections from your address");
    let mut other = stat(Ipv4Addr::new(127, 0, 0, 3));
    assert!(other.line().starts_with("OK d "));
    held.clear();
    drop(other);

    // The load, with a restart of s2 in the middle.
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let (stop_now, stop_signal) = crossbeam_channel::bounded::<()>(1);
    let (restarted, wait_restart) = crossbeam_channel::bounded::<()>(0);
    let attempts: usize = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..2 * usize::from(SOURCES))
            .map(|i| {
                let source = u8::try_from(i % usize::from(SOURCES)).unwrap();
                let from = Ipv4Addr::new(127, 0, 0, 10 + source);
                let (next, done, files) = (&next, &done, &files);
                let (stop_now, wait_restart) = (stop_now.clone(), wait_restart.clone());
                scope.spawn(move || {
                    let mut attempts = 0;
                    loop {
                        let task = next.fetch_add(1, Ordering::SeqCst);
                        if task >= TRANSFERS {
                            return attempts;
                        }
                        if task >= AFTER_RESTART {
                            // Disconnected once the restart is done.
                            let _ = wait_restart.recv_timeout(LIMIT);
                        }
                        let file = task % FILES;
                        let (got, tries) = fetch(proxy, from, &format!("f{file}.bin"), FILE_SIZE);
                        assert!(got == files[file], "transfer {task}: wrong bytes");
                        attempts += tries;
                        if done.fetch_add(1, Ordering::SeqCst) + 1 == STOP_AFTER {
                            let _ = stop_now.try_send(());
                        }
                    }
                })
            })
            .collect();
        drop((stop_now, wait_restart));

        // Rolling restart of s2, as DEPLOY.md describes it, with a long
        // transfer running on it (a client behind a proxy that reads
        // nothing yet), so that its drain lasts until HAProxy sees it.
        stop_signal
            .recv_timeout(LIMIT)
            .expect("the load did not start");
        let s2 = &mut instances[1];
        let mut slow = Conn::from_stream(
            connect_from(Ipv4Addr::LOCALHOST, s2.listener.local_addr().unwrap()).unwrap(),
        );
        slow.send(b"PROXY TCP4 127.0.0.50 127.0.0.1 5000 9002\r\nGET big.bin\n");
        assert_eq!(slow.line(), format!("OK {}", big.len()));
        let mut old = s2.process.take().unwrap();
        old.signal(Signal::TERM);
        haproxy.wait_log("Server filesrv/s2 enters drain state");
        assert!(haproxy.server_status("filesrv", "s2").contains("DRAIN"));
        // The running transfer finishes within the grace period.
        assert!(slow.body(big.len()) == big, "the draining transfer was cut");
        slow.expect_last_err("unavailable");
        // Logged with the client's address from the PROXY header; the
        // health checks (connections without a request) are not.
        let line = old
            .wait_log(&format!(" 127.0.0.50:5000 - GET big.bin OK {} ", big.len()))
            .unwrap();
        assert_eq!(line.split(' ').count(), 8, "{line}");
        assert!(old.wait_exit(LIMIT).success());
        s2.start(&root);
        // Back: the agent's "ready" ends the drain, and the health check
        // passes if the stop made it fail. HAProxy logs a health-check
        // change but not always the end of an agent's drain, so the status
        // is read again after each s2 line, or after two agent intervals
        // (500 ms each) without one; bounded by LIMIT.
        let deadline = Instant::now() + LIMIT;
        let mut status = haproxy.server_status("filesrv", "s2");
        while status != "UP" && Instant::now() < deadline {
            haproxy.log_within("Server filesrv/s2 ", Duration::from_secs(1));
            status = haproxy.server_status("filesrv", "s2");
        }
        assert_eq!(status, "UP");
        drop(restarted);

        clients.into_iter().map(|c| c.join().unwrap()).sum()
    });
    assert_eq!(done.load(Ordering::SeqCst), TRANSFERS);
    assert!(attempts >= TRANSFERS);
    for name in ["s1", "s2", "s3"] {
        assert_eq!(haproxy.server_status("filesrv", name), "UP", "{name}");
    }
}

#[test]
fn haproxys_health_checks_never_queue_nor_make_idle_clients_leave() {
    let root = TempDir::new("deploy-checks");
    // Idle clients leave after 1 s while clients wait: a check that
    // waited in an instance's queue would evict one within a second.
    let mut instances: Vec<Instance> = (0..3)
        .map(|_| Instance {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
            agent: None,
            process: None,
            extra: &["--busy-idle-timeout", "1"],
        })
        .collect();
    for instance in &mut instances {
        instance.start(&root);
    }
    let haproxy = HaProxy::start("deploy-checks", &config(&instances));
    // Every slot of every instance taken by a client now idle (six
    // addresses, two each: within every per-source cap).
    let mut idle: Vec<Conn> = (0..3 * MAX_RUNNING)
        .map(|i| {
            let from = Ipv4Addr::new(127, 0, 0, 20 + u8::try_from(i / 2).unwrap());
            let mut c = Conn::from_stream(connect_from(from, haproxy.addr()).unwrap());
            c.send(b"STAT /\n");
            assert!(c.line().starts_with("OK d "));
            c
        })
        .collect();
    // Four check intervals: nothing comes to any idle client.
    let quiet = Duration::from_secs(4);
    let began = Instant::now();
    for c in &mut idle {
        let left = quiet
            .saturating_sub(began.elapsed())
            .max(Duration::from_millis(1));
        c.stream().set_read_timeout(Some(left)).unwrap();
        let mut byte = [0u8; 1];
        match c.reader.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!(
                "an idle client was told something: {other:?}: {:?}",
                c.try_line()
            ),
        }
    }
    assert!(began.elapsed() >= quiet);
    // Every client is still served, and every instance is UP.
    for c in &mut idle {
        c.stream().set_read_timeout(Some(LIMIT)).unwrap();
        c.send(b"STAT /\n");
        assert!(c.line().starts_with("OK d "));
    }
    for name in ["s1", "s2", "s3"] {
        assert_eq!(haproxy.server_status("filesrv", name), "UP", "{name}");
    }
}
