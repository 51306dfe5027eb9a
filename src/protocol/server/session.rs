//! One client connection speaking the protocol: the [`Session`] handler.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use super::access_log::AccessLog;
use super::closer::Closer;
use super::config::ServerConfig;
use super::fs::{FsError, Root};
use super::metrics::Metrics;
use super::pace::Pace;
use super::readbuf::ReadBuf;
use super::request_counts::Answer;
use super::sockopt::{Cork, ReadTimeout};
use super::transfer::{Sent, is_timeout, send_all, send_body};
use crate::protocol::checksum::sum_prefix_until;
use crate::protocol::wire::{ErrorCode, MAX_LINE, RelPath, Request, parse_request, printable_line};
use crate::util::{chunk_len, lock, time_left};
use crate::{Handler, HandlerContext, MakeRoom, Refusal, Stop};

/// What every session of one server shares: the root, the settings, the
/// closer and the metrics.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub(crate) root: Root,
    pub(crate) config: ServerConfig,
    pub(crate) closer: Closer,
    pub(crate) metrics: Metrics,
}

/// The protocol handler for one accepted connection.
///
/// Built by the accepting thread and run by the [`Manager`](crate::Manager)
/// when a slot is free; see the [module docs](super) for the protocol.
#[derive(Debug)]
pub(crate) struct Session {
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<ServerState>,
    /// The proxy's own connection (a v2 `LOCAL` header: its health
    /// check), left out of the access log unless it asks for checks.
    check: bool,
}

impl Session {
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr, shared: Arc<ServerState>) -> Session {
        Session {
            stream,
            peer,
            shared,
            check: false,
        }
    }

    /// Marks the session as a trusted proxy's own connection (its health
    /// check) rather than a client's it relays.
    pub(crate) fn proxy_check(mut self) -> Session {
        self.check = true;
        self
    }
}

impl Handler for Session {
    fn run(self, ctx: &HandlerContext) -> io::Result<()> {
        let began = Instant::now();
        log::info!(
            "{}: connected (waited {:?})",
            self.peer,
            began - ctx.queued_at()
        );
        let mut conn = Connection::new(self, ctx);
        let result = conn.serve(ctx);
        log::info!(
            "{}: closed after {} request{} in {:?}",
            conn.peer,
            conn.requests,
            if conn.requests == 1 { "" } else { "s" },
            began.elapsed()
        );
        conn.finish(result)
    }

    fn source(&self) -> Option<IpAddr> {
        Some(self.peer.ip())
    }

    /// The client hung up if a peek finds end of stream (and no pipelined
    /// request before it) or a reset.
    fn is_abandoned(&self) -> bool {
        let mut probe = [0u8; 1];
        match rustix::net::recv(
            &self.stream,
            &mut probe,
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        ) {
            Ok((_, 0)) => true,
            Ok(_) => false,
            Err(e) => e != Errno::AGAIN && e != Errno::INTR,
        }
    }

    /// Watched while waiting, so a client that hangs up leaves the queue
    /// at once.
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.stream.as_fd())
    }

    fn refused(self, reason: Refusal) {
        log::info!("{}: refused: {reason}", self.peer);
        let line = refusal_line(reason);
        self.shared.closer.refuse(self.stream, line.as_bytes());
    }
}

/// An `ERR` reply line.
pub(crate) fn reply_error(code: ErrorCode, message: &str) -> String {
    format!("ERR {code} {message}\n")
}

/// The line a refused connection gets: `ERR busy` or `ERR unavailable`.
fn refusal_line(reason: Refusal) -> String {
    let code = if reason.is_busy() {
        ErrorCode::Busy
    } else {
        ErrorCode::Unavailable
    };
    reply_error(code, reason.message())
}

/// How a connection ends.
enum End {
    /// The client closed, said QUIT, or vanished: just close.
    Quietly,
    /// A final `ERR` line was sent: close without losing it.
    AfterError,
    /// Cut mid-transfer (a short GET body, a stall): close at once.
    Abruptly,
}

/// A running session: its socket, its read buffer and its counters.
struct Connection {
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    shared: Arc<ServerState>,
    /// Whether a request is being served; the stop hook reads it to
    /// decide whether a graceful stop may interrupt the connection now.
    busy: Arc<Mutex<bool>>,
    read_timeout: ReadTimeout,
    cork: Cork,
    buf: ReadBuf,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    requests: u64,
    /// Where its requests are logged, if they are: see [`Session::check`].
    access_log: Option<AccessLog>,
}

/// The buffer a LIST reply is written through.
const LIST_BUF: usize = 64 * 1024;

impl Connection {
    fn new(session: Session, ctx: &HandlerContext) -> Connection {
        let Session {
            stream,
            peer,
            shared,
            check,
        } = session;
        let access_log = match &shared.config.access_log {
            Some(log) if !check || shared.config.access_log_checks => Some(log.clone()),
            _ => None,
        };
        // Shared with the hooks, which shut it down from other threads:
        // no duplicate descriptor, and the socket stays open (its number
        // never reused) until the last of them is gone.
        let stream = Arc::new(stream);
        // The write timeout (the stall timeout) and TCP_NODELAY came with
        // the socket from the listener.
        let read_timeout = ReadTimeout::inherited(&shared.config);
        let busy = Arc::new(Mutex::new(false));
        let (stop_stream, stop_busy) = (stream.clone(), busy.clone());
        ctx.on_stop(move |stop| {
            let busy = lock(&stop_busy);
            // Idle between requests: wake the blocked read. Busy: the
            // request finishes and the loop sees the stop before the next.
            let how = match stop {
                Stop::Now => Shutdown::Both,
                _ if *busy => return,
                _ => Shutdown::Read,
            };
            let _ = stop_stream.shutdown(how);
        });
        // Asked to make room for a waiting client: the same, the loop
        // sees the request before it reads the next line.
        let (hook_stream, room_busy) = (stream.clone(), busy.clone());
        ctx.on_make_room(move |_| {
            if !*lock(&room_busy) {
                let _ = hook_stream.shutdown(Shutdown::Read);
            }
        });
        Connection {
            stream,
            peer,
            shared,
            busy,
            read_timeout,
            cork: Cork::default(),
            buf: ReadBuf::take(),
            start: 0,
            end: 0,
            requests: 0,
            access_log,
        }
    }

    fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// Serves requests until the connection must end.
    fn serve(&mut self, ctx: &HandlerContext) -> io::Result<End> {
        loop {
            // A graceful stop that came while the last request was served
            // found the connection busy and left it alone: it is idle now.
            if ctx.stop_requested().is_some() {
                return self.stop_unavailable();
            }
            if let Some(why) = ctx.make_room_requested() {
                return self.make_room(why);
            }
            let deadline = self
                .config()
                .idle_timeout
                .and_then(|t| Instant::now().checked_add(t));
            let line = match self.read_line(deadline, ctx)? {
                Line::Complete(line) => line,
                // A graceful stop ends an idle read this way too.
                Line::Eof { partial } => {
                    if let Some(why) = ctx.make_room_requested() {
                        return self.make_room(why);
                    }
                    return match (ctx.stop_requested(), partial) {
                        (Some(_), _) => self.stop_unavailable(),
                        (None, false) => Ok(End::Quietly),
                        (None, true) => self.fail(ErrorCode::BadRequest, "incomplete request line"),
                    };
                }
                Line::TooLong => return self.fail(ErrorCode::BadRequest, "request line too long"),
                Line::TimedOut => {
                    return self.fail(ErrorCode::Timeout, "no complete request in time");
                }
            };
            // Claim the connection for this request, unless a stop came.
            {
                let mut busy = lock(&self.busy);
                if ctx.stop_requested().is_some() {
                    drop(busy);
                    return self.stop_unavailable();
                }
                if let Some(why) = ctx.make_room_requested() {
                    drop(busy);
                    return self.make_room(why);
                }
                *busy = true;
                ctx.set_busy();
            }
            self.requests += 1;
            // The client sent the next request already: this reply
            // leaves with the next one's.
            if self.buf[self.start..self.end].contains(&b'\n') {
                self.cork.hold(&self.stream)?;
            }
            let began = Instant::now();
            // Rendered now: an upload body reuses the buffer the line is in.
            let shown = log::log_enabled!(log::Level::Info)
                .then(|| printable_line(&self.buf[line.clone()]));
            let parsed = parse_request(&self.buf[line.clone()]);
            let logged = self
                .access_log
                .is_some()
                .then(|| super::access_log::path_field(&self.buf[line], parsed.as_ref().ok()));
            let outcome = match &parsed {
                Ok(request) => self.execute(request, ctx),
                Err(e) => {
                    let end = e.closes_connection().then_some(End::AfterError);
                    self.send_error(e.code(), e.message())
                        .map(|()| Outcome::new(Answer::Err(e.code()), 0, end))
                }
            };
            *lock(&self.busy) = false;
            let outcome = outcome?;
            log::info!(
                "{}: {} -> {} {} bytes in {:?}",
                self.peer,
                shown.unwrap_or_default(),
                outcome.code,
                outcome.bytes,
                began.elapsed()
            );
            let request = parsed.as_ref().ok();
            (self.shared.metrics).request(request, outcome.code, outcome.bytes);
            if let (Some(log), Some(path)) = (&self.access_log, logged) {
                let took = began.elapsed();
                log.record(self.peer, request, &path, outcome.code, outcome.bytes, took);
            }
            if let Some(end) = outcome.end {
                return Ok(end);
            }
        }
    }

    /// Closes the connection the way `end` says.
    fn finish(self, result: io::Result<End>) -> io::Result<()> {
        match result {
            Ok(End::AfterError) => self.shared.closer.close(self.stream),
            Ok(End::Quietly) => {
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            Ok(End::Abruptly) => {}
            Err(e) => {
                log::debug!("{}: connection error: {e}", self.peer);
                return Err(e);
            }
        }
        Ok(())
    }

    fn stop_unavailable(&mut self) -> io::Result<End> {
        self.fail(ErrorCode::Unavailable, "server is shutting down")
    }

    /// Leaves to make room for a waiting client (Connection life, item 4).
    fn make_room(&mut self, why: MakeRoom) -> io::Result<End> {
        match why {
            MakeRoom::IdleTooLong => {
                self.fail(ErrorCode::Timeout, "idle too long while clients wait")
            }
            _ => self.fail(ErrorCode::Busy, "session limit reached while clients wait"),
        }
    }

    /// Sends a final `ERR` line; the connection then closes.
    fn fail(&mut self, code: ErrorCode, message: &str) -> io::Result<End> {
        // The client may be gone already; the connection ends either way.
        let _ = self.send_error(code, message);
        Ok(End::AfterError)
    }

    fn send_error(&mut self, code: ErrorCode, message: &str) -> io::Result<()> {
        (&*self.stream).write_all(reply_error(code, message).as_bytes())
    }

    /// Reads up to the next `\n` within [`MAX_LINE`] bytes, by `deadline`.
    /// Returns the line's range in `buf`, without the `\n`. The handler
    /// is idle from the first read that may wait for the client; a line
    /// already buffered (pipelined) is served without going idle, which
    /// would wake the manager's watcher whenever clients wait.
    fn read_line(&mut self, deadline: Option<Instant>, ctx: &HandlerContext) -> io::Result<Line> {
        let mut idle = false;
        let mut searched = 0;
        loop {
            let pending = &self.buf[self.start + searched..self.end];
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let newline = self.start + searched + i;
                if newline + 1 - self.start > MAX_LINE {
                    return Ok(Line::TooLong);
                }
                let line = self.start..newline;
                self.start = newline + 1;
                return Ok(Line::Complete(line));
            }
            searched = self.end - self.start;
            if searched >= MAX_LINE {
                return Ok(Line::TooLong);
            }
            if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let timeout = match deadline.map(time_left) {
                None => None,
                Some(Some(left)) => Some(left),
                Some(None) => return Ok(Line::TimedOut),
            };
            if !idle {
                ctx.set_idle();
                idle = true;
            }
            self.read_timeout.set(&self.stream, timeout)?;
            self.cork.release(&self.stream)?;
            match (&*self.stream).read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    return Ok(Line::Eof {
                        partial: self.end > self.start,
                    });
                }
                Ok(n) => self.end += n,
                Err(e) if is_timeout(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn execute(&mut self, request: &Request, ctx: &HandlerContext) -> io::Result<Outcome> {
        if let Some(refusal) = self.hidden_refusal(request) {
            return refusal;
        }
        match request {
            Request::Get { path, offset } => self.get(path, offset.unwrap_or(0), ctx),
            Request::Put { path, size } => self.put(path, *size),
            Request::List { path } => self.list(path),
            Request::Stat { path } => self.stat(path),
            Request::Sum { path, length } => self.sum(path, *length, ctx),
            Request::Quit => {
                (&*self.stream).write_all(b"OK bye\n")?;
                Ok(Outcome::new(Answer::Ok, 0, Some(End::Quietly)))
            }
        }
    }

    /// Hidden names, unless served: as if absent, and PUT is forbidden
    /// (closing, as every refused PUT does).
    fn hidden_refusal(&mut self, request: &Request) -> Option<io::Result<Outcome>> {
        if self.config().hidden || !request.path().is_some_and(RelPath::is_hidden) {
            return None;
        }
        Some(match request {
            Request::Put { .. } => self
                .fail(ErrorCode::Forbidden, "hidden names may not be written")
                .map(|end| Outcome::new(Answer::Err(ErrorCode::Forbidden), 0, Some(end))),
            _ => self.refuse(&FsError::new(
                ErrorCode::NotFound,
                "no such file or directory",
            )),
        })
    }

    /// Replies to a failed file operation; the connection stays.
    fn refuse(&mut self, e: &FsError) -> io::Result<Outcome> {
        if e.code() == ErrorCode::Internal {
            log::warn!("{}: {e}: {:?}", self.peer, std::error::Error::source(e));
        }
        self.send_error(e.code(), e.message())?;
        Ok(Outcome::new(Answer::Err(e.code()), 0, None))
    }

    fn get(&mut self, path: &RelPath, offset: u64, ctx: &HandlerContext) -> io::Result<Outcome> {
        let (file, metadata) = match self.shared.root.open_file(path) {
            Ok(opened) => opened,
            Err(e) => return self.refuse(&e),
        };
        let size = metadata.len();
        let Some(count) = size.checked_sub(offset) else {
            self.send_error(ErrorCode::Range, "offset is past the end of the file")?;
            return Ok(Outcome::new(Answer::Err(ErrorCode::Range), 0, None));
        };
        let header = format!("OK {count}\n");
        if count == 0 {
            (&*self.stream).write_all(header.as_bytes())?;
            return Ok(Outcome::new(Answer::Ok, 0, None));
        }
        // Held back (MSG_MORE) so the header leaves in one segment with the
        // start of the body.
        send_all(&self.stream, header.as_bytes(), SendFlags::MORE)?;
        match send_body(&self.stream, &file, offset, count, self.config())? {
            Sent::All => Ok(Outcome::new(Answer::Ok, count, None)),
            Sent::Short(sent) => {
                log::info!("{}: {path} shrank while being sent", self.peer);
                Ok(Outcome::new(Answer::Cut, sent, Some(End::Abruptly)))
            }
            // The end of the shutdown grace shuts the socket: a cut, not
            // a client that stopped reading.
            Sent::Stalled(sent) if ctx.stop_requested() == Some(Stop::Now) => Ok(Outcome::new(
                Answer::CutByShutdown,
                sent,
                Some(End::Abruptly),
            )),
            Sent::Stalled(sent) => Ok(Outcome::new(Answer::Stalled, sent, Some(End::Abruptly))),
        }
    }

    fn put(&mut self, path: &RelPath, size: u64) -> io::Result<Outcome> {
        // Every refusal closes the connection: the body cannot be skipped.
        let refuse = |this: &mut Connection, code: ErrorCode, message: &str| {
            this.fail(code, message)
                .map(|end| Outcome::new(Answer::Err(code), 0, Some(end)))
        };
        if !self.config().allow_put {
            return refuse(self, ErrorCode::Forbidden, "uploads are disabled");
        }
        let limit = self.config().max_upload;
        if size > limit {
            let message = format!("upload of {size} bytes exceeds the size limit of {limit} bytes");
            return refuse(self, ErrorCode::TooLarge, &message);
        }
        let temp = match self.shared.root.create_temp(path) {
            Ok(temp) => temp,
            Err(e) => return refuse(self, e.code(), e.message()),
        };
        // Space first: a full disk is refused before the body is read.
        if let Err(e) = temp.reserve(size) {
            log::warn!("{}: upload to {path} refused: {e}", self.peer);
            return refuse(self, e.code(), e.message());
        }
        match self.receive_body(temp.as_file(), size)? {
            Received::All => {}
            Received::Gone => return Ok(Outcome::new(Answer::Gone, 0, Some(End::Quietly))),
            Received::Stalled => {
                return refuse(self, ErrorCode::Timeout, "upload stalled");
            }
            Received::WriteFailed(e) => {
                log::warn!("{}: upload to {path} failed: {e}", self.peer);
                let e = FsError::from(e);
                return refuse(self, e.code(), e.message());
            }
        }
        if let Err(e) = temp.commit() {
            log::warn!("{}: upload to {path} failed: {e}", self.peer);
            let message = e.message();
            return refuse(self, e.code(), message);
        }
        (&*self.stream).write_all(format!("OK {size}\n").as_bytes())?;
        Ok(Outcome::new(Answer::Ok, size, None))
    }

    /// Copies `size` body bytes (buffered first, then from the socket) to
    /// `file`, within the stall timeout and the minimum rate ([`Pace`]).
    fn receive_body(&mut self, mut file: &File, size: u64) -> io::Result<Received> {
        let mut left = size;
        let buffered = chunk_len(left, self.end - self.start);
        if buffered > 0 {
            if let Err(e) = file.write_all(&self.buf[self.start..self.start + buffered]) {
                return Ok(Received::WriteFailed(e));
            }
            self.start += buffered;
            left -= buffered as u64;
        }
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        let mut pace = Pace::new(self.config());
        // The body is read into the free tail of the line buffer, which
        // keeps any pipelined bytes after it intact.
        while left > 0 {
            // Each read waits at most until the body's deadline.
            let Ok(timeout) = pace.time_left() else {
                return Ok(Received::Stalled);
            };
            self.read_timeout.set(&self.stream, timeout)?;
            self.cork.release(&self.stream)?;
            let room = &mut self.buf[self.end..];
            let want = chunk_len(left, room.len());
            let n = match (&*self.stream).read(&mut room[..want]) {
                Ok(0) => return Ok(Received::Gone),
                Ok(n) => n,
                Err(e) if is_timeout(&e) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Ok(Received::Gone),
            };
            pace.progress(n);
            if let Err(e) = file.write_all(&room[..n]) {
                return Ok(Received::WriteFailed(e));
            }
            left -= n as u64;
        }
        Ok(Received::All)
    }

    fn list(&mut self, path: &RelPath) -> io::Result<Outcome> {
        let config = self.config();
        let listing = self
            .shared
            .root
            .list(path, config.hidden, config.max_list_entries);
        let listing = match listing {
            Ok(listing) => listing,
            // The reply table has `too-large` close the connection.
            Err(e) if e.code() == ErrorCode::TooLarge => {
                return self
                    .fail(e.code(), e.message())
                    .map(|end| Outcome::new(Answer::Err(ErrorCode::TooLarge), 0, Some(end)));
            }
            Err(e) => return self.refuse(&e),
        };
        // Streamed through a small buffer: the reply text is never held
        // whole.
        let mut out = io::BufWriter::with_capacity(LIST_BUF, &*self.stream);
        let bytes = listing.write_reply(&mut out)?;
        Ok(Outcome::new(Answer::Ok, bytes, None))
    }

    fn sum(
        &mut self,
        path: &RelPath,
        length: Option<u64>,
        ctx: &HandlerContext,
    ) -> io::Result<Outcome> {
        let (file, metadata) = match self.shared.root.open_file(path) {
            Ok(opened) => opened,
            Err(e) => return self.refuse(&e),
        };
        let length = match length {
            None => metadata.len(),
            Some(length) if length > metadata.len() => {
                self.send_error(ErrorCode::Range, "length is past the end of the file")?;
                return Ok(Outcome::new(Answer::Err(ErrorCode::Range), 0, None));
            }
            Some(length) => length,
        };
        // The end of the shutdown grace stops a long hash.
        let cut = || ctx.stop_requested() == Some(Stop::Now);
        match sum_prefix_until(&file, length, &cut) {
            Ok(sum) => {
                (&*self.stream).write_all(format!("OK {sum}\n").as_bytes())?;
                Ok(Outcome::new(Answer::Ok, sum.len, None))
            }
            Err(_) if cut() => Ok(Outcome::new(Answer::CutByShutdown, 0, Some(End::Abruptly))),
            Err(e) => self.refuse(&FsError::from(e)),
        }
    }

    fn stat(&mut self, path: &RelPath) -> io::Result<Outcome> {
        match self.shared.root.stat(path) {
            Ok(entry) => {
                (&*self.stream).write_all(format!("OK {entry}\n").as_bytes())?;
                Ok(Outcome::new(Answer::Ok, 0, None))
            }
            Err(e) => self.refuse(&e),
        }
    }
}

enum Line {
    Complete(std::ops::Range<usize>),
    Eof { partial: bool },
    TooLong,
    TimedOut,
}

enum Received {
    All,
    Gone,
    Stalled,
    WriteFailed(io::Error),
}

/// How one request went, for the log line and the connection's fate.
struct Outcome {
    code: Answer,
    bytes: u64,
    end: Option<End>,
}

impl Outcome {
    fn new(code: Answer, bytes: u64, end: Option<End>) -> Outcome {
        Outcome { code, bytes, end }
    }
}
