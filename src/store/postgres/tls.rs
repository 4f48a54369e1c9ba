//! TLS to PostgreSQL as libpq's `sslmode` means it, with rustls: `disable` never, `allow` and
//! `prefer` when the server offers it, without checking its certificate; `require` always,
//! checking the certificate's chain only when a root certificate file exists (as libpq does);
//! `verify-ca` always, with the chain checked against `sslrootcert`; `verify-full` as
//! `verify-ca`, and the host name too. `sslrootcert=system` trusts the system's roots.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

impl SslMode {
    /// Whether this mode checks the server's certificate against a root whatever happens.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// What the client library is told: whether TLS is tried, and whether it is required.
    pub fn negotiation(self) -> postgres::config::SslMode {
        match self {
            SslMode::Disable => postgres::config::SslMode::Disable,
            // The client library has no `allow`: it tries TLS first, which `allow` also accepts.
            SslMode::Allow | SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        }
    }
}

/// The TLS connector for `mode`; `None` when TLS is never used. `root_cert` is the file of
/// trusted roots (or `system`).
pub fn connector(
    mode: SslMode,
    root_cert: Option<&Path>,
) -> anyhow::Result<Option<MakeRustlsConnect>> {
    if mode == SslMode::Disable {
        return Ok(None);
    }
    // ring, though rustls now prefers aws-lc-rs for its post-quantum key exchange: that one
    // builds AWS-LC from C source (minutes, cmake) into every build, for a key exchange that a
    // PostgreSQL server's OpenSSL seldom offers yet.
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    // P-256 first: the client sends a key share for its first group only, and PostgreSQL up to
    // 17 accepts just `ssl_ecdh_curve` (prime256v1 unless set), so X25519 first cost every
    // connection a HelloRetryRequest, one more round trip (strace of a publish).
    provider
        .kx_groups
        .sort_by_key(|group| group.name() != rustls::NamedGroup::secp256r1);
    let provider = Arc::new(provider);
    let roots = match root_cert {
        Some(file) if mode.verifies() || file.exists() || file == Path::new("system") => {
            Some(Arc::new(roots(file)?))
        }
        _ => None,
    };
    let check = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => Check::Full(roots),
        (SslMode::VerifyCa, Some(roots)) | (SslMode::Require, Some(roots)) => Check::Chain(roots),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => anyhow::bail!(
            "sslmode verify-ca and verify-full need the server's root certificate: set sslrootcert=FILE (or sslrootcert=system)"
        ),
        _ => Check::Nothing,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(Unchecked(provider.clone())),
        Check::Chain(roots) => Arc::new(ChainOnly(webpki(roots, &provider)?)),
        Check::Full(roots) => webpki(roots, &provider)?,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// What is checked of the server's certificate.
enum Check {
    Nothing,
    Chain(Arc<RootCertStore>),
    Full(Arc<RootCertStore>),
}

fn webpki(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .context("TLS setup")
}

/// The roots of `file` (PEM), or the system's for `system`.
fn roots(file: &Path) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    if file == Path::new("system") {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = store.add(cert);
        }
        anyhow::ensure!(
            !store.is_empty(),
            "sslrootcert=system: no root certificates found on this system"
        );
        return Ok(store);
    }
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot read root certificates from {}: {err}",
                file.display()
            )
        })?;
    for cert in certs {
        store
            .add(cert)
            .with_context(|| format!("a root certificate of {} is invalid", file.display()))?;
    }
    anyhow::ensure!(
        !store.is_empty(),
        "{} holds no root certificate",
        file.display()
    );
    Ok(store)
}

/// `allow`, `prefer` and `require` without roots: encrypted, the peer unchecked (libpq's
/// meaning). The handshake's signatures are still checked, so the channel is the peer's.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name in the certificate may differ
/// from the host connected to.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
