//! The admission core against the alternatives it replaces.
//!
//! Every scenario runs the same trivial handler (it bumps one shared
//! atomic), so what is measured is the cost of moving work from a queue to
//! a running slot, not the work. Six implementations take part, each with
//! `max_running` (N) slots:
//!
//! - `manager`: [`filesrv::Manager`] with the [`Unbounded`] policy, N
//!   reused worker threads;
//! - `crossbeam`: an unbounded crossbeam channel feeding N worker threads,
//!   the floor for this design (no admission, no bookkeeping);
//! - `counted`: the same channel plus one packed running/waiting count
//!   that the submitter and the workers both change: the floor of any
//!   design whose admission sees exact counts, as the manager's does;
//! - `threadpool`: the `threadpool` crate with N threads, what Rust users
//!   pick today;
//! - `spawn`: a queue and a dispatcher that starts one new thread per job,
//!   at most N at once: the alternative to reusing workers;
//! - `polling`: the lab's design, faithfully: a manager thread that every
//!   tick reaps finished handler threads from its running set, starts one
//!   thread per waiting handler while fewer than N run, then sleeps. The
//!   lab sleeps 1 s per tick; this bench sleeps 1 ms, so it flatters the
//!   lab by about 1000x and still comes last.
//!
//! # Scenarios (one criterion group each)
//!
//! - `throughput_prefilled`: N handlers that hold every slot are queued
//!   first, then the jobs; the clock starts when the holders are released
//!   and stops when the last job has run. Pure queue-to-slot speed.
//! - `throughput_arriving`: the jobs are submitted one by one from the
//!   bench thread while the workers run, so workers drain the queue, park
//!   and are woken again; the clock runs from the first submission to the
//!   last job's end.
//! - `handoff_backlog`: hand-off latency with a backlog, from a running
//!   handler's end to the start of the waiting handler that takes its slot.
//!   Each handler stamps its start and end; with N slots the k-th start
//!   (in time order) was made possible by the k-th end, so the latency is
//!   `start[k] - end[k]` over the sorted stamps (exact for N = 1).
//! - `handoff_idle`: wake latency of an idle manager: every worker parked
//!   (the bench sleeps 1 to 2 ms, at random, between samples), one handler
//!   submitted; the latency runs from just before `submit` to the
//!   handler's first line.
//!
//! Both throughput groups report elements per second
//! ([`Throughput::Elements`]). The hand-off groups return the summed
//! latencies to criterion, so criterion's "time" is the mean hand-off;
//! percentiles are printed after each benchmark as
//! `handoff/backlog manager max_running=1: p50=… p99=… (n=…)` and, under
//! `cargo bench`, also written to `<target>/criterion/admission-handoff.csv`.
//!
//! The `polling` and `spawn` baselines run far fewer jobs per iteration
//! (they are 100x to 1000x slower), so that test mode (`cargo test
//! --benches`, one iteration of everything) stays within seconds.
//!
//! Run with `cargo bench --bench admission`; docs/BENCHMARKS.md has the
//! figures.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};
use crossbeam_channel::Sender;
use filesrv::admission::Unbounded;
use filesrv::{Handler, HandlerContext, Manager, ManagerBuilder};

/// The `max_running` values every throughput scenario sweeps.
const SLOTS: [usize; 4] = [1, 2, 8, 64];

/// Jobs per iteration for the implementations that reuse threads: about
/// 2 ms even for the raw channel (50 M jobs/s on 2 vCPUs), 10-20 ms for the
/// rest, well above timer noise.
const JOBS: u64 = 100_000;

/// Jobs per iteration for `spawn` (30-40 k jobs/s).
const SPAWN_JOBS: u64 = 2_000;

/// Jobs per iteration and per slot for `polling` (one tick is 1 ms).
const POLL_JOBS_PER_SLOT: u64 = 32;

/// The polling baseline's tick. The lab's is 1 s.
const POLL_TICK: Duration = Duration::from_millis(1);

/// How long the idle hand-off waits, at least, before each sample so that
/// every worker has stopped spinning and parked (plus up to as much again,
/// at random).
const PARK: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------
// The work

/// What one queued job does. Every implementation runs the same jobs.
#[derive(Clone, Copy, Debug)]
enum Job {
    /// The trivial handler: bump the tally.
    Bump,
    /// Hold a slot until the gate opens. With `Some(i)`, stamp the end in
    /// `STAMPS[i]` and bump the tally.
    Hold(Option<u32>),
    /// Stamp the start and the end in `STAMPS[i]`, then bump the tally.
    Stamp(u32),
}

impl Job {
    fn work(self) {
        match self {
            Job::Bump => TALLY.bump(),
            Job::Hold(end) => {
                GATE.hold();
                if let Some(i) = end {
                    STAMPS[i as usize].end.store(now_ns(), Ordering::Relaxed);
                    TALLY.bump();
                }
            }
            Job::Stamp(i) => {
                let stamp = &STAMPS[i as usize];
                stamp.start.store(now_ns(), Ordering::Relaxed);
                stamp.end.store(now_ns(), Ordering::Relaxed);
                TALLY.bump();
            }
        }
    }
}

impl Handler for Job {
    fn run(self, _ctx: &HandlerContext) -> io::Result<()> {
        self.work();
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts finished jobs and wakes the bench thread when the last one ends.
struct Tally {
    done: AtomicU64,
    target: AtomicU64,
    finished: Mutex<bool>,
    wake: Condvar,
}

static TALLY: Tally = Tally {
    done: AtomicU64::new(0),
    target: AtomicU64::new(0),
    finished: Mutex::new(false),
    wake: Condvar::new(),
};

impl Tally {
    /// Expects `jobs` bumps; call before submitting them.
    fn arm(&self, jobs: u64) {
        *lock(&self.finished) = false;
        self.done.store(0, Ordering::SeqCst);
        self.target.store(jobs, Ordering::SeqCst);
    }

    fn bump(&self) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.target.load(Ordering::Relaxed) {
            *lock(&self.finished) = true;
            self.wake.notify_all();
        }
    }

    /// Blocks until every expected job has bumped.
    fn wait(&self) {
        let mut finished = lock(&self.finished);
        while !*finished {
            finished = self
                .wake
                .wait(finished)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Holds every slot closed while the queue fills.
struct Gate {
    state: Mutex<GateState>,
    wake: Condvar,
}

struct GateState {
    /// Bumped by [`Gate::open`]; a holder waits for it to change.
    generation: u64,
    /// Holders that arrived since [`Gate::arm`].
    held: usize,
}

static GATE: Gate = Gate {
    state: Mutex::new(GateState {
        generation: 0,
        held: 0,
    }),
    wake: Condvar::new(),
};

impl Gate {
    fn arm(&self) {
        lock(&self.state).held = 0;
    }

    /// A holder: occupies its slot until the next [`Gate::open`].
    fn hold(&self) {
        let mut state = lock(&self.state);
        let generation = state.generation;
        state.held += 1;
        self.wake.notify_all();
        while state.generation == generation {
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Blocks until `n` holders have arrived since [`Gate::arm`].
    fn wait_held(&self, n: usize) {
        let mut state = lock(&self.state);
        while state.held < n {
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn open(&self) {
        lock(&self.state).generation += 1;
        self.wake.notify_all();
    }
}

/// A start and an end, in nanoseconds since [`now_ns`]'s epoch.
struct Stamp {
    start: AtomicU64,
    end: AtomicU64,
}

/// Stamps for one round of hand-offs; longer runs go in rounds.
const STAMP_CAP: usize = 1 << 16;

static STAMPS: [Stamp; STAMP_CAP] = [const {
    Stamp {
        start: AtomicU64::new(0),
        end: AtomicU64::new(0),
    }
}; STAMP_CAP];

fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

fn stamp_index(i: usize) -> u32 {
    u32::try_from(i).expect("stamp index below STAMP_CAP")
}

// ---------------------------------------------------------------------------
// The implementations

/// Something that runs queued jobs with at most N at a time.
trait Pool {
    fn submit(&self, job: Job);
}

impl Pool for Manager<Job, Unbounded> {
    fn submit(&self, job: Job) {
        Manager::submit(self, job).expect("the unbounded policy queues everything");
    }
}

fn manager(n: usize) -> Manager<Job, Unbounded> {
    ManagerBuilder::new(n)
        .admission(Unbounded)
        .name("bench")
        .build()
        .expect("start the manager")
}

/// The floor: an unbounded crossbeam channel feeding N workers.
struct ChannelPool {
    queue: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl ChannelPool {
    fn new(n: usize) -> ChannelPool {
        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        let workers = (0..n)
            .map(|_| {
                let jobs = jobs.clone();
                thread::spawn(move || jobs.iter().for_each(Job::work))
            })
            .collect();
        ChannelPool {
            queue: Some(queue),
            workers,
        }
    }
}

impl Pool for ChannelPool {
    fn submit(&self, job: Job) {
        if let Some(queue) = &self.queue {
            queue.send(job).expect("workers outlive the pool");
        }
    }
}

impl Drop for ChannelPool {
    fn drop(&mut self) {
        drop(self.queue.take());
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// The floor of any design that keeps an exact running and waiting
/// count: the raw channel plus one packed counts word that the submitter
/// and the workers both change (one read-modify-write per job on each
/// side, as the manager does when a worker takes its next handler at
/// once).
struct CountedPool {
    pool: ChannelPool,
    counts: Arc<AtomicU64>,
}

const COUNT_WAITING: u64 = 1;
const COUNT_RUNNING: u64 = 1 << 32;

impl CountedPool {
    fn new(n: usize) -> CountedPool {
        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        let counts = Arc::new(AtomicU64::new(0));
        let workers = (0..n)
            .map(|_| {
                let jobs = jobs.clone();
                let counts = counts.clone();
                thread::spawn(move || {
                    let mut ran = false;
                    loop {
                        let next = if ran { jobs.try_recv().ok() } else { None };
                        let job = match next {
                            Some(job) => {
                                counts.fetch_sub(COUNT_WAITING, Ordering::SeqCst);
                                job
                            }
                            None => {
                                if ran {
                                    counts.fetch_sub(COUNT_RUNNING, Ordering::SeqCst);
                                }
                                let Ok(job) = jobs.recv() else { return };
                                counts.fetch_add(COUNT_RUNNING - COUNT_WAITING, Ordering::SeqCst);
                                job
                            }
                        };
                        job.work();
                        ran = true;
                    }
                })
            })
            .collect();
        CountedPool {
            pool: ChannelPool {
                queue: Some(queue),
                workers,
            },
            counts,
        }
    }
}

impl Pool for CountedPool {
    fn submit(&self, job: Job) {
        self.counts.fetch_add(COUNT_WAITING, Ordering::SeqCst);
        self.pool.submit(job);
    }
}

/// The `threadpool` crate. Its threads exit once the pool is dropped but
/// cannot be joined from outside; [`ThreadPool::join`] waits for the queue.
///
/// [`ThreadPool::join`]: threadpool::ThreadPool::join
impl Pool for threadpool::ThreadPool {
    fn submit(&self, job: Job) {
        self.execute(move || job.work());
    }
}

/// A counting semaphore for `spawn`'s running slots.
struct Permits {
    running: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

impl Permits {
    fn acquire(&self) {
        let mut running = lock(&self.running);
        while *running >= self.max {
            running = self
                .freed
                .wait(running)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *running += 1;
    }

    fn release(&self) {
        *lock(&self.running) -= 1;
        self.freed.notify_one();
    }
}

/// One new thread per job: a dispatcher takes jobs in order from the queue
/// and starts each on a thread of its own once fewer than N run. Finished
/// threads are joined as the dispatcher goes.
struct SpawnPool {
    queue: Option<Sender<Job>>,
    dispatcher: Option<JoinHandle<()>>,
}

impl SpawnPool {
    fn new(n: usize) -> SpawnPool {
        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        let permits = Arc::new(Permits {
            running: Mutex::new(0),
            freed: Condvar::new(),
            max: n,
        });
        let dispatcher = thread::spawn(move || {
            let mut threads: VecDeque<JoinHandle<()>> = VecDeque::new();
            for job in jobs {
                permits.acquire();
                let permits = permits.clone();
                threads.push_back(thread::spawn(move || {
                    job.work();
                    permits.release();
                }));
                while threads.front().is_some_and(JoinHandle::is_finished) {
                    if let Some(done) = threads.pop_front() {
                        let _ = done.join();
                    }
                }
            }
            for thread in threads {
                let _ = thread.join();
            }
        });
        SpawnPool {
            queue: Some(queue),
            dispatcher: Some(dispatcher),
        }
    }
}

impl Pool for SpawnPool {
    fn submit(&self, job: Job) {
        if let Some(queue) = &self.queue {
            queue.send(job).expect("the dispatcher outlives the pool");
        }
    }
}

impl Drop for SpawnPool {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(dispatcher) = self.dispatcher.take() {
            let _ = dispatcher.join();
        }
    }
}

/// The lab's manager: a queue and a running set of threads, polled.
struct PollingPool {
    shared: Arc<PollShared>,
    manager: Option<JoinHandle<()>>,
}

struct PollShared {
    queue: Mutex<VecDeque<Job>>,
    closing: AtomicBool,
}

impl PollingPool {
    fn new(n: usize) -> PollingPool {
        let shared = Arc::new(PollShared {
            queue: Mutex::new(VecDeque::new()),
            closing: AtomicBool::new(false),
        });
        let polled = shared.clone();
        let manager = thread::spawn(move || {
            let mut running: Vec<JoinHandle<()>> = Vec::new();
            loop {
                // Reap the handlers that ended since the last tick.
                let mut i = 0;
                while i < running.len() {
                    if running[i].is_finished() {
                        let _ = running.swap_remove(i).join();
                    } else {
                        i += 1;
                    }
                }
                // Start waiting handlers while slots are free.
                while running.len() < n {
                    let Some(job) = lock(&polled.queue).pop_front() else {
                        break;
                    };
                    running.push(thread::spawn(move || job.work()));
                }
                if polled.closing.load(Ordering::SeqCst)
                    && running.is_empty()
                    && lock(&polled.queue).is_empty()
                {
                    return;
                }
                thread::sleep(POLL_TICK);
            }
        });
        PollingPool {
            shared,
            manager: Some(manager),
        }
    }
}

impl Pool for PollingPool {
    fn submit(&self, job: Job) {
        lock(&self.shared.queue).push_back(job);
    }
}

impl Drop for PollingPool {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(manager) = self.manager.take() {
            let _ = manager.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Drivers: one iteration of each scenario

/// Queues `jobs` behind N holders, releases them, and times the drain.
fn prefilled(pool: &impl Pool, n: usize, jobs: u64) -> Duration {
    TALLY.arm(jobs);
    GATE.arm();
    for _ in 0..n {
        pool.submit(Job::Hold(None));
    }
    GATE.wait_held(n);
    for _ in 0..jobs {
        pool.submit(Job::Bump);
    }
    let start = Instant::now();
    GATE.open();
    TALLY.wait();
    start.elapsed()
}

/// Submits `jobs` one by one while the workers run them.
fn arriving(pool: &impl Pool, jobs: u64) -> Duration {
    TALLY.arm(jobs);
    let start = Instant::now();
    for _ in 0..jobs {
        pool.submit(Job::Bump);
    }
    TALLY.wait();
    start.elapsed()
}

/// Measures `m` hand-offs with a backlog of `m` waiting handlers behind N
/// holders; appends each latency in nanoseconds to `out`.
fn backlog_round(pool: &impl Pool, n: usize, m: usize, out: &mut Vec<u64>) {
    assert!(n + m <= STAMP_CAP);
    TALLY.arm((n + m) as u64);
    GATE.arm();
    for i in 0..n {
        pool.submit(Job::Hold(Some(stamp_index(i))));
    }
    GATE.wait_held(n);
    for i in n..n + m {
        pool.submit(Job::Stamp(stamp_index(i)));
    }
    GATE.open();
    TALLY.wait();
    let mut ends: Vec<u64> = STAMPS[..n + m]
        .iter()
        .map(|s| s.end.load(Ordering::Relaxed))
        .collect();
    let mut starts: Vec<u64> = STAMPS[n..n + m]
        .iter()
        .map(|s| s.start.load(Ordering::Relaxed))
        .collect();
    ends.sort_unstable();
    starts.sort_unstable();
    out.extend(starts.iter().zip(&ends).map(|(s, e)| s.saturating_sub(*e)));
}

/// One wake-up of an idle pool: submit→start in nanoseconds.
fn idle_round(pool: &impl Pool) -> u64 {
    thread::sleep(PARK + jitter(PARK));
    TALLY.arm(1);
    let submitted = now_ns();
    pool.submit(Job::Stamp(0));
    TALLY.wait();
    STAMPS[0]
        .start
        .load(Ordering::Relaxed)
        .saturating_sub(submitted)
}

/// A pseudo-random duration below `max` (xorshift), so that idle samples
/// do not fall into step with the polling baseline's tick.
fn jitter(max: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = STATE.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(x % max_ns)
}

fn sum_ns(samples: &[u64]) -> Duration {
    Duration::from_nanos(samples.iter().sum())
}

// ---------------------------------------------------------------------------
// Reporting hand-off percentiles

/// The nearest-rank `p`-th percentile of sorted, non-empty samples.
fn percentile(sorted: &[u64], p: usize) -> u64 {
    let last = sorted.len() - 1;
    sorted[(p * last + 50) / 100]
}

fn micros(ns: u64) -> String {
    format!("{:.2} us", ns as f64 / 1000.0)
}

/// Prints one percentile line and, under `cargo bench`, appends it to the
/// CSV beside criterion's own output.
fn report(scenario: &str, implementation: &str, n: usize, samples: &mut [u64]) {
    if samples.is_empty() {
        return; // filtered out
    }
    samples.sort_unstable();
    let (p50, p90, p99, max) = (
        percentile(samples, 50),
        percentile(samples, 90),
        percentile(samples, 99),
        samples[samples.len() - 1],
    );
    println!(
        "handoff/{scenario} {implementation} max_running={n}: p50={} p90={} p99={} max={} (n={})",
        micros(p50),
        micros(p90),
        micros(p99),
        micros(max),
        samples.len()
    );
    if std::env::args().any(|a| a == "--bench") {
        let mut row = String::new();
        let _ = writeln!(
            row,
            "{scenario},{implementation},{n},{},{p50},{p90},{p99},{max}",
            samples.len()
        );
        if let Err(e) = append_csv(&row) {
            eprintln!("cannot write the hand-off CSV: {e}");
        }
    }
}

/// `<target>/criterion/admission-handoff.csv`, truncated on first use.
fn append_csv(row: &str) -> io::Result<()> {
    use std::io::Write;
    static FILE: OnceLock<Mutex<Option<std::fs::File>>> = OnceLock::new();
    let file = FILE.get_or_init(|| {
        // The bench binary lives in <target>/<profile>/deps/.
        let dir = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")));
        let file = dir.and_then(|dir| {
            std::fs::create_dir_all(&dir).ok()?;
            let mut file = std::fs::File::create(dir.join("admission-handoff.csv")).ok()?;
            writeln!(
                file,
                "scenario,implementation,max_running,n,p50_ns,p90_ns,p99_ns,max_ns"
            )
            .ok()?;
            Some(file)
        });
        Mutex::new(file)
    });
    match &mut *lock(file) {
        Some(file) => file.write_all(row.as_bytes()),
        None => Err(io::Error::other("no criterion directory")),
    }
}

// ---------------------------------------------------------------------------
// Benchmarks

/// Runs a throughput scenario for one implementation at one N.
fn throughput<P: Pool>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    n: usize,
    jobs: u64,
    prefill: bool,
    make: impl FnOnce(usize) -> P,
) {
    let pool = make(n);
    group.throughput(Throughput::Elements(jobs));
    group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    if prefill {
                        prefilled(&pool, n, jobs)
                    } else {
                        arriving(&pool, jobs)
                    }
                })
                .sum()
        });
    });
}

fn throughput_group(c: &mut Criterion, prefill: bool) {
    let mut group = c.benchmark_group(if prefill {
        "throughput_prefilled"
    } else {
        "throughput_arriving"
    });
    // Iterations take 5 to 100 ms: a few of them per sample is plenty.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    for n in SLOTS {
        throughput(&mut group, "manager", n, JOBS, prefill, manager);
        throughput(&mut group, "crossbeam", n, JOBS, prefill, ChannelPool::new);
        throughput(&mut group, "counted", n, JOBS, prefill, CountedPool::new);
        throughput(
            &mut group,
            "threadpool",
            n,
            JOBS,
            prefill,
            threadpool::ThreadPool::new,
        );
        throughput(&mut group, "spawn", n, SPAWN_JOBS, prefill, SpawnPool::new);
        let poll_jobs = POLL_JOBS_PER_SLOT * n as u64;
        throughput(
            &mut group,
            "polling",
            n,
            poll_jobs,
            prefill,
            PollingPool::new,
        );
    }
    group.finish();
}

fn throughput_prefilled(c: &mut Criterion) {
    throughput_group(c, true);
}

fn throughput_arriving(c: &mut Criterion) {
    throughput_group(c, false);
}

/// Hand-off latency with a backlog for one implementation at one N.
fn backlog<P: Pool>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    n: usize,
    make: impl FnOnce(usize) -> P,
) {
    let pool = make(n);
    let mut samples = Vec::new();
    group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
        b.iter_custom(|iters| {
            let mut round = Vec::new();
            let mut left = usize::try_from(iters).unwrap_or(usize::MAX);
            while left > 0 {
                let m = left.min(STAMP_CAP - n);
                backlog_round(&pool, n, m, &mut round);
                left -= m;
            }
            samples.extend_from_slice(&round);
            sum_ns(&round)
        });
    });
    report("backlog", name, n, &mut samples);
}

fn handoff_backlog(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff_backlog");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for n in SLOTS {
        backlog(&mut group, "manager", n, manager);
        backlog(&mut group, "crossbeam", n, ChannelPool::new);
        backlog(&mut group, "threadpool", n, threadpool::ThreadPool::new);
    }
    // The other thread strategies, for contrast; a hand-off there is a
    // thread start (spawn) or up to a tick (polling).
    backlog(&mut group, "spawn", 1, SpawnPool::new);
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    backlog(&mut group, "polling", 1, PollingPool::new);
    group.finish();
}

/// Wake latency of one idle implementation at one N.
fn idle<P: Pool>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    n: usize,
    make: impl FnOnce(usize) -> P,
) {
    let pool = make(n);
    let mut samples = Vec::new();
    group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter_custom(|iters| {
            let round: Vec<u64> = (0..iters).map(|_| idle_round(&pool)).collect();
            samples.extend_from_slice(&round);
            sum_ns(&round)
        });
    });
    report("idle", name, n, &mut samples);
}

fn handoff_idle(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff_idle");
    // Each sample sleeps 1.5 ms on average first: about 1,300 samples.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for n in [1, 8, 64] {
        idle(&mut group, "manager", n, manager);
        idle(&mut group, "crossbeam", n, ChannelPool::new);
    }
    idle(&mut group, "threadpool", 1, threadpool::ThreadPool::new);
    idle(&mut group, "spawn", 1, SpawnPool::new);
    group.measurement_time(Duration::from_secs(1));
    idle(&mut group, "polling", 1, PollingPool::new);
    group.finish();
}

criterion_group!(
    benches,
    throughput_prefilled,
    throughput_arriving,
    handoff_backlog,
    handoff_idle
);
criterion_main!(benches);
