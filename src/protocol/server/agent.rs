//! HAProxy's `agent-check` (`--agent ADDR`): each connection gets one line
//! at once, then the close; nothing is read (HAProxy sends nothing unless
//! `agent-send` is set, and waiting for it would only slow the check).
//!
//! The line: `up ready <W>% maxconn:<N>` while serving, `drain` from the
//! start of a shutdown to its end (the whole grace period), so that
//! HAProxy sends new clients elsewhere while running transfers finish.
//! `N` is MAX_RUNNING, so HAProxy queues in front of the instance rather
//! than the instance queueing behind it. The weight falls as the queue
//! grows: `W = max(1, 100 * running_bound / (running_bound + waiting))`,
//! so an instance with as many waiting as running gets half the share of
//! new clients, and never 0% (0% would be a drain; only shutdown drains).
//! Use `weight 100` on the HAProxy server line: percentages are of the
//! configured weight, and the default weight of 1 rounds them to 0.

use std::io;
use std::net::SocketAddr;

use super::sidecar::{SharedBackoff, Sidecar};

/// What the agent reports about the server, at the moment of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Load {
    /// Shutting down: drain.
    pub(crate) stopping: bool,
    /// MAX_RUNNING.
    pub(crate) max_running: usize,
    /// Clients waiting now.
    pub(crate) waiting: usize,
}

/// The agent's reply line for `load`.
pub(crate) fn reply(load: Load) -> String {
    if load.stopping {
        return "drain\n".to_owned();
    }
    let bound = load.max_running.max(1);
    let weight = (100 * bound / (bound + load.waiting)).max(1);
    format!("up ready {weight}% maxconn:{}\n", load.max_running)
}

/// Answers agent checks on `addr` with the load `now` reports.
pub(crate) fn serve(
    addr: SocketAddr,
    backoff: SharedBackoff,
    now: impl Fn() -> Load + Send + 'static,
) -> io::Result<Sidecar> {
    let answer = move |_: &[u8]| Some(reply(now()).into_bytes());
    Sidecar::start("filesrv-agent", addr, backoff, Box::new(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(max_running: usize, waiting: usize) -> Load {
        Load {
            stopping: false,
            max_running,
            waiting,
        }
    }

    #[test]
    fn the_weight_falls_as_the_queue_grows_and_never_reaches_zero() {
        assert_eq!(reply(load(4, 0)), "up ready 100% maxconn:4\n");
        assert_eq!(reply(load(4, 4)), "up ready 50% maxconn:4\n");
        assert_eq!(reply(load(4, 12)), "up ready 25% maxconn:4\n");
        assert_eq!(reply(load(1, 1000)), "up ready 1% maxconn:1\n");
    }

    #[test]
    fn a_shutdown_drains() {
        let stopping = Load {
            stopping: true,
            ..load(4, 0)
        };
        assert_eq!(reply(stopping), "drain\n");
    }
}
