//! A thread-based TCP server core with bounded concurrency, and a hardened
//! file server built on it.
//!
//! # The three roles
//!
//! - A [`Handler`] is the work for one client. The accepting thread builds
//!   one per connection but does not start it.
//! - An [`Admission`] policy looks at every arriving handler and decides:
//!   queue it ([`Decision::Queue`](admission::Decision::Queue), optionally
//!   with a deadline) or refuse it
//!   ([`Decision::Refuse`](admission::Decision::Refuse)) as busy or
//!   unavailable. The ready-made policies are in [`admission`].
//! - The [`Manager`] keeps the waiting queue (FIFO) and the running set,
//!   never runs more than `max_running` handlers at once, and starts the
//!   next waiting handler the moment a running one ends.
//! - Optionally an [`Acceptor`] (a listener): idle workers then accept new
//!   connections themselves, with no thread handing them over
//!   ([`ManagerBuilder::build_with_acceptor`]).
//!
//! The file-transfer protocol of the bundled `filesrv` server is one
//! [`Handler`] among others; see the [`protocol`] module.
//!
//! # Example: a line-echo server
//!
//! ```
//! use std::io::{BufRead, BufReader, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::time::Duration;
//! use filesrv::admission::MaxWaiting;
//! use filesrv::{ManagerBuilder, handler_fn};
//!
//! # fn main() -> std::io::Result<()> {
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//! let manager = ManagerBuilder::new(2).admission(MaxWaiting(16)).build()?;
//!
//! let mut client = TcpStream::connect(addr)?;
//! let (stream, _) = listener.accept()?;
//! // Built now, run when a slot is free.
//! let echo = handler_fn(move |_ctx| {
//!     let mut line = String::new();
//!     BufReader::new(&stream).read_line(&mut line)?;
//!     (&stream).write_all(line.as_bytes())
//! });
//! manager.submit(echo).map_err(|refused| std::io::Error::other(refused.to_string()))?;
//!
//! client.write_all(b"hello\n")?;
//! let mut reply = String::new();
//! BufReader::new(&client).read_line(&mut reply)?;
//! assert_eq!(reply, "hello\n");
//!
//! let report = manager.shutdown(Duration::from_secs(1));
//! assert_eq!(report.cut, 0);
//! assert_eq!(manager.stats().completed, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Back-pressure
//!
//! Nothing is unbounded by default: [`ManagerBuilder::new`] starts with
//! [`MaxWaiting`](admission::MaxWaiting)`(1024)`, so at most 1024 handlers
//! wait beyond the running slots, and a submission past that comes back as
//! [`Refused`] for the caller to answer (the file server writes
//! `ERR busy`). [`PerKeyCap`](admission::PerKeyCap) keeps one address (or
//! any [`Key`]) from taking every place, and
//! [`QueueTimeout`](admission::QueueTimeout) refuses a handler the moment
//! it has waited too long. Policies combine with [`Admission::and`].
//!
//! # Writing a policy
//!
//! A policy sees each arrival ([`Arrival`](admission::Arrival): its
//! [`Key`], the running and waiting counts, the bound), may keep state,
//! and hears of every handler it let in twice: [`Admission::admitted`]
//! when it is queued and [`Admission::departed`] when it leaves, whatever
//! the way ([`Outcome`](admission::Outcome)).
//! All three run under the manager's admission lock, so counts kept there
//! are exact. [`Manager::with_policy`] reaches the policy of a running
//! manager (see [`Admission`] for a maintenance switch), and
//! [`Manager::set_max_running`] changes the bound.
//!
//! A keyed policy: at most two handlers per tenant, the tenant being the
//! key the handler gives ([`Handler::key`]; without one, the key is the
//! source address):
//!
//! ```
//! use std::collections::HashMap;
//! use filesrv::admission::{Admission, Arrival, Decision, Departure, Key, Refusal};
//! use filesrv::ManagerBuilder;
//! use filesrv::handler_fn;
//!
//! #[derive(Default)]
//! struct PerTenant {
//!     in_manager: HashMap<Key, usize>,
//! }
//!
//! impl Admission for PerTenant {
//!     fn decide(&mut self, a: &Arrival) -> Decision {
//!         let n = a.key.and_then(|k| self.in_manager.get(&k)).copied().unwrap_or(0);
//!         if n >= 2 { Decision::Refuse(Refusal::SourceLimit) } else { Decision::Queue }
//!     }
//!     fn admitted(&mut self, a: &Arrival) {
//!         *self.in_manager.entry(a.key.unwrap()).or_default() += 1;
//!     }
//!     fn departed(&mut self, d: &Departure) {
//!         let key = d.key.unwrap();
//!         *self.in_manager.get_mut(&key).unwrap() -= 1;
//!         if self.in_manager[&key] == 0 {
//!             self.in_manager.remove(&key);
//!         }
//!     }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let manager = ManagerBuilder::new(1).admission(PerTenant::default()).build()?;
//! let (release, held) = crossbeam_channel::bounded::<()>(0);
//! let tenant = |id, held: crossbeam_channel::Receiver<()>| {
//!     handler_fn(move |_| { let _ = held.recv(); Ok(()) }).with_key(Key::Class(id))
//! };
//! assert!(manager.submit(tenant(7, held.clone())).is_ok());
//! assert!(manager.submit(tenant(7, held.clone())).is_ok());
//! let third = manager.submit(tenant(7, held.clone())).unwrap_err();
//! assert_eq!(third.reason(), Refusal::SourceLimit);
//! assert!(manager.submit(tenant(8, held.clone())).is_ok()); // another tenant
//! drop(release);
//! manager.wait_idle();
//! // Every handler departed: the tenant's places are free again.
//! assert!(manager.submit(tenant(7, held)).is_ok());
//! # Ok(())
//! # }
//! ```
//!
//! The ready-made [`PerKeyCap`](admission::PerKeyCap) is this policy.
//!
//! A request-class policy: the queue is FIFO, so priority is given at the
//! door. Bulk requests (class 1) may hold at most half the places;
//! interactive ones (any other key) are refused only when every place is
//! taken:
//!
//! ```
//! use filesrv::admission::{Admission, Arrival, Decision, Departure, Key, Refusal};
//! use filesrv::ManagerBuilder;
//! use filesrv::handler_fn;
//!
//! const BULK: Key = Key::Class(1);
//!
//! struct Classes {
//!     places: usize,
//!     bulk: usize,
//! }
//!
//! impl Admission for Classes {
//!     fn decide(&mut self, a: &Arrival) -> Decision {
//!         let taken = a.running + a.waiting;
//!         if taken >= self.places || (a.key == Some(BULK) && self.bulk >= self.places / 2) {
//!             Decision::Refuse(Refusal::Overloaded)
//!         } else {
//!             Decision::Queue
//!         }
//!     }
//!     fn admitted(&mut self, a: &Arrival) {
//!         self.bulk += usize::from(a.key == Some(BULK));
//!     }
//!     fn departed(&mut self, d: &Departure) {
//!         self.bulk -= usize::from(d.key == Some(BULK));
//!     }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let manager = ManagerBuilder::new(1).admission(Classes { places: 4, bulk: 0 }).build()?;
//! let (release, held) = crossbeam_channel::bounded::<()>(0);
//! let request = |key, held: crossbeam_channel::Receiver<()>| {
//!     handler_fn(move |_| { let _ = held.recv(); Ok(()) }).with_key(key)
//! };
//! for _ in 0..2 {
//!     assert!(manager.submit(request(BULK, held.clone())).is_ok());
//! }
//! let refused = manager.submit(request(BULK, held.clone())).unwrap_err();
//! assert_eq!(refused.reason(), Refusal::Overloaded);
//! assert!(manager.submit(request(Key::Class(0), held.clone())).is_ok());
//! drop(release);
//! manager.wait_idle();
//! assert_eq!(manager.with_policy(|c| c.bulk), 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Waiting clients come first
//!
//! A handler that exposes its socket ([`Handler::socket`]) is watched
//! while it waits: a client that hangs up leaves the queue at once. With
//! [`ManagerBuilder::busy_idle_timeout`] and
//! [`ManagerBuilder::busy_session_limit`], running handlers past a limit
//! are asked to make room for waiting ones ([`MakeRoom`], through
//! [`HandlerContext::on_make_room`]), one per waiting handler; with
//! nobody waiting, nobody is asked.
//!
//! # Shutdown
//!
//! [`Manager::shutdown`] closes admission, refuses every waiting handler
//! ([`Handler::refused`] with [`Refusal::ShuttingDown`]), asks running
//! handlers to finish through the hooks they registered with
//! [`HandlerContext::on_stop`], cuts them when the grace period ends, and joins
//! every thread. No thread outlives the manager.
//!
//! # Timeouts
//!
//! One convention throughout: a blocking call comes in three forms, as
//! crossbeam's `recv`, `recv_timeout` and `recv_deadline` do
//! ([`Manager::wait_idle`], [`Manager::wait_idle_timeout`],
//! [`Manager::wait_idle_deadline`]; [`protocol::Client::connect`] and
//! [`protocol::Client::connect_timeout`]), and a timeout *setting* is an
//! `Option<Duration>` where `None` means no limit, as in
//! [`std::net::TcpStream::set_read_timeout`]. A zero never means "none";
//! only the `filesrv` command line, whose contract says so, maps `0` to
//! `None`.
//!
//! # Layout
//!
//! - `handler`, [`admission`] and `manager`: the core, which knows nothing
//!   of files or protocols;
//! - [`protocol`]: the file-transfer protocol, in three layers that sit
//!   in their own folders: `wire` (the format both ends speak), `server`
//!   and `client`;
//! - `util`: crate-private helpers both layers use.
#![deny(missing_docs)]

pub mod admission;
mod handler;
mod manager;
mod poller;
pub mod protocol;
mod util;

pub use admission::{Admission, Key, Refusal};
pub use handler::{BoxHandler, FnHandler, Handler, HandlerContext, Served, Stop, handler_fn};
pub use manager::{
    Acceptor, MakeRoom, Manager, ManagerBuilder, Refused, RunningInfo, ShutdownReport, Stats,
};

/// The README's code, compiled by `cargo test` so that it cannot drift
/// from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
