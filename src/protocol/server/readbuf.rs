//! A session's read buffer, reused by the thread that served the last
//! connection instead of allocated and zeroed for each new one.

use std::cell::Cell;
use std::ops::{Deref, DerefMut};

/// The read buffer's size: a request line plus room for pipelined ones,
/// and the chunk size for upload bodies.
pub(super) const BUF_SIZE: usize = 64 * 1024;

thread_local! {
    /// The buffer of the last connection this thread served. Workers are
    /// long-lived, so at most one buffer per worker is kept between
    /// connections: `max_running` × 64 KiB, what the running connections
    /// hold anyway.
    static SPARE: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

/// [`BUF_SIZE`] bytes, given back to the thread when dropped. Its earlier
/// contents are never read: a session reads only what it received.
#[derive(Debug)]
pub(super) struct ReadBuf(Box<[u8]>);

impl ReadBuf {
    /// This thread's spare buffer, or a new one (zeroed once).
    pub(super) fn take() -> ReadBuf {
        ReadBuf(
            SPARE
                .take()
                .unwrap_or_else(|| vec![0; BUF_SIZE].into_boxed_slice()),
        )
    }

    /// No buffer (what a parked connection holds): empty, allocating
    /// nothing.
    pub(super) fn none() -> ReadBuf {
        ReadBuf(Box::default())
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if buf.is_empty() {
            return;
        }
        // Freed instead if the thread is exiting.
        let _ = SPARE.try_with(|spare| spare.set(Some(buf)));
    }
}

impl Deref for ReadBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for ReadBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_reuses_its_buffer_and_others_get_their_own() {
        let first = ReadBuf::take();
        let at = first.as_ptr();
        assert_eq!(first.len(), BUF_SIZE);
        drop(first);
        drop(ReadBuf::none());
        assert_eq!(ReadBuf::take().as_ptr(), at, "an empty one is never kept");
        let elsewhere = std::thread::spawn(move || {
            let buf = ReadBuf::take();
            (buf.len(), buf.as_ptr() as usize)
        });
        let (len, other) = elsewhere.join().unwrap();
        assert_eq!(len, BUF_SIZE);
        assert_ne!(other, at as usize);
    }
}
