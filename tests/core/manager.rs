//! The admission core through its public API, on real threads. Every wait
//! is bounded; synchronisation is by channels, never by sleeping.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use filesrv::admission::{MaxWaiting, PerKeyCap, QueueTimeout, Unbounded};
use filesrv::{
    Admission, BoxHandler, Handler, HandlerContext, Manager, ManagerBuilder, Refusal, Stop,
    handler_fn,
};

use crate::support::LIMIT;

/// A handler for the scenarios below: tells when it starts, then waits for
/// a release (or for a stop), and reports a refusal.
struct Probe {
    started: Sender<u64>,
    release: Option<Receiver<()>>,
    refused: Sender<Refusal>,
    source: Option<IpAddr>,
    abandoned: bool,
    ran: Arc<AtomicBool>,
}

impl Probe {
    fn new(started: &Sender<u64>, refused: &Sender<Refusal>) -> Probe {
        Probe {
            started: started.clone(),
            release: None,
            refused: refused.clone(),
            source: None,
            abandoned: false,
            ran: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Blocks in `run` until the returned sender sends or is dropped.
    fn held(mut self) -> (Probe, Sender<()>) {
        let (tx, rx) = bounded(1);
        self.release = Some(rx);
        (self, tx)
    }
}

impl Handler for Probe {
    fn run(self, ctx: &HandlerContext) -> io::Result<()> {
        self.ran.store(true, SeqCst);
        self.started.send(ctx.id()).unwrap();
        if let Some(release) = self.release {
            let _ = release.recv_timeout(LIMIT);
        }
        Ok(())
    }
    fn source(&self) -> Option<IpAddr> {
        self.source
    }
    fn is_abandoned(&self) -> bool {
        self.abandoned
    }
    fn refused(self, reason: Refusal) {
        let _ = self.refused.send(reason);
    }
}

fn channels<T>() -> (Sender<T>, Receiver<T>) {
    unbounded()
}

/// Tiny xorshift: random durations without a new dependency.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

thread_local! {
    /// The id of the last handler this worker thread started.
    static LAST_ID: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

fn stress(max_running: usize, jobs: u64) {
    let manager = ManagerBuilder::new(max_running)
        .admission(Unbounded)
        .build()
        .unwrap();
    let manager = Arc::new(manager);
    let live = Arc::new(AtomicUsize::new(0));
    let high_water = Arc::new(AtomicUsize::new(0));
    let out_of_order = Arc::new(AtomicU64::new(0));
    let submitters: Vec<_> = (0..2u64)
        .map(|t| {
            let (manager, live, high_water, out_of_order) = (
                manager.clone(),
                live.clone(),
                high_water.clone(),
                out_of_order.clone(),
            );
            thread::spawn(move || {
                let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
                for _ in 0..jobs / 2 {
                    let spins = next_random(&mut seed) % 2_000;
                    let (live, high_water, out_of_order) =
                        (live.clone(), high_water.clone(), out_of_order.clone());
                    let job = handler_fn(move |ctx| {
                        let now = live.fetch_add(1, SeqCst) + 1;
                        high_water.fetch_max(now, SeqCst);
                        // Ids follow queue order and the queue is FIFO, so
                        // each worker sees rising ids, and with one worker
                        // the ids come exactly in order.
                        let in_order = LAST_ID.with(|last| {
                            let ok = last.get().is_none_or(|prev| ctx.id() > prev)
                                && (max_running > 1 || ctx.id() == last.get().map_or(0, |p| p + 1));
                            last.set(Some(ctx.id()));
                            ok
                        });
                        if !in_order {
                            out_of_order.fetch_add(1, SeqCst);
                        }
                        for i in 0..spins {
                            std::hint::black_box(i);
                        }
                        live.fetch_sub(1, SeqCst);
                        Ok(())
                    });
                    manager.submit(job).unwrap();
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    assert!(manager.wait_idle_timeout(Duration::from_secs(120)));
    let report = manager.shutdown(Duration::MAX);
    let stats = manager.stats();
    assert_eq!(report.cut, 0);
    assert!(high_water.load(SeqCst) <= max_running, "bound exceeded");
    assert_eq!(out_of_order.load(SeqCst), 0, "started out of order");
    assert_eq!(stats.submitted, jobs);
    assert_eq!(stats.admitted, jobs);
    assert_eq!(stats.completed, jobs);
    assert_eq!(stats.running + stats.waiting, 0);
    assert_eq!(
        stats.refused_total() + stats.failed + stats.panicked + stats.abandoned,
        0
    );
}

#[test]
fn stress_bound_order_and_counters() {
    for max_running in [1, 3, 16] {
        stress(max_running, 100_000);
    }
}

#[test]
fn next_waiting_handler_starts_when_a_slot_frees() {
    let (started, starts) = channels();
    let (refused, _refusals) = channels();
    let manager = ManagerBuilder::new(1).build().unwrap();
    let (first, release) = Probe::new(&started, &refused).held();
    manager.submit(first).unwrap();
    manager.submit(Probe::new(&started, &refused)).unwrap();
    assert_eq!(starts.recv_timeout(LIMIT), Ok(0));
    assert_eq!(manager.stats().waiting, 1);
    assert!(
        starts.try_recv().is_err(),
        "second started while the slot was taken"
    );
    drop(release);
    assert_eq!(starts.recv_timeout(LIMIT), Ok(1));
}

/// The queue-wait statistics: a handler that waits behind a held slot is
/// counted from its submission to its start; one that starts on an idle
/// worker waits nothing, and nobody shows as the oldest waiter.
#[test]
fn queue_wait_is_measured_from_submission_to_start() {
    const HELD: Duration = Duration::from_millis(150);
    let (started, starts) = channels();
    let (refused, _refusals) = channels();
    let manager = ManagerBuilder::new(1).build().unwrap();
    let (first, release) = Probe::new(&started, &refused).held();
    manager.submit(first).unwrap();
    assert_eq!(starts.recv_timeout(LIMIT), Ok(0));
    let stats = manager.stats();
    assert_eq!((stats.running, stats.waiting), (1, 0));
    assert_eq!(stats.oldest_waiting, Duration::ZERO, "nobody waits");

    let submitted = Instant::now();
    manager.submit(Probe::new(&started, &refused)).unwrap();
    // A timed wait for a known span, not a synchronisation.
    thread::sleep(HELD);
    let oldest = manager.stats().oldest_waiting;
    assert!(
        oldest >= HELD && oldest <= submitted.elapsed(),
        "oldest waiter {oldest:?}, held {HELD:?}"
    );
    drop(release);
    assert_eq!(starts.recv_timeout(LIMIT), Ok(1));
    let upper = submitted.elapsed();
    assert!(manager.wait_idle_timeout(LIMIT));
    let stats = manager.stats();
    assert_eq!(stats.oldest_waiting, Duration::ZERO);
    assert!(
        stats.queue_wait_max >= HELD && stats.queue_wait_max <= upper,
        "{stats:?}"
    );
    // The first handler started on an idle worker: it adds (next to)
    // nothing to the total.
    let first_wait = stats.queue_wait_total - stats.queue_wait_max;
    assert!(first_wait < HELD, "{stats:?}");
}

#[test]
fn a_freed_slot_goes_to_the_head_of_the_queue() {
    let (started, starts) = channels();
    let (refused, _refusals) = channels();
    let manager = ManagerBuilder::new(2).build().unwrap();
    let mut releases = Vec::new();
    for _ in 0..6 {
        let (probe, release) = Probe::new(&started, &refused).held();
        manager.submit(probe).unwrap();
        releases.push(Some(release));
    }
    let mut running = vec![
        starts.recv_timeout(LIMIT).unwrap(),
        starts.recv_timeout(LIMIT).unwrap(),
    ];
    running.sort_unstable();
    assert_eq!(running, [0, 1]);
    // Free slots in a scrambled order: each time, the head starts next.
    for (freed, next) in [(1, 2), (0, 3), (3, 4), (2, 5)] {
        releases[freed].take();
        assert_eq!(starts.recv_timeout(LIMIT), Ok(next));
    }
    releases.clear();
    assert!(manager.wait_idle_timeout(LIMIT));
}

#[test]
fn full_queue_refuses_and_gives_the_handler_back() {
    let (started, starts) = channels();
    let (refused, refusals) = channels();
    let manager = ManagerBuilder::new(1)
        .admission(MaxWaiting(1))
        .build()
        .unwrap();
    let (first, _release) = Probe::new(&started, &refused).held();
    manager.submit(first).unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    manager.submit(Probe::new(&started, &refused)).unwrap();
    let err = manager.submit(Probe::new(&started, &refused)).unwrap_err();
    assert_eq!(err.reason(), Refusal::QueueFull);
    err.notify();
    assert_eq!(refusals.recv_timeout(LIMIT), Ok(Refusal::QueueFull));
    assert_eq!(manager.stats().refused(Refusal::QueueFull), 1);
}

#[test]
fn zero_waiting_refuses_when_every_slot_is_taken() {
    let (started, starts) = channels();
    let (refused, _refusals) = channels();
    let manager = ManagerBuilder::new(2)
        .admission(MaxWaiting(0))
        .build()
        .unwrap();
    let (a, _ra) = Probe::new(&started, &refused).held();
    let (b, _rb) = Probe::new(&started, &refused).held();
    manager.submit(a).unwrap();
    manager.submit(b).unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    let err = manager.submit(Probe::new(&started, &refused)).unwrap_err();
    assert_eq!(err.reason(), Refusal::QueueFull);
}

#[test]
fn per_source_cap_counts_mapped_ipv6_as_ipv4() {
    let (started, starts) = channels();
    let (refused, _refusals) = channels();
    let manager = ManagerBuilder::new(1)
        .admission(PerKeyCap::new(2))
        .build()
        .unwrap();
    let v4: IpAddr = "127.0.0.7".parse().unwrap();
    let mapped: IpAddr = "::ffff:127.0.0.7".parse().unwrap();
    let other: IpAddr = "127.0.0.8".parse().unwrap();
    let (mut first, release) = Probe::new(&started, &refused).held();
    first.source = Some(v4);
    manager.submit(first).unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    let mut second = Probe::new(&started, &refused);
    second.source = Some(mapped);
    manager.submit(second).unwrap();
    let mut third = Probe::new(&started, &refused);
    third.source = Some(v4);
    assert_eq!(
        manager.submit(third).unwrap_err().reason(),
        Refusal::SourceLimit
    );
    let mut elsewhere = Probe::new(&started, &refused);
    elsewhere.source = Some(other);
    manager.submit(elsewhere).unwrap();
    let running = manager.running();
    assert_eq!(running.len(), 1);
    assert_eq!((running[0].id, running[0].source), (0, Some(v4)));
    // Finishing frees the source's places.
    drop(release);
    starts.recv_timeout(LIMIT).unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    let mut again = Probe::new(&started, &refused);
    again.source = Some(v4);
    manager.submit(again).unwrap();
    starts.recv_timeout(LIMIT).unwrap();
}

#[test]
fn queue_deadline_refuses_when_it_passes_not_at_the_head() {
    let (started, starts) = channels();
    let (refused, refusals) = channels();
    let manager = ManagerBuilder::new(1)
        .admission(MaxWaiting(8).and(QueueTimeout(Duration::from_millis(50))))
        .build()
        .unwrap();
    let (first, release) = Probe::new(&started, &refused).held();
    manager.submit(first).unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    let late = Probe::new(&started, &refused);
    let ran = late.ran.clone();
    let submitted = Instant::now();
    manager.submit(late).unwrap();
    // The first handler still holds the only slot.
    assert_eq!(refusals.recv_timeout(LIMIT), Ok(Refusal::QueueTimeout));
    assert!(submitted.elapsed() >= Duration::from_millis(50));
    assert_eq!(manager.stats().waiting, 0);
    drop(release);
    let after = Probe::new(&started, &refused);
    manager.submit(after).unwrap();
    assert_eq!(starts.recv_timeout(LIMIT), Ok(2));
    assert!(!ran.load(SeqCst));
    assert_eq!(manager.stats().refused(Refusal::QueueTimeout), 1);
}

#[test]
fn abandoned_waiter_is_dropped_at_the_head() {
    let (started, starts) = channels();
    let (refused, _refusals) = channels();
    let manager = ManagerBuilder::new(1).build().unwrap();
    let (first, release) = Probe::new(&started, &refused).held();
    manager.submit(first).unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    let mut gone = Probe::new(&started, &refused);
    gone.abandoned = true;
    let ran = gone.ran.clone();
    manager.submit(gone).unwrap();
    manager.submit(Probe::new(&started, &refused)).unwrap();
    drop(release);
    assert_eq!(starts.recv_timeout(LIMIT), Ok(2));
    assert!(!ran.load(SeqCst));
    assert_eq!(manager.stats().abandoned, 1);
}

#[test]
fn a_handler_that_starts_at_once_is_not_asked_whether_it_was_abandoned() {
    let (started, starts) = channels();
    let (refused, _refusals) = channels();
    let manager = ManagerBuilder::new(1).build().unwrap();
    // It would say yes, but a free slot takes it before its client could
    // have left: it runs, and no peek is spent on it.
    let mut fresh = Probe::new(&started, &refused);
    fresh.abandoned = true;
    let ran = fresh.ran.clone();
    manager.submit(fresh).unwrap();
    assert_eq!(starts.recv_timeout(LIMIT), Ok(0));
    assert!(manager.wait_idle_timeout(LIMIT));
    assert!(ran.load(SeqCst));
    let stats = manager.stats();
    assert_eq!((stats.abandoned, stats.completed), (0, 1));
}

#[test]
fn panicking_handler_frees_its_slot_and_is_counted() {
    let manager = ManagerBuilder::new(1).build().unwrap();
    let (done, finished) = channels();
    manager
        .submit(BoxHandler::new(handler_fn(|_| {
            panic!("deliberate test panic")
        })))
        .unwrap();
    manager
        .submit(BoxHandler::new(handler_fn(move |ctx| {
            done.send(ctx.id()).unwrap();
            Ok(())
        })))
        .unwrap();
    assert_eq!(finished.recv_timeout(LIMIT), Ok(1));
    manager.shutdown(LIMIT);
    let stats = manager.stats();
    assert_eq!((stats.panicked, stats.completed, stats.running), (1, 1, 0));
}

#[test]
fn failed_handler_is_counted() {
    let manager = ManagerBuilder::new(1).build().unwrap();
    manager
        .submit(handler_fn(|_| Err(io::Error::other("boom"))))
        .unwrap();
    assert!(manager.wait_idle_timeout(LIMIT));
    assert_eq!(manager.stats().failed, 1);
}

#[test]
fn shutdown_refuses_waiting_stops_running_and_joins() {
    let (started, starts) = channels();
    let (refused, refusals) = channels();
    let manager = ManagerBuilder::new(2).name("sdtest").build().unwrap();
    // One handler finishes on the graceful stop, one only when cut.
    let stops = Arc::new(Mutex::new(Vec::new()));
    for graceful in [true, false] {
        let (stop_tx, stop_rx) = bounded::<Stop>(2);
        let started = started.clone();
        let stops = stops.clone();
        manager
            .submit(BoxHandler::new(handler_fn(move |ctx| {
                ctx.on_stop(move |stop| {
                    let _ = stop_tx.try_send(stop);
                });
                started.send(ctx.id()).unwrap();
                loop {
                    let stop = stop_rx.recv_timeout(LIMIT).expect("no stop came");
                    stops.lock().unwrap().push((graceful, stop));
                    if graceful || stop == Stop::Now {
                        return Ok(());
                    }
                }
            })))
            .unwrap();
    }
    starts.recv_timeout(LIMIT).unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    for _ in 0..3 {
        manager
            .submit(BoxHandler::new(Probe::new(&started, &refused)))
            .unwrap();
    }
    let report = manager.shutdown(Duration::from_millis(100));
    assert_eq!(report.refused_waiting, 3);
    assert_eq!(report.running_at_start, 2);
    assert_eq!(report.cut, 1);
    for _ in 0..3 {
        assert_eq!(refusals.recv_timeout(LIMIT), Ok(Refusal::ShuttingDown));
    }
    let mut stops = stops.lock().unwrap().clone();
    stops.sort();
    assert_eq!(
        stops,
        [
            (false, Stop::Graceful),
            (false, Stop::Now),
            (true, Stop::Graceful)
        ]
    );
    assert_eq!(
        manager
            .submit(BoxHandler::new(Probe::new(&started, &refused)))
            .unwrap_err()
            .reason(),
        Refusal::ShuttingDown
    );
    assert_eq!(
        manager.shutdown(LIMIT),
        report,
        "second call returns the same report"
    );
    assert!(
        thread_names().iter().all(|n| !n.starts_with("sdtest")),
        "threads left"
    );
}

#[test]
fn waiting_handlers_are_refused_when_shutdown_begins_not_when_a_slot_frees() {
    let (started, starts) = channels();
    let (refused, refusals) = channels();
    let manager = Arc::new(ManagerBuilder::new(1).build().unwrap());
    // Holds the only slot and ignores the graceful stop.
    let (first, release) = Probe::new(&started, &refused).held();
    manager.submit(first).unwrap();
    assert_eq!(starts.recv_timeout(LIMIT), Ok(0));
    // Handlers with no socket and no deadline wait in the hand-off
    // channel, not in the gate's queue.
    for _ in 0..3 {
        manager.submit(Probe::new(&started, &refused)).unwrap();
    }
    let stopping = manager.clone();
    let shutdown = thread::spawn(move || stopping.shutdown(LIMIT));
    // Well before the first handler gives its slot up (at LIMIT).
    for _ in 0..3 {
        assert_eq!(
            refusals.recv_timeout(LIMIT / 4),
            Ok(Refusal::ShuttingDown),
            "a waiting handler was not refused while the slot was held"
        );
    }
    assert!(starts.try_recv().is_err(), "a waiting handler ran");
    drop(release);
    let report = shutdown.join().unwrap();
    assert_eq!((report.refused_waiting, report.running_at_start), (3, 1));
}

/// Queues with a deadline only the handlers from [`DEADLINED`].
struct DeadlineFor(Duration);

const DEADLINED: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

impl Admission for DeadlineFor {
    fn decide(&mut self, arrival: &filesrv::admission::Arrival) -> filesrv::admission::Decision {
        if arrival.source == Some(DEADLINED) {
            filesrv::admission::Decision::QueueUntil(arrival.now + self.0)
        } else {
            filesrv::admission::Decision::Queue
        }
    }
}

#[test]
fn a_deadline_passing_behind_a_handler_without_one_loses_neither() {
    let (started, starts) = channels();
    let (refused, refusals) = channels();
    let manager = ManagerBuilder::new(1)
        .admission(DeadlineFor(Duration::from_millis(30)))
        .build()
        .unwrap();
    let (first, release) = Probe::new(&started, &refused).held();
    manager.submit(first).unwrap();
    assert_eq!(starts.recv_timeout(LIMIT), Ok(0));
    // Handler 1 waits in the hand-off channel, handler 2 (with a
    // deadline) in the gate's queue, its token behind handler 1. When the
    // deadline passes, the message taken out in its token's stead is
    // handler 1: it must still run.
    manager.submit(Probe::new(&started, &refused)).unwrap();
    let mut deadlined = Probe::new(&started, &refused);
    deadlined.source = Some(DEADLINED);
    manager.submit(deadlined).unwrap();
    assert_eq!(refusals.recv_timeout(LIMIT), Ok(Refusal::QueueTimeout));
    let stats = manager.stats();
    assert_eq!((stats.running, stats.waiting), (1, 1));
    assert!(stats.oldest_waiting > Duration::ZERO, "{stats:?}");
    drop(release);
    assert_eq!(starts.recv_timeout(LIMIT), Ok(1));
    assert!(manager.wait_idle_timeout(LIMIT));
    let stats = manager.stats();
    assert_eq!(
        (stats.completed, stats.refused_total()),
        (2, 1),
        "{stats:?}"
    );
    assert_eq!(stats.oldest_waiting, Duration::ZERO);
}

/// A closure handler can tell its client why it was refused: waiting
/// when the shutdown began, its `on_refused` hears `ShuttingDown`.
#[test]
fn a_handler_fn_refused_while_waiting_hears_why() {
    let manager = ManagerBuilder::new(1).build().unwrap();
    let (started, starts) = channels();
    manager
        .submit(BoxHandler::new(handler_fn(move |ctx| {
            let (stopped, wait_stop) = bounded::<()>(1);
            ctx.on_stop(move |_| {
                let _ = stopped.try_send(());
            });
            started.send(()).unwrap();
            wait_stop.recv_timeout(LIMIT).unwrap();
            Ok(())
        })))
        .unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    let (told, heard) = channels();
    let waiting = handler_fn(|_| Err(io::Error::other("never runs")))
        .on_refused(move |reason| told.send(reason).unwrap());
    manager.submit(BoxHandler::new(waiting)).unwrap();
    let report = manager.shutdown(LIMIT);
    assert_eq!(heard.recv_timeout(LIMIT), Ok(Refusal::ShuttingDown));
    assert_eq!(report.refused_waiting, 1, "{report:?}");
}

#[test]
fn stop_hook_registered_after_shutdown_began_runs_at_once() {
    let manager = ManagerBuilder::new(2).build().unwrap();
    let (started, starts) = channels();
    let (graceful_began, stop_seen) = bounded::<()>(1);
    let (saw, seen) = channels();
    // The first handler runs until its hook hears the graceful stop...
    let first_started = started.clone();
    manager
        .submit(BoxHandler::new(handler_fn(move |ctx| {
            let (stopped, wait_stop) = bounded::<()>(1);
            ctx.on_stop(move |_| {
                let _ = graceful_began.try_send(());
                let _ = stopped.try_send(());
            });
            first_started.send(()).unwrap();
            wait_stop.recv_timeout(LIMIT).unwrap();
            Ok(())
        })))
        .unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    // ...and the second registers only after that, so its hook must run
    // at once, inside `on_stop`, on its own thread.
    manager
        .submit(BoxHandler::new(handler_fn(move |ctx| {
            started.send(()).unwrap();
            stop_seen.recv_timeout(LIMIT).unwrap();
            let me = thread::current().id();
            ctx.on_stop(move |stop| saw.send((stop, thread::current().id() == me)).unwrap());
            Ok(())
        })))
        .unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    let report = manager.shutdown(LIMIT);
    assert_eq!(seen.recv_timeout(LIMIT), Ok((Stop::Graceful, true)));
    assert_eq!((report.running_at_start, report.cut), (2, 0));
}

/// Names of this process's live threads. A joined thread may still be
/// listed for a moment (the kernel wakes the joiner before it reaps the
/// task), so exiting ones (state `Z` or `X` in `stat`) are left out.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let path = t.ok()?.path();
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            if matches!(state, 'Z' | 'X') {
                return None;
            }
            std::fs::read_to_string(path.join("comm")).ok()
        })
        .map(|n| n.trim().to_owned())
        .collect()
}

/// (CPU nanoseconds, context switches) of this process's threads whose
/// name starts with `prefix`, from the kernel's per-thread accounting.
fn thread_cpu(prefix: &str) -> (u64, u64, usize) {
    let mut cpu = 0;
    let mut switches = 0;
    let mut threads = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        threads += 1;
        let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap();
        cpu += schedstat
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        let status = std::fs::read_to_string(path.join("status")).unwrap();
        for line in status.lines() {
            if line.contains("ctxt_switches:") {
                switches += line
                    .split_whitespace()
                    .last()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap();
            }
        }
    }
    (cpu, switches, threads)
}

/// A handler that exposes its socket, waits for a release, then reads
/// its client to the end (as a session that serves until the client
/// closes).
struct Conn {
    stream: std::net::TcpStream,
    release: Option<Receiver<()>>,
    started: Option<Sender<()>>,
}

impl Handler for Conn {
    fn run(mut self, _ctx: &HandlerContext) -> io::Result<()> {
        if let Some(started) = self.started {
            let _ = started.send(());
        }
        if let Some(release) = self.release {
            let _ = release.recv_timeout(LIMIT);
        }
        self.stream.set_read_timeout(Some(LIMIT))?;
        io::copy(&mut self.stream, &mut io::sink())?;
        Ok(())
    }
    fn socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(self.stream.as_fd())
    }
}

/// A handler that waited is watched for a hang-up only while it waits: its
/// client closing once it runs wakes nobody. (It woke the watcher once a
/// connection, as with a new connection per request.)
#[test]
fn a_client_closing_after_its_handler_started_wakes_no_watcher() {
    watcher_wakes_per_waiting_connection(ManagerBuilder::new(1).name("rdhup"), "rdhup");
}

/// With busy limits set, a handler queued or started while others wait
/// wakes the watcher for a make-room pass only when one can be due (a
/// limit passed), not once a connection: here no limit ever passes.
#[test]
fn waiting_connections_under_busy_limits_wake_no_watcher() {
    let builder = ManagerBuilder::new(1)
        .name("limits")
        .busy_idle_timeout(Some(Duration::from_secs(3600)))
        .busy_session_limit(Some(Duration::from_secs(3600)));
    watcher_wakes_per_waiting_connection(builder, "limits");
}

/// Runs rounds of a connection that waits behind a held slot, then runs
/// while its client closes; asserts the watcher was (next to) never woken.
fn watcher_wakes_per_waiting_connection(builder: ManagerBuilder<MaxWaiting>, name: &str) {
    const ROUNDS: usize = 200;
    let manager: Manager<Conn, Unbounded> = builder.admission(Unbounded).build().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    for _ in 0..ROUNDS {
        // The slot is held, so the connection waits and is watched...
        let (release, held) = bounded(1);
        let holder_client = std::net::TcpStream::connect(addr).unwrap();
        let (holder, _) = listener.accept().unwrap();
        manager
            .submit(Conn {
                stream: holder,
                release: Some(held),
                started: None,
            })
            .unwrap_or_else(|_| panic!("refused"));
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let (started, starts) = bounded(1);
        manager
            .submit(Conn {
                stream,
                release: None,
                started: Some(started),
            })
            .unwrap_or_else(|_| panic!("refused"));
        // ...then runs; its client closes while it runs.
        drop(holder_client);
        drop(release);
        starts.recv_timeout(LIMIT).unwrap();
        drop(client);
        assert!(manager.wait_idle_timeout(LIMIT));
    }
    // The watcher's whole life (it started with this manager): it names
    // itself once running, so it is not looked for before the rounds.
    let (_, woken, threads) = thread_cpu(&format!("{name}-watcher"));
    assert_eq!(threads, 1);
    assert!(
        woken < ROUNDS as u64 / 4,
        "the watcher woke {woken} times in {ROUNDS} rounds"
    );
}

#[test]
fn idle_manager_uses_no_cpu() {
    let manager = ManagerBuilder::new(4)
        .admission(QueueTimeout(Duration::from_millis(20)))
        .name("idlecpu")
        .build()
        .unwrap();
    // A thread names itself when it first runs, so first make every
    // worker run (all four meet at a barrier) and the watcher too
    // (it refuses a fifth handler that times out while they are held).
    let all_running = Arc::new(std::sync::Barrier::new(5));
    let (release_tx, release) = bounded::<()>(0);
    for _ in 0..4 {
        let (all_running, release) = (all_running.clone(), release.clone());
        manager
            .submit(BoxHandler::new(handler_fn(move |_| {
                all_running.wait();
                let _ = release.recv_timeout(LIMIT);
                Ok(())
            })))
            .unwrap();
    }
    all_running.wait();
    let (started, _starts) = channels();
    let (refused, refusals) = channels();
    manager
        .submit(BoxHandler::new(Probe::new(&started, &refused)))
        .unwrap();
    assert_eq!(refusals.recv_timeout(LIMIT), Ok(Refusal::QueueTimeout));
    drop(release_tx);
    assert!(manager.wait_idle_timeout(LIMIT));
    // Two measured seconds. In the first the workers finish parking (a
    // blocked receive may yield a few times before it sleeps); the second
    // is steady idleness and must be silent. Neither sleep waits for an
    // event: each is a window the kernel's per-thread accounting covers.
    let (_, sw0, threads) = thread_cpu("idlecpu");
    assert_eq!(threads, 5, "4 workers and the watcher");
    thread::sleep(Duration::from_secs(1));
    let (cpu1, sw1, _) = thread_cpu("idlecpu");
    thread::sleep(Duration::from_secs(1));
    let (cpu2, sw2, _) = thread_cpu("idlecpu");
    assert!(
        sw1 - sw0 <= 16 * 6,
        "threads woke {} times while parking",
        sw1 - sw0
    );
    assert!(sw2 - sw1 <= 2, "idle threads woke {} times", sw2 - sw1);
    assert!(
        cpu2 - cpu1 < 1_000_000,
        "idle threads used {} ns of CPU",
        cpu2 - cpu1
    );
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Manager<filesrv::FnHandler<fn(&HandlerContext) -> io::Result<()>>>>();
    check::<filesrv::Stats>();
    check::<filesrv::RunningInfo>();
    check::<filesrv::ShutdownReport>();
}

#[test]
fn concurrent_submitters_never_overfill_the_queue() {
    let (started, starts) = channels();
    let (refused, _refusals) = channels();
    let manager = Arc::new(
        ManagerBuilder::new(1)
            .admission(MaxWaiting(10))
            .build()
            .unwrap(),
    );
    let (first, release) = Probe::new(&started, &refused).held();
    manager.submit(first).unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    let submitters: Vec<_> = (0..4)
        .map(|_| {
            let (manager, started, refused) = (manager.clone(), started.clone(), refused.clone());
            thread::spawn(move || {
                (0..100)
                    .filter(|_| manager.submit(Probe::new(&started, &refused)).is_ok())
                    .count()
            })
        })
        .collect();
    let admitted: usize = submitters.into_iter().map(|s| s.join().unwrap()).sum();
    assert_eq!(admitted, 10);
    assert_eq!(manager.stats().waiting, 10);
    assert_eq!(manager.stats().refused(Refusal::QueueFull), 390);
    drop(release);
    assert!(manager.wait_idle_timeout(LIMIT));
    assert_eq!(manager.stats().completed, 11);
}

#[test]
fn drop_refuses_waiting_stops_running_and_joins() {
    let (started, starts) = channels();
    let (refused, refusals) = channels();
    let manager = ManagerBuilder::new(1).name("droptest").build().unwrap();
    let (stop_tx, stop_rx) = bounded::<Stop>(2);
    manager
        .submit(BoxHandler::new(handler_fn(move |ctx| {
            ctx.on_stop(move |stop| {
                let _ = stop_tx.try_send(stop);
            });
            started.send(ctx.id()).unwrap();
            // Returns only when told to stop now.
            while stop_rx.recv_timeout(LIMIT).expect("no stop came") != Stop::Now {}
            Ok(())
        })))
        .unwrap();
    starts.recv_timeout(LIMIT).unwrap();
    let (unused, _) = channels();
    manager
        .submit(BoxHandler::new(Probe::new(&unused, &refused)))
        .unwrap();
    drop(manager);
    assert_eq!(refusals.recv_timeout(LIMIT), Ok(Refusal::ShuttingDown));
    assert!(
        thread_names().iter().all(|n| !n.starts_with("droptest")),
        "threads left: {:?}",
        thread_names()
    );
}

/// A shutdown racing workers woken from idle: every handler submitted
/// before it either started before it (and is in `running_at_start`) or
/// is refused by it (`refused_waiting`), never both and never neither.
/// The report and the counters agree exactly, round after round. (The
/// manager checked `closing` and then counted the start in two steps, so
/// a worker woken from idle could start a handler the report missed.)
#[test]
fn a_shutdown_racing_woken_workers_reports_exact_counts() {
    const ROUNDS: usize = 300;
    const HANDLERS: usize = 6;
    for round in 0..ROUNDS {
        let manager = ManagerBuilder::new(4).admission(Unbounded).build().unwrap();
        let started = Arc::new(AtomicUsize::new(0));
        for _ in 0..HANDLERS {
            let started = started.clone();
            manager
                .submit(BoxHandler::new(handler_fn(move |ctx| {
                    started.fetch_add(1, SeqCst);
                    // Runs until the shutdown asks it to stop.
                    let (stop, stopped) = bounded(1);
                    ctx.on_stop(move |_| {
                        let _ = stop.try_send(());
                    });
                    let _ = stopped.recv_timeout(LIMIT);
                    Ok(())
                })))
                .unwrap();
        }
        let report = manager.shutdown(LIMIT);
        let ran = started.load(SeqCst);
        assert_eq!(report.running_at_start, ran, "round {round}: {report:?}");
        assert_eq!(
            report.refused_waiting,
            (HANDLERS - ran) as u64,
            "round {round}"
        );
        assert_eq!(report.cut, 0);
        let stats = manager.stats();
        assert_eq!(stats.completed, ran as u64, "round {round}: {stats:?}");
        assert_eq!(stats.refused(Refusal::ShuttingDown), report.refused_waiting);
        assert_eq!((stats.running, stats.waiting), (0, 0));
    }
}
