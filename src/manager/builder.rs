//! Configuring and starting a [`Manager`].

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use super::deadline::Deadlines;
use super::handle::Manager;
use super::slot::{Phase, Slot};
use super::state::{Counts, Gate, ManagerState};
use super::stats::Counters;
use crate::admission::{Admission, MaxWaiting};
use crate::handler::Handler;
use crate::util::lock;

/// Configures and starts a [`Manager`]: `ManagerBuilder::new(max_running)`, then
/// options, then [`build`](ManagerBuilder::build).
#[derive(Debug)]
pub struct ManagerBuilder<S> {
    max_running: usize,
    admission: S,
    name: String,
}

impl ManagerBuilder<MaxWaiting> {
    /// A builder for a manager running at most `max_running` handlers at
    /// once, with the default policy [`MaxWaiting`]`(1024)`.
    ///
    /// # Panics
    ///
    /// If `max_running` is 0 or above 2³¹.
    pub fn new(max_running: usize) -> ManagerBuilder<MaxWaiting> {
        assert!(
            (1..=1 << 31).contains(&max_running),
            "max_running must be between 1 and 2^31, got {max_running}"
        );
        ManagerBuilder {
            max_running,
            admission: MaxWaiting(1024),
            name: "filesrv".to_owned(),
        }
    }
}

impl<S: Admission> ManagerBuilder<S> {
    /// Sets the admission policy (default: [`MaxWaiting`]`(1024)`).
    pub fn admission<S2: Admission>(self, policy: S2) -> ManagerBuilder<S2> {
        ManagerBuilder {
            max_running: self.max_running,
            admission: policy,
            name: self.name,
        }
    }

    /// Names the manager's threads `<name>-worker-<i>` and
    /// `<name>-deadlines` (default: `filesrv`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts the worker threads and returns the manager.
    ///
    /// # Errors
    ///
    /// The OS refused to start a thread; the threads already started are
    /// stopped and joined before this returns.
    pub fn build<Q: Handler>(self) -> io::Result<Manager<Q, S>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let phase = Arc::new(Phase::default());
        let shared = Arc::new(ManagerState {
            max_running: self.max_running,
            gate: Mutex::new(Gate {
                policy: self.admission,
                per_source: HashMap::new(),
                queue: Some(tx),
                next_id: 0,
                submitted: 0,
                admitted: 0,
            }),
            queue: rx,
            counts: Counts(AtomicU64::new(0)),
            counters: Counters::default(),
            slots: (0..self.max_running)
                .map(|_| Slot::new(phase.clone()))
                .collect(),
            phase,
            closing: AtomicBool::new(false),
            idle: (Mutex::new(()), Condvar::new()),
            idle_waiters: AtomicUsize::new(0),
            deadlines: Deadlines::new(),
        });
        let manager = Manager {
            shared: shared.clone(),
            threads: Mutex::new(Some(Vec::with_capacity(self.max_running + 1))),
            report: Mutex::new(None),
        };
        let spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
            let handle = thread::Builder::new().name(name).spawn(body)?;
            lock(&manager.threads)
                .as_mut()
                .expect("threads are taken only by shutdown")
                .push(handle);
            io::Result::Ok(())
        };
        let deadlines = shared.clone();
        spawn(
            format!("{}-deadlines", self.name),
            Box::new(move || deadlines.deadlines.run(|t| deadlines.expire(&t))),
        )?;
        for index in 0..self.max_running {
            let worker = shared.clone();
            spawn(
                format!("{}-worker-{index}", self.name),
                Box::new(move || worker.work(index)),
            )?;
        }
        Ok(manager)
    }
}
