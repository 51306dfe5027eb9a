//! TLS on the port (`--tls-cert/--tls-key`, `--tls-self-signed`): the
//! certificate and key, loaded from PEM and swapped on reload without a
//! new server configuration; the pin line of a generated certificate; and
//! the refuser, one thread that gives refused connections their `ERR` line
//! (or `503` to HTTPS clients) inside TLS when their handshake completes
//! within [`REFUSAL_BOUND`].
//!
//! rustls with the *ring* provider, TLS 1.2 and 1.3 only. Sessions do
//! their handshake on their own worker, through [`SessionStream`]'s first
//! read (see `session`), never on the accepting thread.
//!
//! [`SessionStream`]: super::stream::SessionStream

use std::io::{self, Write as _};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::closer::{self, Closer};
use super::http;
use crate::protocol::pin::{pin_of, provider};

/// How long a refused connection's handshake may take before it is closed
/// without its `ERR` line; past it, one whose handshake completed but who
/// has not sent enough to tell HTTP from the line protocol is answered as
/// the line protocol.
pub(crate) const REFUSAL_BOUND: Duration = Duration::from_secs(1);

/// The time an answer decided at [`REFUSAL_BOUND`] has to leave.
const ANSWER_BOUND: Duration = Duration::from_millis(250);

/// At most this many refused connections are in their handshake at once;
/// past that they are closed at once.
const MAX_REFUSING: usize = 1024;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Only one of the certificate and the key was given.
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    Incomplete,
    /// Both certificate files and a generated certificate were asked for.
    #[error("--tls-self-signed cannot be combined with --tls-cert/--tls-key")]
    Conflict,
    /// A file could not be read or holds no usable PEM item.
    #[error("cannot load the TLS {what} from {}", path.display())]
    Load {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The key does not fit the certificate, or rustls refused either.
    #[error("unusable TLS certificate and key")]
    Unusable(#[source] rustls::Error),
    /// A certificate could not be generated.
    #[error("cannot generate a self-signed certificate")]
    Generate(#[source] rcgen::Error),
}

/// Reads a PEM certificate chain and key and checks that they match.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    fn load(what: &'static str, path: &Path) -> impl Fn(rustls_pki_types::pem::Error) -> TlsError {
        let path = path.to_owned();
        move |e| TlsError::Load {
            what,
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        }
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(load("certificate", cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(load("certificate", cert))?;
    if chain.is_empty() {
        return Err(TlsError::Load {
            what: "certificate",
            path: cert.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, "no CERTIFICATE in the file"),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(load("key", key))?;
    let certified =
        CertifiedKey::from_der(chain, key_der, &provider()).map_err(TlsError::Unusable)?;
    certified.keys_match().map_err(TlsError::Unusable)?;
    Ok(certified)
}

/// The certificate in use, swapped by a reload; every handshake asks it.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(crate::util::read(&self.0).clone())
    }
}

/// Where the certificate comes from.
#[derive(Clone, Debug)]
pub(crate) enum TlsSource {
    /// PEM files, read again on reload.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// Generated at start for these names.
    SelfSigned(Vec<String>),
}

/// The server's TLS: its configuration, the certificate in use, and the
/// refuser.
#[derive(Debug)]
pub(crate) struct Tls {
    config: Arc<ServerConfig>,
    current: Arc<Current>,
    source: TlsSource,
    pin: String,
    refuser: Refuser,
}

impl Tls {
    /// Loads or generates the certificate and starts the refuser thread,
    /// which hands what it is done with to `closer`.
    ///
    /// `Err(Ok(e))`: the certificate or key; `Err(Err(e))`: the thread.
    pub(crate) fn start(
        source: TlsSource,
        closer: Closer,
    ) -> Result<(Tls, JoinHandle<()>), Result<TlsError, io::Error>> {
        let (config, current, pin) = Tls::configure(&source).map_err(Ok)?;
        let (refuser, thread) = Refuser::start(closer).map_err(Err)?;
        let tls = Tls {
            config,
            current,
            source,
            pin,
            refuser,
        };
        Ok((tls, thread))
    }

    /// The server configuration for the certificate `source` gives, the
    /// handle to swap that certificate, and its pin.
    fn configure(
        source: &TlsSource,
    ) -> Result<(Arc<ServerConfig>, Arc<Current>, String), TlsError> {
        let certified = match source {
            TlsSource::Files { cert, key } => load_pair(cert, key)?,
            TlsSource::SelfSigned(names) => self_signed(names.clone())?,
        };
        let pin = pin_of(certified.end_entity_cert().map_err(TlsError::Unusable)?)
            .map_err(TlsError::Unusable)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Unusable)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // HTTP on the same port: a client offering ALPN http/1.1 gets it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No session resumption: every connection does a full handshake.
        // fsc and curl make one connection per run and never come back
        // with a session, so rustls' default (two tickets after every
        // TLS 1.3 handshake, each a record and an entry in a cache that
        // every worker locks) is work for nothing.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok((Arc::new(config), current, pin))
    }

    /// A new server-side TLS connection state, for one accepted socket.
    pub(crate) fn accept(&self) -> io::Result<ServerConnection> {
        ServerConnection::new(self.config.clone()).map_err(io::Error::other)
    }

    /// The pin of the certificate loaded at start.
    pub(crate) fn pin(&self) -> &str {
        &self.pin
    }

    /// The certificate and key files, if the certificate comes from files.
    pub(crate) fn files(&self) -> Option<(&Path, &Path)> {
        match &self.source {
            TlsSource::Files { cert, key } => Some((cert, key)),
            TlsSource::SelfSigned(_) => None,
        }
    }

    /// Reads the files again; a pair that fails to load keeps the old one,
    /// with a warning. A generated certificate stays as it is.
    pub(crate) fn reload(&self) {
        let Some((cert, key)) = self.files() else {
            return;
        };
        match load_pair(cert, key) {
            Ok(certified) => {
                *crate::util::write(&self.current.0) = Arc::new(certified);
                log::info!("TLS certificate {} reloaded", cert.display());
            }
            Err(e) => {
                let mut line = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(inner) = cause {
                    line.push_str(&format!(": {inner}"));
                    cause = inner.source();
                }
                log::warn!("{line}; keeping the certificate loaded before");
            }
        }
    }

    /// Refuses a connection inside TLS (see [`Refuser`]) with `line`, or
    /// `http` if it speaks HTTP.
    pub(crate) fn refuse(&self, stream: TcpStream, line: &[u8], http: Vec<u8>) {
        match self.accept() {
            Ok(conn) => self.refuser.refuse(stream, conn, line, http),
            Err(_) => drop(stream),
        }
    }

    /// Lets the refuser finish what it holds (at most [`REFUSAL_BOUND`])
    /// and end.
    pub(crate) fn stop(&self) {
        self.refuser.stop();
    }
}

/// A key and a certificate for `localhost` and `names`, made now.
fn self_signed(mut names: Vec<String>) -> Result<CertifiedKey, TlsError> {
    names.insert(0, "localhost".to_owned());
    names.dedup();
    let generated = rcgen::generate_simple_self_signed(names).map_err(TlsError::Generate)?;
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| TlsError::Unusable(rustls::Error::General(e.to_owned())))?;
    CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider())
        .map_err(TlsError::Unusable)
}

/// One refused connection in its handshake.
struct Refusing {
    stream: TcpStream,
    conn: ServerConnection,
    line: Vec<u8>,
    /// The reply to an HTTPS client.
    http: Vec<u8>,
    /// The first bytes it sent inside TLS, to tell which.
    seen: Vec<u8>,
    /// Closed without the line after this.
    deadline: Instant,
    /// The reply (and close_notify) is queued in `conn`.
    written: bool,
}

enum Message {
    Refuse(Box<Refusing>),
    Stop,
}

/// The handle of the refuser thread: connections refused while TLS is on
/// (busy, unavailable) get their `ERR` line inside TLS if their handshake
/// completes within [`REFUSAL_BOUND`], else are closed; as in plaintext,
/// the first bytes they send decide between the `ERR` line and `503`
/// (at once for a client that chose ALPN `http/1.1`). One thread drives
/// every such handshake on non-blocking sockets, so neither the accepting
/// thread nor a worker ever waits for one; the finished connections go to
/// the lingering closer.
#[derive(Debug)]
struct Refuser {
    queue: Sender<Message>,
    /// Written to wake the thread's `poll` for a new connection.
    wake: Arc<OwnedFd>,
}

impl Refuser {
    fn start(closer: Closer) -> io::Result<(Refuser, JoinHandle<()>)> {
        let (queue, incoming) = crossbeam_channel::bounded(MAX_REFUSING);
        let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let woken = wake.clone();
        let thread = thread::Builder::new()
            .name("filesrv-tls-refuser".to_owned())
            .spawn(move || refuse_all(&incoming, &woken, &closer))?;
        Ok((Refuser { queue, wake }, thread))
    }

    fn refuse(&self, stream: TcpStream, conn: ServerConnection, line: &[u8], http: Vec<u8>) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let refusing = Refusing {
            stream,
            conn,
            line: line.to_vec(),
            http,
            seen: Vec::new(),
            deadline: Instant::now() + REFUSAL_BOUND,
            written: false,
        };
        // Full: it closes now.
        if self
            .queue
            .try_send(Message::Refuse(Box::new(refusing)))
            .is_ok()
        {
            self.poke();
        }
    }

    fn stop(&self) {
        let _ = self.queue.send(Message::Stop);
        self.poke();
    }

    fn poke(&self) {
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
    }
}

/// What one step of a refusing connection came to.
enum Step {
    /// Still in its handshake, or its line still leaving.
    Pending,
    /// The line and close_notify left: linger and close.
    Done,
    /// Failed or gone: close now.
    Failed,
}

/// Whether a refused connection speaks HTTP, from its ALPN or the first
/// bytes it sent inside TLS (`None`: not known yet); `expired`: decide
/// with what came. `Err` if the connection failed.
fn sniff(r: &mut Refusing, expired: bool) -> Result<Option<bool>, ()> {
    if r.conn.alpn_protocol() == Some(b"http/1.1") {
        return Ok(Some(true));
    }
    let decided = closer::sniff(&mut r.seen, &mut r.conn.reader()).map_err(drop)?;
    Ok(decided.or_else(|| expired.then(|| http::refusal_is_http(&r.seen, true) == Some(true))))
}

/// Moves a refusing connection on as far as its socket allows; `expired`:
/// its deadline passed, so a completed handshake is answered now.
fn step(r: &mut Refusing, expired: bool) -> Step {
    if !r.written {
        match r.conn.read_tls(&mut &r.stream) {
            Ok(0) => return Step::Failed,
            Ok(_) => {
                if r.conn.process_new_packets().is_err() {
                    let _ = r.conn.write_tls(&mut &r.stream);
                    return Step::Failed;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Step::Failed,
        }
        if r.conn.is_handshaking() {
            if expired {
                return Step::Failed;
            }
        } else {
            let is_http = match sniff(r, expired) {
                Err(()) => return Step::Failed,
                Ok(decided) => decided,
            };
            if let Some(is_http) = is_http {
                let reply = if is_http { &r.http } else { &r.line };
                if r.conn.writer().write_all(reply).is_err() {
                    return Step::Failed;
                }
                r.conn.send_close_notify();
                r.written = true;
            }
        }
    }
    while r.conn.wants_write() {
        match r.conn.write_tls(&mut &r.stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Pending,
            Err(_) => return Step::Failed,
        }
    }
    if r.written { Step::Done } else { Step::Pending }
}

/// The refuser thread.
fn refuse_all(incoming: &Receiver<Message>, wake: &OwnedFd, closer: &Closer) {
    let mut pending: Vec<Refusing> = Vec::new();
    let mut stopping = false;
    loop {
        loop {
            match incoming.try_recv() {
                Ok(Message::Refuse(r)) => pending.push(*r),
                Ok(Message::Stop) | Err(TryRecvError::Disconnected) => stopping = true,
                Err(TryRecvError::Empty) => break,
            }
        }
        let now = Instant::now();
        // Each connection moves on; finished and expired ones leave.
        let mut kept = Vec::with_capacity(pending.len());
        for mut r in pending.drain(..) {
            let expired = now >= r.deadline;
            if expired {
                // Its handshake done but its first bytes not telling: the
                // line protocol's answer gets a moment to leave.
                if r.written || r.conn.is_handshaking() {
                    continue;
                }
                r.deadline = now + ANSWER_BOUND;
            }
            match step(&mut r, expired) {
                Step::Pending => kept.push(r),
                Step::Done => {
                    let _ = r.stream.set_nonblocking(false);
                    closer.close(r.stream);
                }
                Step::Failed => {}
            }
        }
        pending = kept;
        if stopping && pending.is_empty() {
            return;
        }
        let timeout = pending
            .iter()
            .map(|r| r.deadline)
            .min()
            .map(|d| d.saturating_duration_since(Instant::now()));
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(pending.len() + 1);
        fds.push(PollFd::new(wake, PollFlags::IN));
        for r in &pending {
            let mut flags = PollFlags::IN;
            if r.conn.wants_write() {
                flags |= PollFlags::OUT;
            }
            fds.push(PollFd::from_borrowed_fd(r.stream.as_fd(), flags));
        }
        let timeout = timeout.map(|t| rustix::time::Timespec::try_from(t).unwrap_or_default());
        let _ = rustix::event::poll(&mut fds, timeout.as_ref());
        if !fds[0].revents().is_empty() {
            let mut counter = [0u8; 8];
            let _ = rustix::io::read(wake, &mut counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_has_a_pin_of_its_key() {
        let certified = self_signed(vec!["example.test".to_owned()]).unwrap();
        let pin = pin_of(certified.end_entity_cert().unwrap()).unwrap();
        assert!(pin.starts_with("sha256//"));
        assert_eq!(pin.len(), "sha256//".len() + 44);
    }
}
