//! TLS of the admin TCP listener and of the agent API's listener (rustls
//! with the ring provider): a given certificate and key, or a self-signed
//! certificate made at first start (rcgen) and kept in `state_dir/tls/`.
//! Its SHA-256 fingerprint is what a client pins (`boot-server
//! --fingerprint HEX`; node agents get it on their kernel command line);
//! the CLI's side is here too: trust a CA file, or pin a fingerprint
//! (crate `tls-pin`).

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tls_pin::{fingerprint, provider};

/// The server's TLS: the acceptor and what identifies its certificate.
pub struct ServerTls {
    /// Accepts TLS connections.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Lowercase hex SHA-256 of the leaf certificate (DER).
    pub fingerprint: String,
    /// The certificate file (PEM) clients may trust with `--ca-file`.
    pub cert_path: PathBuf,
}

/// A fingerprint as given (any case, `:` separators allowed), normalised;
/// an error unless it is 64 hex digits.
pub fn parse_fingerprint(s: &str) -> Result<String> {
    Ok(tls_pin::parse_fingerprint(s)?)
}

/// The server's certificate (admin and agent listeners): `[admin]
/// cert`/`key`, else the self-signed one of the state directory (made now if
/// missing, for `localhost`, 127.0.0.1, ::1, the listen addresses and
/// `server_ip`).
pub fn server_tls(config: &crate::config::Config) -> Result<ServerTls> {
    let (cert_path, key_path) = match (&config.admin.cert, &config.admin.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = config.state_dir.join("tls");
            let (c, k) = (dir.join("admin-cert.pem"), dir.join("admin-key.pem"));
            if !c.exists() || !k.exists() {
                crate::fsutil::private_dir(&dir)?;
                let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
                for a in [config.admin.listen, config.agent.tls_listen]
                    .into_iter()
                    .flatten()
                {
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
                    .context("making a self-signed server certificate")?;
                crate::fsutil::write_private(&k, made.key_pair.serialize_pem().as_bytes())?;
                crate::fsutil::write_private(&c, made.cert.pem().as_bytes())?;
                tracing::info!(cert = %c.display(), "made a self-signed TLS certificate");
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
    Ok(ServerTls {
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
        Trust::Fingerprint(hex) => {
            tls_pin::pinned_client_config(hex).context("TLS protocol versions")?
        }
    };
    Ok(Arc::new(config))
}
