//! A running manager's bound on running handlers, changed live: the
//! worker set grows by starting workers, and shrinks by letting surplus
//! workers retire after their current handler (never cutting one).
//!
//! Slots are never removed: a retiring worker returns its slot's index to
//! the free list and a new worker takes it, so the slot array holds at
//! most the largest number of workers ever alive at once, and the
//! counters of retired workers stay in the sums.

use super::clock::CoarseClock;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use super::handle::Manager;
use super::slot::{Phase, Slot};
use super::slot_list::SlotList;
use super::state::Msg;
use crate::admission::Admission;
use crate::handler::Handler;
use crate::util::lock;

/// The worker set: the bound, the workers alive, their slots.
pub(super) struct Workers {
    /// The bound on running handlers now.
    target: AtomicUsize,
    /// Workers started and not retired.
    live: AtomicUsize,
    slots: SlotList,
    /// Indices of slots whose worker retired; its lock also serialises
    /// adding slots.
    free: Mutex<Vec<usize>>,
    phase: Arc<Phase>,
    clock: Arc<CoarseClock>,
    /// Whether busy limits are set, so a running handler may be asked to
    /// make room (see [`Slot::new`]).
    may_be_asked: bool,
    /// Threads are named `<name>-worker-<slot index>`.
    pub(super) name: String,
}

impl Workers {
    pub(super) fn new(
        phase: Arc<Phase>,
        clock: Arc<CoarseClock>,
        may_be_asked: bool,
        name: String,
    ) -> Workers {
        Workers {
            target: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            slots: SlotList::new(),
            free: Mutex::default(),
            phase,
            clock,
            may_be_asked,
            name,
        }
    }

    #[inline]
    pub(super) fn target(&self) -> usize {
        self.target.load(Ordering::Relaxed)
    }

    pub(super) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// The slots, read without a lock.
    #[inline]
    pub(super) fn slots(&self) -> &SlotList {
        &self.slots
    }

    /// Whether the calling worker must retire: true (and it is no longer
    /// counted alive) while more workers live than the bound allows.
    /// Two loads when nothing changed.
    #[inline]
    pub(super) fn retire(&self) -> bool {
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |live| {
                (live > self.target()).then(|| live - 1)
            })
            .is_ok()
    }

    /// A retired worker's last act: its slot is free for a new one.
    pub(super) fn retired(&self, index: usize) {
        lock(&self.free).push(index);
    }

    /// Counts a new worker alive and gives it a slot index.
    fn enlist(&self) -> usize {
        self.live.fetch_add(1, Ordering::SeqCst);
        let mut free = lock(&self.free);
        match free.pop() {
            Some(index) => index,
            None => self.slots.push(Slot::new(
                self.phase.clone(),
                self.clock.clone(),
                self.may_be_asked,
            )),
        }
    }

    /// Undoes [`Workers::enlist`] for a worker that could not start.
    fn unlist(&self, index: usize) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.retired(index);
    }

    pub(super) fn set_target(&self, n: usize) {
        self.target.store(n, Ordering::SeqCst);
    }
}

/// Panics unless `n` is a valid bound on running handlers.
pub(super) fn check_bound(n: usize) {
    assert!(
        (1..=1 << 31).contains(&n),
        "max_running must be between 1 and 2^31, got {n}"
    );
}

impl<Q: Handler, S: Admission> Manager<Q, S> {
    /// Starts one worker; its handle joins `threads`.
    pub(super) fn start_worker(&self, threads: &mut Vec<JoinHandle<()>>) -> io::Result<()> {
        let workers = &self.shared.workers;
        let index = workers.enlist();
        let worker = self.shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("{}-worker-{index}", workers.name))
            .spawn(move || worker.work(index));
        match spawned {
            Ok(handle) => {
                threads.push(handle);
                Ok(())
            }
            Err(e) => {
                workers.unlist(index);
                Err(e)
            }
        }
    }

    /// Changes the bound on running handlers of a running manager.
    ///
    /// Growing starts workers at once, and waiting handlers start on them
    /// in queue order. Shrinking never cuts a handler: surplus workers
    /// retire as their current handler ends (idle ones at once), so the
    /// running count falls to the new bound as handlers finish, and no
    /// handler starts beyond it meanwhile. After a shutdown began it does
    /// nothing.
    ///
    /// # Errors
    ///
    /// The OS refused to start a thread, or the process is too close to
    /// its memory-map limit; the workers already started stay, and the
    /// bound is what they make.
    ///
    /// # Panics
    ///
    /// If `n` is 0 or above 2³¹.
    pub fn set_max_running(&self, n: usize) -> io::Result<()> {
        check_bound(n);
        let shared = &*self.shared;
        let mut threads = lock(&self.threads);
        let Some(threads) = threads.as_mut().filter(|_| !self.is_shutting_down()) else {
            return Ok(());
        };
        // Handles of retired workers are joined here, so they do not pile up.
        let (done, alive): (Vec<_>, Vec<_>) = threads.drain(..).partition(JoinHandle::is_finished);
        *threads = alive;
        for thread in done {
            let _ = thread.join();
        }
        let workers = &shared.workers;
        workers.set_target(n);
        let live = workers.live();
        if n > live {
            super::builder::check_map_room(n - live)?;
            for _ in live..n {
                if let Err(e) = self.start_worker(threads) {
                    workers.set_target(workers.live());
                    return Err(e);
                }
            }
        } else {
            // Each parked surplus worker needs a token to wake and retire;
            // a busy one retires when its handler ends. Spare tokens are
            // harmless: a worker finding no handler waits again.
            let channel = lock(&shared.gate).channel.clone();
            if let Some(channel) = channel {
                for _ in n..live {
                    let _ = channel.send(Msg::Token);
                }
                shared.message_sent();
            }
        }
        Ok(())
    }
}
