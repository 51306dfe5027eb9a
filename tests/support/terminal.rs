//! A pseudo-terminal as a child's controlling terminal, for what asks
//! there (passwords): util-linux `setsid --ctty` makes it so without
//! unsafe code.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use rustix::fs::{Mode, OFlags};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

use super::{LIMIT, tools};

/// The test's side of a terminal: what the child wrote there so far, and
/// the keyboard.
pub(crate) struct Terminal {
    keyboard: File,
    screen: Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Terminal {
    /// Starts `program` with `args` on a new terminal: its stdin, its
    /// stderr and its controlling terminal (`/dev/tty`); stdout piped.
    pub(crate) fn spawn(program: &Path, args: &[&str]) -> (Terminal, Child) {
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = openpt(flags).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let open = OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC;
        let pty = File::from(rustix::fs::open(name.as_c_str(), open, Mode::empty()).unwrap());
        let child = Command::new(tools::need("setsid"))
            .args(["--ctty", "--wait"])
            .arg(program)
            .args(args)
            .stdin(pty.try_clone().unwrap())
            .stderr(pty)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut screen = File::from(master);
        let keyboard = screen.try_clone().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads until the child's side closes (EIO).
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = screen.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let terminal = Terminal {
            keyboard,
            screen: rx,
            seen: Vec::new(),
        };
        (terminal, child)
    }

    /// Waits until `text` is on the screen (at most [`LIMIT`]).
    pub(crate) fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + LIMIT;
        while !self.screen().contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.screen.recv_timeout(left) {
                Ok(bytes) => self.seen.extend(bytes),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{text:?} not shown in {LIMIT:?}; shown: {:?}",
                        self.screen()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{text:?} never shown; shown: {:?}", self.screen())
                }
            }
        }
    }

    /// Types `line` and Enter.
    pub(crate) fn type_line(&mut self, line: &str) {
        self.keyboard
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// Everything shown so far.
    fn screen(&mut self) -> String {
        while let Ok(bytes) = self.screen.try_recv() {
            self.seen.extend(bytes);
        }
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Everything shown, once the child has closed the terminal (at most
    /// [`LIMIT`]).
    pub(crate) fn closed(&mut self) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.screen.recv_timeout(left) {
                Ok(bytes) => self.seen.extend(bytes),
                Err(RecvTimeoutError::Disconnected) => return self.screen(),
                Err(RecvTimeoutError::Timeout) => panic!("the terminal still open after {LIMIT:?}"),
            }
        }
    }
}
