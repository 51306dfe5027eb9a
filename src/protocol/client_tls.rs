//! The client's TLS: whom it trusts ([`ClientTls`]), and the stream a
//! [`Client`](super::Client) reads and writes, plaintext or TLS.
//!
//! The handshake, and so the server's verification, is complete before
//! [`Client::connect_tls`](super::Client::connect_tls) returns: no request
//! is ever written to a server that was not verified.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject as _;

use super::pin::{pin_of, provider};

/// Whom a TLS [`Client`](super::Client) trusts.
///
/// - [`platform`](ClientTls::platform): the system's CA certificates
///   (`/etc/ssl/certs` and the like), and the name the client connected
///   to must be in the certificate;
/// - [`ca_file`](ClientTls::ca_file): only the CA certificates in a PEM
///   file (a self-signed server certificate works), with the name check;
/// - [`pin`](ClientTls::pin): only a server whose public key has this
///   SHA-256 (`sha256//BASE64`, curl's `--pinnedpubkey` format, the line
///   `filesrv --tls-self-signed` prints), whatever its certificate says.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

/// Why a [`ClientTls`] could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientTlsError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot load CA certificates from {}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The system has no usable CA certificates.
    #[error("no CA certificates found on this system")]
    NoPlatformRoots,
    /// The pin is not `sha256//` and 44 base64 characters.
    #[error("a pin is sha256// and the base64 of a SHA-256 (44 characters)")]
    BadPin,
}

impl ClientTls {
    /// Trust the system's CA certificates.
    ///
    /// # Errors
    ///
    /// [`ClientTlsError::NoPlatformRoots`] if none could be loaded.
    pub fn platform() -> Result<ClientTls, ClientTlsError> {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(ClientTlsError::NoPlatformRoots);
        }
        Ok(ClientTls::with_roots(roots))
    }

    /// Trust only the CA certificates in the PEM file `path`.
    ///
    /// # Errors
    ///
    /// [`ClientTlsError::Ca`] if the file cannot be read or holds no
    /// usable certificate.
    pub fn ca_file(path: impl AsRef<Path>) -> Result<ClientTls, ClientTlsError> {
        let path = path.as_ref();
        let error = |source: io::Error| ClientTlsError::Ca {
            path: path.to_owned(),
            source,
        };
        let invalid = |e: rustls_pki_types::pem::Error| {
            error(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(invalid)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
        if added == 0 {
            return Err(error(io::Error::new(
                io::ErrorKind::InvalidData,
                "no usable CERTIFICATE in the file",
            )));
        }
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| error(io::Error::other(e)))?;
        Ok(ClientTls::with_verifier(Trust::CaFile { webpki, certs }))
    }

    /// Trust only a server whose public key has the pin `pin`
    /// (`sha256//BASE64`).
    ///
    /// # Errors
    ///
    /// [`ClientTlsError::BadPin`] if `pin` is not in that format.
    pub fn pin(pin: &str) -> Result<ClientTls, ClientTlsError> {
        use base64::Engine as _;
        let encoded = pin.strip_prefix("sha256//").ok_or(ClientTlsError::BadPin)?;
        let digest = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| ClientTlsError::BadPin)?;
        if digest.len() != 32 {
            return Err(ClientTlsError::BadPin);
        }
        Ok(ClientTls::with_verifier(Trust::Pin(pin.to_owned())))
    }

    fn with_verifier(trust: Trust) -> ClientTls {
        let provider = provider();
        let verifier = Verifier {
            trust,
            algorithms: provider.signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        ClientTls {
            config: Arc::new(config),
        }
    }

    fn with_roots(roots: RootCertStore) -> ClientTls {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        ClientTls {
            config: Arc::new(config),
        }
    }

    /// Does the handshake on `socket` for the server `host`, verifying it.
    pub(crate) fn handshake(&self, host: &str, socket: TcpStream) -> io::Result<ClientStream> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut conn =
            ClientConnection::new(self.config.clone(), name).map_err(io::Error::other)?;
        let mut sock = &socket;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        Ok(ClientStream::Tls(Box::new(rustls::StreamOwned::new(
            conn, socket,
        ))))
    }
}

/// A server certificate check of our own; the handshake's signatures are
/// still checked against the certificate's key.
#[derive(Debug)]
struct Verifier {
    trust: Trust,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

/// Whom a [`Verifier`] trusts.
#[derive(Debug)]
enum Trust {
    /// Exactly the server key with this pin, whatever its certificate says.
    Pin(String),
    /// The CA file's certificates as trust anchors, with the name check;
    /// and a server certificate found in the file as is, though marked
    /// as a CA (as `openssl req -x509` makes self-signed ones, which
    /// webpki refuses as a server's own), trusted as itself, still with
    /// the name check.
    CaFile {
        webpki: Arc<rustls::client::WebPkiServerVerifier>,
        certs: Vec<CertificateDer<'static>>,
    },
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (webpki, certs) = match &self.trust {
            Trust::Pin(pin) if pin_of(end_entity)? == *pin => {
                return Ok(ServerCertVerified::assertion());
            }
            Trust::Pin(_) => {
                return Err(rustls::Error::General(
                    "the server's public key does not match the pin".to_owned(),
                ));
            }
            Trust::CaFile { webpki, certs } => (webpki, certs),
        };
        let verified =
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        let Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            &verified
        else {
            return verified;
        };
        // webpki checks the validity dates before it finds the CA flag.
        let ca_as_server =
            other.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity);
        if !ca_as_server || !certs.iter().any(|cert| cert == end_entity) {
            return verified;
        }
        webpki::EndEntityCert::try_from(end_entity)
            .and_then(|cert| cert.verify_is_valid_for_subject_name(server_name))
            .map_err(|e| {
                rustls::Error::InvalidCertificate(match e {
                    webpki::Error::CertNotValidForName(_) => {
                        rustls::CertificateError::NotValidForName
                    }
                    e => rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))),
                })
            })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client's connection: the socket, or TLS over it.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<ClientConnection, TcpStream>>),
}

impl ClientStream {
    /// The socket beneath, for timeouts and shutdown.
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(socket) => socket,
            ClientStream::Tls(tls) => tls.get_ref(),
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(socket) => socket.read(buf),
            ClientStream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(socket) => socket.write(buf),
            ClientStream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(_) => Ok(()),
            ClientStream::Tls(tls) => tls.flush(),
        }
    }
}
