//! A server program (nginx, httpd) as a child process of a bench: waiting
//! until its log says it is ready, and stopping it.

use std::io::{self, BufRead, BufReader, Read};
use std::process::Child;

use rustix::process::{Pid, Signal, kill_process};

/// Reads `log` until a line holds `ready`; then keeps draining it on a
/// thread, so that the program never blocks on it. A log that ends first
/// (the program exited) is an error carrying everything it said.
pub(crate) fn wait_for_line(log: impl Read + Send + 'static, ready: &str) -> Result<(), String> {
    let mut log = BufReader::new(log);
    let mut said = String::new();
    loop {
        let from = said.len();
        match log.read_line(&mut said) {
            Ok(0) => return Err(said),
            Ok(_) if said[from..].contains(ready) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("{said}{e}")),
        }
    }
    std::thread::spawn(move || io::copy(&mut log, &mut io::sink()));
    Ok(())
}

/// Stops `child` with `SIGTERM`, which a server's parent passes to its
/// children (the `SIGKILL` of `Child::kill` would leave them serving),
/// and reaps it.
pub(crate) fn terminate(child: &mut Child) {
    let pid = Pid::from_child(child);
    if kill_process(pid, Signal::TERM).is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
}
