//! Waiting on a directory without polling.

use std::path::Path;

use super::LIMIT;

/// Waits on a directory's changes with inotify, so a test can wait for a
/// file to appear or grow without sleeping.
pub(crate) struct DirWatch {
    inotify: std::sync::Arc<std::os::fd::OwnedFd>,
    watch: i32,
    changed: crossbeam_channel::Receiver<()>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl DirWatch {
    pub(crate) fn new(dir: &Path) -> DirWatch {
        use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
        let inotify = std::sync::Arc::new(inotify::init(CreateFlags::CLOEXEC).unwrap());
        let flags = WatchFlags::CREATE
            | WatchFlags::MODIFY
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::MOVED_TO
            | WatchFlags::MOVED_FROM
            | WatchFlags::DELETE;
        let watch = inotify::add_watch(&*inotify, dir, flags).unwrap();
        let (tx, changed) = crossbeam_channel::bounded(1);
        let fd = inotify.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut events = inotify::Reader::new(&*fd, &mut buf);
            // Ends on IN_IGNORED: the watch was removed (by drop) or the
            // directory is gone.
            while let Ok(event) = events.next() {
                if event.events().contains(ReadFlags::IGNORED) {
                    break;
                }
                if let Err(crossbeam_channel::TrySendError::Disconnected(())) = tx.try_send(()) {
                    break;
                }
            }
        });
        DirWatch {
            inotify,
            watch,
            changed,
            reader: Some(reader),
        }
    }

    /// Waits until `done()` holds, checking after each change in the
    /// directory; false if [`LIMIT`] passed first.
    pub(crate) fn wait_until(&self, mut done: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            if done() {
                return true;
            }
            if self.changed.recv_deadline(deadline).is_err() {
                return done();
            }
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // Removing the watch queues IN_IGNORED, which ends the reader.
        let _ = rustix::fs::inotify::remove_watch(&*self.inotify, self.watch);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
