//! The `nc` transcripts of README.md and docs/PROTOCOL.md, replayed
//! against the `filesrv` binary on the folder their set-up lines make:
//! every reply must match the page byte for byte. The pages' stand-ins
//! for what differs between machines (the file's modification time
//! `1764000000`, the directory size `4096`) are made true: the test sets
//! the time, and puts the size the file system reports in the expected
//! text.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::support::{ChildServer, TempDir};

const README: &str = include_str!("../../README.md");
const PROTOCOL: &str = include_str!("../../docs/PROTOCOL.md");

/// The set-up each page shows, and the session's start in PROTOCOL.md.
const README_DEMO: &str = "mkdir -p demo && printf 'hello\\n' > demo/notes.txt";
const MAKE_DEMO: &str = "mkdir -p demo/docs && printf 'hello\\n' > demo/notes.txt";
const QUICKSTART: &str = "cargo run --release --bin filesrv -- 9000 5 --root demo --bind 127.0.0.1";
const SESSION_SERVER: &str =
    "$ cargo run --release --bin filesrv -- 9000 2 --root demo --allow-put --bind 127.0.0.1 &";

/// The folder `README_DEMO` (`with_docs`: `MAKE_DEMO`) makes, with the
/// pages' modification time.
fn demo(with_docs: bool) -> TempDir {
    let dir = TempDir::new("docs-demo");
    dir.write("notes.txt", "hello\n");
    if with_docs {
        std::fs::create_dir(dir.root().join("docs")).unwrap();
    }
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
    let file = File::options()
        .write(true)
        .open(dir.root().join("notes.txt"))
        .unwrap();
    file.set_modified(mtime).unwrap();
    dir
}

/// The `console` blocks of `page`, each as its lines.
fn console_blocks(page: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        if line == "```console" {
            blocks.push(lines.by_ref().take_while(|l| *l != "```").collect());
        }
    }
    blocks
}

/// `printf`'s argument as bytes (the pages use `\n` only).
fn printf(format: &str) -> Vec<u8> {
    assert!(!format.contains(['%', '\'']), "{format}");
    format.replace("\\n", "\n").into_bytes()
}

/// Every `$ printf '...' | nc -N localhost 9000` of README.md, with the
/// output shown under it, replayed: the input sent, the write side shut
/// (as `-N` does), the whole output compared.
#[test]
fn the_readme_nc_commands_print_what_it_shows() {
    assert!(README.contains(README_DEMO), "README.md's set-up changed");
    assert!(README.contains(QUICKSTART), "README.md's server changed");
    let dir = demo(false);
    let server = ChildServer::spawn(ChildServer::command(&dir.root(), 5));
    let mut replayed = 0;
    for block in console_blocks(README) {
        let mut lines = block.iter().peekable();
        while let Some(command) = lines.next() {
            let input = command
                .strip_prefix("$ printf '")
                .and_then(|c| c.strip_suffix("' | nc -N localhost 9000"))
                .unwrap_or_else(|| panic!("not an nc command: {command}"));
            let mut shown = String::new();
            while let Some(line) = lines.next_if(|l| !l.starts_with("$ ")) {
                shown += line;
                shown.push('\n');
            }
            let mut c = server.connect();
            c.send(&printf(input));
            c.half_close();
            let printed = String::from_utf8(c.read_until_closed()).unwrap();
            assert_eq!(printed, shown, "for {command}");
            replayed += 1;
        }
    }
    assert_eq!(replayed, 2, "README.md's nc commands");
}

/// The interactive session of docs/PROTOCOL.md: each request sent, its
/// reply read (a body as long as its `OK` line says) and compared.
#[test]
fn the_protocol_session_is_what_the_server_says() {
    let block = console_blocks(PROTOCOL)
        .into_iter()
        .find(|b| b.contains(&"$ nc localhost 9000"))
        .expect("PROTOCOL.md's nc session");
    assert_eq!(
        block[..3],
        [
            &format!("$ {MAKE_DEMO}"),
            SESSION_SERVER,
            "$ nc localhost 9000"
        ],
        "PROTOCOL.md's set-up changed"
    );
    let dir = demo(true);
    let docs_size = std::fs::metadata(dir.root().join("docs")).unwrap().len();
    let mut command = ChildServer::command(&dir.root(), 2);
    command.arg("--allow-put");
    let server = ChildServer::spawn(command);
    let mut c = server.connect();
    let mut reader = BufReader::new(c.stream().try_clone().unwrap());
    let mut lines = block[3..].iter().peekable();
    let mut requests = 0;
    while let Some(request) = lines.next() {
        let verb = request.split(' ').next().unwrap();
        assert!(
            ["GET", "LIST", "STAT", "SUM", "PUT", "QUIT"].contains(&verb),
            "not a request: {request}"
        );
        c.send(format!("{request}\n").as_bytes());
        if verb == "PUT" {
            // The typed body: lines until the announced size is reached.
            let size: usize = request.rsplit(' ').next().unwrap().parse().unwrap();
            let mut body = String::new();
            while body.len() < size {
                body += lines.next().expect("the PUT's body");
                body.push('\n');
            }
            assert_eq!(body.len(), size, "{request}");
            c.send(body.as_bytes());
        }
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        let count = reply
            .strip_prefix("OK ")
            .and_then(|n| n.trim_end().parse::<usize>().ok());
        match (verb, count) {
            ("GET", Some(n)) => {
                let mut body = vec![0; n];
                reader.read_exact(&mut body).unwrap();
                reply += std::str::from_utf8(&body).unwrap();
            }
            ("LIST", Some(n)) => {
                for _ in 0..n {
                    reader.read_line(&mut reply).unwrap();
                }
            }
            _ => {}
        }
        let mut shown = String::new();
        while let Some(line) = lines.next_if(|l| !is_request(l)) {
            shown += line;
            shown.push('\n');
        }
        let shown = shown.replace("d 4096 docs", &format!("d {docs_size} docs"));
        assert_eq!(reply, shown, "for {request}");
        requests += 1;
    }
    assert_eq!(requests, 11, "PROTOCOL.md's requests");
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"", "after QUIT");
    assert_eq!(dir.read("docs/hi.txt"), b"abc\n");
}

/// A line of the session the client typed: a request, not a reply. The
/// replies in the session never start with a verb.
fn is_request(line: &str) -> bool {
    ["GET ", "LIST", "STAT ", "SUM ", "PUT ", "QUIT"]
        .iter()
        .any(|verb| line.starts_with(verb))
}

/// The pages' set-up lines, run by a shell, make the folders the tests
/// above serve.
#[test]
fn the_demo_set_up_makes_that_folder() {
    for (line, with_docs) in [(README_DEMO, false), (MAKE_DEMO, true)] {
        let dir = TempDir::new("docs-shell");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "{line}");
        let demo = dir.path().join("demo");
        assert_eq!(std::fs::read(demo.join("notes.txt")).unwrap(), b"hello\n");
        assert_eq!(Path::is_dir(&demo.join("docs")), with_docs, "{line}");
    }
}

/// README.md's dependency line, put in a new crate's manifest with the
/// path of this clone, resolves (offline, from the registry cache the
/// build filled).
#[test]
fn the_readme_library_line_resolves() {
    let line = README
        .lines()
        .find(|l| l.starts_with("filesrv = {"))
        .expect("README.md's dependency line");
    let clone = env!("CARGO_MANIFEST_DIR");
    assert!(line.contains(r#"path = "../filesrv""#), "{line}");
    let line = line.replace("../filesrv", clone);
    let dir = TempDir::new("docs-dependent");
    dir.write(
        "Cargo.toml",
        format!(
            "[package]\nname = \"dependent\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
             [dependencies]\n{line}\n\n[workspace]\n"
        ),
    );
    dir.write("src/lib.rs", "");
    // The same versions as this clone's build, so nothing is fetched.
    std::fs::copy(
        Path::new(clone).join("Cargo.lock"),
        dir.root().join("Cargo.lock"),
    )
    .unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--offline", "--format-version", "1"])
        .current_dir(dir.root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(r#""name":"filesrv""#), "{stdout}");
}
