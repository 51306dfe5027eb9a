//! A refused handler, handed back to the caller.

use std::fmt;

use crate::admission::Refusal;
use crate::handler::Handler;

/// A handler submitted but refused; it comes back to the caller.
///
/// Like crossbeam's `TrySendError::Full(T)`, the refusal hands the value
/// back: the caller can still talk to the client, typically through
/// [`Refused::notify`], which calls [`Handler::refused`].
pub struct Refused<Q> {
    pub(super) handler: Q,
    pub(super) reason: Refusal,
}

impl<Q: Handler> Refused<Q> {
    /// Why the handler was refused.
    pub fn reason(&self) -> Refusal {
        self.reason
    }

    /// The handler, back in the caller's hands.
    pub fn into_handler(self) -> Q {
        self.handler
    }

    /// Tells the handler it was refused ([`Handler::refused`]) and drops it.
    pub fn notify(self) {
        self.handler.refused(self.reason);
    }
}

impl<Q> fmt::Debug for Refused<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<Q> fmt::Display for Refused<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler refused: {}", self.reason)
    }
}

impl<Q> std::error::Error for Refused<Q> {}
