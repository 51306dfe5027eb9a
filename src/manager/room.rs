//! Making room: with busy limits set, each waiting handler entitles the
//! manager to ask one running handler past a limit, longest past first,
//! to make room. The watcher runs the pass (`watcher.rs`); this file only
//! chooses whom to ask.

use std::time::{Duration, Instant};

/// Why the manager asks a running handler to make room for a waiting
/// one; passed to the hook of
/// [`HandlerContext::on_make_room`](crate::HandlerContext::on_make_room).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MakeRoom {
    /// It has been idle between requests for longer than the busy idle
    /// timeout: leave now.
    IdleTooLong,
    /// It has run for longer than the busy session limit (whether or not
    /// it is also idle too long): leave as soon as the request in progress,
    /// if any, is done.
    RanTooLong,
}

/// A running handler, as the make-room pass sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Candidate {
    pub(super) id: u64,
    pub(super) started_at: Instant,
    pub(super) idle_since: Option<Instant>,
}

/// A make-room hook, as registered with
/// [`HandlerContext::on_make_room`](crate::HandlerContext::on_make_room).
pub(crate) type RoomHook = Box<dyn Fn(MakeRoom) + Send + Sync>;

/// The busy limits; `None`: no such limit.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BusyLimits {
    pub(super) idle: Option<Duration>,
    pub(super) session: Option<Duration>,
}

impl BusyLimits {
    pub(super) fn any(&self) -> bool {
        self.idle.is_some() || self.session.is_some()
    }

    /// The shorter limit: a handler that starts or goes idle now passes
    /// a limit no sooner than this from now.
    pub(super) fn shortest(&self) -> Option<Duration> {
        [self.idle, self.session].into_iter().flatten().min()
    }

    /// Whom to ask, at most `need` of them, longest past a limit first
    /// (slot index, handler id, why); whether more are past a limit than
    /// that; and when the next candidate not past a limit yet will pass
    /// one.
    pub(super) fn choose(
        &self,
        now: Instant,
        need: usize,
        candidates: impl IntoIterator<Item = (usize, Candidate)>,
    ) -> (Vec<(usize, u64, MakeRoom)>, bool, Option<Instant>) {
        let mut past = Vec::new();
        let mut next: Option<Instant> = None;
        for (index, c) in candidates {
            let session_due = self.session.map(|l| c.started_at + l);
            let idle_due = self.idle.zip(c.idle_since).map(|(l, s)| s + l);
            let passed = |due: Option<Instant>| due.filter(|d| *d <= now);
            let (why, due) = match (passed(session_due), passed(idle_due)) {
                (Some(s), i) => (MakeRoom::RanTooLong, i.map_or(s, |i| i.min(s))),
                (None, Some(i)) => (MakeRoom::IdleTooLong, i),
                (None, None) => {
                    next = [next, session_due, idle_due].into_iter().flatten().min();
                    continue;
                }
            };
            past.push((due, c.id, index, why));
        }
        // The earliest due is the longest past its limit.
        past.sort_unstable_by_key(|p| (p.0, p.1));
        let more = past.len() > need;
        let chosen = past
            .into_iter()
            .take(need)
            .map(|(_, id, index, why)| (index, id, why))
            .collect();
        (chosen, more, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_past_a_limit_is_chosen_first() {
        let now = Instant::now();
        let ago = |s| now - Duration::from_secs(s);
        let limits = BusyLimits {
            idle: Some(Duration::from_secs(5)),
            session: Some(Duration::from_secs(60)),
        };
        let c = |id, started: u64, idle: Option<u64>| Candidate {
            id,
            started_at: ago(started),
            idle_since: idle.map(ago),
        };
        let candidates = [
            (0, c(1, 10, Some(6))),  // idle 1 s past
            (1, c(2, 100, None)),    // session 40 s past
            (2, c(3, 10, None)),     // busy: passes in 50 s
            (3, c(4, 70, Some(30))), // session 10 s past, idle 25 s past
        ];
        let (chosen, more, next) = limits.choose(now, 2, candidates);
        assert!(more);
        assert_eq!(
            chosen,
            [(1, 2, MakeRoom::RanTooLong), (3, 4, MakeRoom::RanTooLong)]
        );
        assert_eq!(next, Some(now + Duration::from_secs(50)));
        let (all, more, _) = limits.choose(now, 9, candidates);
        assert!(!more);
        assert_eq!(all.last(), Some(&(0, 1, MakeRoom::IdleTooLong)));
    }
}
