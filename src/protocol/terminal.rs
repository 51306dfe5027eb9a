//! Asking for a password on the terminal, with its echo off: for `fsc
//! --user` and `filesrv --hash-password`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};

use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};

/// Asks for a password on the controlling terminal (`/dev/tty`): writes
/// `prompt`, reads one line with the terminal's echo off (what is typed is
/// not shown), then restores the terminal and ends the prompt's line.
///
/// # Errors
///
/// There is no controlling terminal, or reading or writing it failed.
pub fn ask_password(prompt: &str) -> io::Result<String> {
    let tty = File::options().read(true).write(true).open("/dev/tty")?;
    let saved = tcgetattr(&tty)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&tty, OptionalActions::Flush, &quiet)?;
    let asked = (&tty)
        .write_all(prompt.as_bytes())
        .and_then(|()| BufReader::new(&tty).lines().next().transpose());
    // Restored whatever happened: a terminal left without echo is broken.
    let restored = tcsetattr(&tty, OptionalActions::Flush, &saved);
    (&tty).write_all(b"\n")?;
    let line = asked?;
    restored?;
    Ok(line.unwrap_or_default())
}
