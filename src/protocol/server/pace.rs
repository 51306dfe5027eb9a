//! How fast a body must move: the stall timeout as wall time without
//! progress, however the reads and writes are split, and a minimum rate
//! after an initial allowance, as Apache's `mod_reqtimeout` `MinRate`.
//!
//! A socket timeout alone bounds each wait inside one system call, and
//! one large `sendfile` waits many times: a never-read GET used to be cut
//! at about four times the stall timeout. So the body's deadline is kept
//! here, and every wait is bounded by the time left until it.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};

use super::config::ServerConfig;
use crate::util::timespec;

/// The allowance before the minimum rate applies when there is no stall
/// timeout to take it from.
const RATE_GRACE: Duration = Duration::from_secs(30);

/// One body's progress against its deadlines.
pub(super) struct Pace {
    stall: Option<Duration>,
    min_rate: Option<u64>,
    began: Instant,
    last_progress: Instant,
    bytes: u64,
}

impl Pace {
    pub(super) fn new(config: &ServerConfig) -> Pace {
        let now = Instant::now();
        Pace {
            stall: config.stall_timeout,
            min_rate: config.min_rate,
            began: now,
            last_progress: now,
            bytes: 0,
        }
    }

    pub(super) fn progress(&mut self, n: usize) {
        self.bytes += n as u64;
        self.last_progress = Instant::now();
    }

    /// When the body is cut unless it moves: the stall timeout after the
    /// last progress, or the moment it falls behind the minimum rate
    /// (the allowance plus one second per `min_rate` bytes moved).
    fn deadline(&self) -> Option<Instant> {
        let stall = self.stall.map(|t| self.last_progress + t);
        let rate = self.min_rate.map(|rate| {
            let earned = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            self.began + self.stall.unwrap_or(RATE_GRACE) + earned
        });
        stall.into_iter().chain(rate).min()
    }

    /// The time left until the deadline: `Ok(None)` without one, `Err`
    /// once it passed.
    pub(super) fn time_left(&self) -> Result<Option<Duration>, Stalled> {
        match self.deadline() {
            None => Ok(None),
            Some(deadline) => crate::util::time_left(deadline).map(Some).ok_or(Stalled),
        }
    }

    /// Waits until `stream` can take more bytes, or the deadline.
    pub(super) fn wait_writable(&self, stream: &TcpStream) -> io::Result<Result<(), Stalled>> {
        loop {
            let left = match self.time_left() {
                Ok(left) => left,
                Err(stalled) => return Ok(Err(stalled)),
            };
            let timeout = left.map(timespec);
            let mut fds = [PollFd::new(stream, PollFlags::OUT)];
            match poll(&mut fds, timeout.as_ref()) {
                Ok(0) => {} // the deadline: looked at again above
                Ok(_) => return Ok(Ok(())),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The body did not move fast enough.
#[derive(Debug)]
pub(super) struct Stalled;
