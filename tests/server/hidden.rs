//! Hidden names (a component starting with `.`), PUT onto a symlink that
//! leads outside the root, and the start-up cleanup sparing the
//! operator's own `.filesrv-` files.

use crate::support::{SECRET, TestServer};

/// A root with the files a served working directory typically holds.
fn plant(server: &TestServer) {
    let dir = &server.dir;
    dir.write(".env", "TOKEN=1\n");
    dir.write(".git/config", "[core]\n");
    dir.write(".ssh/id_rsa", "KEY\n");
    dir.write("notes.txt", "notes\n");
    dir.write("sub/.hidden", "h\n");
    // A link without a dot that the operator made to a hidden file: the
    // rule looks at request names, so it is served.
    dir.symlink(".env", "env-link");
}

#[test]
fn hidden_names_are_not_listed_or_served_by_default() {
    let server = TestServer::start("hidden-off", |c| c.allow_put(true));
    plant(&server);
    let mut c = server.connect();
    c.send(b"LIST\n");
    assert_eq!(c.line(), "OK 3");
    let listed: Vec<String> = (0..3).map(|_| c.line()).collect();
    assert_eq!(listed[0], "f 8 env-link");
    assert_eq!(listed[1], "f 6 notes.txt");
    assert!(listed[2].starts_with("d ") && listed[2].ends_with(" sub"));
    c.send(b"LIST sub\n");
    assert_eq!(c.line(), "OK 0");
    for request in [
        "GET .env",
        "GET .ssh/id_rsa",
        "GET %2Essh/id_rsa",
        "GET ./.git/config",
        "STAT .git",
        "STAT .git/config",
        "LIST .git",
        "SUM .env",
        "SUM .env 1",
        "GET sub/.hidden",
        "GET .missing",
    ] {
        c.send(format!("{request}\n").as_bytes());
        c.expect_err("not-found");
    }
    c.assert_get("env-link", b"TOKEN=1\n");
    // A PUT to a hidden name is forbidden, and (like every refused PUT)
    // closes the connection.
    c.send(b"PUT .bashrc 3\nabc");
    c.expect_final_err("forbidden");
    assert!(!server.dir.root().join(".bashrc").exists());
    let mut c = server.connect();
    c.send(b"PUT sub/.profile 1\nx");
    c.expect_final_err("forbidden");
}

#[test]
fn hidden_names_are_served_with_the_option() {
    let server = TestServer::start("hidden-on", |c| c.allow_put(true).hidden(true));
    plant(&server);
    let mut c = server.connect();
    c.send(b"LIST\n");
    assert_eq!(c.line(), "OK 6");
    let names: Vec<String> = (0..6)
        .map(|_| c.line().rsplit(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [".env", ".git", ".ssh", "env-link", "notes.txt", "sub"]
    );
    c.assert_get(".ssh/id_rsa", b"KEY\n");
    c.send(b"SUM .env\n");
    assert!(c.line().starts_with("OK sha256 "));
    c.send(b"PUT sub/.profile 1\nx");
    assert_eq!(c.line(), "OK 1");
    assert_eq!(server.dir.read("sub/.profile"), b"x");
    // The reserved prefix stays unreachable whatever the option.
    c.send(b"GET .filesrv-1-2-3\n");
    c.expect_err("forbidden");
}

#[test]
fn put_onto_a_symlink_leading_outside_is_forbidden() {
    let server = TestServer::start("put-escape", |c| c.allow_put(true));
    let dir = &server.dir;
    dir.write("../outside/secret", SECRET);
    dir.symlink("../outside/secret", "escape");
    dir.symlink("../outside/nothing-there", "escape-missing");
    dir.symlink("/etc/hostname", "absolute");
    dir.write("inside.txt", "in\n");
    dir.symlink("inside.txt", "inner-link");
    for name in ["escape", "escape-missing", "absolute"] {
        let mut c = server.connect();
        c.send(format!("PUT {name} 3\nabc").as_bytes());
        c.expect_final_err("forbidden");
        let link = std::fs::symlink_metadata(dir.root().join(name)).unwrap();
        assert!(link.file_type().is_symlink(), "{name} was replaced");
    }
    assert_eq!(
        std::fs::read(dir.path().join("outside/secret")).unwrap(),
        SECRET
    );
    // A link that stays inside is replaced, not written through.
    let mut c = server.connect();
    c.send(b"PUT inner-link 3\nabc");
    assert_eq!(c.line(), "OK 3");
    assert!(
        std::fs::symlink_metadata(dir.root().join("inner-link"))
            .unwrap()
            .is_file()
    );
    assert_eq!(dir.read("inside.txt"), b"in\n");
}

#[test]
fn start_up_cleanup_keeps_the_operators_files() {
    let dir = crate::support::TempDir::new("cleanup-operator");
    dir.write("deep/.filesrv-readme", "data\n");
    dir.write(".filesrv-notes", "data\n");
    dir.write("deep/.filesrv-999999999-0-0", "left by a killed upload");
    let server = filesrv::protocol::Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        filesrv::protocol::ServerConfig::new(dir.root()),
    )
    .unwrap();
    assert_eq!(dir.read("deep/.filesrv-readme"), b"data\n");
    assert_eq!(dir.read(".filesrv-notes"), b"data\n");
    assert!(!dir.root().join("deep/.filesrv-999999999-0-0").exists());
    server.shutdown();
}
