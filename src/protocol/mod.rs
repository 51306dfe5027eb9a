//! The file-transfer protocol's building blocks: request parsing, path
//! encoding, and file access confined beneath the served root.
//!
//! Nothing here touches the network. The wire format is described in the
//! protocol document; this module turns request lines into [`Request`]s,
//! names into their encoded forms and back, and requests into file
//! descriptors resolved beneath a [`Root`], each failure carrying the
//! [`ErrorCode`] of its `ERR` reply.

mod client;
mod closer;
mod code;
mod path;
mod request;
mod resolve;
mod root;
mod server;
mod session;
#[cfg(test)]
mod testutil;
mod upload;

pub use client::{Client, ClientError, Progress, RemoteEntry, RemoteStat};
pub use code::{ErrorCode, UnknownErrorCode};
pub use path::{PathError, RESERVED_PREFIX, RelPath, encode_name, percent_decode};
pub use request::{MAX_LINE, Request, RequestError, parse_request};
pub use root::{Entry, EntryKind, FsError, ListEntry, Root};
pub use server::{Policy, Server, ServerConfig, ServerError};
pub use session::Session;
pub use upload::TempFile;
