//! A blocking client for the file-transfer protocol.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::checksum::sum_prefix;
use super::client_tls::{ClientStream, ClientTls};
use super::wire::{ErrorCode, FileSum, ListEntry, Stat, encode_name, number};
use crate::util::chunk_len;

/// The size of the buffer that bodies are copied through.
const CHUNK: usize = 256 * 1024;

/// The longest reply line accepted, `\n` included.
///
/// Far above anything the protocol produces: a LIST line holds one encoded
/// name, at most three times the longest name a file system allows.
const MAX_REPLY: u64 = 64 * 1024;

/// A connection to a file server, serving one request at a time.
///
/// Paths are given as they are named on the server, relative to its root:
/// the client writes every space, `%`, control character and DEL as a `%XX`
/// escape in the request line, so any name that is valid UTF-8 can be asked
/// for as it is. The empty path and `/` both name the root.
///
/// Opens the partial download at `path`, creating it (empty) if `create`,
/// without following a symlink there, and only if it is a regular file
/// this user owns under no other name: a link someone else planted at the
/// predictable name is refused, never written through.
fn open_partial(path: &Path, create: bool) -> io::Result<File> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let not_ours = || {
        io::Error::new(
            ErrorKind::PermissionDenied,
            "not a regular file of this user's: refusing to write through it",
        )
    };
    // Non-blocking, so that a FIFO planted there cannot stall the open.
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .custom_flags(i32::try_from(flags.bits()).map_err(|_| not_ours())?)
        .open(path)
        .map_err(|error| match error.raw_os_error() {
            Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => not_ours(),
            _ => error,
        })?;
    let metadata = file.metadata()?;
    let ours = metadata.file_type().is_file()
        && metadata.uid() == rustix::process::geteuid().as_raw()
        && metadata.nlink() == 1;
    if !ours {
        return Err(not_ours());
    }
    if create {
        file.set_len(0)?;
    }
    Ok(file)
}

/// A reply of `ERR <code> <message>` comes back as [`ClientError::Server`]
/// and leaves the client usable when the server keeps the connection (see
/// the protocol's table of codes). Any other error leaves the connection
/// out of step with the server, so the client shuts it down, and later
/// calls fail at once with [`ClientError::Io`].
///
/// ```no_run
/// use std::time::Duration;
/// use filesrv::protocol::Client;
///
/// # fn main() -> Result<(), filesrv::protocol::ClientError> {
/// let mut client = Client::connect_timeout("127.0.0.1:9000", Duration::from_secs(30))?;
/// let mut notes = Vec::new();
/// client.get_to("notes.txt", 0, &mut notes)?;
/// for entry in client.list("")? {
///     println!("{} {}", entry.kind, String::from_utf8_lossy(&entry.name));
/// }
/// client.quit()
/// # }
/// ```
pub struct Client {
    /// The connection; requests are written through `get_mut`.
    reader: BufReader<ClientStream>,
    /// Told about each transfer's progress.
    progress: Option<Box<dyn FnMut(Progress) + Send>>,
    /// Told about what a call did unasked (see [`Client::set_notice`]).
    notice: Option<Box<Notice>>,
    /// Set once an error left the connection out of step: it is shut down.
    closed: bool,
}

/// The callback given to [`Client::set_notice`].
type Notice = dyn FnMut(&str) + Send;

/// How [`Client::get_file`] and [`Client::put_file`] go about a transfer.
///
/// The default resumes and verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransferOptions {
    /// Downloads: continue the partial file an earlier download of the
    /// same remote file left (if its bytes still match the server's);
    /// off: start over. Uploads ignore it.
    pub resume: bool,
    /// Check the result against the server's `SUM` (and a partial
    /// download's bytes before resuming it); off for a server too old
    /// to know `SUM`.
    pub verify: bool,
}

impl Default for TransferOptions {
    fn default() -> TransferOptions {
        TransferOptions {
            resume: true,
            verify: true,
        }
    }
}

impl TransferOptions {
    /// Sets [`resume`](TransferOptions::resume).
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// Sets [`verify`](TransferOptions::verify).
    pub fn verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Syncs the directory holding `path`, so that a rename into it survives
/// a crash.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// How far a transfer has come, as told to the callback given to
/// [`Client::set_progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The bytes of the file now at the destination, those a resumed
    /// download started with included.
    pub done: u64,
    /// The bytes the destination will hold when the transfer ends: the
    /// file's size on the server for a download, the body's size for an
    /// upload.
    pub total: u64,
    /// What the transfer is doing: only [`Stage::Transfer`] moves bytes.
    pub stage: Stage,
}

/// The part of a transfer a [`Progress`] report is about. The checks
/// before and after the body move no bytes but can take seconds on a
/// large file (both sides hash it), so a caller showing progress can say
/// what is happening meanwhile, and time the body alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Before a download resumes: the partial file's `done` bytes are
    /// being compared with the server's `SUM` of as many. Reported once,
    /// when it begins.
    ResumeCheck,
    /// The body moves: reported when it is about to flow, then after every
    /// chunk.
    Transfer,
    /// After the body: the whole file is being compared with the server's
    /// `SUM`. Reported once, when it begins; `done` equals `total`.
    Verify,
}

/// The error of a [`Client`] call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the request with `ERR <code> <message>`.
    #[error("server refused: {code} {message}")]
    Server {
        /// The reply's code.
        code: ErrorCode,
        /// The reply's message, for people.
        message: String,
    },
    /// The server's address could not be resolved.
    #[error("cannot resolve the server address")]
    Resolve(#[source] io::Error),
    /// No address of the server accepted the connection; the error is the
    /// last address's.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// Reading from or writing to the connection failed or timed out, the
    /// server closed it, or an earlier error left it closed.
    #[error("connection error")]
    Io(#[source] io::Error),
    /// A local file could not be opened, read, written or synced, or is not
    /// a regular file.
    #[error("local file {}", path.display())]
    File {
        /// The file, as the caller named it.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The caller's reader or writer failed, or the reader ended before the
    /// announced size.
    #[error("local stream error")]
    Local(#[source] io::Error),
    /// The server's reply does not follow the protocol.
    #[error("malformed reply: {0}")]
    Protocol(String),
    /// A transferred file does not match the server's `SUM` of it.
    #[error("the file does not match the server's: sha256 {} ({} bytes) here, {} ({} bytes) there", local.hex(), local.len, remote.hex(), remote.len)]
    Mismatch {
        /// The sum of the bytes this side has.
        local: FileSum,
        /// The server's sum.
        remote: FileSum,
    },
    /// The TLS handshake failed: the server's certificate is not trusted
    /// (unknown CA, wrong name, wrong pin) or TLS failed otherwise.
    /// Nothing was sent to the server.
    #[error("TLS handshake with {addr} failed")]
    Tls {
        /// The server's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server answered a plaintext connection with a TLS alert: it
    /// speaks TLS, so connect with [`Client::connect_tls`].
    #[error(
        "the server speaks TLS (it answered with a TLS alert), and this connection is plaintext"
    )]
    ServerSpeaksTls,
    /// The server closed the connection before the end of an announced body.
    #[error("transfer cut short: got {got} of {expected} bytes")]
    Truncated {
        /// The announced size.
        expected: u64,
        /// The bytes received.
        got: u64,
    },
}

impl Client {
    /// Connects to a server, with no time limit on connecting, reading or
    /// writing.
    ///
    /// Each address `addr` resolves to is tried in turn.
    ///
    /// # Errors
    ///
    /// - [`ClientError::Resolve`] if `addr` does not resolve, or resolves to
    ///   no address;
    /// - [`ClientError::Connect`] if no address accepts the connection,
    ///   with the last address's error.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        Client::connect_any(addr, None, None)
    }

    /// Connects to a server, trying each address `addr` resolves to for at
    /// most `timeout`; the same `timeout` then bounds every read and write
    /// on the connection (see [`Client::set_timeout`]).
    ///
    /// # Errors
    ///
    /// As [`Client::connect`]; a zero `timeout` is
    /// [`ClientError::Connect`] with [`ErrorKind::InvalidInput`], as
    /// [`TcpStream::connect_timeout`] has it.
    pub fn connect_timeout(
        addr: impl ToSocketAddrs,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        Client::connect_any(addr, Some(timeout), None)
    }

    /// Connects to a server that speaks TLS, trusting what `tls` says, as
    /// [`connect_timeout`](Client::connect_timeout) does (`None`: no time
    /// limit). `addr` is `HOST:PORT`; HOST is the name the certificate
    /// must hold (unless `tls` trusts a pin).
    ///
    /// The handshake is complete, and the server verified, before this
    /// returns: nothing is sent to a server that fails verification.
    ///
    /// # Errors
    ///
    /// As [`Client::connect`], and [`ClientError::Tls`] if the handshake
    /// fails (wrong pin, unknown CA, name mismatch, no TLS on the port).
    pub fn connect_tls(
        addr: &str,
        timeout: Option<Duration>,
        tls: &ClientTls,
    ) -> Result<Client, ClientError> {
        let host = match addr.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        Client::connect_any(addr, timeout, Some((tls, host)))
    }

    /// Logs in as `name` with `AUTH`; later paths are the user's.
    ///
    /// # Errors
    ///
    /// - [`ClientError::Server`] with `denied` for a wrong name or password
    ///   or a throttled source, `forbidden` on a plaintext connection the
    ///   server refuses passwords on, `bad-request` if the server has no
    ///   users;
    /// - [`ClientError::Io`] if the connection fails or times out.
    pub fn login(&mut self, name: &str, password: &[u8]) -> Result<(), ClientError> {
        self.exchange(|client| {
            let line = format!("AUTH {} {}\n", field(name), encode_name(password));
            client.request(&line).map(drop)
        })
    }

    fn connect_any(
        addr: impl ToSocketAddrs,
        timeout: Option<Duration>,
        tls: Option<(&ClientTls, &str)>,
    ) -> Result<Client, ClientError> {
        let addrs = addr.to_socket_addrs().map_err(ClientError::Resolve)?;
        let mut last = None;
        for addr in addrs {
            let attempt = match timeout {
                None => TcpStream::connect(addr),
                Some(timeout) => TcpStream::connect_timeout(&addr, timeout),
            };
            let connected = attempt.and_then(|stream| {
                // Request lines are small and each waits for its reply.
                stream.set_nodelay(true)?;
                stream.set_read_timeout(timeout)?;
                stream.set_write_timeout(timeout)?;
                Ok(stream)
            });
            let stream = match connected {
                Ok(stream) => stream,
                Err(source) => {
                    last = Some(ClientError::Connect { addr, source });
                    continue;
                }
            };
            let stream = match tls {
                None => ClientStream::Plain(stream),
                // A failed verification is final: no other address is
                // tried with the same trust.
                Some((tls, host)) => tls
                    .handshake(host, stream)
                    .map_err(|source| ClientError::Tls { addr, source })?,
            };
            return Ok(Client {
                reader: BufReader::new(stream),
                progress: None,
                notice: None,
                closed: false,
            });
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Resolve(io::Error::new(
                ErrorKind::NotFound,
                "the address resolved to nothing",
            ))
        }))
    }

    /// Sets the time any one read or write on the connection may block;
    /// `None`: no limit.
    ///
    /// It bounds each wait, not a whole call: a long transfer that keeps
    /// moving never times out.
    ///
    /// # Errors
    ///
    /// [`ClientError::Io`] if the system refuses the setting (a zero
    /// duration among others).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        let stream = self.reader.get_ref().socket();
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(ClientError::Io)
    }

    /// Calls `callback` as transfers move: once when a body is about to
    /// flow (with [`Progress::done`] at its start), then after every chunk
    /// ([`Stage::Transfer`]); and once as each check before or after the
    /// body begins ([`Stage::ResumeCheck`], [`Stage::Verify`]).
    ///
    /// It replaces any earlier callback and stays for every later transfer.
    pub fn set_progress(&mut self, callback: impl FnMut(Progress) + Send + 'static) {
        self.progress = Some(Box::new(callback));
    }

    /// Downloads `path` from byte `offset` on into `out`, and returns the
    /// bytes written, exactly those the server announced.
    ///
    /// # Errors
    ///
    /// - [`ClientError::Server`] if the server refuses: `not-found`,
    ///   `forbidden`, `bad-request` for a directory or special file, `range`
    ///   for an `offset` past the end of the file, ...;
    /// - [`ClientError::Truncated`] if the connection ends before the
    ///   announced body does (the file shrank on the server, say);
    /// - [`ClientError::Local`] if `out` fails;
    /// - [`ClientError::Io`] if the connection fails or times out, or was
    ///   already closed;
    /// - [`ClientError::Protocol`] if the reply is malformed.
    pub fn get_to(
        &mut self,
        path: &str,
        offset: u64,
        out: &mut impl Write,
    ) -> Result<u64, ClientError> {
        self.exchange(|client| {
            let size = client.start_get(path, offset)?;
            client.recv_body(offset, size, out)
        })
    }

    /// Downloads the whole of `path` into `out` (a pipe, standard output),
    /// and returns the bytes written. With [`TransferOptions::verify`] the
    /// bytes are hashed as they pass and, once all are written, compared
    /// with the server's `SUM`: `out` has them all by then, so a mismatch
    /// can only be reported, not undone. ([`TransferOptions::resume`]
    /// means nothing here.)
    ///
    /// # Errors
    ///
    /// - [`ClientError::Mismatch`] if what was written is not the file the
    ///   server's `SUM` describes (it changed on the server meanwhile);
    /// - the errors of [`Client::get_to`] and [`Client::sum`] otherwise.
    pub fn get_to_checked(
        &mut self,
        path: &str,
        out: &mut impl Write,
        options: &TransferOptions,
    ) -> Result<u64, ClientError> {
        if !options.verify {
            return self.get_to(path, 0, out);
        }
        let mut hashing = HashingWriter {
            inner: out,
            hasher: Sha256::new(),
        };
        let received = self.get_to(path, 0, &mut hashing)?;
        self.report_stage(Stage::Verify, received, received);
        let local = FileSum {
            sha256: hashing.hasher.finalize().into(),
            len: received,
        };
        let remote = self.sum(path, None)?;
        if local != remote {
            return Err(ClientError::Mismatch { local, remote });
        }
        Ok(received)
    }

    /// Downloads `path` into the local file `local`, and returns the bytes
    /// received in this call.
    ///
    /// The body goes to a partial file beside `local`, named after it and
    /// the remote path ([`Client::partial_path`]), which is renamed over
    /// `local` only once it is complete, synced and (with
    /// [`TransferOptions::verify`]) matches the server's `SUM`. `local` is
    /// never appended to or mixed into the result.
    ///
    /// With [`TransferOptions::resume`], a partial file left by an earlier
    /// call for the same remote path is continued, but only when its bytes
    /// still match the server's `SUM` of that length (checked when
    /// verifying); otherwise it is discarded, the download starts over, and
    /// the [notice callback](Client::set_notice) is told.
    ///
    /// # Errors
    ///
    /// - [`ClientError::Server`] if the server refuses, as for
    ///   [`Client::get_to`];
    /// - [`ClientError::Mismatch`] if the downloaded file does not match the
    ///   server's `SUM` (the file changed on the server meanwhile); the
    ///   partial file is removed, so a new call starts over;
    /// - [`ClientError::File`] if the partial file or `local` cannot be
    ///   opened, written, synced or renamed;
    /// - [`ClientError::Truncated`], [`ClientError::Io`] and
    ///   [`ClientError::Protocol`] as for [`Client::get_to`]. A download cut
    ///   short leaves the bytes received in the partial file, ready to
    ///   resume.
    pub fn get_file(
        &mut self,
        path: &str,
        local: &Path,
        options: &TransferOptions,
    ) -> Result<u64, ClientError> {
        let partial = Client::partial_path(local, path);
        let at = |file: &Path| {
            let file = file.to_owned();
            move |source| ClientError::File { path: file, source }
        };
        let open = |create: bool| open_partial(&partial, create);
        let existing = match open(false) {
            Ok(file) if options.resume => Some(file),
            Ok(_) => None,
            Err(error) if error.kind() == ErrorKind::NotFound => None,
            Err(error) => return Err(at(&partial)(error)),
        };
        let mut offset = match &existing {
            Some(file) => file.metadata().map_err(at(&partial))?.len(),
            None => 0,
        };
        let stale = match &existing {
            Some(file) if offset > 0 && options.verify => {
                self.report_stage(Stage::ResumeCheck, offset, offset);
                !self.prefix_matches(path, file, offset)?
            }
            _ => false,
        };
        if let (true, Some(file)) = (stale, &existing) {
            self.notify(&format!(
                "{}: the partial download ({offset} bytes) does not match the server's file; starting over",
                partial.display()
            ));
            file.set_len(0).map_err(at(&partial))?;
            offset = 0;
        }
        let (received, file) = self.exchange(|client| {
            let size = client.start_get(path, offset)?;
            // Created (or emptied) only once the server said yes.
            let mut file = match existing {
                Some(file) => file,
                None => open(true).map_err(at(&partial))?,
            };
            file.seek(SeekFrom::Start(offset)).map_err(at(&partial))?;
            client
                .recv_body(offset, size, &mut file)
                .map_err(|error| error.at(&partial))?;
            file.sync_all().map_err(at(&partial))?;
            Ok((size, file))
        })?;
        if options.verify {
            let whole = offset + received;
            self.report_stage(Stage::Verify, whole, whole);
            let local_sum = sum_prefix(&file, u64::MAX).map_err(at(&partial))?;
            let remote_sum = self.sum(path, None)?;
            if local_sum != remote_sum {
                let _ = fs::remove_file(&partial);
                return Err(ClientError::Mismatch {
                    local: local_sum,
                    remote: remote_sum,
                });
            }
        }
        fs::rename(&partial, local).map_err(at(local))?;
        sync_parent(local).map_err(at(local))?;
        Ok(received)
    }

    /// The partial file [`Client::get_file`] downloads `remote` into before
    /// it becomes `local`: `.<local's name>.<8 hex digits>.fsc-part` in
    /// `local`'s directory, the digits taken from the SHA-256 of the
    /// remote path, so that a partial file is only ever continued by a
    /// download of the same remote file to the same place.
    pub fn partial_path(local: &Path, remote: &str) -> PathBuf {
        let tag: [u8; 32] = Sha256::digest(remote.as_bytes()).into();
        let mut name = std::ffi::OsString::from(".");
        name.push(local.file_name().unwrap_or_else(|| "download".as_ref()));
        name.push(format!(
            ".{:02x}{:02x}{:02x}{:02x}.fsc-part",
            tag[0], tag[1], tag[2], tag[3]
        ));
        local.with_file_name(name)
    }

    /// Whether the first `len` bytes of `file` are those of `path` on the
    /// server.
    fn prefix_matches(&mut self, path: &str, file: &File, len: u64) -> Result<bool, ClientError> {
        let local = sum_prefix(file, len).map_err(ClientError::Local)?;
        match self.sum(path, Some(len)) {
            Ok(remote) => Ok(remote == local),
            // The server's file is now shorter than the partial one.
            Err(ClientError::Server {
                code: ErrorCode::Range,
                ..
            }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Uploads the local file `local` as `remote`, and returns its size.
    ///
    /// The size is taken when the upload starts; the server puts the file in
    /// place only once every byte has arrived and been flushed. With
    /// [`TransferOptions::verify`], the file is hashed as it is sent and the
    /// stored file's `SUM` compared with it.
    ///
    /// # Errors
    ///
    /// - [`ClientError::File`] if `local` cannot be opened or read, is not a
    ///   regular file, or ends before its starting size;
    /// - [`ClientError::Mismatch`] if the stored file's `SUM` differs from
    ///   what was sent (it changed on the server meanwhile, or the local
    ///   file changed while it was read);
    /// - the errors of [`Client::put_from`] otherwise.
    pub fn put_file(
        &mut self,
        local: &Path,
        remote: &str,
        options: &TransferOptions,
    ) -> Result<u64, ClientError> {
        let at_local = |source| ClientError::File {
            path: local.to_owned(),
            source,
        };
        let file = File::open(local).map_err(at_local)?;
        let metadata = file.metadata().map_err(at_local)?;
        if !metadata.is_file() {
            return Err(at_local(io::Error::new(
                ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let mut hashing = Hashing {
            inner: file,
            hasher: Sha256::new(),
        };
        let size = self
            .put_from(remote, &mut hashing, metadata.len())
            .map_err(|error| error.at(local))?;
        if options.verify {
            self.report_stage(Stage::Verify, size, size);
            let sent = FileSum {
                sha256: hashing.hasher.finalize().into(),
                len: size,
            };
            let stored = self.sum(remote, None)?;
            if stored != sent {
                return Err(ClientError::Mismatch {
                    local: sent,
                    remote: stored,
                });
            }
        }
        Ok(size)
    }

    /// Uploads the first `size` bytes of `reader` as `remote`, and returns
    /// `size` once the server has the file in place.
    ///
    /// Bytes of `reader` past `size` are not read.
    ///
    /// # Errors
    ///
    /// - [`ClientError::Server`] if the server refuses: `forbidden` when
    ///   uploads are disabled or the path is refused, `not-found` for a
    ///   missing parent directory, `too-large` past its upload limit,
    ///   `bad-request` when `remote` names a directory, `internal` when it
    ///   cannot store the file, ... The server closes the connection after
    ///   refusing an upload before its body.
    /// - [`ClientError::Local`] if `reader` fails or ends before `size`
    ///   bytes; the upload is abandoned and the server keeps nothing of it;
    /// - [`ClientError::Io`] if the connection fails or times out, or was
    ///   already closed;
    /// - [`ClientError::Protocol`] if the reply is malformed.
    pub fn put_from(
        &mut self,
        remote: &str,
        mut reader: impl Read,
        size: u64,
    ) -> Result<u64, ClientError> {
        self.exchange(|client| {
            client.send(format!("PUT {} {size}\n", field(remote)).as_bytes())?;
            client.send_body(&mut reader, size)?;
            let stored = number(&client.reply()?).ok_or_else(|| malformed("`OK <size>`"))?;
            if stored == size {
                Ok(size)
            } else {
                Err(ClientError::Protocol(format!(
                    "server stored {stored} bytes of {size}"
                )))
            }
        })
    }

    /// Lists the directory `dir` (the root for `""`), sorted bytewise by
    /// name as the server sends it.
    ///
    /// # Errors
    ///
    /// - [`ClientError::Server`] if the server refuses: `not-found`,
    ///   `forbidden`, `bad-request` for a file, ...;
    /// - [`ClientError::Io`] if the connection fails or times out, or was
    ///   already closed;
    /// - [`ClientError::Protocol`] if the reply is malformed.
    ///
    /// The whole listing is held: against a server that may send without
    /// end, use [`list_each`](Client::list_each).
    pub fn list(&mut self, dir: &str) -> Result<Vec<ListEntry>, ClientError> {
        let mut entries = Vec::new();
        self.list_each(dir, |entry| {
            entries.push(entry);
            Ok(())
        })?;
        Ok(entries)
    }

    /// Lists the directory `dir` as [`list`](Client::list) does, handing
    /// each entry to `each` as its line arrives: the memory used is one
    /// line's, however many the server announces or sends. Returns how
    /// many entries there were.
    ///
    /// # Errors
    ///
    /// As [`list`](Client::list), and whatever `each` returns, which ends
    /// the listing (and the connection, unless it is
    /// [`ClientError::Server`]).
    pub fn list_each(
        &mut self,
        dir: &str,
        mut each: impl FnMut(ListEntry) -> Result<(), ClientError>,
    ) -> Result<u64, ClientError> {
        self.exchange(|client| {
            let count = number(&client.request(&format!("LIST {}\n", field(dir)))?)
                .ok_or_else(|| malformed("`OK <count>`"))?;
            for _ in 0..count {
                let line = client.read_line()?;
                let entry = line
                    .parse()
                    .map_err(|_| malformed("`<f|d> <size> <name>`"))?;
                each(entry)?;
            }
            Ok(count)
        })
    }

    /// Describes the file or directory `path`.
    ///
    /// # Errors
    ///
    /// - [`ClientError::Server`] if the server refuses: `not-found`,
    ///   `forbidden`, `bad-request` for a special file, ...;
    /// - [`ClientError::Io`] if the connection fails or times out, or was
    ///   already closed;
    /// - [`ClientError::Protocol`] if the reply is malformed.
    pub fn stat(&mut self, path: &str) -> Result<Stat, ClientError> {
        self.exchange(|client| {
            let reply = client.request(&format!("STAT {}\n", field(path)))?;
            reply
                .parse()
                .map_err(|_| malformed("`OK <f|d> <size> <mtime>`"))
        })
    }

    /// The SHA-256 of the file `path` on the server, or of its first
    /// `length` bytes.
    ///
    /// # Errors
    ///
    /// - [`ClientError::Server`] if the server refuses: `not-found`,
    ///   `forbidden`, `bad-request` for a directory or special file,
    ///   `range` for a `length` past the end of the file, ...;
    /// - [`ClientError::Io`] if the connection fails or times out, or was
    ///   already closed;
    /// - [`ClientError::Protocol`] if the reply is malformed.
    pub fn sum(&mut self, path: &str, length: Option<u64>) -> Result<FileSum, ClientError> {
        self.exchange(|client| {
            let line = match length {
                None => format!("SUM {}\n", field(path)),
                Some(length) => format!("SUM {} {length}\n", field(path)),
            };
            client
                .request(&line)?
                .parse()
                .map_err(|_| malformed("`OK sha256 <hex> <n>`"))
        })
    }

    /// Calls `callback` with a one-line message for people when a call
    /// does something its caller did not ask for in so many words, such as
    /// discarding a partial download that no longer matches the server's
    /// file. It replaces any earlier callback.
    pub fn set_notice(&mut self, callback: impl FnMut(&str) + Send + 'static) {
        self.notice = Some(Box::new(callback));
    }

    fn notify(&mut self, message: &str) {
        if let Some(callback) = &mut self.notice {
            callback(message);
        }
    }

    /// Says goodbye and closes the connection.
    ///
    /// Dropping the client closes it too, without a word to the server.
    ///
    /// # Errors
    ///
    /// - [`ClientError::Io`] if the connection fails or times out, or was
    ///   already closed;
    /// - [`ClientError::Server`] if the server answers with an error, such as
    ///   `unavailable` while it shuts down;
    /// - [`ClientError::Protocol`] if the reply is not `OK bye`.
    pub fn quit(mut self) -> Result<(), ClientError> {
        self.exchange(|client| match client.request("QUIT\n")?.as_str() {
            "bye" => Ok(()),
            _ => Err(malformed("`OK bye`")),
        })
    }

    /// Runs one request-reply exchange, and shuts the connection down if it
    /// fails in a way that leaves the stream out of step.
    fn exchange<T>(
        &mut self,
        op: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        if self.closed {
            return Err(ClientError::Io(io::Error::new(
                ErrorKind::NotConnected,
                "connection closed after an earlier error",
            )));
        }
        let result = op(self);
        if matches!(&result, Err(error) if !matches!(error, ClientError::Server { .. })) {
            self.closed = true;
            // Tells the server too, so that it drops a half-sent upload.
            let _ = self.reader.get_ref().socket().shutdown(Shutdown::Both);
        }
        result
    }

    /// Sends `GET` and returns the announced body size.
    fn start_get(&mut self, path: &str, offset: u64) -> Result<u64, ClientError> {
        let line = match offset {
            0 => format!("GET {}\n", field(path)),
            _ => format!("GET {} {offset}\n", field(path)),
        };
        number(&self.request(&line)?).ok_or_else(|| malformed("`OK <size>`"))
    }

    /// Copies exactly `size` body bytes into `out`; `start` is the bytes the
    /// destination already holds, for progress reports.
    fn recv_body(
        &mut self,
        start: u64,
        size: u64,
        out: &mut dyn Write,
    ) -> Result<u64, ClientError> {
        let total = start.saturating_add(size);
        let mut buf = vec![0; chunk_len(size, CHUNK)];
        let mut got = 0;
        self.report(start, total);
        while got < size {
            let want = chunk_len(size - got, CHUNK);
            let n = match self.reader.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(ClientError::Truncated {
                        expected: size,
                        got,
                    });
                }
                Ok(n) => n,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(ClientError::net(error)),
            };
            out.write_all(&buf[..n]).map_err(ClientError::Local)?;
            got += n as u64;
            self.report(start + got, total);
        }
        out.flush().map_err(ClientError::Local)?;
        Ok(size)
    }

    /// Copies exactly `size` bytes of `reader` to the connection.
    fn send_body(&mut self, reader: &mut dyn Read, size: u64) -> Result<(), ClientError> {
        let mut buf = vec![0; chunk_len(size, CHUNK)];
        let mut sent = 0;
        self.report(0, size);
        while sent < size {
            let want = chunk_len(size - sent, CHUNK);
            let n = match reader.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(ClientError::Local(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("input ended after {sent} of {size} bytes"),
                    )));
                }
                Ok(n) => n,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(ClientError::Local(error)),
            };
            self.send(&buf[..n])?;
            sent += n as u64;
            self.report(sent, size);
        }
        Ok(())
    }

    fn report(&mut self, done: u64, total: u64) {
        self.report_stage(Stage::Transfer, done, total);
    }

    fn report_stage(&mut self, stage: Stage, done: u64, total: u64) {
        if let Some(callback) = &mut self.progress {
            callback(Progress { done, total, stage });
        }
    }

    /// Sends a request line and reads its reply.
    fn request(&mut self, line: &str) -> Result<String, ClientError> {
        self.send(line.as_bytes())?;
        self.reply()
    }

    /// Writes to the connection.
    ///
    /// A server that refuses a connection or an upload answers and closes
    /// without reading on, so a failed write is followed by a look for that
    /// answer.
    fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let stream = self.reader.get_mut();
        let Err(error) = stream.write_all(bytes).and_then(|()| stream.flush()) else {
            return Ok(());
        };
        match self.reply() {
            Err(refusal @ (ClientError::Server { .. } | ClientError::ServerSpeaksTls)) => {
                Err(refusal)
            }
            _ => Err(ClientError::net(error)),
        }
    }

    /// Reads a reply line: the text after `OK `, or the `ERR` as an error.
    fn reply(&mut self) -> Result<String, ClientError> {
        let line = self.read_line()?;
        if let Some(err) = line.strip_prefix("ERR ") {
            let (code, message) = err.split_once(' ').unwrap_or((err, ""));
            let code = code.parse().map_err(|_| malformed("a known error code"))?;
            return Err(ClientError::Server {
                code,
                message: message.to_owned(),
            });
        }
        match line.strip_prefix("OK") {
            Some("") => Ok(String::new()),
            Some(rest) if rest.starts_with(' ') => Ok(rest[1..].to_owned()),
            _ => Err(malformed("`OK` or `ERR`")),
        }
    }

    /// Reads one line, without its `\n` (or `\r\n`).
    fn read_line(&mut self) -> Result<String, ClientError> {
        let mut line = Vec::new();
        (&mut self.reader)
            .take(MAX_REPLY)
            .read_until(b'\n', &mut line)
            .map_err(ClientError::net)?;
        // A TLS record header: alert (21), version 3.x. A TLS server
        // sends one to a client that does not speak TLS, then closes.
        if line.starts_with(&[21, 3]) {
            return Err(ClientError::ServerSpeaksTls);
        }
        if line.pop() != Some(b'\n') {
            return Err(if line.len() as u64 + 1 >= MAX_REPLY {
                ClientError::Protocol("reply line too long".to_owned())
            } else {
                ClientError::Io(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ))
            });
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| ClientError::Protocol("reply is not UTF-8".to_owned()))
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.reader.get_ref().socket().peer_addr().ok())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl ClientError {
    /// An error of the connection, a read timeout reported as one.
    fn net(error: io::Error) -> ClientError {
        ClientError::Io(match error.kind() {
            // What a socket read or write timeout gives on Unix.
            ErrorKind::WouldBlock => {
                io::Error::new(ErrorKind::TimedOut, "timed out waiting for the server")
            }
            _ => error,
        })
    }

    /// The error with the caller's stream named as the local file `path`.
    fn at(self, path: &Path) -> ClientError {
        match self {
            ClientError::Local(source) => ClientError::File {
                path: path.to_owned(),
                source,
            },
            other => other,
        }
    }
}

/// A request field for a caller's path: `.` (the root) for `""`.
fn field(path: &str) -> String {
    if path.is_empty() {
        ".".to_owned()
    } else {
        encode_name(path.as_bytes())
    }
}

fn malformed(expected: &str) -> ClientError {
    ClientError::Protocol(format!("expected {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_escape_what_the_server_would_misread() {
        assert_eq!(field(""), ".");
        assert_eq!(field("/"), "/");
        assert_eq!(field("dir/my notes.txt"), "dir/my%20notes.txt");
        assert_eq!(field("100%\n\t\x7F"), "100%25%0A%09%7F");
        assert_eq!(field("café"), "café");
    }

    #[test]
    fn server_errors_display_code_and_message() {
        let error = ClientError::Server {
            code: ErrorCode::NotFound,
            message: "no such file".to_owned(),
        };
        assert_eq!(error.to_string(), "server refused: not-found no such file");
    }
}
