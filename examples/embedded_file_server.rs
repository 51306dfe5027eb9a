//! The file server embedded in another program: the program binds the
//! socket, starts a [`Server`] on it beside its own work, and decides when
//! it stops.
//!
//! ```text
//! cargo run --example embedded_file_server -- [DIR] [PORT]
//! cargo run --bin fsc -- 127.0.0.1:PORT ls
//! ```
//!
//! Serves `DIR` (default: the current directory) on 127.0.0.1:`PORT`
//! (default: a free port, printed), read-only, until Enter is pressed or
//! standard input closes; then it shuts the server down gracefully and
//! prints its report.

use std::io::{self, BufRead};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use filesrv::protocol::{Server, ServerConfig, ServerError};

/// Starts serving `dir` on `listener`: the program's own settings on top
/// of the defaults.
fn start(listener: TcpListener, dir: &Path) -> Result<Server, ServerError> {
    let config = ServerConfig::new(dir)
        .max_running(8)
        .max_waiting(64)
        .max_per_source(4)
        .idle_timeout(Some(Duration::from_secs(30)))
        .shutdown_grace(Duration::from_secs(2));
    Server::from_listener(listener, config)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let port = match args.next() {
        Some(port) => port.parse().map_err(|_| format!("not a port: {port}"))?,
        None => 0,
    };
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    let server = start(listener, &dir)?;
    eprintln!(
        "serving {} on {}; press Enter to stop",
        dir.display(),
        server.local_addr()
    );

    // The host program's own work; here, waiting for its operator.
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;

    let report = server.shutdown();
    let stats = server.stats();
    eprintln!(
        "stopped in {:?}: {} clients served, {} refused, {} cut at shutdown",
        report.took,
        stats.completed,
        stats.refused_total(),
        report.cut
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use filesrv::protocol::wire::{EntryKind, ErrorCode};
    use filesrv::protocol::{Client, ClientError};

    use super::*;

    /// How long a test waits for any reply before failing.
    const LIMIT: Duration = Duration::from_secs(20);

    /// A directory of the host program's files: `report.txt` and
    /// `data/numbers.bin`. Left behind if the test fails, for a look.
    fn files(label: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("filesrv-example-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("report.txt"), "all systems nominal\n").unwrap();
        std::fs::write(dir.join("data/numbers.bin"), [0u8, 1, 2, 3, 255]).unwrap();
        dir
    }

    fn serve(dir: &Path) -> Server {
        start(TcpListener::bind("127.0.0.1:0").unwrap(), dir).unwrap()
    }

    #[test]
    fn serves_the_programs_files_to_a_client() {
        let dir = files("client");
        let server = serve(&dir);
        let mut client = Client::connect_timeout(server.local_addr(), LIMIT).unwrap();
        client.set_timeout(Some(LIMIT)).unwrap();

        let mut report = Vec::new();
        assert_eq!(client.get_to("report.txt", 0, &mut report).unwrap(), 20);
        assert_eq!(report, b"all systems nominal\n");
        let mut tail = Vec::new();
        client.get_to("data/numbers.bin", 3, &mut tail).unwrap();
        assert_eq!(tail, [3, 255]);

        let listing = client.list("").unwrap();
        let names: Vec<(EntryKind, &[u8])> = listing
            .iter()
            .map(|entry| (entry.kind, entry.name.as_slice()))
            .collect();
        assert_eq!(
            names,
            [
                (EntryKind::Dir, &b"data"[..]),
                (EntryKind::File, b"report.txt")
            ]
        );
        assert_eq!(client.stat("data/numbers.bin").unwrap().size, 5);

        // Read-only: the default.
        match client.put_from("new.txt", &b"x"[..], 1) {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Forbidden),
            other => panic!("upload not refused: {other:?}"),
        }
        assert!(!dir.join("new.txt").exists());

        let report = server.shutdown();
        assert_eq!(report.cut, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn speaks_the_line_protocol_over_tcp() {
        let dir = files("raw");
        let server = serve(&dir);
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        stream
            .write_all(b"GET report.txt\nGET missing.txt\nQUIT\n")
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert_eq!(
            reply,
            "OK 20\nall systems nominal\n\
             ERR not-found no such file or directory\n\
             OK bye\n"
        );

        server.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
