//! Reconciling the waiting queue's bound with the descriptors the process
//! may open: a queue larger than the descriptor limit admits clients the
//! server cannot even accept, and then nobody gets `ERR busy`.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use super::closer::MAX_LINGERING;
use super::config::ServerConfig;
use super::proxy::MAX_PENDING;
use super::sidecar::MAX_PEERS;

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

/// How the descriptors the process may open are shared out: everything
/// the server may hold at once is counted (the reserve, the running
/// connections, the sidecars and their peers, the waiting clients, the
/// refusals lingering in the closer, the pending PROXY handshakes), so
/// that the limit is never reached by connections the server could have
/// refused: past its share each is refused `ERR busy` (or closed at once),
/// and running clients keep the descriptors their requests need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Budget {
    /// Clients that may wait.
    pub(super) waiting: usize,
    /// Refused connections that may linger in the closer.
    pub(super) lingering: usize,
    /// Connections that may be in the PROXY handshake.
    pub(super) pending: usize,
    /// Connections that may be parked (none without parking).
    pub(super) parked: usize,
}

impl Budget {
    /// The budget under the current soft limit; a share lowered from its
    /// usual value is said in one warning.
    pub(super) fn of(config: &ServerConfig) -> Budget {
        let budget = Budget::within(getrlimit(Resource::Nofile).current, config);
        let full = Budget::within(None, config);
        if budget != full {
            log::warn!(
                "the descriptor limit ({}) lowers max waiting from {} to {}, max parked \
                 from {} to {}, lingering refusals from {} to {} and pending PROXY \
                 handshakes from {} to {} (raise it with ulimit -n)",
                getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX),
                full.waiting,
                budget.waiting,
                full.parked,
                budget.parked,
                full.lingering,
                budget.lingering,
                full.pending,
                budget.pending
            );
        }
        budget
    }

    /// The budget under a soft limit of `soft` descriptors (`None`:
    /// unlimited). What is left after the reserve, the running places and
    /// the sidecars goes to lingering refusals and pending handshakes (a
    /// quarter each at most) and the rest to the waiting clients and the
    /// parked ones: each gets what it wants if both fit, and at least half
    /// of the rest (or what it wants, if less) if not.
    fn within(soft: Option<u64>, config: &ServerConfig) -> Budget {
        let pending_wanted = if config.proxy_from.is_empty() {
            0
        } else {
            MAX_PENDING
        };
        let parked_wanted = if config.park_idle {
            config.max_parked
        } else {
            0
        };
        let Some(soft) = soft else {
            return Budget {
                waiting: config.max_waiting,
                lingering: MAX_LINGERING,
                pending: pending_wanted,
                parked: parked_wanted,
            };
        };
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let sidecars = [config.metrics, config.agent].iter().flatten().count();
        let fixed = RESERVE
            .saturating_add(count(config.max_running).saturating_mul(PER_RUNNING))
            .saturating_add(count(sidecars).saturating_mul(1 + count(MAX_PEERS)));
        let room = usize::try_from(soft.saturating_sub(fixed)).unwrap_or(usize::MAX);
        let lingering = MAX_LINGERING.min(room / 4);
        let pending = pending_wanted.min(room / 4);
        let rest = room - lingering - pending;
        let parked = parked_wanted.min(rest.saturating_sub(config.max_waiting).max(rest / 2));
        Budget {
            waiting: config.max_waiting.min(rest - parked),
            lingering,
            pending,
            parked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_the_server_may_hold_is_counted() {
        let config = ServerConfig::new("/").max_running(4);
        // 300 - 64 reserved - 4 * 6 running = 212: a quarter may linger.
        assert_eq!(
            Budget::within(Some(300), &config),
            Budget {
                waiting: 159,
                lingering: 53,
                pending: 0,
                parked: 0
            }
        );
        let proxied = config
            .proxy_from(["127.0.0.1/32".parse().unwrap()])
            .metrics(Some("127.0.0.1:0".parse().unwrap()));
        // 33 more for the metrics listener and its peers: 179 left.
        assert_eq!(
            Budget::within(Some(300), &proxied),
            Budget {
                waiting: 91,
                lingering: 44,
                pending: 44,
                parked: 0
            }
        );
        // Parked connections share what the waiting ones leave, and get at
        // least half of it when both cannot have what they want.
        let parking = ServerConfig::new("/").max_running(8).park_idle(true);
        // 20,000 - 64 - 8 * 6 = 19,888; a quarter lingers at most (4,096).
        assert_eq!(
            Budget::within(Some(20_000), &parking),
            Budget {
                waiting: 1024,
                lingering: MAX_LINGERING,
                pending: 0,
                parked: 10_000
            }
        );
        let tight = Budget::within(Some(300), &parking);
        // 300 - 64 - 48 = 188: 47 linger, 141 left, 70 parked.
        assert_eq!((tight.waiting, tight.lingering, tight.parked), (71, 47, 70));
        let plenty = Budget::within(Some(1 << 20), &proxied);
        assert_eq!(
            (plenty.waiting, plenty.lingering, plenty.pending),
            (1024, MAX_LINGERING, MAX_PENDING)
        );
        let starved = Budget::within(Some(10), &proxied);
        assert_eq!(
            (starved.waiting, starved.lingering, starved.pending),
            (0, 0, 0)
        );
    }
}
