//! A running manager changed live: its bound on running handlers grows
//! and shrinks under load (never cutting a handler, never running more
//! than the bound once the change settles, queue order kept), and its
//! policy is reached through `Manager::with_policy` (a maintenance
//! switch).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use filesrv::admission::{And, Arrival, Decision, MaxWaiting, Unbounded};
use filesrv::{Admission, HandlerContext, Manager, ManagerBuilder, Refusal, handler_fn};

use crate::support::LIMIT;

/// Handlers running now, and the most seen at once since the last reset.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Concurrency {
    fn enter(&self) {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(now, SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, SeqCst);
    }
}

/// A job that reports its start (with its number), then holds its slot
/// until one release arrives (any job may take any release). It fails
/// if a stop was asked of it: a resize must never cut one.
fn blocking(
    n: usize,
    seen: &Arc<Concurrency>,
    starts: &Sender<usize>,
    release: &Receiver<()>,
) -> impl filesrv::Handler {
    let (seen, starts, release) = (seen.clone(), starts.clone(), release.clone());
    handler_fn(move |ctx: &HandlerContext| {
        seen.enter();
        starts.send(n).unwrap();
        let released = release.recv_timeout(LIMIT);
        seen.leave();
        released.map_err(|_| io::Error::other("never released"))?;
        match ctx.stop_requested() {
            None => Ok(()),
            Some(stop) => Err(io::Error::other(format!("asked to stop: {stop:?}"))),
        }
    })
}

#[test]
fn shrinking_and_growing_under_load_keep_the_bound_and_the_order() {
    let seen = Arc::new(Concurrency::default());
    let (starts_tx, starts) = unbounded();
    let (release, release_rx) = unbounded();
    let manager = ManagerBuilder::new(4).admission(Unbounded).build().unwrap();
    const JOBS: usize = 24;
    for n in 0..JOBS {
        manager
            .submit(blocking(n, &seen, &starts_tx, &release_rx))
            .map_err(|r| r.reason())
            .unwrap();
    }
    let mut first: Vec<usize> = (0..4)
        .map(|_| starts.recv_timeout(LIMIT).unwrap())
        .collect();
    first.sort_unstable();
    assert_eq!(first, [0, 1, 2, 3]);

    // Shrink with every slot busy: nobody is cut; as the four finish,
    // two workers retire, and from then on at most two run.
    manager.set_max_running(2).unwrap();
    assert_eq!(manager.max_running(), 2);
    assert_eq!(manager.stats().running, 4, "a shrink cuts nobody");
    for _ in 0..4 {
        release.send(()).unwrap();
    }
    // Now only queued jobs run: one release, one start, in queue order.
    let mut next = 4;
    for _ in 0..2 {
        assert_eq!(starts.recv_timeout(LIMIT).unwrap(), next);
        next += 1;
    }
    seen.max.store(seen.now.load(SeqCst), SeqCst);
    for _ in 0..8 {
        release.send(()).unwrap();
        assert_eq!(starts.recv_timeout(LIMIT).unwrap(), next);
        next += 1;
    }
    assert!(
        seen.max.load(SeqCst) <= 2,
        "{} ran at once after shrinking to 2",
        seen.max.load(SeqCst)
    );

    // Grow with a backlog: a third job starts at once, in order.
    manager.set_max_running(3).unwrap();
    assert_eq!(starts.recv_timeout(LIMIT).unwrap(), next);
    next += 1;
    assert_eq!(seen.now.load(SeqCst), 3);
    while next < JOBS {
        release.send(()).unwrap();
        assert_eq!(starts.recv_timeout(LIMIT).unwrap(), next);
        next += 1;
    }
    for _ in 0..3 {
        release.send(()).unwrap();
    }
    assert!(manager.wait_idle_timeout(LIMIT));
    assert!(seen.max.load(SeqCst) <= 3);
    let stats = manager.stats();
    assert_eq!((stats.completed, stats.failed), (JOBS as u64, 0));
    // Retired workers' counts stay in the sums; a shutdown joins all.
    assert_eq!(manager.shutdown(LIMIT).cut, 0);
}

#[test]
fn shrinking_an_idle_manager_retires_parked_workers() {
    let manager = ManagerBuilder::new(8).admission(Unbounded).build().unwrap();
    manager.set_max_running(1).unwrap();
    let seen = Arc::new(Concurrency::default());
    let (starts_tx, starts) = unbounded();
    let (release, release_rx) = unbounded();
    for n in 0..6 {
        manager
            .submit(blocking(n, &seen, &starts_tx, &release_rx))
            .map_err(|r| r.reason())
            .unwrap();
    }
    for n in 0..6 {
        assert_eq!(starts.recv_timeout(LIMIT).unwrap(), n);
        assert_eq!(seen.now.load(SeqCst), 1, "only one runs");
        release.send(()).unwrap();
    }
    assert!(manager.wait_idle_timeout(LIMIT));
    assert_eq!(seen.max.load(SeqCst), 1);
}

/// Refuses every arrival while switched on.
#[derive(Default)]
struct Maintenance {
    on: bool,
}

impl Admission for Maintenance {
    fn decide(&mut self, _: &Arrival) -> Decision {
        if self.on {
            Decision::Refuse(Refusal::Unavailable)
        } else {
            Decision::Queue
        }
    }
}

#[test]
fn a_maintenance_switch_flips_on_a_running_manager() {
    let manager: Manager<_, And<MaxWaiting, Maintenance>> = ManagerBuilder::new(1)
        .admission(MaxWaiting(8).and(Maintenance::default()))
        .build()
        .unwrap();
    let seen = Arc::new(Concurrency::default());
    let (starts_tx, starts) = unbounded();
    let (release, release_rx) = bounded(1);
    let job = |n| blocking(n, &seen, &starts_tx, &release_rx);
    manager.submit(job(0)).map_err(|r| r.reason()).unwrap();
    assert_eq!(starts.recv_timeout(LIMIT).unwrap(), 0);

    manager.with_policy(|p| p.1.on = true);
    let refused = manager.submit(job(1)).unwrap_err();
    assert_eq!(refused.reason(), Refusal::Unavailable);
    assert!(!refused.reason().is_busy());
    // What already runs is not touched.
    release.send(()).unwrap();
    assert!(manager.wait_idle_timeout(LIMIT));
    assert_eq!(manager.stats().completed, 1);

    manager.with_policy(|p| p.1.on = false);
    manager.submit(job(2)).map_err(|r| r.reason()).unwrap();
    assert_eq!(starts.recv_timeout(LIMIT).unwrap(), 2);
    release.send(()).unwrap();
    assert!(manager.wait_idle_timeout(LIMIT));
    let stats = manager.stats();
    assert_eq!(stats.refused(Refusal::Unavailable), 1);
    assert_eq!(stats.completed, 2);
}

#[test]
fn a_bound_set_after_shutdown_changes_nothing() {
    let manager: Manager<filesrv::BoxHandler> = ManagerBuilder::new(2).build().unwrap();
    manager.shutdown(LIMIT);
    manager.set_max_running(8).unwrap();
    assert_eq!(manager.running().len(), 0);
    let job = filesrv::BoxHandler::new(handler_fn(|_| Ok(())));
    let refused = manager.submit(job).unwrap_err();
    assert_eq!(refused.reason(), Refusal::ShuttingDown);
}
