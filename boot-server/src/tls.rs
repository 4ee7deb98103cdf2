//! TLS of the admin TCP listener (rustls with the ring provider): a given
//! certificate and key, or a self-signed certificate made at first start
//! (rcgen) and kept in `state_dir/tls/`. Its SHA-256 fingerprint is what a
//! client pins (`boot-server --fingerprint HEX`); the client side is here
//! too: trust a CA file, or pin a fingerprint with a verifier that accepts
//! exactly that certificate.

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The admin listener's TLS: the acceptor and what identifies its certificate.
pub struct AdminTls {
    /// Accepts TLS connections.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Lowercase hex SHA-256 of the leaf certificate (DER).
    pub fingerprint: String,
    /// The certificate file (PEM) clients may trust with `--ca-file`.
    pub cert_path: PathBuf,
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    format!("{:x}", Sha256::digest(der))
}

/// A fingerprint as given (any case, `:` separators allowed), normalised;
/// an error unless it is 64 hex digits.
pub fn parse_fingerprint(s: &str) -> Result<String> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "fingerprint {s:?}: give the certificate's SHA-256 as 64 hex digits (colons allowed)"
        );
    }
    Ok(hex)
}

/// The admin listener's certificate: `[admin] cert`/`key`, else the
/// self-signed one of the state directory (made now if missing, for
/// `localhost`, 127.0.0.1, ::1, the listen address and `server_ip`).
pub fn admin_tls(config: &crate::config::Config) -> Result<AdminTls> {
    let (cert_path, key_path) = match (&config.admin.cert, &config.admin.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = config.state_dir.join("tls");
            let (c, k) = (dir.join("admin-cert.pem"), dir.join("admin-key.pem"));
            if !c.exists() || !k.exists() {
                crate::fsutil::private_dir(&dir)?;
                let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
                if let Some(a) = config.admin.listen {
                    if !a.ip().is_unspecified() {
                        names.push(a.ip().to_string());
                    }
                }
                if let Some(ip) = config.server_ip {
                    names.push(ip.to_string());
                }
                names.sort();
                names.dedup();
                let made = rcgen::generate_simple_self_signed(names)
                    .context("making a self-signed admin certificate")?;
                crate::fsutil::write_private(&k, made.key_pair.serialize_pem().as_bytes())?;
                crate::fsutil::write_private(&c, made.cert.pem().as_bytes())?;
                tracing::info!(cert = %c.display(), "made a self-signed admin TLS certificate");
            }
            (c, k)
        }
    };
    let chain = load_certs(&cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading the private key {}", key_path.display()))?;
    let fingerprint = fingerprint(&chain[0]);
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "{} and {} do not make a usable certificate and key",
                cert_path.display(),
                key_path.display()
            )
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(AdminTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        fingerprint,
        cert_path,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// How a client trusts the server's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates (PEM) of the CAs to trust, or the server's own certificate.
    CaFile(PathBuf),
    /// Exactly the certificate with this SHA-256 (normalised hex).
    Fingerprint(String),
}

/// A client configuration trusting the server as `trust` says.
pub fn client_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match trust {
        Trust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(path)? {
                roots.add(c).with_context(|| {
                    format!("a certificate of {} is not usable", path.display())
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(hex) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                fingerprint: hex.clone(),
                provider: provider(),
            }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts exactly the server certificate with the pinned SHA-256 (its
/// name and validity dates are not checked: the pin names the very
/// certificate), and checks the handshake signatures with its key.
#[derive(Debug)]
struct PinnedCert {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if crate::secret::constant_time_eq(got.as_bytes(), self.fingerprint.as_bytes()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has SHA-256 {got}, not the pinned {}",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex).unwrap(), hex);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), hex);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }
}
