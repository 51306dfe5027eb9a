//! The [`Manager`]: a FIFO waiting queue, a bounded running set, and the
//! threads that move handlers from one to the other.
//!
//! Threads: `max_running` workers (`worker.rs`), one watcher
//! (`watcher.rs`) and, with an [`Acceptor`], one accepting thread
//! (`acceptor.rs`), started by [`ManagerBuilder::build`] and joined by
//! [`Manager::shutdown`]. What they share, and every step that moves a
//! handler, is in `shared.rs`, under one lock.

mod acceptor;
mod builder;
mod handle;
mod outcomes;
mod room;
mod shared;
mod slot;
mod watcher;
mod worker;

pub use acceptor::Acceptor;
pub use builder::ManagerBuilder;
pub use handle::Manager;
pub use outcomes::{Refused, ShutdownReport, Stats};
pub use room::MakeRoom;
pub(crate) use shared::Signals;
pub use slot::RunningInfo;
pub(crate) use slot::Slot;
