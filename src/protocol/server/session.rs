//! One client connection speaking the protocol: the [`Session`] handler.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use super::access_log::{self, AccessLog};
use super::closer::Closer;
use super::config::ServerConfig;
use super::fs::{FsError, Root, TempFile};
use super::http::{self, Wire as _};
use super::metrics::{Answer, LoginResult, Metrics};
use super::pace::Pace;
use super::readbuf::ReadBuf;
use super::reasons;
use super::sockopt::{Cork, ReadTimeout};
use super::stream::{Paced, SessionStream};
use super::tls::Tls;
use super::transfer::{Sent, copy_body, is_timeout, send_all, send_body};
use super::users::{Login, User, Users, plain_auth_allowed};
use crate::protocol::checksum::sum_prefix_until;
use crate::protocol::wire::{
    ErrorCode, MAX_LINE, Password, RelPath, Request, parse_request, printable_line,
};
use crate::util::{Throttle, chunk_len, lock, time_left};
use crate::{Handler, HandlerContext, MakeRoom, Refusal, Served, Stop};

/// What every session of one server shares: the root, the settings, the
/// closer, the metrics, and TLS and the users when configured.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub(crate) root: Root,
    pub(crate) config: ServerConfig,
    pub(crate) closer: Closer,
    pub(crate) metrics: Metrics,
    pub(crate) tls: Option<Tls>,
    pub(crate) users: Option<Users>,
}

/// The protocol handler for one connection.
///
/// Built by the accepting thread and run by the [`Manager`](crate::Manager)
/// when a slot is free; see the [module docs](super) for the protocol.
/// With parking on, a run may end between requests with the connection
/// handed back to the manager, parked, and later run again.
pub(crate) struct Session(Life);

enum Life {
    /// Accepted, never run.
    New {
        stream: TcpStream,
        peer: SocketAddr,
        shared: Arc<ServerState>,
        /// The proxy's own connection (a v2 `LOCAL` header: its health
        /// check), left out of the access log unless it asks for checks.
        check: bool,
    },
    /// Parked between requests, with everything the next run needs.
    Parked(Box<Connection>),
}

impl Session {
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr, shared: Arc<ServerState>) -> Session {
        Session(Life::New {
            stream,
            peer,
            shared,
            check: false,
        })
    }

    /// Marks the session as a trusted proxy's own connection (its health
    /// check) rather than a client's it relays.
    pub(crate) fn proxy_check(mut self) -> Session {
        if let Life::New { check, .. } = &mut self.0 {
            *check = true;
        }
        self
    }

    fn peer(&self) -> SocketAddr {
        match &self.0 {
            Life::New { peer, .. } => *peer,
            Life::Parked(conn) => conn.peer,
        }
    }

    fn stream(&self) -> &TcpStream {
        match &self.0 {
            Life::New { stream, .. } => stream,
            Life::Parked(conn) => &conn.stream,
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.0 {
            Life::New { .. } => "new",
            Life::Parked(_) => "parked",
        };
        write!(f, "Session({}, {state})", self.peer())
    }
}

impl Handler for Session {
    /// Not called by the manager (it calls [`serve`](Handler::serve)); a
    /// session that would park here is closed instead.
    fn run(self, ctx: &HandlerContext) -> io::Result<()> {
        self.serve(ctx).map(drop)
    }

    fn serve(self, ctx: &HandlerContext) -> io::Result<Served<Session>> {
        let mut conn = match self.0 {
            Life::New {
                stream,
                peer,
                shared,
                check,
            } => {
                log::info!("{peer}: connected (waited {:?})", ctx.queued_at().elapsed());
                Box::new(Connection::new(stream, peer, shared, check)?)
            }
            Life::Parked(conn) => {
                log::debug!("{}: back from parking", conn.peer);
                conn
            }
        };
        conn.attach(ctx);
        let result = if conn.http {
            http::serve(&mut *conn, ctx)
        } else {
            conn.serve(ctx)
        };
        if let Ok(End::Park) = result {
            conn.park()?;
            log::debug!("{}: parked", conn.peer);
            return Ok(Served::Park(Session(Life::Parked(conn))));
        }
        // Counted before the line that says it closed: whoever reads that
        // line and then the metrics finds the failure counted.
        if conn.io.is_handshaking() {
            conn.shared.metrics.tls_handshake_failed();
        }
        conn.log_closed("");
        conn.finish(result).map(|()| Served::Done)
    }

    fn source(&self) -> Option<IpAddr> {
        Some(self.peer().ip())
    }

    /// The client hung up if the socket was reset (a request it sent may
    /// still be readable), or a peek finds end of stream (and no
    /// pipelined request before it).
    fn is_abandoned(&self) -> bool {
        // A reset shows as an error or a hang-up in both directions; a
        // half-close (the client shut its writing side) does not.
        let stream = self.stream();
        let mut fds = [PollFd::new(stream, PollFlags::empty())];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if poll(&mut fds, Some(&now)).is_ok_and(|ready| ready > 0)
            && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP)
        {
            return true;
        }
        let mut probe = [0u8; 1];
        match rustix::net::recv(stream, &mut probe, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((_, 0)) => true,
            Ok(_) => false,
            Err(e) => e != Errno::AGAIN && e != Errno::INTR,
        }
    }

    /// Watched while waiting, so a client that hangs up leaves the queue
    /// at once, and while parked, for the next request.
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.stream().as_fd())
    }

    fn refused(self, reason: Refusal) {
        match self.0 {
            Life::New {
                stream,
                peer,
                shared,
                ..
            } => {
                log::info!("{peer}: refused: {reason}");
                let line = refusal_line(reason);
                match &shared.tls {
                    // Inside TLS, if the handshake completes in time.
                    Some(tls) => tls.refuse(stream, line.as_bytes(), http::refusal().into_bytes()),
                    None => {
                        let http = http::refusal().into_bytes();
                        (shared.closer).refuse_sniffing(stream, line.as_bytes(), http);
                    }
                }
            }
            Life::Parked(conn) => conn.refuse_parked(reason),
        }
    }
}

/// Shuts down a connection's socket `how`, if it is still open.
fn shut(stream: &Weak<TcpStream>, how: Shutdown) {
    if let Some(stream) = stream.upgrade() {
        let _ = stream.shutdown(how);
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
pub(super) enum End {
    /// The client closed, said QUIT, or vanished: just close.
    Quietly,
    /// A final `ERR` line was sent: close without losing it.
    AfterError,
    /// Cut mid-transfer (a short GET body, a stall): close at once.
    Abruptly,
    /// Between requests with nothing unread, and parking is on: give the
    /// slot back until the next request (closed quietly when it cannot).
    Park,
}

/// A running session: its socket, its read buffer and its counters.
struct Connection {
    /// The socket: timeouts, the cork, shutdown, `sendfile`.
    stream: Arc<TcpStream>,
    /// What requests are read from and replies written to: the socket, or
    /// TLS over it.
    io: SessionStream,
    /// Logged in with `AUTH`.
    user: Option<Arc<User>>,
    /// `AUTH`s refused on this connection; the third closes it.
    failed_logins: u32,
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
    /// Whether the last read from the socket took less than it asked
    /// for: the kernel held nothing more then.
    drained: bool,
    requests: u64,
    /// Where its requests are logged, if they are: see [`Life::New`].
    access_log: Option<AccessLog>,
    /// Whether it speaks HTTP (decided by its first request line).
    http: bool,
    /// A run began and has not read from the client yet: what woke it is
    /// still to be read, so it must not park.
    unread_wake: bool,
    connected: Instant,
}

/// The buffer a LIST reply is written through.
pub(super) const LIST_BUF: usize = 64 * 1024;

impl Connection {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        shared: Arc<ServerState>,
        check: bool,
    ) -> io::Result<Connection> {
        let access_log = match &shared.config.access_log {
            Some(log) if !check || shared.config.access_log_checks => Some(log.clone()),
            _ => None,
        };
        // Reached by the hooks, which shut it down from other threads:
        // no duplicate descriptor, and the socket stays open (its number
        // never reused) while a hook uses it. The hooks hold it weakly,
        // so the connection's own drop closes it: a close without a
        // shutdown first sends the FIN at once (see `finish`).
        let stream = Arc::new(stream);
        // The TLS handshake happens on the first read, within the idle
        // deadline of the first request.
        let io = match &shared.tls {
            Some(tls) => SessionStream::tls(stream.clone(), tls.accept()?),
            None => SessionStream::plain(stream.clone()),
        };
        // The write timeout (the stall timeout) and TCP_NODELAY came with
        // the socket from the listener.
        let read_timeout = ReadTimeout::inherited(&shared.config);
        Ok(Connection {
            stream,
            io,
            user: None,
            failed_logins: 0,
            peer,
            shared,
            busy: Arc::new(Mutex::new(false)),
            read_timeout,
            cork: Cork::default(),
            buf: ReadBuf::none(),
            start: 0,
            end: 0,
            drained: true,
            requests: 0,
            access_log,
            http: false,
            unread_wake: true,
            connected: Instant::now(),
        })
    }

    /// Readies the connection for a run: its read buffer, and the hooks
    /// through which this run's stop and make-room requests reach it.
    fn attach(&mut self, ctx: &HandlerContext) {
        if self.buf.is_empty() {
            self.buf = ReadBuf::take();
        }
        self.unread_wake = true;
        let (stop_stream, stop_busy) = (Arc::downgrade(&self.stream), self.busy.clone());
        ctx.on_stop(move |stop| {
            let busy = lock(&stop_busy);
            // Idle between requests: wake the blocked read. Busy: the
            // request finishes and the loop sees the stop before the next.
            let how = match stop {
                Stop::Now => Shutdown::Both,
                _ if *busy => return,
                _ => Shutdown::Read,
            };
            shut(&stop_stream, how);
        });
        // Asked to make room for a waiting client: the same, the loop
        // sees the request before it reads the next line.
        let (hook_stream, room_busy) = (Arc::downgrade(&self.stream), self.busy.clone());
        ctx.on_make_room(move |_| {
            if !*lock(&room_busy) {
                shut(&hook_stream, Shutdown::Read);
            }
        });
    }

    /// Whether the connection may be parked now: parking is on, this run
    /// read what woke it, nothing the client sent is unread here or inside
    /// TLS, and no stop or make-room request is pending. Bytes still in
    /// the socket need no look: the manager's epoll registration reports
    /// them at once, and the next run reads them before parking again.
    fn parkable(&mut self, ctx: &HandlerContext) -> bool {
        self.config().park_idle
            && !self.unread_wake
            && self.start == self.end
            && !self.stop_or_room(ctx)
            && self.io.is_drained()
    }

    /// Readies the connection to be parked: replies held back go out, and
    /// the read buffer goes back to the thread (a parked connection holds
    /// none).
    fn park(&mut self) -> io::Result<()> {
        self.cork.release(&self.stream)?;
        (self.start, self.end) = (0, 0);
        self.buf = ReadBuf::none();
        Ok(())
    }

    /// Logs the end of the connection, with `why` after it.
    fn log_closed(&self, why: &str) {
        log::info!(
            "{}: closed after {} request{} in {:?}{why}",
            self.peer,
            self.requests,
            if self.requests == 1 { "" } else { "s" },
            self.connected.elapsed()
        );
    }

    /// Closes a parked connection the manager let go: the line protocol
    /// says why when the contract gives it a reply (`ERR timeout` after
    /// the idle timeout, `ERR unavailable` on shutdown, `ERR busy` when
    /// its next request is refused); HTTP answers only a refused request
    /// (`503`), and is otherwise closed as keep-alive connections are.
    fn refuse_parked(self, reason: Refusal) {
        self.log_closed(&format!(" (parked: {reason})"));
        let reply = match (self.http, reason) {
            (_, Refusal::Evicted) => None,
            (true, reason) if reason.is_busy() => Some(http::refusal()),
            (true, _) => None,
            (false, Refusal::IdleTimeout) => {
                Some(reply_error(ErrorCode::Timeout, reasons::NO_REQUEST_IN_TIME))
            }
            (false, reason) => Some(refusal_line(reason)),
        };
        let Connection {
            stream,
            mut io,
            shared,
            ..
        } = self;
        let bytes = io.seal(reply.as_deref().unwrap_or_default().as_bytes());
        drop(io);
        shared.closer.refuse(stream, &bytes);
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
                Line::TooLong
                    if self.requests == 0 && http::long_request_line(self, deadline, ctx)? =>
                {
                    self.http = true;
                    return http::serve(self, ctx);
                }
                Line::Park => return Ok(End::Park),
                Line::TooLong => return self.fail(ErrorCode::BadRequest, "request line too long"),
                Line::TimedOut => {
                    return self.fail(ErrorCode::Timeout, reasons::NO_REQUEST_IN_TIME);
                }
            };
            // The first request line decides the protocol for good.
            if self.requests == 0 && http::is_request_line(&self.buf[line.clone()]) {
                self.start = line.start;
                self.http = true;
                return http::serve(self, ctx);
            }
            // Claim the connection for this request, unless a stop came.
            match self.claim(ctx) {
                Claim::Claimed => {}
                Claim::Stop => return self.stop_unavailable(),
                Claim::MakeRoom(why) => return self.make_room(why),
            }
            // The client sent the next request already: this reply
            // leaves with the next one's.
            if self.buf[self.start..self.end].contains(&b'\n') {
                self.cork.hold(&self.stream)?;
            }
            let began = Instant::now();
            // Rendered now: an upload body reuses the buffer the line is in.
            let shown =
                log::log_enabled!(log::Level::Info).then(|| loggable(&self.buf[line.clone()]));
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
                "{}{}: {} -> {} {} bytes in {:?}",
                self.peer,
                self.user
                    .as_ref()
                    .map(|user| format!(" ({})", user.name()))
                    .unwrap_or_default(),
                shown.unwrap_or_default(),
                outcome.code,
                outcome.bytes,
                began.elapsed()
            );
            let request = parsed.as_ref().ok();
            (self.shared.metrics).request(request, outcome.code, outcome.bytes);
            if let (Some(log), Some(path)) = (&self.access_log, logged) {
                log.record(&access_log::Entry {
                    client: self.peer,
                    user: self.user.as_ref().map(|user| user.name()),
                    verb: request.map_or("invalid", Request::verb),
                    path: &path,
                    result: &outcome.code,
                    bytes: outcome.bytes,
                    took: began.elapsed(),
                });
            }
            if let Some(end) = outcome.end {
                return Ok(end);
            }
        }
    }

    /// Closes the connection the way `end` says.
    fn finish(mut self, result: io::Result<End>) -> io::Result<()> {
        match result {
            // Nothing left unread: closing sends what is unsent (corked
            // replies included) and then the FIN, as a shutdown would, and
            // the hooks hold the socket weakly, so it closes here.
            Ok(End::Quietly | End::Park) if self.start == self.end && self.drained => {
                self.io.close_notify();
            }
            // After an error line, or with bytes left unread (a close would
            // send a reset, which can destroy replies the client has not
            // read yet): the closer shuts the write side and lingers.
            Ok(End::AfterError | End::Quietly | End::Park) => {
                self.io.close_notify();
                self.shared.closer.close(self.stream);
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

    /// Sends an `ERR` line; nothing while a TLS handshake is incomplete,
    /// since nothing can reach the client then.
    fn send_error(&mut self, code: ErrorCode, message: &str) -> io::Result<()> {
        if self.io.is_handshaking() {
            return Ok(());
        }
        self.send(reply_error(code, message).as_bytes())
    }

    /// Writes a reply (or part of one) and sends it on.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes)?;
        self.io.flush()
    }

    /// The root requests resolve beneath: the user's, or the served one.
    fn root(&self) -> &Root {
        self.user
            .as_ref()
            .and_then(|user| user.root())
            .unwrap_or(&self.shared.root)
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
            // Between requests (one answered already, nothing of the next
            // here yet): the slot goes back until the next one comes.
            if self.requests > 0 && self.parkable(ctx) {
                return Ok(Line::Park);
            }
            match self.fill(deadline, &mut idle, ctx)? {
                Filled::More => {}
                Filled::Eof => {
                    return Ok(Line::Eof {
                        partial: self.end > self.start,
                    });
                }
                Filled::TimedOut => return Ok(Line::TimedOut),
            }
        }
    }

    fn stop_or_room(&self, ctx: &HandlerContext) -> bool {
        ctx.stop_requested().is_some() || ctx.make_room_requested().is_some()
    }

    fn execute(&mut self, request: &Request, ctx: &HandlerContext) -> io::Result<Outcome> {
        if let Some(refusal) = self.access_refusal(request) {
            return refusal;
        }
        if let Some(refusal) = self.hidden_refusal(request) {
            return refusal;
        }
        match request {
            Request::Get { path, offset } => self.get(path, offset.unwrap_or(0), ctx),
            Request::Put { path, size } => self.put(path, *size),
            Request::List { path } => self.list(path),
            Request::Stat { path } => self.stat(path),
            Request::Sum { path, length } => self.sum(path, *length, ctx),
            Request::Auth { name, password } => self.auth(name, password),
            Request::Quit => {
                self.send(b"OK bye\n")?;
                Ok(Outcome::new(Answer::Ok, 0, Some(End::Quietly)))
            }
        }
    }

    /// With users: before `AUTH`, only `AUTH` and `QUIT` (and reads with
    /// `--anonymous-read`); after it, PUT needs the `rw` right.
    fn access_refusal(&mut self, request: &Request) -> Option<io::Result<Outcome>> {
        self.shared.users.as_ref()?;
        let is_put = matches!(request, Request::Put { .. });
        let (code, message) = match &self.user {
            Some(user) if is_put && self.config().allow_put && !user.may_write() => {
                (ErrorCode::Forbidden, reasons::READ_ONLY_USER)
            }
            Some(_) => return None,
            None => match request {
                Request::Auth { .. } | Request::Quit => return None,
                Request::Get { .. }
                | Request::List { .. }
                | Request::Stat { .. }
                | Request::Sum { .. }
                    if self.config().anonymous_read =>
                {
                    return None;
                }
                _ => (ErrorCode::Denied, reasons::AUTH_REQUIRED),
            },
        };
        Some(if is_put {
            // A refused PUT closes: its body cannot be skipped.
            self.fail(code, message)
                .map(|end| Outcome::new(Answer::Err(code), 0, Some(end)))
        } else {
            self.refuse(&FsError::new(code, message))
        })
    }

    /// `AUTH`: the plaintext rule, then the throttle, then the hash check.
    fn auth(&mut self, name: &str, password: &Password) -> io::Result<Outcome> {
        let shared = self.shared.clone();
        let Some(users) = &shared.users else {
            return self.refuse(&FsError::new(
                ErrorCode::BadRequest,
                "authentication is not configured",
            ));
        };
        if self.user.is_some() {
            return self.refuse(&FsError::new(ErrorCode::BadRequest, "already logged in"));
        }
        let metrics = &shared.metrics;
        if !plain_auth_allowed(
            self.io.is_tls(),
            self.peer.ip(),
            self.config().allow_plain_auth,
        ) {
            metrics.login(LoginResult::PlaintextRefused);
            return self.refuse(&FsError::new(ErrorCode::Forbidden, "AUTH needs TLS"));
        }
        let login = users.authenticate(self.peer.ip(), name, password.as_bytes(), || {
            metrics.password_checked();
        });
        let (result, message) = match login {
            Login::Ok(user) => {
                metrics.login(LoginResult::Ok);
                log::info!("{}: logged in as {}", self.peer, user.name());
                self.send(format!("OK {}\n", user.name()).as_bytes())?;
                self.user = Some(user);
                return Ok(Outcome::new(Answer::Ok, 0, None));
            }
            Login::Denied => (LoginResult::Denied, reasons::BAD_CREDENTIALS),
            Login::Throttled => (LoginResult::Throttled, reasons::TOO_MANY_FAILURES),
        };
        metrics.login(result);
        self.failed_logins += 1;
        if self.failed_logins >= MAX_FAILED_LOGINS {
            return self
                .fail(ErrorCode::Denied, message)
                .map(|end| Outcome::new(Answer::Err(ErrorCode::Denied), 0, Some(end)));
        }
        self.refuse(&FsError::new(ErrorCode::Denied, message))
    }

    /// Hidden names, unless served: as if absent, and PUT is forbidden
    /// (closing, as every refused PUT does).
    fn hidden_refusal(&mut self, request: &Request) -> Option<io::Result<Outcome>> {
        if self.config().hidden || !request.path().is_some_and(RelPath::is_hidden) {
            return None;
        }
        Some(match request {
            Request::Put { .. } => self
                .fail(ErrorCode::Forbidden, reasons::HIDDEN_WRITE)
                .map(|end| Outcome::new(Answer::Err(ErrorCode::Forbidden), 0, Some(end))),
            // Answered as an absent name is, by the same error.
            _ => self.refuse(&FsError::resolving(Errno::NOENT)),
        })
    }

    /// Replies to a failed file operation; the connection stays.
    fn refuse(&mut self, e: &FsError) -> io::Result<Outcome> {
        // At most one a second: under descriptor starvation every request
        // fails, and each warning would otherwise be a line of log.
        static INTERNAL: Throttle = Throttle::new();
        if e.code() == ErrorCode::Internal {
            let source = std::error::Error::source(e);
            match INTERNAL.allow() {
                Some(0) => log::warn!("{}: {e}: {source:?}", self.peer),
                Some(held) => log::warn!(
                    "{}: {e}: {source:?} ({held} more internal errors in the last second)",
                    self.peer
                ),
                None => log::debug!("{}: {e}: {source:?}", self.peer),
            }
        }
        self.send_error(e.code(), e.message())?;
        Ok(Outcome::new(Answer::Err(e.code()), 0, None))
    }

    fn get(&mut self, path: &RelPath, offset: u64, ctx: &HandlerContext) -> io::Result<Outcome> {
        let (file, metadata) = match self.root().open_file(path) {
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
            self.send(header.as_bytes())?;
            return Ok(Outcome::new(Answer::Ok, 0, None));
        }
        let sent = match self.io.plain_socket() {
            Some(socket) => {
                // Held back (MSG_MORE) so the header leaves in one segment
                // with the start of the body.
                send_all(socket, header.as_bytes(), SendFlags::MORE)?;
                send_body(socket, &file, offset, count, self.config())?
            }
            // TLS: no sendfile; the header goes in the first record batch.
            None => {
                let mut out = self.io.paced(&self.shared.config);
                out.write_all(header.as_bytes())?;
                copy_body(&mut out, &file, offset, offset + count, count)?
            }
        };
        match sent {
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
            return refuse(self, ErrorCode::Forbidden, reasons::UPLOADS_DISABLED);
        }
        let limit = self.config().max_upload;
        if size > limit {
            let message = reasons::too_large(size, limit);
            return refuse(self, ErrorCode::TooLarge, &message);
        }
        let mut temp = match self.root().create_temp(path) {
            Ok(temp) => temp,
            Err(e) => return refuse(self, e.code(), e.message()),
        };
        // Space first: a body the disk cannot hold is refused before it is
        // read; disk is then reserved as it arrives, not up front.
        if let Err(e) = temp.expect(size) {
            log::warn!("{}: upload to {path} refused: {e}", self.peer);
            return refuse(self, e.code(), e.message());
        }
        match self.receive_body(&mut temp, size)? {
            Received::All => {}
            Received::Gone => return Ok(Outcome::new(Answer::Gone, 0, Some(End::Quietly))),
            Received::Stalled => {
                return refuse(self, ErrorCode::Timeout, reasons::UPLOAD_STALLED);
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
        self.send(format!("OK {size}\n").as_bytes())?;
        Ok(Outcome::new(Answer::Ok, size, None))
    }

    /// Copies `size` body bytes (buffered first, then from the socket) to
    /// `file`, within the stall timeout and the minimum rate ([`Pace`]).
    fn receive_body(&mut self, file: &mut TempFile, size: u64) -> io::Result<Received> {
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
            // Reads stop at the body's end, whatever follows it.
            self.drained = false;
            let room = &mut self.buf[self.end..];
            let want = chunk_len(left, room.len());
            let n = match self.io.read(&mut room[..want]) {
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
            .root()
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
        // whole. Paced as a GET body is.
        let paced = self.io.paced(&self.shared.config);
        let mut out = io::BufWriter::with_capacity(LIST_BUF, paced);
        match listing
            .write_reply(&mut out)
            .and_then(|bytes| out.flush().map(|()| bytes))
        {
            Ok(bytes) => Ok(Outcome::new(Answer::Ok, bytes, None)),
            Err(_) if out.get_ref().stalled() => {
                Ok(Outcome::new(Answer::Stalled, 0, Some(End::Abruptly)))
            }
            Err(e) => Err(e),
        }
    }

    fn sum(
        &mut self,
        path: &RelPath,
        length: Option<u64>,
        ctx: &HandlerContext,
    ) -> io::Result<Outcome> {
        let (file, metadata) = match self.root().open_file(path) {
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
                self.send(format!("OK {sum}\n").as_bytes())?;
                Ok(Outcome::new(Answer::Ok, sum.len, None))
            }
            Err(_) if cut() => Ok(Outcome::new(Answer::CutByShutdown, 0, Some(End::Abruptly))),
            Err(e) => self.refuse(&FsError::from(e)),
        }
    }

    fn stat(&mut self, path: &RelPath) -> io::Result<Outcome> {
        match self.root().stat(path) {
            Ok(entry) => {
                self.send(format!("OK {entry}\n").as_bytes())?;
                Ok(Outcome::new(Answer::Ok, 0, None))
            }
            Err(e) => self.refuse(&e),
        }
    }
}

/// `AUTH`s refused on one connection before it is closed.
const MAX_FAILED_LOGINS: u32 = 3;

/// A request line as the log shows it: an `AUTH`'s password left out,
/// even from a line that does not parse.
fn loggable(raw: &[u8]) -> String {
    let is_auth = raw.len() > 5 && raw[..5].eq_ignore_ascii_case(b"AUTH ");
    if !is_auth {
        return printable_line(raw);
    }
    let name_end = raw[5..]
        .iter()
        .position(|&b| b == b' ')
        .map_or(raw.len(), |i| 5 + i);
    format!("{} ***", printable_line(&raw[..name_end]))
}

/// What [`Connection::fill`] found.
pub(super) enum Filled {
    More,
    Eof,
    TimedOut,
}

/// Whether a request may start now.
pub(super) enum Claim {
    Claimed,
    Stop,
    MakeRoom(MakeRoom),
}

/// The HTTP serve loop's view of the connection (see [`http::Wire`]).
impl http::Wire for Connection {
    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    fn state(&self) -> &ServerState {
        &self.shared
    }

    fn shared(&self) -> Arc<ServerState> {
        self.shared.clone()
    }

    fn is_tls(&self) -> bool {
        self.io.is_tls()
    }

    /// The bytes received and not yet consumed.
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
    }

    /// Reads what the client sent next into the buffer, by `deadline`,
    /// making room first if the buffer is full up to its end. Marks the
    /// handler idle before the first read that may wait (`idle`).
    fn fill(
        &mut self,
        deadline: Option<Instant>,
        idle: &mut bool,
        ctx: &HandlerContext,
    ) -> io::Result<Filled> {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let timeout = match deadline.map(time_left) {
            None => None,
            Some(Some(left)) => Some(left),
            Some(None) => return Ok(Filled::TimedOut),
        };
        if !*idle {
            ctx.set_idle();
            *idle = true;
        }
        self.read_timeout.set(&self.stream, timeout)?;
        self.cork.release(&self.stream)?;
        let room = self.buf.len() - self.end;
        match self.io.read(&mut self.buf[self.end..]) {
            Ok(0) => return Ok(Filled::Eof),
            Ok(n) => {
                self.end += n;
                self.drained = n < room;
                self.unread_wake = false;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A handshake cut by the stop or make-room hooks (a read
            // shut down) ends as an idle read does.
            Err(_) if self.io.is_handshaking() && self.stop_or_room(ctx) => {
                return Ok(Filled::Eof);
            }
            Err(e) => return Err(e),
        }
        Ok(Filled::More)
    }

    /// Claims the connection for a request (and counts it), unless a
    /// stop or a request to make room came first.
    fn claim(&mut self, ctx: &HandlerContext) -> Claim {
        let mut busy = lock(&self.busy);
        if ctx.stop_requested().is_some() {
            return Claim::Stop;
        }
        if let Some(why) = ctx.make_room_requested() {
            return Claim::MakeRoom(why);
        }
        *busy = true;
        ctx.set_busy();
        self.requests += 1;
        Claim::Claimed
    }

    fn release(&self) {
        *lock(&self.busy) = false;
    }

    fn hold(&mut self) -> io::Result<()> {
        self.cork.hold(&self.stream)
    }

    /// Written through TLS when the port speaks it, and flushed: a TLS
    /// record may wait for the next write otherwise.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes)?;
        self.io.flush()
    }

    fn send_file(&mut self, head: &[u8], file: &File, offset: u64, count: u64) -> io::Result<Sent> {
        let Some(socket) = self.io.plain_socket() else {
            // TLS: no sendfile; the head goes in the first record batch.
            let mut out = self.io.paced(&self.shared.config);
            out.write_all(head)?;
            return copy_body(&mut out, file, offset, offset + count, count);
        };
        // Held back (MSG_MORE) so the head leaves with the body's start.
        send_all(socket, head, SendFlags::MORE)?;
        send_body(socket, file, offset, count, &self.shared.config)
    }

    fn receive_body(&mut self, file: &mut TempFile, size: u64) -> io::Result<Received> {
        Connection::receive_body(self, file, size)
    }

    fn parkable(&mut self, ctx: &HandlerContext) -> bool {
        Connection::parkable(self, ctx)
    }

    fn paced(&mut self) -> Paced<'_> {
        self.io.paced(&self.shared.config)
    }
}

enum Line {
    Complete(std::ops::Range<usize>),
    Eof {
        partial: bool,
    },
    TooLong,
    TimedOut,
    /// Nothing of the next request yet, and the connection may park.
    Park,
}

pub(super) enum Received {
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
