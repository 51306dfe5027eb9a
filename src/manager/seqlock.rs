//! A sequence lock over a few words: one writer that never waits, readers
//! that retry while a write is in progress.
//!
//! A worker writes its slot's running info at every start, millions of
//! times a second; a reader (`Manager::running`, the make-room pass) is
//! rare. A mutex cost the writer a locked read-modify-write and a release
//! per start; here it is plain stores between two counter stores. The
//! words are atomics, so a torn read is detected (the counter changed),
//! never undefined.

use std::hint;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU64, fence};

pub(super) struct SeqLock<const N: usize> {
    /// Odd while a write is in progress.
    seq: AtomicU64,
    words: [AtomicU64; N],
}

impl<const N: usize> SeqLock<N> {
    pub(super) fn new() -> Self {
        SeqLock {
            seq: AtomicU64::new(0),
            words: [const { AtomicU64::new(0) }; N],
        }
    }

    /// Stores `words`. Only one thread may write (the slot's worker).
    #[inline]
    pub(super) fn write(&self, words: [u64; N]) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq.wrapping_add(1), Relaxed);
        // The odd counter is visible before any word changes.
        fence(Release);
        for (word, value) in self.words.iter().zip(words) {
            word.store(value, Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Release);
    }

    /// The words as one write left them. Retries only while a write is
    /// under way: a few stores long, so the spin is bounded by the writer,
    /// which never blocks inside it.
    pub(super) fn read(&self) -> [u64; N] {
        loop {
            let before = self.seq.load(Acquire);
            if before & 1 == 0 {
                let words = self.words.each_ref().map(|w| w.load(Relaxed));
                // The words are read before the counter is read again.
                fence(Acquire);
                if self.seq.load(Relaxed) == before {
                    return words;
                }
            }
            hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::thread;

    #[test]
    fn a_reader_never_sees_half_a_write() {
        let lock = SeqLock::<4>::new();
        let done = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                for n in 1..=200_000u64 {
                    lock.write([n; 4]);
                }
                done.store(true, Relaxed);
            });
            let mut reads = 0u64;
            while !done.load(Relaxed) || reads == 0 {
                let words = lock.read();
                assert!(words.iter().all(|&w| w == words[0]), "{words:?}");
                reads += 1;
            }
        });
        assert_eq!(lock.read(), [200_000; 4]);
    }
}
