//! What counting one answered request costs the server, before and after
//! the table of atomics (`src/protocol/server/request_counts.rs`).
//!
//! - `family`: the counting the server did before: a
//!   `prometheus_client` family of counters keyed by a (verb, result)
//!   label set, found under the family's read lock and a hash lookup, then
//!   incremented;
//! - `table`: the server's own counting code, compiled into this bench
//!   (it is crate-private): an index and an atomic add.
//!
//! Each is measured on one thread, and on two threads counting the same
//! pair at once (as two sessions serving GETs do).
//!
//! `stats_snapshot`: what one `Server::stats()` costs, for the transfer
//! bench's `stats` scenario (the snapshot read on every request).
//!
//! `cargo bench --bench metrics`; plain `cargo test` runs each once.
//! docs/BENCHMARKS.md has the figures.

use std::hint::black_box;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use filesrv::protocol::{Server, ServerConfig};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// The paths the counting code names its types by (`crate::protocol`).
mod protocol {
    pub(crate) use filesrv::protocol::{ErrorCode, Request};
    #[cfg(test)]
    pub(crate) use filesrv::protocol::{Password, RelPath};
}

/// The server's counting code itself, not a copy; what it has for the
/// scrape is not measured here, and its unit tests (compiled, not run,
/// under `cargo test`) belong to the library's.
#[allow(dead_code, unused_imports)]
#[path = "../src/protocol/server/request_counts.rs"]
mod request_counts;

use protocol::{ErrorCode, Request};
use request_counts::{Answer, RequestCounts};

/// The label set the family was keyed by.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    verb: &'static str,
    result: &'static str,
}

/// How the server counted a request before the table.
fn family_count(family: &Family<Labels, Counter>, request: Option<&Request>, answer: Answer) {
    let verb = request.map_or("invalid", Request::verb);
    let labels = Labels {
        verb,
        result: answer.as_str(),
    };
    family.get_or_create(&labels).inc();
}

/// A family as a running server has it: a few pairs already counted.
fn warm_family(request: &Request) -> Family<Labels, Counter> {
    let family = Family::default();
    for answer in [
        Answer::Ok,
        Answer::Err(ErrorCode::NotFound),
        Answer::Err(ErrorCode::Range),
    ] {
        family_count(&family, Some(request), answer);
        family_count(&family, Some(&Request::Quit), answer);
    }
    family
}

fn get() -> Request {
    Request::Get {
        path: "s/001.bin".parse().expect("a valid path"),
        offset: None,
    }
}

/// `iters` counts on each of `threads` threads at once: the wall time.
fn on_threads(threads: usize, iters: u64, count: &(dyn Fn() + Sync)) -> Duration {
    thread::scope(|scope| {
        let began = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    for _ in 0..iters {
                        count();
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("a counting thread panicked");
        }
        began.elapsed()
    })
}

fn count_request(c: &mut Criterion) {
    let request = get();
    let family = warm_family(&request);
    let table = RequestCounts::default();
    let mut group = c.benchmark_group("count_request");
    group.bench_function("family", |b| {
        b.iter(|| family_count(&family, Some(black_box(&request)), black_box(Answer::Ok)));
    });
    group.bench_function("table", |b| {
        b.iter(|| table.count(Some(black_box(&request)), black_box(Answer::Ok)));
    });
    // Two threads: the time is per count on each thread.
    group.bench_function("family, 2 threads", |b| {
        b.iter_custom(|iters| {
            on_threads(2, iters, &|| {
                family_count(&family, Some(black_box(&request)), black_box(Answer::Ok));
            })
        });
    });
    group.bench_function("table, 2 threads", |b| {
        b.iter_custom(|iters| {
            on_threads(2, iters, &|| {
                table.count(Some(black_box(&request)), black_box(Answer::Ok));
            })
        });
    });
    group.finish();
}

/// What one [`Server::stats`] costs, the snapshot a per-request reader
/// (a balancer's agent, a session's log line) would take: on an idle
/// server with 1 and 64 workers (it sums every worker's counters), and on
/// two threads at once (they share the admission lock).
fn stats_snapshot(c: &mut Criterion) {
    let root = std::env::temp_dir().join(format!("filesrv-metrics-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("a temporary directory");
    let mut group = c.benchmark_group("stats_snapshot");
    for workers in [1, 64] {
        let config = ServerConfig::new(&root).max_running(workers);
        let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)
            .expect("a server on loopback");
        group.bench_function(format!("{workers} workers"), |b| {
            b.iter(|| black_box(server.stats()));
        });
        group.bench_function(format!("{workers} workers, 2 threads"), |b| {
            b.iter_custom(|iters| {
                on_threads(2, iters, &|| {
                    black_box(server.stats());
                })
            });
        });
        server.shutdown();
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&root);
}

criterion_group!(benches, count_request, stats_snapshot);
criterion_main!(benches);
