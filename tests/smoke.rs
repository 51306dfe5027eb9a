//! A first end-to-end pass over the protocol (the full suite is in
//! protocol.rs).
mod support;
use support::TestServer;

#[test]
fn get_list_stat_quit() {
    let t = TestServer::start("smoke", |c| c);
    t.assert_serves();
    let mut c = t.connect();
    c.send(b"LIST\nSTAT nope\nQUIT\n");
    assert_eq!(c.line(), "OK 1");
    assert_eq!(c.line(), "f 3 health.txt");
    c.expect_err("not-found");
    assert_eq!(c.line(), "OK bye");
    c.expect_eof();
}
