//! What the manager's threads share, and every step that moves a handler,
//! under one lock (the [`Gate`]): so FIFO order and every count hold by
//! construction. No loops here. Workers sleep on a channel of tokens, one
//! sent per queued handler; a woken worker takes the head, whoever's token
//! it holds; a handler leaving the queue early takes a token with it.

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

use super::acceptor::Accepting;
use super::outcomes::{Refused, Stats};
use super::room::BusyLimits;
use super::slot::{Phase, Slot};
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
    pub(super) key: Option<Key>,
    pub(super) queued_at: Instant,
    /// It found every running place taken: only then does it get a
    /// deadline, a hang-up watch, and the question whether its client left.
    pub(super) waits: bool,
    pub(super) deadline: Option<Instant>,
    /// Whether the watcher watches its socket for a hang-up.
    pub(super) watched: bool,
    /// Back from parking: its spent one-shot registration stays.
    pub(super) returning: bool,
    pub(super) handler: Q,
}

/// A parked handler: no thread, no running place, until it is readable.
pub(super) struct Parked<Q> {
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
    /// A parked handler coming back, its event taken by a worker about
    /// to wait, which runs the queue's head next: no other is rung.
    Taken,
}

/// A builder's settings beside the policy.
#[derive(Debug)]
pub(super) struct Options {
    pub(super) max_running: usize,
    /// Threads are named `<name>-worker-<i>`, `<name>-watcher` and
    /// `<name>-accept`.
    pub(super) name: String,
    pub(super) limits: BusyLimits,
    pub(super) ipv6_prefix: u8,
    pub(super) park: ParkLimits,
}

/// How long one may stay parked (`None`: no limit), and how many at once.
#[derive(Clone, Copy, Debug)]
pub(super) struct ParkLimits {
    pub(super) idle: Option<Duration>,
    pub(super) max: usize,
}

/// A handler leaving its running place, as a worker hands it to [`Shared::next`].
pub(super) struct Done<Q> {
    pub(super) id: u64,
    pub(super) source: Option<IpAddr>,
    pub(super) key: Option<Key>,
    pub(super) outcome: Outcome,
    /// Whether it had been asked to make room.
    pub(super) asked: bool,
    /// The handler, if it asked to be parked ([`Served::Park`](crate::Served::Park)).
    pub(super) park: Option<Q>,
    /// Its socket is still in the watcher's set: parking re-arms it.
    pub(super) registered: bool,
}

/// A worker's next step, as [`Shared::next`] decides it.
pub(super) enum Next<Q> {
    Run(Entry<Q>),
    /// Nothing queued: wait for a token.
    Wait,
    /// Nothing queued: wait on the acceptor and the bell (counted already).
    WaitOnAcceptor,
    /// More workers live than the bound allows.
    Retire,
    /// Nothing queued, some parked: take one that is back, if any,
    /// before waiting ([`Shared::take_parked`]).
    TryParked,
}

/// The state under the admission lock.
pub(super) struct Gate<Q, S> {
    pub(super) policy: S,
    /// By id, which is arrival order.
    waiting: BTreeMap<u64, Entry<Q>>,
    /// `(deadline, id)` of the waiting handlers that have one.
    deadlines: BTreeSet<(Instant, u64)>,
    /// By id, rising as they park: the first is the longest parked.
    parked: BTreeMap<u64, Parked<Q>>,
    next_id: u64,
    pub(super) running: usize,
    pub(super) max_running: usize,
    /// Workers alive (counted until they retire).
    pub(super) workers: usize,
    /// Running handlers asked to make room that have not left yet.
    pub(super) asked: usize,
    /// The counters; [`Shared::stats`] fills in the rest.
    stats: Stats,
    refused_waiting: u64,
    closed_parked: u64,
    /// Dropped at shutdown: workers see the channel disconnect.
    tokens: Option<Sender<()>>,
    /// Threads in [`Shared::wait_idle`].
    idle_waiters: usize,
    /// Whether the acceptor, if any, is used: until `stop_accepting`.
    pub(super) accepting: bool,
    /// The bells of the workers waiting on the acceptor, latest last.
    pub(super) on_acceptor: Vec<Arc<Poller>>,
}

impl<Q, S: Admission> Gate<Q, S> {
    /// Handlers that wait for a running place beyond the free ones.
    pub(super) fn crowding(&self) -> usize {
        (self.running + self.waiting.len()).saturating_sub(self.max_running)
    }

    /// Wakes a worker, unless the manager is closed.
    pub(super) fn send_token(&self) {
        if let Some(tokens) = &self.tokens {
            let _ = tokens.send(());
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.tokens.is_none()
    }

    fn is_idle(&self) -> bool {
        self.running == 0 && self.waiting.is_empty()
    }

    /// Tells the policy an admitted handler left (a panic there is
    /// logged), and counts how.
    fn depart(&mut self, id: u64, key: Option<Key>, outcome: Outcome) {
        self.stats.count(outcome);
        let departure = Departure { id, key, outcome };
        guarded("Admission::departed", id, || {
            self.policy.departed(&departure);
        });
    }
}

/// What a running handler's context reaches, without the type parameters.
pub(crate) struct Signals {
    pub(crate) phase: Phase,
    /// The watcher's epoll set: waiting handlers' and parked ones' sockets.
    pub(super) watcher: Poller,
    pub(super) limits: BusyLimits,
    /// [`Gate::crowding`]` > 0`, for readers without the lock.
    crowded: AtomicBool,
    /// When a make-room pass can next find anyone past a limit (`None`:
    /// now); written by the watcher under the gate's lock.
    room_due: Mutex<Option<Instant>>,
}

impl Signals {
    /// A running handler went idle or started: a make-room pass may be due.
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
    pub(super) slots: Mutex<Vec<Arc<Slot>>>,
    pub(super) signals: Signals,
    ipv6_prefix: u8,
    park: ParkLimits,
    pub(super) accepting: Option<Accepting<Q>>,
}

impl<Q: Handler, S: Admission> Shared<Q, S> {
    pub(super) fn new(
        policy: S,
        options: &Options,
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
                max_running: options.max_running,
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
                limits: options.limits,
                crowded: AtomicBool::new(false),
                room_due: Mutex::new(None),
            },
            ipv6_prefix: options.ipv6_prefix,
            park: options.park,
            accepting,
        })
    }

    pub(super) fn gate(&self) -> MutexGuard<'_, Gate<Q, S>> {
        lock(&self.gate)
    }

    /// After the counts changed under `gate`: publishes `crowded`, wakes
    /// the threads waiting for idle.
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
    /// back, admitted before, for which a refusal is its departure.
    fn admit(
        &self,
        mut gate: MutexGuard<'_, Gate<Q, S>>,
        handler: Q,
        source: Option<IpAddr>,
        key: Option<Key>,
        how: Admitting,
    ) -> Result<(), Refused<Q>> {
        let returning = matches!(how, Admitting::Returning | Admitting::Taken);
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
            Decision::Refuse(reason) => {
                let outcome = Outcome::Refused(reason);
                if returning {
                    gate.depart(id, key, outcome);
                } else {
                    gate.stats.count(outcome);
                }
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
        // Watched under the lock: a hang-up reported at once waits for it,
        // then finds the handler queued. Not one back from parking: its
        // client just sent a request, which its run reads anyway.
        let flags = EventFlags::RDHUP | EventFlags::ET;
        let watched = waits
            && !returning
            && (handler.socket()).is_some_and(|s| self.watch(s, id, flags, false));
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
        // A worker waiting on the acceptor takes it, rung once the lock is
        // free; not when the worker that accepted it or took it back runs
        // the queue's head next.
        let ring = matches!(how, Admitting::New | Admitting::Returning)
            .then(|| gate.on_acceptor.pop())
            .flatten();
        self.changed(&gate);
        // Under the gate's lock, as the watcher writes it.
        let room = waits && self.signals.limits.any() && self.signals.room_pass_due();
        drop(gate);
        if let Some(bell) = ring {
            bell.wake();
        }
        if earliest || room {
            self.signals.watcher.wake();
        }
        Ok(())
    }

    /// Adds `socket` to the watcher's epoll set under `id` (`registered`:
    /// it is in the set already); false if epoll cannot watch it.
    fn watch(&self, socket: BorrowedFd<'_>, id: u64, flags: EventFlags, registered: bool) -> bool {
        let watcher = &self.signals.watcher;
        (watcher.register(socket, id, flags, registered))
            .inspect_err(|e| log::debug!("handler {id}: socket not watched: {e}"))
            .is_ok()
    }

    /// A worker's step between handlers: `done` departs and the head of
    /// the queue starts in one step. `have_token`: woken by a token;
    /// otherwise it takes one for the handler it takes, so no other worker
    /// wakes for it. `bell`: the worker's, if it can wait on the acceptor.
    pub(super) fn next(
        &self,
        done: Option<Done<Q>>,
        have_token: bool,
        bell: Option<&Arc<Poller>>,
        try_parked: bool,
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
        } else if try_parked && !gate.parked.is_empty() && !gate.is_closed() {
            Next::TryParked
        } else if let Some(bell) = bell.filter(|_| gate.accepting && !gate.is_closed()) {
            gate.on_acceptor.push(bell.clone());
            if gate.on_acceptor.len() == 1 {
                if let Some(accepting) = &self.accepting {
                    // The accepting thread steps back.
                    accepting.thread.wake();
                }
            }
            Next::WaitOnAcceptor
        } else {
            Next::Wait
        };
        self.changed(&gate);
        drop(gate);
        if let Some(bell) = pass_on {
            bell.wake();
        }
        if let Some((id, handler, outcome)) = evicted {
            self.settle_parked(id, handler, outcome);
        }
        next
    }

    /// Parks `done`'s handler, under the gate's lock, until its socket
    /// reports. Returns one to settle after the lock: the one evicted to
    /// make room, or this one if it cannot be watched.
    fn park(&self, gate: &mut Gate<Q, S>, done: &Done<Q>, handler: Q) -> Option<(u64, Q, Outcome)> {
        let Done {
            id,
            source,
            key,
            registered,
            ..
        } = *done;
        if gate.is_closed() {
            let refused = Outcome::Refused(Refusal::ShuttingDown);
            gate.depart(id, key, refused);
            gate.closed_parked += 1;
            return Some((id, handler, refused));
        }
        let parked_id = gate.next_id;
        gate.next_id += 1;
        // Watched under the lock, level-triggered: bytes that came before
        // report at once, and the event waits for the lock.
        let flags = EventFlags::IN | EventFlags::RDHUP | EventFlags::ONESHOT;
        let socket = handler.socket();
        if !socket.is_some_and(|s| self.watch(s, parked_id, flags, registered)) {
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

    /// A watched socket reported: a waiting client may have hung up, or a
    /// parked one is back (admitted as `how`: by the watcher or a worker).
    pub(super) fn socket_event(&self, id: u64, flags: EventFlags, how: Admitting) {
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
        // Its spent registration stays until it parks again or closes.
        // Peeked only on a hang-up or error (readable alone means a
        // request), under the lock that took it out of the parked set, so
        // that every snapshot counts it somewhere.
        let hung_up = flags.intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR);
        if hung_up && abandoned(id, &handler) {
            gate.depart(id, key, Outcome::Abandoned);
            drop(gate);
            settle(id, handler, Outcome::Abandoned);
            return;
        }
        // No caller to hand a policy panic to: the handler is dropped and
        // counted as panicked, and the thread goes on.
        let admit = || self.admit(gate, handler, source, key, how);
        match guarded("Admission::decide", id, admit) {
            Some(Ok(())) => {}
            Some(Err(Refused { handler, reason })) => settle(id, handler, Outcome::Refused(reason)),
            None => self.gate().depart(id, key, Outcome::Panicked),
        }
    }

    /// A worker about to wait takes one ready event of the watcher's set,
    /// if any, and handles it as the watcher would; a parked handler back
    /// is queued without ringing anyone, as the worker runs the queue's
    /// head next. Under load this spares a wake-up of the watcher and one
    /// of a worker per request (docs/ARCHITECTURE.md, "Parked handlers").
    /// Whether it took an event (a waiting client's hang-up counts).
    pub(super) fn take_parked(&self) -> bool {
        let Some((id, flags)) = self.signals.watcher.try_one() else {
            return false;
        };
        self.socket_event(id, flags, Admitting::Taken);
        true
    }

    /// Settles a handler taken out of the parked set, its socket out of
    /// the watcher's.
    fn settle_parked(&self, id: u64, handler: Q, outcome: Outcome) {
        if let Some(socket) = handler.socket() {
            self.signals.watcher.delete(socket);
        }
        settle(id, handler, outcome);
    }

    /// Takes waiting handler `id` out of the queue and settles it.
    fn leave(&self, mut gate: MutexGuard<'_, Gate<Q, S>>, id: u64, outcome: Outcome) {
        let Some(entry) = gate.waiting.remove(&id) else {
            return;
        };
        if let Some(deadline) = entry.deadline {
            gate.deadlines.remove(&(deadline, id));
        }
        gate.depart(id, entry.key, outcome);
        // Its token goes with it (tokens are alike).
        let _ = self.tokens.try_recv();
        self.changed(&gate);
        drop(gate);
        settle(id, entry.handler, outcome);
    }

    /// Refuses the waiting handlers past their deadline and the parked
    /// ones past the idle timeout; when to call again, or `Err` once
    /// closed.
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
                    // With none parked, wake within the idle timeout, so
                    // that parking never has to wake the watcher.
                    let horizon = (self.park.idle)
                        .filter(|_| self.park.max > 0 && gate.parked.is_empty())
                        .and_then(|idle| now.checked_add(idle));
                    let next = [deadline, expiry].into_iter().flatten().map(|d| d.0);
                    return Ok(next.chain(horizon).min());
                }
            }
        }
    }

    /// Closes admission and refuses every waiting and parked handler;
    /// returns how many were running then. Later calls find nothing to do.
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

    /// The acceptor's `accept` and the admission of what it took; whether
    /// it took something. One at a time, so that handlers are admitted in
    /// the order they were accepted.
    pub(super) fn accept(&self, accepting: &Accepting<Q>, how: Admitting) -> io::Result<bool> {
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
            // No caller to hand the panic to: dropped, uncounted, as
            // `Manager::submit` documents; this thread goes on.
            Err(payload) => {
                let message = panic_message(&*payload);
                log::error!("the admission policy panicked: {message}");
            }
        }
        Ok(true)
    }

    /// Stops every use of the acceptor; returns once no thread is inside
    /// its `accept`.
    pub(super) fn stop_accepting(&self) {
        let Some(accepting) = &self.accepting else {
            return;
        };
        let mut gate = self.gate();
        if gate.accepting {
            gate.accepting = false;
            for bell in gate.on_acceptor.drain(..) {
                bell.wake();
            }
            accepting.thread.wake();
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

/// Whether `handler`'s client left; a panic counts as yes.
pub(super) fn abandoned<Q: Handler>(id: u64, handler: &Q) -> bool {
    guarded("is_abandoned", id, || handler.is_abandoned()).unwrap_or(true)
}

/// Tells a handler that left unrun why, or drops it.
fn settle<Q: Handler>(id: u64, handler: Q, outcome: Outcome) {
    if let Outcome::Refused(reason) = outcome {
        guarded("refused", id, || handler.refused(reason));
    } else {
        log::debug!("handler {id} left: its client is gone");
        guarded("drop", id, || drop(handler));
    }
}
