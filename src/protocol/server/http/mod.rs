//! HTTP/1.1 on the line protocol's port: the same files, the same
//! resolver, uploads and limits, read and written as HTTP. A connection
//! whose first request line ends in `HTTP/1.<digit>` is handed here by
//! the session for its whole life.

mod head;
mod listing;
mod reply;
mod serve;
mod validators;
mod wire;

pub(super) use head::{is_request_line, long_request_line, refusal_is_http};
pub(super) use reply::refusal;
pub(super) use serve::serve;
pub(super) use wire::Wire;
