//! The HTTP serve loop: request heads read one after another (pipelined
//! ones answered in order), GET and HEAD of files and directories, PUT,
//! and the replies that end a connection.

use std::ffi::OsStr;
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustix::io::Errno;

use super::head::{self, Head, Method, Parsed};
use super::listing;
use super::reply::{ReplyHead, Status, plain};
use super::validators::{Ranged, Validators, range};
use super::wire::Wire;
use crate::protocol::checksum::sum_prefix_until;
use crate::protocol::server::access_log::Entry;
use crate::protocol::server::fs::{FsError, Root};
use crate::protocol::server::metrics::LoginResult;
use crate::protocol::server::reasons;
use crate::protocol::server::session::{Claim, End, Filled, LIST_BUF, Received, ServerState};
use crate::protocol::server::transfer::Sent;
use crate::protocol::server::users::{Login, User, plain_auth_allowed};
use crate::protocol::wire::{EntryKind, ErrorCode, RelPath, printable_line};
use crate::{HandlerContext, Stop};

/// How one request went, for the log, the metrics and the connection.
struct Outcome {
    status: Status,
    /// Body bytes sent or received.
    bytes: u64,
    /// `None`: the connection stays for the next request.
    end: Option<End>,
}

impl Outcome {
    fn new(status: Status, bytes: u64, end: Option<End>) -> Outcome {
        Outcome { status, bytes, end }
    }
}

/// Serves HTTP requests on `wire` until the connection must end. The
/// first request's head is at the start of the pending bytes.
pub(in crate::protocol::server) fn serve(
    wire: &mut impl Wire,
    ctx: &HandlerContext,
) -> io::Result<End> {
    // Owned once per run, not per request: every worker's connections
    // count references on this one, and each clone moves its cache line.
    let state = wire.shared();
    loop {
        // An idle keep-alive connection is simply closed, as HTTP allows
        // at any time between requests.
        if ctx.stop_requested().is_some() || ctx.make_room_requested().is_some() {
            return Ok(End::Quietly);
        }
        let head = match read_head(wire, ctx)? {
            Ok(head) => head,
            Err(end) => return Ok(end),
        };
        match wire.claim(ctx) {
            Claim::Claimed => {}
            Claim::Stop | Claim::MakeRoom(_) => {
                let reply = super::reply::refusal();
                let _ = wire.write_all(reply.as_bytes());
                return Ok(End::AfterError);
            }
        }
        if !wire.pending().is_empty() && head.method != Method::Put {
            wire.hold()?;
        }
        let began = Instant::now();
        // Who asked (`Authorization: Basic`), for the access log too.
        let mut user = None;
        let outcome = authorize(wire, &head, &state).and_then(|authorized| match authorized {
            Ok(who) => {
                user = who;
                respond(wire, &state, &head, ctx, user.as_deref())
            }
            Err(refused) => Ok(refused),
        });
        wire.release();
        let outcome = outcome?;
        log::info!(
            "{}: {} {} -> {} {} bytes in {:?}",
            wire.peer(),
            head.method.as_str(),
            printable_line(head.target.as_bytes()),
            outcome.status.code(),
            outcome.bytes,
            began.elapsed()
        );
        (wire.state().metrics).http_request(
            head.method.as_str(),
            outcome.status.code(),
            head.method == Method::Put,
            outcome.bytes,
        );
        if let Some(log) = wire.access_log() {
            log.record(&Entry {
                client: wire.peer(),
                user: user.as_ref().map(|user| user.name()),
                verb: head.method.as_str(),
                path: &head.target,
                result: &outcome.status.code(),
                bytes: outcome.bytes,
                took: began.elapsed(),
            });
        }
        if let Some(end) = outcome.end {
            return Ok(end);
        }
        // Closed as a client's QUIT is: at once when nothing is unread, so
        // the common `Connection: close` needs no lingering close.
        if !head.keep_alive {
            return Ok(End::Quietly);
        }
    }
}

/// Reads the next request head within the idle timeout and consumes it;
/// `Err` with how the connection ends when there is none to serve.
fn read_head(wire: &mut impl Wire, ctx: &HandlerContext) -> io::Result<Result<Head, End>> {
    let deadline = (wire.state().config.idle_timeout).and_then(|t| Instant::now().checked_add(t));
    let mut idle = false;
    loop {
        let refused = match head::parse(wire.pending()) {
            Parsed::Complete(head, len) => {
                wire.consume(len);
                return Ok(Ok(head));
            }
            Parsed::Refused(status, why) => Some((status, why)),
            Parsed::Partial => None,
        };
        if let Some((status, why)) = refused {
            log::info!("{}: HTTP request refused: {why}", wire.peer());
            (wire.state().metrics).http_request("invalid", status.code(), false, 0);
            if let Some(log) = wire.access_log() {
                log.record(&Entry {
                    client: wire.peer(),
                    user: None,
                    verb: "invalid",
                    path: "-",
                    result: &status.code(),
                    bytes: 0,
                    took: Duration::ZERO,
                });
            }
            let _ = wire.write_all(plain(status, Some(why), &[], false, false).as_bytes());
            return Ok(Err(End::AfterError));
        }
        let started = !wire.pending().is_empty();
        if !started && wire.parkable(ctx) {
            return Ok(Err(End::Park));
        }
        match wire.fill(deadline, &mut idle, ctx)? {
            Filled::More => {}
            // Between requests, stopped, or asked to make room: just close.
            Filled::Eof
                if !started
                    || ctx.stop_requested().is_some()
                    || ctx.make_room_requested().is_some() =>
            {
                return Ok(Err(End::Quietly));
            }
            Filled::Eof => {
                let why = Some("incomplete request head");
                let reply = plain(Status::BadRequest, why, &[], false, false);
                let _ = wire.write_all(reply.as_bytes());
                return Ok(Err(End::AfterError));
            }
            Filled::TimedOut if !started => return Ok(Err(End::Quietly)),
            Filled::TimedOut => {
                let why = Some(reasons::NO_REQUEST_IN_TIME);
                let reply = plain(Status::RequestTimeout, why, &[], false, false);
                let _ = wire.write_all(reply.as_bytes());
                return Ok(Err(End::AfterError));
            }
        }
    }
}

/// Answers one request made as `user` (see [`authorize`]).
fn respond(
    wire: &mut impl Wire,
    state: &ServerState,
    head: &Head,
    ctx: &HandlerContext,
    user: Option<&User>,
) -> io::Result<Outcome> {
    // Paths resolve beneath the user's root, with every rule of the
    // served root.
    let root = user.and_then(User::root).unwrap_or(&state.root);
    let config = &state.config;
    let allow_put = config.allow_put;
    let path = match (&head.path, head.method) {
        (_, Method::Other) => {
            let allow = if allow_put {
                "GET, HEAD, PUT"
            } else {
                "GET, HEAD"
            };
            let keep = head.keep_alive && head.content_length.unwrap_or(0) == 0;
            return reply_plain(
                wire,
                head,
                Status::MethodNotAllowed,
                None,
                &[("Allow", allow)],
                keep,
            );
        }
        // PUT needs --allow-put, and with users the `rw` right.
        (_, Method::Put) if !allow_put => {
            let why = Some(reasons::UPLOADS_DISABLED);
            return reply_plain(wire, head, Status::Forbidden, why, &[], false);
        }
        (_, Method::Put) if state.users.is_some() && !user.is_some_and(User::may_write) => {
            let why = Some(reasons::READ_ONLY_USER);
            return reply_plain(wire, head, Status::Forbidden, why, &[], false);
        }
        (Err(e), _) => {
            let keep = head.keep_alive && head.method != Method::Put;
            let why = Some(e.message());
            return reply_plain(wire, head, Status::of(e.code()), why, &[], keep);
        }
        (Ok(path), _) => path,
    };
    if !config.hidden && path.is_hidden() {
        return match head.method {
            Method::Put => {
                let why = Some(reasons::HIDDEN_WRITE);
                reply_plain(wire, head, Status::Forbidden, why, &[], false)
            }
            // Answered as an absent name is, by the same error.
            _ => refuse(wire, head, &FsError::resolving(Errno::NOENT), true),
        };
    }
    match head.method {
        Method::Put => put(wire, head, root, path),
        _ if head.content_length.unwrap_or(0) > 0 => {
            let why = Some(head::NO_BODIES);
            reply_plain(wire, head, Status::BadRequest, why, &[], false)
        }
        _ => get(wire, head, root, path, ctx),
    }
}

/// The user a request is made as: `None` without users, or for a read
/// before login under `--anonymous-read`. `Authorization: Basic` is
/// checked exactly as `AUTH` is, the rule on plaintext and the throttle
/// included; a refusal is the reply it got (`401` with
/// `WWW-Authenticate`, or `403` for a password sent in plaintext).
fn authorize(
    wire: &mut impl Wire,
    head: &Head,
    state: &ServerState,
) -> io::Result<Result<Option<Arc<User>>, Outcome>> {
    let Some(users) = &state.users else {
        return Ok(Ok(None));
    };
    let keep = head.keep_alive && head.content_length.unwrap_or(0) == 0;
    let challenge = [("WWW-Authenticate", "Basic realm=\"filesrv\"")];
    let Some(credentials) = head.basic_auth.as_deref() else {
        let anonymous = matches!(head.method, Method::Get | Method::Head);
        if anonymous && state.config.anonymous_read {
            return Ok(Ok(None));
        }
        let why = Some(reasons::AUTH_REQUIRED);
        return reply_plain(wire, head, Status::Unauthorized, why, &challenge, keep).map(Err);
    };
    let metrics = &state.metrics;
    if !plain_auth_allowed(
        wire.is_tls(),
        wire.peer().ip(),
        state.config.allow_plain_auth,
    ) {
        metrics.login(LoginResult::PlaintextRefused);
        let why = Some("a password needs TLS");
        return reply_plain(wire, head, Status::Forbidden, why, &[], keep).map(Err);
    }
    // `name:password`, base64 (RFC 7617); anything else is a bad one.
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .unwrap_or_default();
    let split = decoded.iter().position(|&b| b == b':');
    let (name, password) = match split {
        Some(i) => (String::from_utf8_lossy(&decoded[..i]), &decoded[i + 1..]),
        None => (String::from_utf8_lossy(&decoded), &[][..]),
    };
    let login = users.authenticate(wire.peer().ip(), &name, password, || {
        metrics.password_checked();
    });
    // A wrong password and an unknown name get the same words, as AUTH's.
    let (result, why) = match login {
        Login::Ok(user) => {
            metrics.login(LoginResult::Ok);
            return Ok(Ok(Some(user)));
        }
        Login::Denied => (LoginResult::Denied, reasons::BAD_CREDENTIALS),
        Login::Throttled => (LoginResult::Throttled, reasons::TOO_MANY_FAILURES),
    };
    metrics.login(result);
    let why = Some(why);
    reply_plain(wire, head, Status::Unauthorized, why, &challenge, keep).map(Err)
}

/// A short `text/plain` reply saying `why` when given, in the line
/// protocol's words (without its body for HEAD).
fn reply_plain(
    wire: &mut impl Wire,
    head: &Head,
    status: Status,
    why: Option<&str>,
    extra: &[(&str, &str)],
    keep_alive: bool,
) -> io::Result<Outcome> {
    let mut text = plain(status, why, extra, keep_alive, head.http10);
    if head.method == Method::Head {
        let end = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
        text.truncate(end);
    }
    wire.write_all(text.as_bytes())?;
    let end = (!keep_alive).then_some(End::AfterError);
    Ok(Outcome::new(status, 0, end))
}

/// Replies to a failed file operation.
fn refuse(wire: &mut impl Wire, head: &Head, e: &FsError, keep: bool) -> io::Result<Outcome> {
    if e.code() == ErrorCode::Internal {
        log::warn!("{}: {e}: {:?}", wire.peer(), std::error::Error::source(e));
    }
    let keep = keep && head.keep_alive && e.code() != ErrorCode::TooLarge;
    let why = Some(e.message());
    reply_plain(wire, head, Status::of(e.code()), why, &[], keep)
}

fn get(
    wire: &mut impl Wire,
    head: &Head,
    root: &Root,
    path: &RelPath,
    ctx: &HandlerContext,
) -> io::Result<Outcome> {
    let (file, metadata) = match root.open_file(path) {
        Ok(opened) => opened,
        Err(e) if e.code() == ErrorCode::BadRequest => {
            return match root.stat(path) {
                Ok(stat) if stat.kind == EntryKind::Dir => directory(wire, head, root, path),
                _ => refuse(wire, head, &e, true),
            };
        }
        Err(e) => return refuse(wire, head, &e, true),
    };
    let size = metadata.len();
    let validators = Validators::of(&metadata);
    let last_modified = validators.last_modified();
    let not_modified = validators.not_modified(
        head.if_none_match.as_deref(),
        head.if_modified_since.as_deref(),
    );
    if not_modified {
        let text = ReplyHead::new(Status::NotModified)
            .field("ETag", &validators.etag)
            .field("Last-Modified", &last_modified)
            .finish(size, head.keep_alive, head.http10);
        wire.write_all(text.as_bytes())?;
        return Ok(Outcome::new(Status::NotModified, 0, None));
    }
    let ranged = match (&head.range, &head.if_range) {
        (Some(value), None) => range(value, size),
        (Some(value), Some(tag)) if validators.if_range_holds(tag) => range(value, size),
        _ => Ranged::Whole,
    };
    let (status, start, len) = match ranged {
        Ranged::Whole => (Status::Ok, 0, size),
        Ranged::Part { start, len } => (Status::PartialContent, start, len),
        Ranged::Unsatisfiable => {
            let unsatisfied = format!("bytes */{size}");
            let extra = [("Content-Range", unsatisfied.as_str())];
            return reply_plain(
                wire,
                head,
                Status::RangeNotSatisfiable,
                None,
                &extra,
                head.keep_alive,
            );
        }
    };
    let name = path.file_name().unwrap_or_default();
    let kind = mime_guess::from_path(OsStr::from_bytes(name))
        .first_raw()
        .unwrap_or("application/octet-stream");
    let mut reply = ReplyHead::new(status)
        .field("Content-Type", kind)
        .field("Last-Modified", &last_modified)
        .field("ETag", &validators.etag)
        .field("Accept-Ranges", "bytes");
    if status == Status::PartialContent {
        let end = start + len - 1;
        reply = reply.field("Content-Range", &format!("bytes {start}-{end}/{size}"));
    }
    if head.want_sha256 {
        // The end of the shutdown grace stops a long hash.
        let cut = || ctx.stop_requested() == Some(Stop::Now);
        match sum_prefix_until(&file, size, &cut) {
            Ok(sum) => {
                let digest = base64::engine::general_purpose::STANDARD.encode(sum.sha256);
                reply = reply.field("Repr-Digest", &format!("sha-256=:{digest}:"));
            }
            Err(_) if cut() => return Ok(Outcome::new(status, 0, Some(End::Abruptly))),
            Err(e) => return refuse(wire, head, &FsError::from(e), true),
        }
    }
    let text = reply.finish(len, head.keep_alive, head.http10);
    if head.method == Method::Head || len == 0 {
        wire.write_all(text.as_bytes())?;
        return Ok(Outcome::new(status, 0, None));
    }
    match wire.send_file(text.as_bytes(), &file, start, len)? {
        Sent::All => Ok(Outcome::new(status, len, None)),
        Sent::Short(sent) => {
            log::info!("{}: {path} shrank while being sent", wire.peer());
            Ok(Outcome::new(status, sent, Some(End::Abruptly)))
        }
        Sent::Stalled(sent) => Ok(Outcome::new(status, sent, Some(End::Abruptly))),
    }
}

/// A directory: `301` to the path with a final `/`, else the listing.
fn directory(
    wire: &mut impl Wire,
    head: &Head,
    root: &Root,
    path: &RelPath,
) -> io::Result<Outcome> {
    if !head.slash {
        let target = head
            .target
            .split_once('?')
            .map_or(&*head.target, |(p, _)| p);
        let location = format!("{target}/");
        let extra = [("Location", location.as_str())];
        return reply_plain(
            wire,
            head,
            Status::MovedPermanently,
            None,
            &extra,
            head.keep_alive,
        );
    }
    let config = &wire.state().config;
    let listing = root.list(path, config.hidden, config.max_list_entries);
    let listing = match listing {
        Ok(listing) => listing,
        Err(e) => return refuse(wire, head, &e, true),
    };
    let length = listing::write_page(path, &listing, &mut io::sink())?;
    let text = ReplyHead::new(Status::Ok)
        .field("Content-Type", "text/html; charset=utf-8")
        .finish(length, head.keep_alive, head.http10);
    if head.method != Method::Get {
        wire.write_all(text.as_bytes())?;
        return Ok(Outcome::new(Status::Ok, 0, None));
    }
    // Streamed through a small buffer at a body's pace, as a LIST is.
    let mut out = io::BufWriter::with_capacity(LIST_BUF, wire.paced());
    let written = out
        .write_all(text.as_bytes())
        .and_then(|()| listing::write_page(path, &listing, &mut out))
        .and_then(|bytes| out.flush().map(|()| bytes));
    match written {
        Ok(bytes) => Ok(Outcome::new(Status::Ok, bytes, None)),
        Err(_) if out.get_ref().stalled() => Ok(Outcome::new(Status::Ok, 0, Some(End::Abruptly))),
        Err(e) => Err(e),
    }
}

/// An upload through the line protocol's atomic path. Every refusal
/// closes the connection: the body cannot be skipped safely.
fn put(wire: &mut impl Wire, head: &Head, root: &Root, path: &RelPath) -> io::Result<Outcome> {
    let size = head.content_length.unwrap_or(0);
    let limit = wire.state().config.max_upload;
    if size > limit {
        let why = reasons::too_large(size, limit);
        return reply_plain(wire, head, Status::ContentTooLarge, Some(&why), &[], false);
    }
    let existed = root.stat(path).is_ok();
    let mut temp = match root.create_temp(path) {
        Ok(temp) => temp,
        Err(e) => return refuse(wire, head, &e, false),
    };
    // Space first: a body the disk cannot hold is refused before it is
    // read; disk is then reserved as it arrives, not up front.
    if let Err(e) = temp.expect(size) {
        log::warn!("{}: upload to {path} refused: {e}", wire.peer());
        return refuse(wire, head, &e, false);
    }
    if head.expect_continue {
        wire.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    match wire.receive_body(&mut temp, size)? {
        Received::All => {}
        Received::Gone => return Ok(Outcome::new(Status::BadRequest, 0, Some(End::Quietly))),
        Received::Stalled => {
            let why = Some(reasons::UPLOAD_STALLED);
            return reply_plain(wire, head, Status::RequestTimeout, why, &[], false);
        }
        Received::WriteFailed(e) => {
            log::warn!("{}: upload to {path} failed: {e}", wire.peer());
            return refuse(wire, head, &FsError::from(e), false);
        }
    }
    if let Err(e) = temp.commit() {
        log::warn!("{}: upload to {path} failed: {e}", wire.peer());
        return refuse(wire, head, &e, false);
    }
    let status = if existed {
        Status::NoContent
    } else {
        Status::Created
    };
    let text = ReplyHead::new(status).finish(0, head.keep_alive, head.http10);
    wire.write_all(text.as_bytes())?;
    let end = (!head.keep_alive).then_some(End::AfterError);
    Ok(Outcome::new(status, size, end))
}
