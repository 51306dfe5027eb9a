//! The file-transfer protocol: the [`Server`] that serves a directory, the
//! [`Session`] handler behind it, the [`Client`] that talks to it, and the
//! building blocks they share.
//!
//! The wire protocol is specified in the project's `docs/PROTOCOL.md`. In
//! short: one request line (`GET`, `PUT`, `LIST`, `STAT`, `QUIT`), one
//! reply line (`OK ...` or `ERR <code> <message>`), and bodies whose
//! length is announced first.
//!
//! - [`parse_request`] turns a line into a [`Request`]: pure code, no I/O.
//! - [`RelPath`] is a decoded, checked path; [`encode_name`] writes names
//!   for LIST replies.
//! - [`Root`] resolves paths beneath the served directory on file
//!   descriptors, so no symlink leads outside it.
//! - [`Server`] listens, admits and runs [`Session`]s through a
//!   [`Manager`](crate::Manager); [`Client`] is the other side.
//!
//! ```
//! use filesrv::protocol::{Client, Server, ServerConfig};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::env::temp_dir().join(format!("filesrv-mod-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! std::fs::write(dir.join("a.txt"), "abc")?;
//! let server = Server::bind("127.0.0.1:0".parse()?, ServerConfig::new(&dir))?;
//!
//! let mut client = Client::connect(server.local_addr(), Duration::from_secs(5))?;
//! let mut body = Vec::new();
//! assert_eq!(client.get_to("a.txt", 1, &mut body)?, 2);
//! assert_eq!(body, b"bc");
//! client.quit()?;
//!
//! server.shutdown();
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

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
/// How much of a buffer of `max` bytes a body with `remaining` bytes to
/// go needs.
pub(crate) fn chunk_len(remaining: u64, max: usize) -> usize {
    usize::try_from(remaining).map_or(max, |remaining| remaining.min(max))
}

pub use code::{ErrorCode, UnknownErrorCode};
pub use path::{PathError, RESERVED_PREFIX, RelPath, encode_name, percent_decode};
pub use request::{MAX_LINE, Request, RequestError, parse_request};
pub use root::{Entry, EntryKind, FsError, ListEntry, Root};
pub use server::{Policy, Server, ServerConfig, ServerError};
pub use session::Session;
pub use upload::TempFile;
