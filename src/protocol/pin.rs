//! What the server's and the client's TLS share: the crypto provider and
//! the pin of a certificate.

use std::sync::Arc;

use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};

/// The ring provider, the one both ends use.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    // Deprecated only for lacking post-quantum key exchange, which ring
    // does not offer; aws-lc-rs would bring it at a heavier build.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256//<base64 of the SHA-256 of the SubjectPublicKeyInfo>` of a DER
/// certificate, the format of curl's `--pinnedpubkey`.
pub(crate) fn pin_of(cert: &CertificateDer<'_>) -> Result<String, rustls::Error> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| rustls::Error::General(format!("bad certificate: {e}")))?;
    let spki = parsed.subject_public_key_info();
    Ok(format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki.as_ref()))
    ))
}
