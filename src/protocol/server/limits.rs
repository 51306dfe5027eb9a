//! Reconciling the waiting queue's bound with the descriptors the process
//! may open: a queue larger than the descriptor limit admits clients the
//! server cannot even accept, and then nobody gets `ERR busy`.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept aside whatever the load: the listener, the standard
/// streams, the log, the root, threads' and the closer's lingering
/// refusals.
const RESERVE: u64 = 64;
/// Descriptors one running place may hold at once: the connection's
/// socket, a file, a directory or temporary file, one to spare, and its
/// worker's two for accepting while idle (an epoll set and its wake-up
/// eventfd).
const PER_RUNNING: u64 = 6;

/// Raises the soft limit on open descriptors to the hard limit, as a
/// server that holds a descriptor per waiting client needs; returns the
/// soft limit in force afterwards (`None`: unlimited).
///
/// # Errors
///
/// The error of `setrlimit`, when raising fails (the limit is unchanged).
pub fn raise_descriptor_limit() -> std::io::Result<Option<u64>> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(limit.maximum)
}

/// The waiting queue's bound: `max_waiting`, lowered (with a warning) to
/// what the descriptor limit leaves once `max_running` connections and a
/// reserve are counted.
pub(super) fn waiting_bound(max_waiting: usize, max_running: usize) -> usize {
    let Some(soft) = getrlimit(Resource::Nofile).current else {
        return max_waiting;
    };
    let running = u64::try_from(max_running).unwrap_or(u64::MAX);
    let room = soft.saturating_sub(RESERVE.saturating_add(running.saturating_mul(PER_RUNNING)));
    let bound = usize::try_from(room).unwrap_or(usize::MAX);
    if bound < max_waiting {
        log::warn!(
            "max waiting lowered from {max_waiting} to {bound}: the descriptor limit \
             is {soft} (raise it with ulimit -n)"
        );
        bound
    } else {
        max_waiting
    }
}
