//! What the manager's handle, its workers and its watcher share, and the
//! steps each takes on it. No loops here: the worker's is in `worker.rs`,
//! the watcher's in `watcher.rs`.
//!
//! Everything that decides who runs lives in one [`Gate`] under one lock:
//! the policy, the waiting queue (FIFO by id), the queue deadlines and the
//! counts. A handler moves from waiting to running, or leaves, only under
//! that lock, so FIFO order and every count hold by construction. Workers
//! sleep on a crossbeam channel of tokens, one sent per queued handler; a
//! woken worker takes the head of the queue under the lock, whoever's
//! token it holds. A handler that leaves the queue early takes a token
//! with it, and a token that finds the queue empty is simply dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rustix::event::epoll::EventFlags;

use super::acceptor::{Accepting, Bell};
use super::refused::Refused;
use super::room::BusyLimits;
use super::slot::{Phase, Slot};
use super::stats::Stats;
use crate::admission::canonical_source;
use crate::admission::{Admission, Arrival, Decision, Departure, Key, Outcome, Refusal};
use crate::handler::{Handler, Stop};
use crate::poller::Poller;
use crate::util::{guarded, lock, panic_message, time_left, wait};

/// A queued handler.
pub(super) struct Entry<Q> {
    pub(super) id: u64,
    /// The canonical source, when the handler reported one.
    pub(super) source: Option<IpAddr>,
    /// What the policy counts it by.
    pub(super) key: Option<Key>,
    pub(super) queued_at: Instant,
    /// Whether it found every running place taken, so it may wait: only
    /// then does it get a deadline, a watched socket, and the question
    /// whether its client left meanwhile.
    pub(super) waits: bool,
    pub(super) deadline: Option<Instant>,
    /// Whether the watcher watches its socket for a hang-up.
    pub(super) watched: bool,
    /// A parked handler coming back: its socket stays in the watcher's
    /// set, its one-shot registration spent, until it parks again.
    pub(super) returning: bool,
    pub(super) handler: Q,
}

/// A parked handler: it holds no thread and no running place until its
/// socket is readable.
pub(super) struct Parked<Q> {
    /// The canonical source, as when it was first submitted.
    source: Option<IpAddr>,
    key: Option<Key>,
    parked_at: Instant,
    handler: Q,
}

/// Where an admitted handler comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Admitting {
    /// [`Shared::submit`], or the accepting thread.
    New,
    /// Accepted by the worker that will take it.
    Accepted,
    /// A parked handler coming back.
    Returning,
}

/// The limits on parked handlers.
#[derive(Clone, Copy, Debug)]
pub(super) struct ParkLimits {
    /// How long one may stay parked; `None`: no limit.
    pub(super) idle: Option<Duration>,
    /// The most parked at once; the longest parked is evicted past it.
    pub(super) max: usize,
}

/// A handler that ran (or was found abandoned) leaving its running place,
/// as the worker hands it to [`Shared::next`].
pub(super) struct Done<Q> {
    pub(super) id: u64,
    pub(super) source: Option<IpAddr>,
    pub(super) key: Option<Key>,
    pub(super) outcome: Outcome,
    /// Whether it had been asked to make room.
    pub(super) asked: bool,
    /// The handler, if it asked to be parked ([`Served::Park`](crate::Served::Park)).
    pub(super) park: Option<Q>,
    /// Whether its socket is still in the watcher's set (it came back
    /// from parking), so that parking again re-arms it.
    pub(super) registered: bool,
}

/// A worker's next step, as [`Shared::next`] decides it.
pub(super) enum Next<Q> {
    Run(Entry<Q>),
    /// Nothing queued: wait for a token.
    Wait,
    /// Nothing queued: wait on the acceptor and the worker's bell (counted in
    /// [`Gate::on_acceptor`] already).
    WaitOnAcceptor,
    /// More workers live than the bound allows: this one ends.
    Retire,
}

/// The state under the admission lock.
pub(super) struct Gate<Q, S> {
    pub(super) policy: S,
    /// In id order, which is arrival order.
    waiting: BTreeMap<u64, Entry<Q>>,
    /// `(deadline, id)` of the waiting handlers that have one.
    deadlines: BTreeSet<(Instant, u64)>,
    /// The parked handlers by id, ids rising with the moment they were
    /// parked: the first is the longest parked, so expiry and eviction
    /// look only at it.
    parked: BTreeMap<u64, Parked<Q>>,
    next_id: u64,
    pub(super) running: usize,
    /// The bound on running handlers.
    pub(super) max_running: usize,
    /// Workers alive (counted until they retire).
    pub(super) workers: usize,
    /// Running handlers asked to make room that have not left yet.
    pub(super) asked: usize,
    /// The counters; `running`, `waiting` and `oldest_waiting` are
    /// filled in by [`Shared::stats`].
    stats: Stats,
    refused_waiting: u64,
    closed_parked: u64,
    /// The sending side of the workers' tokens; dropped at shutdown,
    /// which wakes every worker once the tokens left are taken.
    tokens: Option<Sender<()>>,
    /// Threads in [`Shared::wait_idle`].
    idle_waiters: usize,
    /// Whether the acceptor, if any, is used: until `stop_accepting`.
    pub(super) accepting: bool,
    /// The bells of the workers waiting on the acceptor, the latest to
    /// wait last: a ring takes the last off.
    pub(super) on_acceptor: Vec<Arc<Bell>>,
}

impl<Q, S: Admission> Gate<Q, S> {
    /// Handlers that wait for a running place beyond the free ones.
    pub(super) fn crowding(&self) -> usize {
        (self.running + self.waiting.len()).saturating_sub(self.max_running)
    }

    /// Wakes a worker, unless the manager is closed.
    pub(super) fn send_token(&self) {
        if let Some(tokens) = &self.tokens {
            // The receiver lives as long as the gate: this cannot fail.
            let _ = tokens.send(());
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.tokens.is_none()
    }

    fn is_idle(&self) -> bool {
        self.running == 0 && self.waiting.is_empty()
    }

    /// Tells the policy an admitted handler left, and counts how. A policy
    /// that panics here is logged, and the manager goes on.
    fn depart(&mut self, id: u64, key: Option<Key>, outcome: Outcome) {
        self.stats.count(outcome);
        let departure = Departure { id, key, outcome };
        guarded("Admission::departed", id, || {
            self.policy.departed(&departure);
        });
    }
}

/// What a running handler's context reaches without knowing the
/// manager's type parameters.
pub(crate) struct Signals {
    pub(crate) phase: Phase,
    /// The watcher thread's epoll set (its loop is in `watcher.rs`): the
    /// sockets of waiting handlers (hang-ups) and of parked ones.
    pub(super) watcher: Poller,
    pub(super) limits: BusyLimits,
    /// Whether handlers wait for a running place beyond the free ones: a
    /// copy of [`Gate::crowding`]` > 0` for readers without the lock.
    crowded: AtomicBool,
    /// When a make-room pass can next find a handler past a limit, as the
    /// last pass saw it; `None`: now. Written by the watcher under the
    /// gate's lock.
    room_due: Mutex<Option<Instant>>,
}

impl Signals {
    /// A running handler went idle or started: a make-room pass may be
    /// due, if anyone waits for its place.
    pub(crate) fn room_may_be_due(&self) {
        if self.limits.any() && self.crowded.load(Ordering::Relaxed) && self.room_pass_due() {
            self.watcher.wake();
        }
    }

    fn room_pass_due(&self) -> bool {
        lock(&self.room_due).is_none_or(|due| due <= Instant::now())
    }

    pub(super) fn set_room_due(&self, due: Option<Instant>) {
        *lock(&self.room_due) = due;
    }
}

pub(super) struct Shared<Q, S> {
    gate: Mutex<Gate<Q, S>>,
    /// Signalled, with the gate's lock, when nothing runs or waits.
    became_idle: Condvar,
    pub(super) tokens: Receiver<()>,
    /// Every worker's slot.
    pub(super) slots: Mutex<Vec<Arc<Slot>>>,
    pub(super) signals: Signals,
    /// The prefix length IPv6 sources are grouped by into keys.
    ipv6_prefix: u8,
    park: ParkLimits,
    /// Where idle workers accept handlers themselves, if anywhere.
    pub(super) accepting: Option<Accepting<Q>>,
}

impl<Q: Handler, S: Admission> Shared<Q, S> {
    pub(super) fn new(
        policy: S,
        max_running: usize,
        limits: BusyLimits,
        ipv6_prefix: u8,
        park: ParkLimits,
        accepting: Option<Accepting<Q>>,
    ) -> io::Result<Shared<Q, S>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(Shared {
            gate: Mutex::new(Gate {
                policy,
                waiting: BTreeMap::new(),
                deadlines: BTreeSet::new(),
                parked: BTreeMap::new(),
                next_id: 0,
                running: 0,
                max_running,
                workers: 0,
                asked: 0,
                stats: Stats::default(),
                refused_waiting: 0,
                closed_parked: 0,
                tokens: Some(tx),
                idle_waiters: 0,
                accepting: accepting.is_some(),
                on_acceptor: Vec::new(),
            }),
            became_idle: Condvar::new(),
            tokens: rx,
            slots: Mutex::default(),
            signals: Signals {
                phase: Phase::default(),
                watcher: Poller::new()?,
                limits,
                crowded: AtomicBool::new(false),
                room_due: Mutex::new(None),
            },
            ipv6_prefix,
            park,
            accepting,
        })
    }

    pub(super) fn gate(&self) -> MutexGuard<'_, Gate<Q, S>> {
        lock(&self.gate)
    }

    /// After the counts changed under `gate`: publishes whether anyone
    /// waits for a place, and wakes the threads waiting for idle.
    fn changed(&self, gate: &Gate<Q, S>) {
        self.signals
            .crowded
            .store(gate.crowding() > 0, Ordering::Relaxed);
        if gate.idle_waiters > 0 && gate.is_idle() {
            self.became_idle.notify_all();
        }
    }

    /// [`Manager::submit`](crate::Manager::submit), or the admission of a
    /// handler the acceptor gave.
    pub(super) fn submit(&self, handler: Q, how: Admitting) -> Result<(), Refused<Q>> {
        let source = handler.source().map(canonical_source);
        let key = handler
            .key()
            .or_else(|| source.map(|ip| Key::from_source(ip, self.ipv6_prefix)));
        self.admit(self.gate(), handler, source, key, how)
    }

    /// Offers a handler to the policy: a new one, or a parked one coming
    /// back (`returning`), which was admitted before and has not departed,
    /// so a refusal is its departure.
    fn admit(
        &self,
        mut gate: MutexGuard<'_, Gate<Q, S>>,
        handler: Q,
        source: Option<IpAddr>,
        key: Option<Key>,
        how: Admitting,
    ) -> Result<(), Refused<Q>> {
        let returning = how == Admitting::Returning;
        let now = Instant::now();
        let id = gate.next_id;
        let decision = if gate.is_closed() {
            Decision::Refuse(Refusal::ShuttingDown)
        } else {
            let arrival = Arrival {
                id,
                source,
                key,
                running: gate.running,
                waiting: gate.waiting.len(),
                max_running: gate.max_running,
                now,
                returning,
            };
            let decision = gate.policy.decide(&arrival);
            if !returning && !matches!(decision, Decision::Refuse(_)) {
                // From here on the policy hears of its departure, once.
                gate.policy.admitted(&arrival);
            }
            decision
        };
        if !returning {
            gate.stats.submitted += 1;
        }
        let deadline = match decision {
            Decision::Refuse(reason) if returning => {
                gate.depart(id, key, Outcome::Refused(reason));
                return Err(Refused { handler, reason });
            }
            Decision::Refuse(reason) => {
                gate.stats.count(Outcome::Refused(reason));
                return Err(Refused { handler, reason });
            }
            Decision::Queue => None,
            Decision::QueueUntil(deadline) => Some(deadline),
        };
        if !returning {
            gate.stats.admitted += 1;
        }
        gate.next_id += 1;
        let waits = gate.running + gate.waiting.len() >= gate.max_running;
        let deadline = deadline.filter(|_| waits);
        // Watched under the lock: a hang-up reported at once waits for the
        // lock and then finds the handler queued. Not one coming back from
        // parking: its client just sent a request, which its run reads
        // (hung up or not) at no extra system call.
        let flags = EventFlags::RDHUP | EventFlags::ET;
        let watched =
            waits && !returning && handler.socket().is_some_and(|s| self.watch(s, id, flags));
        let earliest = deadline.is_some_and(|deadline| {
            let first = gate.deadlines.first().map(|d| d.0);
            gate.deadlines.insert((deadline, id));
            first.is_none_or(|first| deadline < first)
        });
        gate.waiting.insert(
            id,
            Entry {
                id,
                source,
                key,
                queued_at: now,
                waits,
                deadline,
                watched,
                returning,
                handler,
            },
        );
        gate.send_token();
        // A worker waiting on the acceptor takes it, unless the one that
        // accepted it runs it; rung once the lock is free for it.
        let ring = (how != Admitting::Accepted)
            .then(|| gate.on_acceptor.pop())
            .flatten();
        self.changed(&gate);
        // Read under the gate's lock, as the watcher writes it.
        let room = waits && self.signals.limits.any() && self.signals.room_pass_due();
        drop(gate);
        if let Some(bell) = ring {
            bell.ring();
        }
        if earliest || room {
            // A new earliest deadline, or a make-room pass for a waiter.
            self.signals.watcher.wake();
        }
        Ok(())
    }

    /// Adds `socket` to the watcher's epoll set under `id`; false if epoll
    /// cannot watch it (it is then simply not watched).
    fn watch(&self, socket: BorrowedFd<'_>, id: u64, flags: EventFlags) -> bool {
        let added = self.signals.watcher.watch(socket, id, flags);
        added
            .inspect_err(|e| log::debug!("handler {id}: socket not watched: {e}"))
            .is_ok()
    }

    /// A worker's step between handlers: `done`, the handler it ran last,
    /// departs, and it takes the head of the queue in the same step, so a
    /// running place passes straight from one to the next.
    /// `have_token`: the worker was just woken by a token; otherwise it
    /// takes one out of the channel for the handler it takes, so no other
    /// worker wakes for it.
    /// `bell`: the worker's, if it can wait on the acceptor.
    pub(super) fn next(
        &self,
        done: Option<Done<Q>>,
        have_token: bool,
        bell: Option<&Arc<Bell>>,
    ) -> Next<Q> {
        let mut gate = self.gate();
        let mut evicted = None;
        if let Some(mut done) = done {
            gate.running -= 1;
            gate.asked -= usize::from(done.asked);
            match done.park.take() {
                None => gate.depart(done.id, done.key, done.outcome),
                Some(handler) => evicted = self.park(&mut gate, &done, handler),
            }
        }
        let mut pass_on = None;
        let next = if gate.workers > gate.max_running {
            gate.workers -= 1;
            if !gate.waiting.is_empty() {
                // The token may be a waiting handler's: pass it on.
                if have_token {
                    gate.send_token();
                }
                // And the handler it may have been rung for, or have just
                // accepted, goes to a worker that stays.
                pass_on = gate.on_acceptor.pop();
            }
            Next::Retire
        } else if let Some((_, entry)) = gate.waiting.pop_first() {
            if let Some(deadline) = entry.deadline {
                gate.deadlines.remove(&(deadline, entry.id));
            }
            gate.running += 1;
            gate.stats.started(entry.queued_at, Instant::now());
            if !have_token {
                let _ = self.tokens.try_recv();
            }
            Next::Run(entry)
        } else if let Some(bell) = bell.filter(|_| gate.accepting && !gate.is_closed()) {
            gate.on_acceptor.push(bell.clone());
            if gate.on_acceptor.len() == 1 {
                if let Some(accepting) = &self.accepting {
                    // A worker takes the next connection: the accepting
                    // thread steps back.
                    accepting.wake_thread();
                }
            }
            Next::WaitOnAcceptor
        } else {
            Next::Wait
        };
        self.changed(&gate);
        drop(gate);
        if let Some(bell) = pass_on {
            bell.ring();
        }
        if let Some((id, handler, outcome)) = evicted {
            self.settle_parked(id, handler, outcome);
        }
        next
    }

    /// Parks handler `done` that asked for it, under the gate's lock: it
    /// is watched from here on, and a readable socket brings it back
    /// through admission. Returns one to settle after the lock: the one
    /// evicted to make room, or this one if it cannot be watched.
    fn park(&self, gate: &mut Gate<Q, S>, done: &Done<Q>, handler: Q) -> Option<(u64, Q, Outcome)> {
        let Done {
            id, source, key, ..
        } = *done;
        if gate.is_closed() {
            // The shutdown closed the parked set already.
            let refused = Outcome::Refused(Refusal::ShuttingDown);
            gate.depart(id, key, refused);
            gate.closed_parked += 1;
            return Some((id, handler, refused));
        }
        let parked_id = gate.next_id;
        gate.next_id += 1;
        // Watched before it is in the map, under the lock: an event at
        // once waits for the lock and then finds it. Level-triggered and
        // once: bytes that came before this call report at once.
        let flags = EventFlags::IN | EventFlags::RDHUP | EventFlags::ONESHOT;
        let watcher = &self.signals.watcher;
        let watched = handler.socket().is_some_and(|s| {
            let watched = if done.registered {
                watcher.rearm(s, parked_id, flags)
            } else {
                watcher.watch(s, parked_id, flags)
            };
            watched
                .inspect_err(|e| log::debug!("handler {id}: socket not watched: {e}"))
                .is_ok()
        });
        if !watched {
            log::debug!("handler {id}: cannot be parked without a socket to watch");
            gate.depart(id, key, Outcome::Completed);
            return Some((id, handler, Outcome::Completed));
        }
        gate.parked.insert(
            parked_id,
            Parked {
                source,
                key,
                parked_at: Instant::now(),
                handler,
            },
        );
        if gate.parked.len() <= self.park.max {
            return None;
        }
        let (id, longest) = gate.parked.pop_first()?;
        let evicted = Outcome::Refused(Refusal::Evicted);
        gate.depart(id, longest.key, evicted);
        Some((id, longest.handler, evicted))
    }

    /// A watched socket reported an event: a waiting handler whose client
    /// may have hung up, or a parked one to bring back.
    pub(super) fn socket_event(&self, id: u64, flags: EventFlags) {
        let mut gate = self.gate();
        if let Some(entry) = gate.waiting.get(&id) {
            // A peek, under the lock: it must not block.
            if abandoned(id, &entry.handler) {
                self.leave(gate, id, Outcome::Abandoned);
            }
            return;
        }
        let Some(parked) = gate.parked.remove(&id) else {
            return;
        };
        let Parked {
            source,
            key,
            handler,
            ..
        } = parked;
        // Its one-shot registration is off now and stays until it parks
        // again (changed, not added) or closes. Asked only when the client
        // hung up or failed: a readable socket alone means a request, and
        // a peek costs system calls. Decided under the lock that took it
        // out of the parked set, so that every snapshot counts it
        // somewhere; a peek, which must not block. (The parked count is
        // not among what `changed` publishes.)
        let hung_up = flags.intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR);
        if hung_up && abandoned(id, &handler) {
            gate.depart(id, key, Outcome::Abandoned);
            drop(gate);
            settle(id, handler, Outcome::Abandoned);
            return;
        }
        // The policy runs on the watcher here, with no caller to hand its
        // panic to: the handler is dropped, counted as panicked, and the
        // watcher goes on.
        let admit = || self.admit(gate, handler, source, key, Admitting::Returning);
        match guarded("Admission::decide", id, admit) {
            Some(Ok(())) => {}
            Some(Err(Refused { handler, reason })) => settle(id, handler, Outcome::Refused(reason)),
            None => self.gate().depart(id, key, Outcome::Panicked),
        }
    }

    /// Settles a handler taken out of the parked set: its socket leaves
    /// the watcher's set, so that it may be watched again.
    fn settle_parked(&self, id: u64, handler: Q, outcome: Outcome) {
        if let Some(socket) = handler.socket() {
            self.signals.watcher.delete(socket);
        }
        settle(id, handler, outcome);
    }

    /// Takes waiting handler `id` out of the queue, under the lock held in
    /// `gate`, and settles it.
    fn leave(&self, mut gate: MutexGuard<'_, Gate<Q, S>>, id: u64, outcome: Outcome) {
        let Some(entry) = gate.waiting.remove(&id) else {
            return;
        };
        if let Some(deadline) = entry.deadline {
            gate.deadlines.remove(&(deadline, id));
        }
        gate.depart(id, entry.key, outcome);
        // Its token goes with it (tokens are alike); if a worker holds it
        // already, that worker finds the queue without this handler.
        let _ = self.tokens.try_recv();
        self.changed(&gate);
        drop(gate);
        settle(id, entry.handler, outcome);
    }

    /// Refuses every waiting handler whose deadline passed, and every
    /// parked one whose idle time did; the earliest deadline or expiry
    /// left, or `Err` once the manager is closed.
    pub(super) fn expire(&self, now: Instant) -> Result<Option<Instant>, ()> {
        loop {
            let mut gate = self.gate();
            if gate.is_closed() {
                return Err(());
            }
            let deadline = gate.deadlines.first().copied();
            let expiry = self.park.idle.and_then(|idle| {
                let (&id, first) = gate.parked.first_key_value()?;
                Some((first.parked_at.checked_add(idle)?, id))
            });
            match (deadline, expiry) {
                (Some((deadline, id)), _) if deadline <= now => {
                    self.leave(gate, id, Outcome::Refused(Refusal::QueueTimeout));
                }
                (_, Some((expiry, id))) if expiry <= now => {
                    let Some(parked) = gate.parked.remove(&id) else {
                        continue;
                    };
                    let refused = Outcome::Refused(Refusal::IdleTimeout);
                    gate.depart(id, parked.key, refused);
                    self.changed(&gate);
                    drop(gate);
                    self.settle_parked(id, parked.handler, refused);
                }
                (deadline, expiry) => {
                    // With none parked, the watcher still wakes within the
                    // idle timeout: whatever parks later expires after
                    // that, so parking never has to wake it.
                    let horizon = (self.park.idle)
                        .filter(|_| self.park.max > 0 && gate.parked.is_empty())
                        .and_then(|idle| now.checked_add(idle));
                    let next = [deadline, expiry].into_iter().flatten().map(|d| d.0);
                    return Ok(next.chain(horizon).min());
                }
            }
        }
    }

    /// Closes admission and refuses every waiting handler; returns how
    /// many handlers were running then. Later calls find nothing to do.
    pub(super) fn close(&self) -> usize {
        let refused = Outcome::Refused(Refusal::ShuttingDown);
        let (tokens, waiting, parked, running) = {
            let mut gate = self.gate();
            let tokens = gate.tokens.take();
            gate.deadlines.clear();
            let waiting = std::mem::take(&mut gate.waiting);
            for entry in waiting.values() {
                gate.depart(entry.id, entry.key, refused);
            }
            gate.refused_waiting += waiting.len() as u64;
            let parked = std::mem::take(&mut gate.parked);
            for (&id, p) in &parked {
                gate.depart(id, p.key, refused);
            }
            gate.closed_parked += parked.len() as u64;
            self.changed(&gate);
            (tokens, waiting, parked, gate.running)
        };
        // Without a sender, workers see the channel disconnect once the
        // tokens left in it are taken, and exit after their handler.
        drop(tokens);
        self.signals.watcher.wake();
        for entry in waiting.into_values() {
            settle(entry.id, entry.handler, refused);
        }
        for (id, p) in parked {
            self.settle_parked(id, p.handler, refused);
        }
        running
    }

    /// Waiting handlers refused, and parked ones closed, by the shutdown.
    pub(super) fn closed_by_shutdown(&self) -> (u64, u64) {
        let gate = self.gate();
        (gate.refused_waiting, gate.closed_parked)
    }

    /// Waits until nothing runs or waits, or until `deadline` (`None`:
    /// none); true if idle.
    pub(super) fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        let mut gate = self.gate();
        gate.idle_waiters += 1;
        while !gate.is_idle() {
            gate = match deadline.map(time_left) {
                None => wait(&self.became_idle, gate),
                Some(Some(left)) => {
                    self.became_idle
                        .wait_timeout(gate, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                Some(None) => break,
            };
        }
        gate.idle_waiters -= 1;
        gate.is_idle()
    }

    pub(super) fn stats(&self) -> Stats {
        let gate = self.gate();
        let mut stats = gate.stats;
        stats.running = gate.running;
        stats.waiting = gate.waiting.len();
        stats.parked = gate.parked.len();
        stats.oldest_waiting = gate
            .waiting
            .values()
            .next()
            .map_or_else(Default::default, |e| e.queued_at.elapsed());
        stats
    }

    /// The acceptor's `accept`, and the admission of what it took; whether
    /// it took something.
    pub(super) fn accept(&self, accepting: &Accepting<Q>, how: Admitting) -> io::Result<bool> {
        // One accept-and-admit at a time: two threads accepting at once
        // would otherwise admit two connections in either order, and the
        // queue is FIFO by arrival. `stop_accepting` waits for it too.
        let in_turn = lock(&accepting.in_turn);
        if !self.gate().accepting {
            return Ok(false);
        }
        let Some(handler) = accepting.accept()? else {
            return Ok(false);
        };
        let admitted = panic::catch_unwind(AssertUnwindSafe(|| self.submit(handler, how)));
        drop(in_turn);
        match admitted {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => refused.notify(),
            // No caller to hand the policy's panic to: the handler is
            // dropped and nothing counted, as `Manager::submit` documents,
            // and this thread goes on accepting.
            Err(payload) => {
                let message = panic_message(&*payload);
                log::error!("the admission policy panicked: {message}");
            }
        }
        Ok(true)
    }

    /// Stops every use of the acceptor and returns once no thread is
    /// inside its `accept`: the workers waiting on it go back to the token
    /// channel, the accepting thread ends.
    pub(super) fn stop_accepting(&self) {
        let Some(accepting) = &self.accepting else {
            return;
        };
        let mut gate = self.gate();
        if gate.accepting {
            gate.accepting = false;
            for bell in gate.on_acceptor.drain(..) {
                bell.ring();
            }
            accepting.wake_thread();
            accepting.changed.notify_all();
        }
        drop(gate);
        // An accept under way ends first; every later one finds it stopped.
        drop(lock(&accepting.in_turn));
    }

    /// Asks every running handler to stop, through its hook.
    pub(super) fn stop_all(&self, stop: Stop) {
        // The phase first: a hook registered after this sees it at once.
        self.signals.phase.set(stop);
        let slots = lock(&self.slots).clone();
        for slot in slots {
            slot.stop(stop);
        }
    }
}

/// Whether `handler`'s client left; a panicking `is_abandoned` counts as
/// yes.
pub(super) fn abandoned<Q: Handler>(id: u64, handler: &Q) -> bool {
    guarded("is_abandoned", id, || handler.is_abandoned()).unwrap_or(true)
}

/// Tells a handler that left the queue (or the parked set) without
/// running why, or drops it.
fn settle<Q: Handler>(id: u64, handler: Q, outcome: Outcome) {
    if let Outcome::Refused(reason) = outcome {
        guarded("refused", id, || handler.refused(reason));
    } else {
        log::debug!("handler {id} left: its client is gone");
        guarded("drop", id, || drop(handler));
    }
}
