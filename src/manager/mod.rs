//! The [`Manager`]: a FIFO waiting queue, a bounded running set, and the
//! worker threads that move handlers from one to the other.
//!
//! Threads: `max_running` workers and one deadline thread, all started by
//! [`ManagerBuilder::build`] and joined by [`Manager::shutdown`]. A worker blocks
//! on the queue (a crossbeam channel); a handler arriving there wakes one
//! worker directly, and a worker that finishes takes the next handler at
//! once, so there is no polling anywhere.

mod builder;
mod deadline;
mod handle;
mod refused;
mod slot;
mod state;
mod stats;
mod worker;

pub use builder::ManagerBuilder;
pub use handle::Manager;
pub use refused::Refused;
pub use slot::RunningInfo;
pub(crate) use slot::Slot;
pub use stats::{ShutdownReport, Stats};
