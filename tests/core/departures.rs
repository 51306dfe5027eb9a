//! Admission that sees keys and departures: every admitted handler
//! departs exactly once, whatever its path (done, failed, panicked,
//! expired, abandoned at the head or by a hang-up, refused by a
//! shutdown); nothing refused at the door departs; `PerKeyCap` is an
//! ordinary policy whose counts come back to zero; IPv6 sources are
//! grouped by prefix.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use filesrv::admission::{And, Arrival, Decision, Departure, Outcome, PerKeyCap};
use filesrv::{Admission, Handler, HandlerContext, Key, Manager, ManagerBuilder, Refusal};

use crate::support::LIMIT;

/// Keys that steer [`Counting`]: queued with a deadline already past, or
/// refused at the door.
const EXPIRE: Key = Key::Class(1);
const REFUSE: Key = Key::Class(2);
/// The key every other job gives.
const PLAIN: Key = Key::Class(0);

/// What the policy was told.
#[derive(Default)]
struct Log {
    admitted: Vec<u64>,
    departed: HashMap<u64, Vec<Outcome>>,
}

/// A policy that records every admission and departure and reports each
/// departure on a channel.
struct Counting {
    log: Arc<Mutex<Log>>,
    departures: Sender<Departure>,
}

impl Admission for Counting {
    fn decide(&mut self, a: &Arrival) -> Decision {
        match a.key {
            Some(EXPIRE) => Decision::QueueUntil(a.now),
            Some(REFUSE) => Decision::Refuse(Refusal::Overloaded),
            _ => Decision::Queue,
        }
    }
    fn admitted(&mut self, a: &Arrival) {
        self.log.lock().unwrap().admitted.push(a.id);
    }
    fn departed(&mut self, d: &Departure) {
        let mut log = self.log.lock().unwrap();
        log.departed.entry(d.id).or_default().push(d.outcome);
        let _ = self.departures.send(*d);
    }
}

enum Act {
    Done,
    Fail,
    Panic,
    /// Abandoned when it reaches the head.
    Gone,
    /// Holds its slot until released or asked to stop.
    Hold {
        started: Sender<()>,
        release: (Sender<()>, Receiver<()>),
    },
    /// Watched while it waits; abandoned once its client hung up.
    Watched(TcpStream),
}

struct Job {
    act: Act,
    key: Key,
}

fn job(act: Act) -> Job {
    Job { act, key: PLAIN }
}

impl Handler for Job {
    fn run(self, ctx: &HandlerContext) -> io::Result<()> {
        match self.act {
            Act::Fail => Err(io::Error::other("failed on purpose")),
            Act::Panic => panic!("panicked on purpose"),
            Act::Hold { started, release } => {
                let wake = release.0.clone();
                ctx.on_stop(move |_| {
                    let _ = wake.try_send(());
                });
                started.send(()).unwrap();
                release.1.recv_timeout(LIMIT).expect("released");
                Ok(())
            }
            _ => Ok(()),
        }
    }
    fn key(&self) -> Option<Key> {
        Some(self.key)
    }
    fn is_abandoned(&self) -> bool {
        match &self.act {
            Act::Gone => true,
            Act::Watched(stream) => stream.peek(&mut [0]).map_or(true, |n| n == 0),
            _ => false,
        }
    }
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        match &self.act {
            Act::Watched(stream) => Some(stream.as_fd()),
            _ => None,
        }
    }
}

/// A job holding the only slot, its start already seen, and the sender
/// that releases it.
fn hold(manager: &Manager<Job, Policy>) -> Sender<()> {
    let (started, on_start) = bounded(1);
    let release = bounded(1);
    let releaser = release.0.clone();
    submit(manager, job(Act::Hold { started, release }));
    on_start.recv_timeout(LIMIT).expect("the holder starts");
    releaser
}

type Policy = And<Counting, PerKeyCap>;

fn submit(manager: &Manager<Job, Policy>, job: Job) {
    manager.submit(job).map_err(|r| r.reason()).unwrap();
}

/// Waits for the next departure.
fn next(departures: &Receiver<Departure>) -> Departure {
    departures.recv_timeout(LIMIT).expect("a departure")
}

#[test]
fn every_admitted_handler_departs_exactly_once() {
    let log = Arc::new(Mutex::new(Log::default()));
    let (tx, departures) = unbounded();
    let policy = Counting {
        log: log.clone(),
        departures: tx,
    }
    .and(PerKeyCap::new(100));
    let manager: Manager<Job, Policy> = ManagerBuilder::new(1).admission(policy).build().unwrap();

    // Refused at the door: neither admitted nor departed.
    let refused = manager.submit(Job {
        act: Act::Done,
        key: REFUSE,
    });
    assert_eq!(refused.unwrap_err().reason(), Refusal::Overloaded);

    let release = hold(&manager);
    for act in [Act::Done, Act::Fail, Act::Panic, Act::Gone] {
        submit(&manager, job(act));
    }
    // Its deadline passes while it waits.
    submit(
        &manager,
        Job {
            act: Act::Done,
            key: EXPIRE,
        },
    );
    let d = next(&departures);
    assert_eq!(d.outcome, Outcome::Refused(Refusal::QueueTimeout));
    assert_eq!(d.key, Some(EXPIRE));
    // Its client hangs up while it waits: the watcher takes it out.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server_side, _) = listener.accept().unwrap();
    submit(&manager, job(Act::Watched(server_side)));
    drop(client);
    assert_eq!(next(&departures).outcome, Outcome::Abandoned);

    release.send(()).unwrap();
    let mut outcomes: Vec<Outcome> = (0..5).map(|_| next(&departures).outcome).collect();
    assert!(manager.wait_idle_timeout(LIMIT));
    // A departure is told before the manager looks idle.
    assert!(departures.try_recv().is_err());
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        [
            Outcome::Abandoned,
            Outcome::Completed,
            Outcome::Completed,
            Outcome::Failed,
            Outcome::Panicked
        ]
    );

    // Waiting when a shutdown begins: refused, and told so; the holder,
    // asked to stop, completes.
    let _release = hold(&manager);
    for _ in 0..3 {
        submit(&manager, job(Act::Done));
    }
    let report = manager.shutdown(LIMIT);
    assert_eq!(report.refused_waiting, 3);
    let after = manager.submit(job(Act::Done));
    assert_eq!(after.unwrap_err().reason(), Refusal::ShuttingDown);

    let log = log.lock().unwrap();
    let stats = manager.stats();
    assert_eq!(log.admitted.len() as u64, stats.admitted);
    assert_eq!(log.admitted.len(), 11);
    for id in &log.admitted {
        let told = log.departed.get(id).map_or(0, Vec::len);
        assert_eq!(told, 1, "handler {id} departed {told} times");
    }
    assert_eq!(log.departed.len(), log.admitted.len());
    let shut: usize = log
        .departed
        .values()
        .flatten()
        .filter(|o| **o == Outcome::Refused(Refusal::ShuttingDown))
        .count();
    assert_eq!(shut, 3);
    drop(log);
    assert_eq!(manager.with_policy(|p| p.1.count(&PLAIN)), 0);
    assert_eq!(manager.with_policy(|p| p.1.count(&EXPIRE)), 0);
}

/// A source-keyed job that holds its slot until released.
struct FromSource {
    source: IpAddr,
    release: Receiver<()>,
}

impl Handler for FromSource {
    fn run(self, _: &HandlerContext) -> io::Result<()> {
        let _ = self.release.recv_timeout(LIMIT);
        Ok(())
    }
    fn source(&self) -> Option<IpAddr> {
        Some(self.source)
    }
}

#[test]
fn ipv6_sources_share_a_cap_by_prefix() {
    for (prefix, second) in [(64, Err(Refusal::SourceLimit)), (128, Ok(()))] {
        let manager = ManagerBuilder::new(2)
            .admission(PerKeyCap::new(1))
            .ipv6_prefix(prefix)
            .build()
            .unwrap();
        let (release, rx) = bounded::<()>(0);
        let one = |ip: &str| FromSource {
            source: ip.parse().unwrap(),
            release: rx.clone(),
        };
        manager.submit(one("2001:db8:1:2::10")).unwrap();
        let got = manager.submit(one("2001:db8:1:2:ffff::20"));
        assert_eq!(got.map_err(|r| r.reason()), second, "/{prefix}");
        // Another /64 is another key either way.
        manager.submit(one("2001:db8:1:3::10")).unwrap();
        drop(release);
        assert!(manager.wait_idle_timeout(LIMIT));
        let key = Key::from_source("2001:db8:1:2::10".parse().unwrap(), prefix);
        assert_eq!(manager.with_policy(|p| p.count(&key)), 0);
    }
}

/// Panics when told of the first departure.
struct PanicsOnce(bool);

impl Admission for PanicsOnce {
    fn decide(&mut self, _: &Arrival) -> Decision {
        Decision::Queue
    }
    fn departed(&mut self, _: &Departure) {
        if !self.0 {
            self.0 = true;
            panic!("departed panicked on purpose");
        }
    }
}

#[test]
fn a_policy_panicking_in_departed_costs_nothing_else() {
    let manager = ManagerBuilder::new(1)
        .admission(PanicsOnce(false))
        .build()
        .unwrap();
    // Three, then one more: the worker survived the panic.
    for (jobs, completed) in [(3, 3), (1, 4)] {
        for _ in 0..jobs {
            let queued = manager.submit(job(Act::Done));
            queued.map_err(|r| r.reason()).unwrap();
        }
        assert!(manager.wait_idle_timeout(LIMIT));
        assert_eq!(manager.stats().completed, completed);
        assert!(manager.with_policy(|p| p.0));
    }
    assert_eq!(manager.shutdown(LIMIT).cut, 0);
}
