//! What the HTTP serve loop needs of a connection: its buffer, reads by a
//! deadline, writes, file bodies both ways, and the request claim. The
//! session's connection implements it over its stream; a TLS stream
//! implements the same (the seam that keeps HTTP independent of it).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::HandlerContext;
use crate::protocol::server::access_log::AccessLog;
use crate::protocol::server::fs::TempFile;
use crate::protocol::server::session::{Claim, Filled, Received, ServerState};
use crate::protocol::server::stream::Paced;
use crate::protocol::server::transfer::Sent;

/// A connection as the HTTP serve loop sees it.
pub(in crate::protocol::server) trait Wire {
    /// The client's address, for logs.
    fn peer(&self) -> SocketAddr;
    /// Where its requests are logged, if anywhere.
    fn access_log(&self) -> Option<&AccessLog>;
    /// What every session of the server shares.
    fn state(&self) -> &ServerState;
    /// The same, owned: for what must outlive a borrow of the connection.
    fn shared(&self) -> Arc<ServerState>;
    /// Whether the connection speaks TLS (for the rule on passwords).
    fn is_tls(&self) -> bool;
    /// The bytes received and not yet consumed.
    fn pending(&self) -> &[u8];
    /// Consumes the first `n` pending bytes.
    fn consume(&mut self, n: usize);
    /// Reads more bytes after the pending ones, by `deadline`; marks the
    /// handler idle before the first read that may wait (`idle`).
    fn fill(
        &mut self,
        deadline: Option<Instant>,
        idle: &mut bool,
        ctx: &HandlerContext,
    ) -> io::Result<Filled>;
    /// Claims the connection for a request and counts it (see the
    /// session's stop and make-room hooks).
    fn claim(&mut self, ctx: &HandlerContext) -> Claim;
    /// Ends the claim once the reply is written.
    fn release(&self);
    /// Holds small replies back while more requests are buffered, so
    /// pipelined replies leave together.
    fn hold(&mut self) -> io::Result<()>;
    /// Writes all of `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Writes `head`, then `count` bytes of `file` from `offset`
    /// (`sendfile` in plaintext).
    fn send_file(&mut self, head: &[u8], file: &File, offset: u64, count: u64) -> io::Result<Sent>;
    /// Copies a request body of `size` bytes (buffered first) to `file`,
    /// within the stall timeout and minimum rate.
    fn receive_body(&mut self, file: &mut TempFile, size: u64) -> io::Result<Received>;
    /// A writer for a body, kept to the body's pace (the stall timeout,
    /// the minimum rate), through TLS when the port speaks it.
    fn paced(&mut self) -> Paced<'_>;
    /// Whether the connection may be parked now, between requests.
    fn parkable(&mut self, ctx: &HandlerContext) -> bool;
}
