//! A thread-based TCP server core with bounded concurrency, and a hardened
//! file server built on it.
//!
//! # The three roles
//!
//! - A [`Handler`] is the work for one client. The accepting thread builds
//!   one per connection but does not start it.
//! - An [`Admission`] policy looks at every arriving handler and decides:
//!   queue it ([`Decision::Queue`], optionally with a deadline) or refuse
//!   it ([`Decision::Refuse`]) as busy or unavailable.
//! - The [`Manager`] keeps the waiting queue (FIFO) and the running set,
//!   never runs more than `max_running` handlers at once, and starts the
//!   next waiting handler the moment a running one ends.
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
//! use filesrv::{ManagerBuilder, MaxWaiting, handler_fn};
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
//! [`MaxWaiting`]`(1024)`, so at most 1024 handlers wait beyond the running
//! slots, and a submission past that comes back as [`Refused`] for the
//! caller to answer (the file server writes `ERR busy`). [`PerSourceCap`]
//! keeps one address from taking every place, and [`QueueTimeout`] refuses
//! a handler the moment it has waited too long. Policies combine with
//! [`Admission::and`].
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
//! - `handler`, `admission` and `manager`: the core, which knows nothing
//!   of files or protocols;
//! - [`protocol`]: the file-transfer protocol, in three layers that sit
//!   in their own folders: `wire` (the format both ends speak), `server`
//!   and `client`;
//! - `util`: crate-private helpers both layers use.
#![deny(missing_docs)]

mod admission;
mod handler;
mod manager;
pub mod protocol;
mod util;

pub use admission::{
    Admission, And, Arrival, Decision, Departure, Key, MaxWaiting, Outcome, PerSourceCap,
    QueueTimeout, Refusal, Unbounded,
};
pub use handler::{BoxHandler, FnHandler, Handler, HandlerContext, Stop, handler_fn};
pub use manager::{MakeRoom, Manager, ManagerBuilder, Refused, RunningInfo, ShutdownReport, Stats};
pub use protocol::LingeringCloser;
