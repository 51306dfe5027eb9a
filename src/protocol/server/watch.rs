//! Reloading on change: one thread that watches the directories of the
//! users file and the TLS certificate and key (inotify), and calls back
//! when one of those names is written, replaced, renamed or removed. A
//! directory is watched rather than the file, so a file replaced by a
//! rename (as editors and certificate renewals do, symlink swaps included)
//! is seen too.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};

/// Starts watching `files`; `changed` runs on the watching thread after
/// each batch of events that touches one of them. The thread ends once
/// `stop` is readable (an eventfd written once on shutdown).
pub(crate) fn watch(
    files: &[PathBuf],
    stop: impl AsFd + Send + 'static,
    changed: impl Fn() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
    // Watch descriptor -> the file names watched in that directory.
    let mut names: HashMap<i32, Vec<OsString>> = HashMap::new();
    for file in files {
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let Some(name) = file.file_name() else {
            continue;
        };
        let wd = inotify::add_watch(
            &fd,
            dir,
            WatchFlags::CLOSE_WRITE
                | WatchFlags::MOVED_TO
                | WatchFlags::CREATE
                | WatchFlags::DELETE
                | WatchFlags::ATTRIB,
        )?;
        names.entry(wd).or_default().push(name.to_owned());
    }
    thread::Builder::new()
        .name("filesrv-watch".to_owned())
        .spawn(move || run(&fd, &names, &stop, &changed))
}

fn run(fd: &OwnedFd, names: &HashMap<i32, Vec<OsString>>, stop: &impl AsFd, changed: &impl Fn()) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    loop {
        let mut ready = [
            PollFd::new(fd, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match rustix::event::poll(&mut ready, None) {
            Ok(_) if !ready[1].revents().is_empty() => return,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                log::warn!("watching the users and certificate files failed: {e}");
                return;
            }
        }
        let mut touched = false;
        let mut reader = inotify::Reader::new(fd, &mut buf);
        while let Ok(event) = reader.next() {
            let name = event.file_name().map(std::ffi::CStr::to_bytes);
            touched |= names
                .get(&event.wd())
                .is_some_and(|watched| watched.iter().any(|w| Some(w.as_bytes()) == name));
        }
        if touched {
            changed();
        }
    }
}
