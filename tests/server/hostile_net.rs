//! Hostile clients on real sockets (127.0.0.0/8 only): escaping links and
//! link races, special files, broken framing, slow and silent clients,
//! floods, interrupted and racing uploads, files changing while sent, and
//! panicking handlers. Each test ends by checking that the server still
//! serves a normal client. Every loop is bounded in count and in time.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    Conn, LIMIT, SECRET, SHORT, TempDir, TestServer, connect_from, contains, outside_names,
    plant_hostile_tree,
};
use filesrv::admission::MaxWaiting;
use filesrv::{Handler, HandlerContext, Manager, ManagerBuilder, Refusal, Stop, handler_fn};

/// A server over the hostile tree (see [`plant_hostile_tree`]).
fn hostile_server(label: &str, put: bool) -> TestServer {
    let t = TestServer::start(label, |c| c.allow_put(put));
    plant_hostile_tree(&t.dir);
    t
}

/// A sparse file of `len` bytes beneath the root: large to send, free to
/// make.
fn sparse(dir: &TempDir, rel: &str, len: u64) {
    let file = fs::File::create(dir.root().join(rel)).unwrap();
    file.set_len(len).unwrap();
}

/// Sends `PUT <name> <len>` and a body of `len` bytes of `byte`.
fn put(c: &mut Conn, name: &str, body: &[u8]) {
    c.send(format!("PUT {name} {}\n", body.len()).as_bytes());
    c.send(body);
}

// ---- Symlinks ----

#[test]
fn escaping_links_are_forbidden_over_the_wire() {
    let t = hostile_server("net-links", false);
    let mut c = t.connect();
    c.expect_refusals(&[
        ("GET out_file", "forbidden"),
        ("GET out_dir/secret.txt", "forbidden"),
        ("GET out_dir/not-there", "forbidden"),
        ("LIST out_dir", "forbidden"),
        ("STAT out_dir", "forbidden"),
        ("GET slash/etc/passwd", "forbidden"),
        ("LIST slash", "forbidden"),
        ("GET abs_inside", "forbidden"),
        ("GET evil_sibling", "forbidden"),
        ("GET deep/a/b/c/secret.txt", "forbidden"),
        ("GET proc_root/etc/passwd", "forbidden"),
        ("GET dangling_out", "forbidden"),
        ("GET loop_a", "forbidden"),
        ("STAT self_loop", "forbidden"),
        ("GET dangling", "not-found"),
        ("GET sub/self/self/../up", "forbidden"),
    ]);
    // Links that stay inside are followed.
    c.send(b"GET sub/up\nGET to_sub/inner.txt\nGET deep/a/b/ok\n");
    for body in ["inside\n", "inner\n", "inside\n"] {
        assert_eq!(c.line(), format!("OK {}", body.len()));
        assert_eq!(c.body(body.len()), body.as_bytes());
    }
    // LIST shows no escaping, broken or looping link.
    c.send(b"LIST\nQUIT\n");
    let count: usize = c.line().strip_prefix("OK ").unwrap().parse().unwrap();
    let names: Vec<String> = (0..count)
        .map(|_| c.line().rsplit(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["deep", "file.txt", "sub", "to_sub"]);
    assert_eq!(c.line(), "OK bye");
    t.assert_serves();
}

#[test]
fn uploads_never_write_through_or_beneath_escaping_links() {
    let t = hostile_server("net-link-put", true);
    // A symlinked parent leading outside: refused, and the connection
    // closes (the body cannot be skipped).
    for target in [
        "out_dir/new.txt",
        "slash/tmp/new.txt",
        "deep/a/b/c/new.txt",
        "proc_root/tmp/new.txt",
        "loop_a/new.txt",
    ] {
        let mut c = t.connect();
        put(&mut c, target, b"evil");
        c.expect_last_err("forbidden");
    }
    // A link at the target name that leads outside the root (even to
    // nothing, or by an absolute path) is refused as a GET of it is, and
    // kept.
    for target in ["out_file", "dangling_out", "abs_inside"] {
        let mut c = t.connect();
        put(&mut c, target, b"evil");
        c.expect_last_err("forbidden");
        let path = t.dir.root().join(target);
        assert!(
            fs::symlink_metadata(&path).unwrap().is_symlink(),
            "{target}"
        );
    }
    // One that stays inside is replaced, never written through; so is a
    // looping one.
    for target in ["loop_a", "to_sub"] {
        let mut c = t.connect();
        put(&mut c, target, b"mine");
        assert_eq!(c.line(), "OK 4", "PUT {target}");
        let path = t.dir.root().join(target);
        assert!(fs::symlink_metadata(&path).unwrap().is_file(), "{target}");
        assert_eq!(fs::read(&path).unwrap(), b"mine");
    }
    assert_eq!(t.dir.read("../outside/secret.txt"), SECRET);
    assert_eq!(outside_names(&t.dir), ["secret.txt"]);
    assert_eq!(t.dir.read("file.txt"), b"inside\n");
    assert!(t.dir.root().join("sub/inner.txt").exists());
    assert!(t.dir.temp_files("").is_empty());
    t.assert_serves();
}

/// Swaps `d` (a real directory) and `alt` (a link to the directory
/// outside) with `renameat2(RENAME_EXCHANGE)`, as fast as it can, until
/// told to stop, and for at most `limit`; returns how many swaps it made.
fn swapper(
    root: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        let (d, alt) = (root.join("d"), root.join("alt"));
        let began = Instant::now();
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) && began.elapsed() < limit {
            renameat_with(CWD, &d, CWD, &alt, RenameFlags::EXCHANGE).unwrap();
            swaps += 1;
        }
        // Leave the real directory at `d`.
        if swaps % 2 == 1 {
            renameat_with(CWD, &d, CWD, &alt, RenameFlags::EXCHANGE).unwrap();
        }
        swaps
    })
}

#[test]
fn a_directory_swapped_for_an_escaping_link_never_leaks() {
    let t = TestServer::start("net-race", |c| c.max_running(4).allow_put(true));
    let outside = t.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("f"), SECRET).unwrap();
    fs::write(outside.join("outside-marker"), "").unwrap();
    t.dir.write("d/f", "inside\n");
    t.dir.write("d/inside-marker", "");
    std::os::unix::fs::symlink("../outside", t.dir.root().join("alt")).unwrap();

    // The swapper runs until the clients are done (at most LIMIT).
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = swapper(t.dir.root(), stop.clone(), LIMIT);
    let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..3)
        .map(|client| {
            let (addr, ok, refused) = (t.addr(), ok.clone(), refused.clone());
            thread::spawn(move || {
                let mut c = Conn::connect(addr);
                let began = Instant::now();
                // At least 3 s, and until both an answer from inside and a
                // refusal were seen: on a loaded machine the swapper can
                // be descheduled for seconds with the link in place, and
                // every request of a fixed window refused. Bounded: 2,000
                // batches of 25 requests, or LIMIT.
                let both_seen =
                    || ok.load(Ordering::Relaxed) > 0 && refused.load(Ordering::Relaxed) > 0;
                for batch in 0..2_000 {
                    let elapsed = began.elapsed();
                    if (elapsed > Duration::from_secs(3) && both_seen()) || elapsed > LIMIT {
                        break;
                    }
                    let request: &[u8] = match (client + batch) % 3 {
                        0 => b"GET d/f\n",
                        1 => b"LIST d\n",
                        _ => b"STAT d/f\n",
                    };
                    c.send(&request.repeat(25));
                    for _ in 0..25 {
                        let line = c.line();
                        assert!(!contains(line.as_bytes(), b"outside-marker"), "{line}");
                        if line.starts_with("ERR forbidden ") {
                            refused.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                        if request.starts_with(b"GET") {
                            assert_eq!(line, "OK 7");
                            assert_eq!(c.body(7), b"inside\n");
                        } else if request.starts_with(b"LIST") {
                            // The inside directory: its file, its marker,
                            // and whatever the uploads below put there.
                            let count: usize = line.strip_prefix("OK ").unwrap().parse().unwrap();
                            let names: Vec<String> = (0..count)
                                .map(|_| c.line().rsplit(' ').next().unwrap().to_owned())
                                .collect();
                            assert!(names.contains(&"inside-marker".to_owned()), "{names:?}");
                            assert!(
                                names.iter().all(|n| n == "f"
                                    || n == "inside-marker"
                                    || n.starts_with("up")),
                                "{names:?}"
                            );
                        } else {
                            assert!(line.starts_with("OK f 7 "), "{line}");
                        }
                    }
                }
            })
        })
        .collect();
    // Uploads through the swapping name land inside or are refused.
    let uploads = {
        let addr = t.addr();
        thread::spawn(move || {
            for i in 0..50 {
                let mut c = Conn::connect(addr);
                put(&mut c, &format!("d/up{i}"), b"upload");
                let line = c.line();
                assert!(
                    line == "OK 6" || line.starts_with("ERR forbidden "),
                    "{line}"
                );
            }
        })
    };
    for client in clients {
        client.join().unwrap();
    }
    uploads.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let swaps = swaps.join().unwrap();
    eprintln!(
        "{swaps} swaps; {} answers served, {} refused",
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    // Both sides of the race were met, or the test proved nothing.
    assert!(ok.load(Ordering::Relaxed) > 0 && refused.load(Ordering::Relaxed) > 0);
    let mut outside_now: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    outside_now.sort();
    assert_eq!(outside_now, ["f", "outside-marker"]);
    assert_eq!(fs::read(outside.join("f")).unwrap(), SECRET);
    t.assert_serves();
}

// ---- Special files ----

#[test]
fn fifos_sockets_and_devices_are_refused_at_once() {
    let t = TestServer::start("net-special", |c| c.max_running(1).allow_put(true));
    let root = t.dir.root();
    t.dir.mkfifo("fifo");
    std::os::unix::fs::symlink("fifo", root.join("to_fifo")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    // A character device, where the kernel lets us make one (as root).
    let device = rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .is_ok();
    t.dir.write("file.txt", "x");

    let mut c = t.connect();
    let mut requests = vec![
        "GET fifo",
        "GET fifo 0",
        "GET to_fifo",
        "STAT fifo",
        "LIST fifo",
    ];
    requests.extend(["GET sock", "STAT sock"]);
    if device {
        requests.extend(["GET null", "STAT null"]);
    }
    // The replies come at once: a handler blocked on the FIFO would fail
    // the read's timeout.
    let refusals: Vec<_> = requests.iter().map(|r| (*r, "bad-request")).collect();
    c.expect_refusals(&refusals);
    c.send(b"LIST\n");
    assert_eq!(c.line(), "OK 1");
    assert!(c.line().ends_with(" file.txt"));
    c.send(b"QUIT\n");
    assert_eq!(c.line(), "OK bye");
    drop(c);
    // Uploading over a FIFO or socket is refused and closes.
    for target in ["fifo", "sock"] {
        let mut c = t.connect();
        put(&mut c, target, b"x");
        c.expect_last_err("bad-request");
    }
    t.assert_serves();
}

#[test]
fn unreadable_files_as_far_as_root_allows() {
    // The suite runs as root, whom mode 000 does not stop (CAP_DAC_OVERRIDE),
    // so here a mode-000 file is served and the real refusal is tested with
    // an unprivileged server in hostile_process.rs. Under another user the
    // refusal is checked here as well.
    use std::os::unix::fs::PermissionsExt;
    let t = TestServer::start("net-unreadable", |c| c);
    let path = t.dir.write("locked.txt", "locked\n");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    let mut c = t.connect();
    c.send(b"GET locked.txt\n");
    if rustix::process::geteuid().is_root() {
        assert_eq!(c.line(), "OK 7");
        assert_eq!(c.body(7), b"locked\n");
    } else {
        c.expect_err("forbidden");
    }
    t.assert_serves();
}

// ---- Framing ----

/// `STAT ` + `./` components + `file.txt` + `\n`, exactly `len` bytes with
/// the newline (`len` odd).
fn stat_line(len: usize, crlf: bool) -> Vec<u8> {
    let end: &[u8] = if crlf { b"file.txt\r\n" } else { b"file.txt\n" };
    let padding = len - b"STAT ".len() - end.len();
    let mut line = b"STAT ".to_vec();
    line.extend(b"./".repeat(padding / 2));
    if padding % 2 == 1 {
        line.push(b'/');
    }
    line.extend_from_slice(end);
    assert_eq!(line.len(), len);
    line
}

#[test]
fn a_line_of_4096_bytes_is_served_and_4097_is_refused() {
    let t = TestServer::start("net-4096", |c| c);
    t.dir.write("file.txt", "12345");
    for crlf in [false, true] {
        let mut c = t.connect();
        c.send(&stat_line(4096, crlf));
        assert!(c.line().starts_with("OK f 5 "));
        c.send(&stat_line(4097, crlf));
        c.expect_last_err("bad-request");
    }
    t.assert_serves();
}

#[test]
fn a_megabyte_without_a_newline_is_cut_at_the_limit() {
    let t = TestServer::start("net-megabyte", |c| c.max_running(1));
    let mut c = t.connect();
    let writer = {
        let mut stream = c.stream().try_clone().unwrap();
        thread::spawn(move || {
            // The server stops reading after 4096 bytes: most of this
            // fails, which is the point.
            let chunk = vec![b'A'; 64 * 1024];
            let mut sent = 0;
            while sent < (1 << 20) && stream.write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
        })
    };
    c.expect_last_err("bad-request");
    writer.join().unwrap();
    t.assert_serves();
}

#[test]
fn odd_separators_and_field_counts_get_bad_request() {
    let t = TestServer::start("net-fields", |c| c.allow_put(true));
    t.dir.write("file.txt", "abc");
    let mut c = t.connect();
    c.send(b"GET file.txt\r\n");
    assert_eq!(c.line(), "OK 3");
    assert_eq!(c.body(3), b"abc");
    for line in [
        &b"GET file.txt\rQUIT\n"[..],
        b"GET\tfile.txt\n",
        b"GET  file.txt\n",
        b" GET file.txt\n",
        b"GET file.txt \n",
        b"GET file.txt 0 1\n",
        b"GET\n",
        b"\n",
        b"\r\n",
        b"STAT\n",
        b"LIST a b\n",
        b"QUIT now\n",
        b"GET file.txt\0\n",
        b"GET file.txt\x7F\n",
        b"GET file.txt -1\n",
        b"GET file.txt 0x1\n",
        b"GET file.txt 99999999999999999999\n",
        b"FETCH file.txt\n",
        b"GET %zz\n",
    ] {
        c.send(line);
        c.expect_err("bad-request");
    }
    c.send(b"gEt file.txt 1\n");
    assert_eq!(c.line(), "OK 2");
    assert_eq!(c.body(2), b"bc");
    c.send(b"QUIT\r\n");
    assert_eq!(c.line(), "OK bye");
    c.expect_eof();

    // Lines after which the stream cannot be trusted close the connection.
    for line in [&b"PUT x\n"[..], b"PUT x -1\n", b"GET \xFF\n", b"\xC3\n"] {
        let mut c = t.connect();
        c.send(line);
        c.expect_last_err("bad-request");
    }
    // An incomplete last line before end of input.
    let mut c = t.connect();
    c.send(b"GET file.txt");
    c.half_close();
    c.expect_last_err("bad-request");
    t.assert_serves();
}

/// Four requests on `file.txt` ("abc"), and the replies they must get.
const SCRIPT: &[u8] = b"GET file.txt\nSTAT nope\r\nLIST\nGET file.txt 2\n";

fn assert_script_replies(c: &mut Conn) {
    assert_eq!(c.line(), "OK 3");
    assert_eq!(c.body(3), b"abc");
    c.expect_err("not-found");
    assert_eq!(c.line(), "OK 1");
    assert_eq!(c.line(), "f 3 file.txt");
    assert_eq!(c.line(), "OK 1");
    assert_eq!(c.body(1), b"c");
}

#[test]
fn pipelined_requests_in_one_byte_segments() {
    let t = TestServer::start("net-bytes", |c| c);
    t.dir.write("file.txt", "abc");
    let mut c = t.connect();
    c.stream().set_nodelay(true).unwrap();
    for byte in [SCRIPT, b"QUIT\n"].concat() {
        c.send(&[byte]);
    }
    assert_script_replies(&mut c);
    assert_eq!(c.line(), "OK bye");
    c.expect_eof();
    t.assert_serves();
}

#[test]
fn a_half_closed_client_gets_every_reply() {
    let t = TestServer::start("net-half-close", |c| c);
    t.dir.write("file.txt", "abc");
    let mut c = t.connect();
    c.send(SCRIPT);
    c.half_close();
    assert_script_replies(&mut c);
    c.expect_eof();
    t.assert_serves();
}

#[test]
fn request_bytes_inside_an_upload_body_are_body() {
    let t = TestServer::start("net-put-framing", |c| c.allow_put(true));
    let body = b"QUIT\nGET ../outside\nPUT x 1\n";
    // Header, body and the next requests in one segment, then the same
    // byte by byte.
    let script = [
        format!("PUT up.txt {}\n", body.len()).as_bytes(),
        body,
        b"PUT empty 0\nGET up.txt\nQUIT\n",
    ]
    .concat();
    for one_byte_at_a_time in [false, true] {
        let mut c = t.connect();
        c.stream().set_nodelay(true).unwrap();
        if one_byte_at_a_time {
            for byte in &script {
                c.send(&[*byte]);
            }
        } else {
            c.send(&script);
        }
        assert_eq!(c.line(), format!("OK {}", body.len()));
        assert_eq!(c.line(), "OK 0");
        assert_eq!(c.line(), format!("OK {}", body.len()));
        assert_eq!(c.body(body.len()), body);
        assert_eq!(c.line(), "OK bye");
        c.expect_eof();
    }
    assert_eq!(t.dir.names(""), ["empty", "up.txt"]);
    t.assert_serves();
}

#[test]
fn hostile_names_on_disk_cannot_forge_reply_lines() {
    use std::os::unix::ffi::OsStrExt;
    let t = TestServer::start("net-names", |c| c);
    let names: [&[u8]; 7] = [
        b"evil\nOK 0",
        b"cr\rERR busy x",
        b"two  spaces",
        b"100%25",
        b"bad\xFF\xFEutf8",
        "c1\u{85}next".as_bytes(),
        b"tab\tdel\x7F",
    ];
    for name in names {
        let path = t.dir.root().join(std::ffi::OsStr::from_bytes(name));
        fs::write(path, name).unwrap();
    }
    let mut c = t.connect();
    c.send(b"LIST\n");
    assert_eq!(c.line(), format!("OK {}", names.len()));
    let listed: Vec<String> = (0..names.len()).map(|_| c.line()).collect();
    for line in &listed {
        // Exactly three fields, each name printable and space-free.
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line:?}");
        assert!(!fields[2].chars().any(char::is_control), "{line:?}");
        // The encoded name fetches the file back.
        let size: usize = fields[1].parse().unwrap();
        c.send(format!("GET {}\n", fields[2]).as_bytes());
        assert_eq!(c.line(), format!("OK {size}"));
        let content = c.body(size);
        assert!(names.contains(&content.as_slice()), "{line:?}");
    }
    c.send(b"QUIT\n");
    assert_eq!(c.line(), "OK bye");
    t.assert_serves();
}

#[test]
fn a_reset_in_the_middle_of_a_reply() {
    let t = TestServer::start("net-reset", |c| c.max_running(1));
    sparse(&t.dir, "big", 64 << 20);
    for _ in 0..3 {
        let mut c = t.connect();
        c.send(b"GET big\n");
        assert_eq!(c.line(), format!("OK {}", 64 << 20));
        c.body(1000);
        c.reset();
    }
    // With one running slot, this proves every cut session ended.
    t.assert_serves();
}

// ---- Slow and silent clients ----

#[test]
fn a_silent_client_is_timed_out_and_its_slot_freed() {
    let t = TestServer::start("net-silent", |c| c.max_running(1).idle_timeout(Some(SHORT)));
    t.dir.write("file.txt", "abc");
    let began = Instant::now();
    let mut silent = t.connect();
    let mut waiting = t.connect();
    waiting.send(b"GET file.txt\n");
    silent.expect_err("timeout");
    assert!(began.elapsed() >= SHORT - Duration::from_millis(50));
    assert_eq!(silent.try_line(), None);
    // Time in the queue did not count against the waiting client.
    assert_eq!(waiting.line(), "OK 3");
    assert_eq!(waiting.body(3), b"abc");
    t.assert_serves();
}

#[test]
fn a_drip_fed_line_is_cut_by_its_deadline() {
    let t = TestServer::start("net-drip", |c| c.max_running(1).idle_timeout(Some(SHORT)));
    let mut c = t.connect();
    // One byte every 50 ms (the read timeout paces the loop and watches
    // for the reply at once), for at most 400 bytes (20 s or more): the
    // deadline must cut the line while bytes still come. A server that
    // extended it on each byte would let all of them in.
    c.stream()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let began = Instant::now();
    let mut reply = Vec::new();
    let mut sent = 0;
    for byte in b"GET ".iter().chain([b'a'; 396].iter()) {
        if c.try_send(&[*byte]).is_err() {
            break;
        }
        sent += 1;
        let mut buf = [0; 256];
        match c.reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        if reply.ends_with(b"\n") {
            break;
        }
    }
    let elapsed = began.elapsed();
    let reply = String::from_utf8(reply).unwrap();
    assert!(
        reply.starts_with("ERR timeout "),
        "{reply:?} after {sent} bytes"
    );
    assert!(elapsed >= SHORT - Duration::from_millis(50), "{elapsed:?}");
    // The deadline is for the whole line: trickling did not extend it.
    assert!(sent < 400, "all {sent} bytes were accepted");
    t.assert_serves();
}

#[test]
fn a_stalled_upload_is_timed_out_and_cleaned_up() {
    let t = TestServer::start("net-stall-put", |c| {
        c.max_running(1).allow_put(true).stall_timeout(Some(SHORT))
    });
    t.dir.write("target", "old\n");
    let mut c = t.connect();
    let mut waiting = t.connect();
    c.send(b"PUT target 100\n0123456789");
    waiting.send(b"GET target\n");
    c.expect_last_err("timeout");
    assert_eq!(waiting.line(), "OK 4");
    assert_eq!(waiting.body(4), b"old\n");
    assert!(t.dir.temp_files("").is_empty());
    drop(waiting);
    t.assert_serves();
}

#[test]
fn a_reader_that_never_reads_is_cut_and_its_slot_freed() {
    let t = TestServer::start("net-no-read", |c| {
        c.max_running(1).stall_timeout(Some(SHORT))
    });
    let size: u64 = 64 << 20;
    sparse(&t.dir, "big", size);
    t.dir.write("file.txt", "abc");
    let mut stuck = t.connect();
    stuck.send(b"GET big\n");
    let mut waiting = t.connect();
    waiting.send(b"GET file.txt\n");
    // Served only once the stuck reader's session was cut.
    assert_eq!(waiting.line(), "OK 3");
    assert_eq!(waiting.body(3), b"abc");
    // The stuck reader gets the header and a short body, then the end.
    assert_eq!(stuck.line(), format!("OK {size}"));
    let rest = stuck.rest().len() as u64;
    assert!(rest < size, "{rest} bytes of {size}");
    drop(waiting);
    t.assert_serves();
}

#[test]
fn a_client_that_pipelines_without_reading_is_cut() {
    let t = TestServer::start("net-no-read-replies", |c| {
        c.max_running(1).stall_timeout(Some(SHORT))
    });
    for i in 0..200 {
        t.dir.write(&format!("name-{i:03}-{}", "x".repeat(100)), "");
    }
    let c = t.connect();
    let writer = {
        let mut stream = c.stream().try_clone().unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        thread::spawn(move || {
            // Far more reply bytes than the socket buffers hold; the
            // server's replies block, then it gives up on this client.
            let requests = b"LIST\n".repeat(20_000);
            let _ = stream.write_all(&requests);
        })
    };
    // Served only once the blocked session was cut.
    t.assert_serves();
    writer.join().unwrap();
    drop(c);
}

#[test]
fn a_waiting_client_that_half_closed_is_still_served() {
    // As `nc` does: the requests, then end of input, while still queued.
    let t = TestServer::start("net-queued-half-close", |c| c.max_running(1));
    t.dir.write("file.txt", "abc");
    let holder = hold_slot(&t, 1);
    let mut c = t.connect();
    c.send(b"GET file.txt\n");
    c.half_close();
    drop(holder);
    assert_eq!(c.line(), "OK 3");
    assert_eq!(c.body(3), b"abc");
    c.expect_eof();
    t.assert_serves();
}

// ---- Floods ----

#[test]
fn a_flood_beyond_running_and_waiting_is_served_or_told_busy() {
    let t = TestServer::start("net-flood", |c| c.max_running(2).max_waiting(4));
    t.dir.write("file.txt", "abc");
    // Two clients hold both running slots: a reply proves each runs.
    let holders = [hold_slot(&t, 1), hold_slot(&t, 1)];
    let mut flood: Vec<Conn> = (0..100)
        .map(|_| {
            let mut c = t.connect();
            c.send(b"GET file.txt\nQUIT\n");
            c
        })
        .collect();
    // Accepted in connection order: the first four wait, the rest are
    // told busy at once.
    for c in &mut flood[4..] {
        c.expect_last_err("busy");
    }
    assert_eq!(t.server.stats().waiting, 4);
    drop(holders);
    for mut c in flood.into_iter().take(4) {
        assert_eq!(c.line(), "OK 3");
        assert_eq!(c.body(3), b"abc");
        assert_eq!(c.line(), "OK bye");
        c.expect_eof();
    }
    t.assert_serves();
}

/// A connection from `127.0.0.<host>` that is running: it was answered.
fn hold_slot(t: &TestServer, host: u8) -> Conn {
    let stream = connect_from(Ipv4Addr::new(127, 0, 0, host), t.addr()).unwrap();
    let mut c = Conn::from_stream(stream);
    c.send(b"STAT /\n");
    assert!(c.line().starts_with("OK d "));
    c
}

/// 127.0.(1 + i / 250).(1 + i % 250): distinct loopback sources.
fn source(i: usize) -> Ipv4Addr {
    let byte = |n: usize| u8::try_from(n).unwrap();
    Ipv4Addr::new(127, 0, 1 + byte(i / 250), 1 + byte(i % 250))
}

#[test]
fn per_source_caps_hold_across_many_sources() {
    const SOURCES: usize = 600;
    let t = TestServer::start("net-sources", |c| {
        c.max_running(2).max_waiting(2000).max_per_source(1)
    });
    // One silent connection from each source: all admitted.
    let first: Vec<TcpStream> = (0..SOURCES)
        .map(|i| connect_from(source(i), t.addr()).unwrap())
        .collect();
    // Accepted in connection order (the backlog holds the whole burst:
    // see `Server::bind`), so each is admitted (running or waiting,
    // silently) before its source's second connection arrives.
    // A second one from each: over the cap, told busy at once. (It
    // speaks first: a refused client that says nothing is answered only
    // after the second the server waits to tell an HTTP client apart.)
    for i in 0..SOURCES {
        let mut c = Conn::from_stream(connect_from(source(i), t.addr()).unwrap());
        c.send(b"STAT /\n");
        c.expect_last_err("busy");
    }
    drop(first);
    // Once two later clients run at the same time, every earlier session
    // has left its slot or the queue, and released its source.
    let later = [hold_slot(&t, 2), hold_slot(&t, 3)];
    assert_eq!(t.server.stats().running + t.server.stats().waiting, 2);
    drop(later);
    // The table forgot every source: each may connect again.
    for i in (0..SOURCES).step_by(97) {
        let mut c = Conn::from_stream(connect_from(source(i), t.addr()).unwrap());
        c.send(b"QUIT\n");
        assert_eq!(c.line(), "OK bye");
    }
    t.assert_serves();
}

#[test]
fn an_ipv4_client_of_a_dual_stack_server_is_one_source() {
    use filesrv::protocol::{Server, ServerConfig};
    let dir = TempDir::new("net-mapped");
    let config = ServerConfig::new(dir.root())
        .max_running(1)
        .max_per_source(1);
    let Ok(server) = Server::bind("[::]:0".parse().unwrap(), config) else {
        eprintln!("no IPv6 here: skipped");
        return;
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.local_addr().port()));
    let first = connect_from(Ipv4Addr::new(127, 0, 0, 9), addr).unwrap();
    let mut second = Conn::from_stream(connect_from(Ipv4Addr::new(127, 0, 0, 9), addr).unwrap());
    second.expect_err("busy");
    let mut other = Conn::from_stream(connect_from(Ipv4Addr::new(127, 0, 0, 10), addr).unwrap());
    other.send(b"QUIT\n");
    drop(first);
    assert_eq!(other.line(), "OK bye");
}

// ---- Uploads ----

#[test]
fn an_upload_cut_short_leaves_nothing_behind() {
    let t = TestServer::start("net-put-cut", |c| c.max_running(1).allow_put(true));
    t.dir.write("target", "old\n");
    for sent in [0, 500, 999] {
        let mut c = t.connect();
        c.send(b"PUT target 1000\n");
        c.send(&vec![b'n'; sent]);
        drop(c);
        // With one running slot, this reply proves the cut session ended.
        let mut probe = t.connect();
        probe.send(b"GET target\n");
        assert_eq!(probe.line(), "OK 4", "after {sent} bytes");
        assert_eq!(probe.body(4), b"old\n");
        assert!(t.dir.temp_files("").is_empty(), "after {sent} bytes");
    }
    // A reset mid-body too.
    let mut c = t.connect();
    c.send(b"PUT target 1000\nabc");
    c.reset();
    t.assert_serves();
    assert_eq!(t.dir.names(""), ["health.txt", "target"]);
}

#[test]
fn eight_concurrent_uploads_of_one_name() {
    let t = TestServer::start("net-put-8", |c| c.max_running(8).allow_put(true));
    let bodies: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 256 * 1024]).collect();
    let start = Arc::new(Barrier::new(8));
    let threads: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|body| {
            let (addr, start) = (t.addr(), start.clone());
            thread::spawn(move || {
                let mut c = Conn::connect(addr);
                start.wait();
                put(&mut c, "same", &body);
                assert_eq!(c.line(), format!("OK {}", body.len()));
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stored = t.dir.read("same");
    assert!(bodies.contains(&stored), "a mix of uploads");
    assert!(t.dir.temp_files("").is_empty());
    t.assert_serves();
}

#[test]
fn a_get_racing_a_put_sees_old_or_new_never_a_mix() {
    let t = TestServer::start("net-put-get", |c| c.max_running(2).allow_put(true));
    let (a, b) = (vec![b'a'; 256 * 1024], vec![b'b'; 100 * 1024]);
    t.dir.write("racy", &a);
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addr, a, b, done) = (t.addr(), a.clone(), b.clone(), done.clone());
        thread::spawn(move || {
            let mut c = Conn::connect(addr);
            for i in 0..60 {
                let body = if i % 2 == 0 { &b } else { &a };
                put(&mut c, "racy", body);
                assert_eq!(c.line(), format!("OK {}", body.len()));
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut c = t.connect();
    let began = Instant::now();
    let mut reads = 0;
    while reads < 500 && began.elapsed() < Duration::from_secs(5) {
        c.send(b"GET racy\n");
        let len: usize = c.line().strip_prefix("OK ").unwrap().parse().unwrap();
        let body = c.body(len);
        assert!(body == a || body == b, "a mix of {len} bytes");
        reads += 1;
        if done.load(Ordering::SeqCst) {
            break;
        }
    }
    writer.join().unwrap();
    assert!(t.dir.temp_files("").is_empty());
    t.assert_serves();
}

// ---- Files that change while they are sent ----

#[test]
fn a_file_shrinking_while_sent_ends_the_connection_early() {
    let t = TestServer::start("net-shrink", |c| c.max_running(1));
    let size: u64 = 64 << 20;
    sparse(&t.dir, "big", size);
    let mut c = t.connect();
    c.send(b"GET big\n");
    assert_eq!(c.line(), format!("OK {size}"));
    // The socket buffers hold a few megabytes at most: the server is
    // still sending when the file shrinks.
    fs::OpenOptions::new()
        .write(true)
        .open(t.dir.root().join("big"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let got = c.rest().len() as u64;
    assert!(got < size, "{got} bytes");
    assert!(got >= 1 << 20, "{got} bytes");
    t.assert_serves();
}

#[test]
fn a_file_growing_while_sent_sends_exactly_the_announced_bytes() {
    let t = TestServer::start("net-grow", |c| c);
    let size: usize = 32 << 20;
    sparse(&t.dir, "big", size as u64);
    let mut c = t.connect();
    c.send(b"GET big\n");
    assert_eq!(c.line(), format!("OK {size}"));
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(t.dir.root().join("big"))
        .unwrap();
    file.write_all(&[b'X'; 1 << 20]).unwrap();
    let body = c.body(size);
    assert!(body.iter().all(|&b| b == 0), "bytes past the announced end");
    c.send(b"QUIT\n");
    assert_eq!(c.line(), "OK bye");
    c.expect_eof();
    t.assert_serves();
}

// ---- Panicking handlers, through the library API ----

/// A handler that panics where it is told to.
#[derive(Default)]
struct Panicky {
    in_run: bool,
    in_is_abandoned: bool,
    in_refused: bool,
    /// Registers a stop hook that reports the stop, then panics.
    stop_hook: Option<crossbeam_channel::Sender<Stop>>,
    started: Option<crossbeam_channel::Sender<()>>,
    release: Option<crossbeam_channel::Receiver<()>>,
}

impl Handler for Panicky {
    fn run(self, ctx: &HandlerContext) -> io::Result<()> {
        if let Some(stops) = self.stop_hook {
            ctx.on_stop(move |stop| {
                let _ = stops.send(stop);
                panic!("deliberate panic in a stop hook");
            });
        }
        if let Some(started) = &self.started {
            started.send(()).unwrap();
        }
        if let Some(release) = &self.release {
            let _ = release.recv_timeout(LIMIT);
        }
        assert!(!self.in_run, "deliberate panic in run");
        Ok(())
    }
    fn is_abandoned(&self) -> bool {
        assert!(!self.in_is_abandoned, "deliberate panic in is_abandoned");
        false
    }
    fn refused(self, _reason: Refusal) {
        assert!(!self.in_refused, "deliberate panic in refused");
    }
}

/// Submits a handler that holds the one running slot until the returned
/// sender sends or is dropped; returns once it runs.
fn hold_the_slot(manager: &Manager<Panicky, MaxWaiting>) -> crossbeam_channel::Sender<()> {
    let (started, is_started) = crossbeam_channel::bounded(1);
    let (release, released) = crossbeam_channel::bounded::<()>(1);
    let holder = Panicky {
        started: Some(started),
        release: Some(released),
        ..Panicky::default()
    };
    manager.submit(holder).unwrap();
    is_started.recv_timeout(LIMIT).unwrap();
    release
}

#[test]
fn panicking_handlers_are_counted_and_free_their_slot() {
    crate::support::init();
    let manager = ManagerBuilder::new(1)
        .admission(MaxWaiting(2))
        .build()
        .unwrap();
    // Panics in run and in is_abandoned, then a normal handler: the one
    // worker survives them all and runs it. Each waits behind a handler
    // that holds the slot: only a handler that waited is asked
    // is_abandoned.
    for i in 0..20 {
        let release = hold_the_slot(&manager);
        let h = Panicky {
            in_run: i % 2 == 0,
            in_is_abandoned: i % 2 == 1,
            ..Panicky::default()
        };
        manager.submit(h).unwrap();
        release.send(()).unwrap();
        assert!(manager.wait_idle_timeout(LIMIT));
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    let normal = Panicky {
        started: Some(tx),
        ..Panicky::default()
    };
    manager.submit(normal).unwrap();
    rx.recv_timeout(LIMIT).unwrap();
    assert!(manager.wait_idle_timeout(LIMIT));
    let stats = manager.stats();
    assert_eq!(
        (
            stats.panicked,
            stats.abandoned,
            stats.completed,
            stats.running
        ),
        (10, 10, 21, 0)
    );

    // A panic in `refused`, called on the submitting thread, stays there:
    // no lock is held, and the manager goes on.
    let release = hold_the_slot(&manager);
    manager.submit(Panicky::default()).unwrap();
    manager.submit(Panicky::default()).unwrap();
    let refused = manager
        .submit(Panicky {
            in_refused: true,
            ..Panicky::default()
        })
        .expect_err("the queue is full");
    let notify = std::panic::AssertUnwindSafe(|| refused.notify());
    assert!(std::panic::catch_unwind(notify).is_err());
    drop(release);
    assert!(manager.wait_idle_timeout(LIMIT));
    // 21 before, and this part's holder and the two it let in.
    assert_eq!(manager.stats().completed, 24);
}

#[test]
fn a_panicking_stop_hook_does_not_break_shutdown() {
    crate::support::init();
    let manager = Arc::new(ManagerBuilder::new(1).build().unwrap());
    let (started, is_started) = crossbeam_channel::bounded(1);
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    let (stops, stopped) = crossbeam_channel::unbounded();
    let running = Panicky {
        stop_hook: Some(stops),
        started: Some(started),
        release: Some(released),
        ..Panicky::default()
    };
    manager.submit(running).unwrap();
    is_started.recv_timeout(LIMIT).unwrap();
    // Waiting, and panics when refused at shutdown.
    let waiting = Panicky {
        in_refused: true,
        ..Panicky::default()
    };
    manager.submit(waiting).unwrap();
    let shutdown = thread::spawn({
        let manager = manager.clone();
        move || manager.shutdown(Duration::from_secs(10))
    });
    // The hook was called (and panicked); the handler then finishes.
    assert_eq!(stopped.recv_timeout(LIMIT), Ok(Stop::Graceful));
    drop(release);
    let report = shutdown.join().expect("shutdown panicked");
    assert_eq!(
        (report.running_at_start, report.refused_waiting, report.cut),
        (1, 1, 0)
    );
    let stats = manager.stats();
    assert_eq!((stats.running, stats.waiting, stats.completed), (0, 0, 1));

    // Handlers written as closures are no different.
    let manager = ManagerBuilder::new(1).build().unwrap();
    manager
        .submit(handler_fn(|_| panic!("deliberate panic in a closure")))
        .unwrap();
    assert!(manager.wait_idle_timeout(LIMIT));
    assert_eq!(manager.stats().panicked, 1);
}
