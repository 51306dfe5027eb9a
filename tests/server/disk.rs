//! Uploads and the disk: space is held only as a body arrives (a bounded
//! step ahead of it), and an upload that cannot fit is refused at once.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;

use filesrv::protocol::{Server, ServerConfig};

use crate::support::{Conn, DirWatch, TempDir, TestServer, Tmpfs, init};

/// How much disk an upload may hold beyond the bytes it wrote: the
/// server's step (1 MiB) and some slack for the file system's own blocks.
const AHEAD: u64 = 2 << 20;

/// The disk space allocated to the one upload in progress under `dir`.
fn temp_file_blocks(dir: &TempDir) -> (u64, u64) {
    let names = dir.temp_files("");
    assert_eq!(names.len(), 1, "{names:?}");
    let metadata = std::fs::metadata(dir.root().join(&names[0])).unwrap();
    (metadata.len(), metadata.blocks() * 512)
}

#[test]
fn a_put_holds_disk_only_as_its_body_arrives() {
    let server = TestServer::start("disk-ahead", |config| config.allow_put(true));
    let dir = &server.dir;
    let declared = 64 << 20;
    let watch = DirWatch::new(&dir.root());
    let mut hog = server.connect();
    hog.send(format!("PUT hog {declared}\n").as_bytes());
    hog.send(&[b'x'; 1000]);
    // Disk is first held when the upload begins (before) or when its
    // first bytes are written (now).
    assert!(
        watch.wait_until(|| dir.temp_files("").len() == 1 && temp_file_blocks(dir).1 > 0),
        "the upload did not begin"
    );
    let (len, allocated) = temp_file_blocks(dir);
    eprintln!("file length {len}, {allocated} bytes of disk held");
    assert!(
        allocated <= 1000 + AHEAD,
        "{allocated} bytes held for {len}"
    );
    // The rest arrives: the upload completes whole.
    hog.send(&vec![b'y'; declared - 1000]);
    assert_eq!(hog.line(), format!("OK {declared}"));
    assert_eq!(dir.read("hog").len(), declared);
}

#[test]
fn an_upload_larger_than_the_free_space_is_refused_at_once() {
    let server = TestServer::start("disk-free", |config| {
        config.allow_put(true).max_upload(u64::MAX)
    });
    let stat = rustix::fs::statvfs(server.dir.root()).unwrap();
    let free = stat.f_bavail * stat.f_frsize;
    let mut c = server.connect();
    // No body: the refusal cannot wait for one.
    c.send(format!("PUT big {}\n", free + (1 << 30)).as_bytes());
    assert_eq!(
        c.err_message("internal"),
        "disk full: no space left on the server"
    );
    c.expect_closed();
    assert!(server.dir.temp_files("").is_empty());
}

/// A server on a 4 MiB file system, shut down before it is unmounted.
struct SmallDisk {
    server: Server,
    _tmpfs: Tmpfs,
    dir: TempDir,
}

impl SmallDisk {
    fn start(label: &str) -> Option<SmallDisk> {
        init();
        let dir = TempDir::new(label);
        let Some(tmpfs) = Tmpfs::mount(&dir.root(), 4 << 20) else {
            eprintln!("skipped: a tmpfs cannot be mounted here (needs root)");
            return None;
        };
        let config = ServerConfig::new(dir.root()).allow_put(true);
        let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).unwrap();
        Some(SmallDisk {
            server,
            _tmpfs: tmpfs,
            dir,
        })
    }
}

#[test]
fn a_body_less_put_leaves_the_disk_to_others() {
    let Some(disk) = SmallDisk::start("disk-small") else {
        return;
    };
    let dir = &disk.dir;
    let addr = disk.server.local_addr();
    // Nearly the whole file system declared, and no body sent.
    let watch = DirWatch::new(&dir.root());
    let mut hog = Conn::connect(addr);
    hog.send(b"PUT hog 3993600\n");
    assert!(watch.wait_until(|| dir.temp_files("").len() == 1));
    // Another client's upload and an unrelated writer find room.
    let mut other = Conn::connect(addr);
    other.send(b"PUT other 2097152\n");
    other.send(&vec![b'o'; 2 << 20]);
    assert_eq!(other.line(), "OK 2097152");
    std::fs::write(dir.root().join("unrelated"), vec![b'u'; 512 << 10]).unwrap();
    drop(hog);
    drop(disk);
}
