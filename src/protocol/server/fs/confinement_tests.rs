//! Confinement beneath the root under hostile input: a property test that
//! no request path, however spelled, names, opens, lists or creates
//! anything outside the served root, and a table of known traversal and
//! encoding attacks gathered from the CVEs of FTP daemons, TFTP servers and
//! small HTTP file servers, each taken from the request line to the file.
//!
//! The parser and decoder properties that need no [`Root`] are integration
//! tests (`tests/hostile_input.rs`); these share its encoders and the
//! hostile tree through `testutil`.

use std::io::Read;
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use super::Root;
use super::testutil::{
    CASES, SECRET, TempDir, config, contains, join_encoded, outside_names, plant_hostile_tree,
};
use crate::protocol::wire::{ErrorCode, MAX_LINE, RelPath, Request, parse_request};

/// Where an open descriptor points, as the kernel tells it.
fn fd_path(fd: &impl std::os::fd::AsRawFd) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
}

/// The hostile tree, plus a FIFO, opened as a [`Root`].
fn hostile_root(label: &str) -> (TempDir, Root) {
    let dir = TempDir::new(label);
    plant_hostile_tree(&dir);
    dir.mkfifo("fifo");
    let root = Root::open(dir.root()).unwrap();
    (dir, root)
}

/// Names that lead somewhere in the hostile tree, in or out.
const TREE_NAMES: &[&str] = &[
    "file.txt",
    "sub",
    "inner.txt",
    "up",
    "self",
    "to_sub",
    "deep",
    "a",
    "b",
    "c",
    "ok",
    "out_file",
    "out_dir",
    "secret.txt",
    "slash",
    "etc",
    "passwd",
    "abs_inside",
    "evil_sibling",
    "proc_root",
    "dangling_out",
    "dangling",
    "loop_a",
    "self_loop",
    "fifo",
    "outside",
    "root-evil",
    "root",
    "..",
    ".",
    "",
];

/// Tries every operation on `path` and checks that whatever succeeded
/// stayed beneath the root and showed nothing of the secret.
fn assert_confined(root: &Root, dir: &TempDir, real_root: &std::path::Path, path: &RelPath) {
    let beneath = |p: std::path::PathBuf| p == real_root || p.starts_with(real_root);
    if let Ok((mut file, _)) = root.open_file(path) {
        assert!(
            beneath(fd_path(&file)),
            "GET {path} opened {:?}",
            fd_path(&file)
        );
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        assert!(!contains(&content, SECRET), "GET {path} read the secret");
    }
    if let Ok(entries) = root.list(path, true, 0) {
        // secret.txt exists only outside the root.
        assert!(
            !entries.iter().any(|e| e.name == b"secret.txt"),
            "LIST {path} listed outside the root"
        );
    }
    let _ = root.stat(path);
    if let Ok(temp) = root.create_temp(path) {
        assert!(beneath(fd_path(temp.as_file())), "PUT {path} wrote outside");
        // Dropped uncommitted: removed.
    }
    assert_eq!(outside_names(dir), ["secret.txt"], "after {path}");
}

#[test]
fn no_component_list_resolves_outside_the_root() {
    let (dir, root) = hostile_root("input-confined");
    let real_root = std::fs::canonicalize(dir.root()).unwrap();
    let component = prop_oneof![
        4 => prop::sample::select(TREE_NAMES).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..4),
    ];
    let mut runner = TestRunner::new(config(CASES));
    runner
        .run(
            &(prop::collection::vec(component, 0..7), any::<u64>()),
            |(components, seed)| {
                let field = join_encoded(&components, seed, false);
                if let Ok(path) = RelPath::decode(&field) {
                    assert_confined(&root, &dir, &real_root, &path);
                }
                Ok(())
            },
        )
        .unwrap();
    // Every reachable path, walked exhaustively two levels deep.
    for first in TREE_NAMES {
        for second in TREE_NAMES {
            if let Ok(path) = RelPath::decode(format!("{first}/{second}").as_bytes()) {
                assert_confined(&root, &dir, &real_root, &path);
            }
        }
    }
}

// ---- The table of known attacks ----

/// What a table entry must get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Refused by the parser with this code.
    Parse(ErrorCode),
    /// Parsed, then refused by the file system layer with this code.
    Open(ErrorCode),
    /// Served: a benign spelling of a file inside the root.
    Serves(&'static str),
}

use ErrorCode::{BadRequest, Forbidden, NotFound};
use Expect::{Open, Parse, Serves};

/// The corpus: `(GET path field, expected outcome)`, by family.
fn corpus() -> Vec<(Vec<u8>, Expect)> {
    let mut corpus: Vec<(Vec<u8>, Expect)> = Vec::new();
    let mut add = |field: &[u8], expect: Expect| corpus.push((field.to_vec(), expect));

    // Plain dot-dot, as in the TFTP daemons of CVE-1999-0183 (Linux tftpd)
    // and CVE-2011-4722 (Ipswitch TFTP Server), and FTP daemons since.
    add(b"../outside/secret.txt", Parse(Forbidden));
    add(b"../../../../../../../../etc/passwd", Parse(Forbidden));
    add(b"/../outside/secret.txt", Parse(Forbidden));
    add(b"//../outside/secret.txt", Parse(Forbidden));
    add(b"sub/../../outside/secret.txt", Parse(Forbidden));
    add(b"./../outside/secret.txt", Parse(Forbidden));
    add(b"..", Parse(Forbidden));
    add(b"sub/..", Parse(Forbidden));
    add(b"sub/../file.txt", Parse(Forbidden));

    // Encoded dots: Apache 2.4.49's `.%2e` (CVE-2021-41773) and the `st`
    // static server's `%2e%2e` (CVE-2014-3744).
    add(b"%2e%2e/outside/secret.txt", Parse(Forbidden));
    add(b"%2E%2E/outside/secret.txt", Parse(Forbidden));
    add(b".%2e/outside/secret.txt", Parse(Forbidden));
    add(b"%2e./outside/secret.txt", Parse(Forbidden));
    add(b"sub/%2e%2e/%2e%2e/outside/secret.txt", Parse(Forbidden));
    add(b"%2e%2e%2foutside%2fsecret.txt", Parse(Forbidden));
    add(b"..%2Foutside%2Fsecret.txt", Parse(Forbidden));
    add(b"%2e/file.txt", Serves("inside\n"));

    // Double encoding: IIS's `..%255c` (CVE-2001-0333) and Apache 2.4.50's
    // `%%32%65` (CVE-2021-42013). Decoded once, they are odd names or bad
    // escapes, never a `..`.
    add(b"%252e%252e/outside/secret.txt", Open(NotFound));
    add(b"%252e%252e%252foutside%252fsecret.txt", Open(NotFound));
    add(b"%25%32%65%25%32%65/outside", Open(NotFound));
    add(b"%%32%65%%32%65/outside/secret.txt", Parse(BadRequest));
    add(b".%%32%65/outside", Parse(BadRequest));
    add(b"..%255c..%255coutside%255csecret.txt", Open(NotFound));

    // Backslashes, raw and encoded: Tomcat (CVE-2007-0450), thttpd on
    // Windows (`%5C..`, CVE-2004-2628), WEBrick (CVE-2008-1891).
    add(b"..\\outside\\secret.txt", Parse(Forbidden));
    add(b"%5c..%5coutside%5csecret.txt", Parse(Forbidden));
    add(b"..%5Coutside", Parse(Forbidden));
    add(b"sub\\..\\..\\outside", Parse(Forbidden));
    add(b"%255c..%255coutside", Open(NotFound));

    // Encoded slashes (Tomcat's ALLOW_ENCODED_SLASH, CVE-2007-0450): a
    // separator like any other; an absolute path means the root.
    add(b"sub%2f..%2f..%2foutside%2fsecret.txt", Parse(Forbidden));
    add(b"%2f..%2foutside", Parse(Forbidden));
    add(b"%2fetc%2fpasswd", Open(NotFound));
    add(b"/etc/passwd", Open(NotFound));
    add(b"//etc//passwd", Open(NotFound));
    add(b"%2f%2f%2ffile.txt", Serves("inside\n"));

    // Overlong and look-alike UTF-8: IIS's `%c0%af` (CVE-2000-0884),
    // Tomcat's `%c0%ae` (CVE-2008-2938), IIS's `%u` escapes. Bytes are
    // compared as bytes: none of these is a dot or a slash.
    add(b"..%c0%af..%c0%afoutside%c0%afsecret.txt", Open(NotFound));
    add(b"%c0%ae%c0%ae/outside/secret.txt", Open(NotFound));
    add(b"%c0%2e%c0%2e/outside", Open(NotFound));
    add(b"%e0%80%ae%e0%80%ae/outside", Open(NotFound));
    add(b"..%c1%9c..%c1%9coutside", Open(NotFound));
    add(b"%f0%80%80%ae%f0%80%80%ae/outside", Open(NotFound));
    add(b"..%u2215outside", Parse(BadRequest));
    add(b"%uff0e%uff0e/outside", Parse(BadRequest));
    add(
        "\u{2024}\u{2024}/outside/secret.txt".as_bytes(),
        Open(NotFound),
    );
    add(
        "\u{FF0E}\u{FF0E}/outside/secret.txt".as_bytes(),
        Open(NotFound),
    );
    add("..\u{2215}outside".as_bytes(), Open(NotFound));
    add(b"..%ef%bc%8foutside", Open(NotFound));
    add(b"..\xC0\xAFoutside", Parse(BadRequest)); // raw, not UTF-8: closes

    // Dots and spaces: Serv-U's `%20..` (CVE-2001-0054), and the trailing
    // dots and spaces Windows strips.
    add(b"%20../outside/secret.txt", Open(NotFound));
    add(b"..%20/outside/secret.txt", Open(NotFound));
    add(b".../outside/secret.txt", Open(NotFound));
    add(b"..../outside", Open(NotFound));
    add(b"sub/.../...", Open(NotFound));
    add(b". ./outside", Parse(BadRequest)); // two fields: a bad offset
    add(b"../ ", Parse(BadRequest)); // an empty field
    add(b"file.txt.", Open(NotFound));
    add(b"file.txt%20", Open(NotFound));

    // NUL truncation, as in PHP's file functions (CVE-2006-7243) and CGI
    // scripts: encoded it is forbidden, raw it is a control byte.
    add(b"file.txt%00.jpg", Parse(Forbidden));
    add(b"../outside/secret.txt%00", Parse(Forbidden));
    add(b"%00", Parse(Forbidden));
    add(b"sub%00/../outside", Parse(Forbidden));
    add(b"file.txt\0.jpg", Parse(BadRequest));

    // CR and LF smuggled into a name (response splitting in small HTTP
    // servers): one name, never a second request.
    add(b"file.txt%0d%0aQUIT", Open(NotFound));
    add(b"file.txt%0aGET%20..%2foutside", Open(NotFound));
    add(b"file.txt\rQUIT", Parse(BadRequest));

    // Windows names: IIS's `::$DATA` (CVE-1999-0278), drive letters
    // (thttpd, CVE-2004-2628; Go's filepath, CVE-2022-41722), device
    // names, 8.3 short names, UNC paths, case folding (WEBrick,
    // CVE-2008-1891). Plain names here.
    add(b"C:\\Windows\\win.ini", Parse(Forbidden));
    add(b"c:%5cboot.ini", Parse(Forbidden));
    add(b"C:/Windows/win.ini", Open(NotFound));
    add(b"file.txt::$DATA", Open(NotFound));
    add(b"CON", Open(NotFound));
    add(b"NUL", Open(NotFound));
    add(b"aux.txt", Open(NotFound));
    add(b"COM1", Open(NotFound));
    add(b"PROGRA~1", Open(NotFound));
    add(b"FILE.TXT", Open(NotFound));
    add(b"\\\\server\\share\\secret.txt", Parse(Forbidden));
    add(b"\\\\?\\C:\\secret.txt", Parse(Forbidden));

    // The server's own temporary files.
    add(b".filesrv-1-2-3", Parse(Forbidden));
    add(b"%2efilesrv-x", Parse(Forbidden));
    add(b"sub/.filesrv-x/y", Parse(Forbidden));

    // Symlinks: to a file or directory outside, to `/`, absolute, to a
    // sibling sharing the root's prefix (Node's `send`, CVE-2014-6394),
    // deep relative escapes, magic links, loops (ELOOP handling in FTP
    // daemons' globbing), dangling.
    add(b"out_file", Open(Forbidden));
    add(b"out_dir/secret.txt", Open(Forbidden));
    add(b"out_dir/not-there", Open(Forbidden));
    add(b"slash/etc/passwd", Open(Forbidden));
    add(b"abs_inside", Open(Forbidden));
    add(b"evil_sibling", Open(Forbidden));
    add(b"deep/a/b/c/secret.txt", Open(Forbidden));
    add(b"proc_root/etc/passwd", Open(Forbidden));
    add(b"dangling_out", Open(Forbidden));
    add(b"loop_a", Open(Forbidden));
    add(b"self_loop", Open(Forbidden));
    add(b"dangling", Open(NotFound));
    add(b"sub/up", Serves("inside\n"));
    add(b"to_sub/inner.txt", Serves("inner\n"));
    add(b"deep/a/b/ok", Serves("inside\n"));

    // Very long components and paths (the long-name overflows of FTP and
    // TFTP daemons): refused or served like any other, within the line.
    let long = |n: usize| vec![b'a'; n];
    add(&long(255), Open(NotFound));
    add(&long(256), Open(NotFound));
    add(&long(4000), Open(NotFound));
    add(&b"a/".repeat(2000), Open(NotFound));
    add(
        &[&b"./".repeat(2000)[..], b"file.txt"].concat(),
        Serves("inside\n"),
    );
    add(
        &[&b"%2e/".repeat(1000)[..], b"file.txt"].concat(),
        Serves("inside\n"),
    );
    add(
        &[&b"//".repeat(2000)[..], b"file.txt"].concat(),
        Serves("inside\n"),
    );
    // More than 40 symlinks in one path: the resolver gives up.
    add(
        &[b"sub/", &b"self/".repeat(45)[..], b"inner.txt"].concat(),
        Open(Forbidden),
    );
    add(
        &[b"sub/", &b"self/".repeat(30)[..], b"inner.txt"].concat(),
        Serves("inner\n"),
    );
    add(
        &[&b"../".repeat(1300)[..], b"etc/passwd"].concat(),
        Parse(Forbidden),
    );
    corpus
}

#[test]
fn known_traversal_and_encoding_attacks_are_refused() {
    let (dir, root) = hostile_root("input-corpus");
    let corpus = corpus();
    assert!(corpus.len() >= 60, "{} entries", corpus.len());
    let mut failures = Vec::new();
    for (field, expect) in &corpus {
        let line = [&b"GET "[..], field].concat();
        assert!(
            line.len() < MAX_LINE,
            "{:?} is too long a line",
            String::from_utf8_lossy(field)
        );
        let got = match parse_request(&line) {
            Err(e) => Parse(e.code()),
            Ok(Request::Get { path, offset: None }) => match root.open_file(&path) {
                Err(e) => Open(e.code()),
                Ok((mut file, _)) => {
                    let mut content = String::new();
                    file.read_to_string(&mut content).unwrap();
                    assert!(!contains(content.as_bytes(), SECRET));
                    match content.as_str() {
                        "inside\n" => Serves("inside\n"),
                        "inner\n" => Serves("inner\n"),
                        _ => panic!("{:?} served {content:?}", String::from_utf8_lossy(field)),
                    }
                }
            },
            Ok(other) => Parse(match other {
                Request::Get { .. } => BadRequest,
                _ => unreachable!("a GET line parsed as {other:?}"),
            }),
        };
        if got != *expect {
            failures.push(format!(
                "{:?}: expected {expect:?}, got {got:?}",
                String::from_utf8_lossy(&field[..field.len().min(80)])
            ));
        }
        // STAT and LIST of the same path never show the outside either.
        if let Ok(Request::Get { path, .. }) = parse_request(&line) {
            let _ = root.stat(&path);
            if let Ok(entries) = root.list(&path, true, 0) {
                assert!(!entries.iter().any(|e| e.name == b"secret.txt"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {}:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
    assert_eq!(outside_names(&dir), ["secret.txt"]);
}
