//! The [`Manager`]: a FIFO waiting queue, a bounded running set, and the
//! worker threads that move handlers from one to the other.
//!
//! Threads: `max_running` workers, one deadline thread and one watcher
//! (and, with a [`Source`], one accepting thread), all started by
//! [`ManagerBuilder::build`] and joined by [`Manager::shutdown`]. A worker
//! blocks on the hand-off channel (crossbeam): a handler that cannot leave
//! the queue early travels in it, any other waits in the gate's queue
//! behind a token there. A handler arriving wakes one worker directly, and
//! a worker that finishes takes the next handler at once, so there is no
//! polling anywhere. The watcher blocks in `epoll_wait`; with a source, an
//! idle worker waits on the source too.

mod atomic_instant;
mod builder;
mod clock;
mod deadline;
mod handle;
mod queue;
mod refused;
mod resize;
mod room;
mod seqlock;
mod slot;
mod slot_list;
mod source;
mod state;
mod stats;
mod wait_stamps;
mod watcher;
mod worker;

pub use builder::ManagerBuilder;
pub use clock::time_resolution;
pub(crate) use clock::{CoarseClock, Stamp};
pub use handle::Manager;
pub use refused::Refused;
pub use room::MakeRoom;
pub(crate) use room::RoomWatch;
pub use slot::RunningInfo;
pub(crate) use slot::Slot;
pub use source::Source;
pub use stats::{ShutdownReport, Stats};
