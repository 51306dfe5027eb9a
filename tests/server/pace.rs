//! Bodies that trickle are cut: the stall timeout is wall time without
//! progress however the server splits its writes, and a body slower than
//! the minimum rate is cut. The `filesrv` binary as a child, its log (`-v`)
//! telling when a GET was cut; every wait bounded.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{ChildServer, LIMIT, TempDir};

/// A GET of a large file whose client never reads the body is cut, not
/// before the stall timeout (how late is not asserted: a busy machine
/// delays it; the wait for the log line is bounded by `LIMIT`).
fn never_read_get_is_cut_in_time(stall: Duration) {
    let dir = TempDir::new("send-stall");
    // Sparse: far more than every socket buffer, at no disk cost.
    let file = std::fs::File::create(dir.root().join("big.bin")).unwrap();
    file.set_len(300 << 20).unwrap();
    let mut command = ChildServer::command(&dir.root(), 1);
    command.args(["--stall-timeout", &stall.as_secs_f64().to_string()]);
    let server = ChildServer::spawn(command);
    let mut c = server.connect();
    let asked = Instant::now();
    c.send(b"GET big.bin\n");
    assert_eq!(c.line(), format!("OK {}", 300 << 20));
    let line = server.wait_log("-> stalled").expect("the GET was not cut");
    let cut = asked.elapsed();
    assert!(
        cut >= stall,
        "cut after {cut:?} with a stall timeout of {stall:?}: {line}"
    );
}

#[test]
fn send_stall_of_one_second_is_wall_time() {
    never_read_get_is_cut_in_time(Duration::from_secs(1));
}

#[test]
fn send_stall_of_two_seconds_is_wall_time() {
    never_read_get_is_cut_in_time(Duration::from_secs(2));
}

#[test]
fn a_put_body_trickling_a_byte_at_a_time_is_cut_by_the_minimum_rate() {
    let dir = TempDir::new("min-rate");
    let mut command = ChildServer::command(&dir.root(), 1);
    // Progress every 300 ms: the stall timeout never fires; the
    // default minimum rate (500 bytes/s after a 1 s allowance) does.
    command.args(["--allow-put", "--stall-timeout", "1"]);
    let server = ChildServer::spawn(command);
    let mut c = server.connect();
    let began = Instant::now();
    c.send(b"PUT slow.bin 1000\n");
    let mut cut = None;
    // One byte every 300 ms, until the server answers (looked at without
    // blocking after each byte), for LIMIT at least: the cut must come
    // while progress continues, which only the minimum rate explains.
    let bytes = LIMIT.as_millis() / 300;
    for _ in 0..bytes {
        if c.try_send(b"x").is_err() {
            cut = Some(began.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(300));
        c.stream().set_nonblocking(true).unwrap();
        let answered = c.stream().peek(&mut [0; 1]).is_ok();
        c.stream().set_nonblocking(false).unwrap();
        if answered {
            cut = Some(began.elapsed());
            break;
        }
    }
    let cut = cut.expect("the slow body was not cut");
    c.expect_last_err("timeout");
    assert!(cut >= Duration::from_secs(1), "cut after {cut:?}");
    assert!(dir.temp_files("").is_empty(), "a temporary file was left");
}

/// A connection to `addr` whose receive buffer is small, so that what the
/// server has sent but the client not read stays small too.
fn connect_with_small_window(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use rustix::net::{AddressFamily, SocketType, connect, socket, sockopt};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    sockopt::set_socket_recv_buffer_size(&fd, 4096).unwrap();
    connect(&fd, &addr).unwrap();
    std::net::TcpStream::from(fd)
}

/// Reads `source` at most `chunk` bytes every 100 ms, until the end, an
/// error, or the returned sender is dropped; the thread gives the bytes
/// read.
fn read_slowly(
    mut source: impl Read + Send + 'static,
    chunk: usize,
) -> (crossbeam_channel::Sender<()>, thread::JoinHandle<usize>) {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let reader = thread::spawn(move || {
        let mut read = 0;
        let mut buf = vec![0u8; chunk];
        let pause = Duration::from_millis(100);
        while stopped.recv_timeout(pause) == Err(crossbeam_channel::RecvTimeoutError::Timeout) {
            match source.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
        read
    });
    (stop, reader)
}

/// A server whose root holds about 6 MB of listing, more than the
/// server's socket buffer takes (4 MiB at most): 25,000 names of 250
/// bytes. It wants 4 MB/s after a 1 s allowance; the slow clients read
/// 10 KB/s, each read within the stall timeout.
fn serve_a_large_directory(label: &str) -> (TempDir, ChildServer) {
    let dir = TempDir::new(label);
    for i in 0..25_000 {
        let name = format!("{i:0>250}");
        std::fs::File::create(dir.root().join(name)).unwrap();
    }
    let mut command = ChildServer::command(&dir.root(), 1);
    command.args(["--stall-timeout", "1", "--min-rate", "4000000"]);
    (dir, ChildServer::spawn(command))
}

#[test]
fn a_list_reply_read_slower_than_the_minimum_rate_is_cut() {
    let (_dir, server) = serve_a_large_directory("list-rate");
    let mut stream = connect_with_small_window(server.addr());
    stream.write_all(b"LIST\n").unwrap();
    let (stop, reader) = read_slowly(stream, 1024);
    let line = server.wait_log("LIST -> ").unwrap();
    drop(stop);
    let read = reader.join().unwrap();
    eprintln!("{line}; the client had read {read} bytes");
    assert!(line.contains("-> stalled"), "{line}");
}

/// Inside TLS there is no `sendfile`, but the same pace holds: a GET
/// whose client (socat, through a 4 KiB window) reads 20 KB/s, each read
/// well within the stall timeout, is cut by the minimum rate.
#[test]
fn a_tls_get_read_slower_than_the_minimum_rate_is_cut() {
    use std::process::{Command, Stdio};
    let dir = TempDir::new("tls-rate");
    let file = std::fs::File::create(dir.root().join("big.bin")).unwrap();
    file.set_len(300 << 20).unwrap();
    let (server, _pin) = super::tls::serve_self_signed(
        &dir.root(),
        1,
        &["--stall-timeout", "1", "--min-rate", "4000000"],
    );
    let target = format!("OPENSSL:{},verify=0,rcvbuf=4096", server.addr());
    let mut socat = Command::new("timeout")
        .arg(LIMIT.as_secs().to_string())
        .arg(crate::support::tools::need("socat"))
        .args(["-", &target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = socat.stdin.take().unwrap();
    input.write_all(b"GET big.bin\n").unwrap();
    let output = socat.stdout.take().unwrap();
    let (stop, reader) = read_slowly(output, 2048);
    let line = server.wait_log("GET big.bin -> ").unwrap();
    drop(stop);
    let read = reader.join().unwrap();
    drop(input);
    let _ = socat.kill();
    let _ = socat.wait();
    eprintln!("{line}; the client had read {read} bytes");
    assert!(line.contains("-> stalled"), "{line}");
}

/// An HTTP listing keeps the same pace as a LIST: read slower than the
/// minimum rate (10 KB/s through a 4 KiB window, each read within the
/// stall timeout), it is cut long before its end.
#[test]
fn an_http_listing_read_slower_than_the_minimum_rate_is_cut() {
    let (_dir, server) = serve_a_large_directory("http-list-rate");
    let mut stream = connect_with_small_window(server.addr());
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (stop, reader) = read_slowly(stream, 1024);
    let line = server.wait_log("GET / -> ").unwrap();
    drop(stop);
    let read = reader.join().unwrap();
    eprintln!("{line}; the client had read {read} bytes");
    // The page is over 12 MB; what left before the cut is what the
    // socket buffers took.
    let sent: u64 = line
        .split(" -> 200 ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent < 12_000_000, "{line}");
}
