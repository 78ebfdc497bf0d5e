//! Certificates and rustls configurations for TLS over TCP, WebSocket over
//! TLS and QUIC.
//!
//! With `tls_cert` and `tls_key` configured, those PEM files are used.
//! Without, a self-signed certificate for `localhost`, `127.0.0.1` and
//! `::1` is generated into `data_dir/tls/cert.pem` and `key.pem` on first
//! start and reused afterwards: good for development, where a client trusts
//! that file; production configures a real certificate. rustls runs with
//! the `ring` provider.
//!
//! Every configuration asks [`Certificates`] for the certificate at each
//! handshake, so [`Certificates::reload`] (`SIGHUP` to the `chatd` binary)
//! replaces it without a restart: a renewed certificate is presented from
//! the next handshake on, and established sessions go on undisturbed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// Why the certificate could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading or writing a PEM file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Only one of `tls_cert` and `tls_key` is set.
    #[error("tls_cert and tls_key must be set together")]
    HalfConfigured,
    /// Generating the development certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate, key or settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the TLS configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

/// The server configurations built from one certificate.
#[derive(Clone)]
pub struct TlsSetup {
    /// TLS over TCP, ALPN `chat/1`.
    pub chat: Arc<rustls::ServerConfig>,
    /// HTTPS / WebSocket over TLS, ALPN `http/1.1`.
    pub https: Arc<rustls::ServerConfig>,
    /// QUIC, TLS 1.3, ALPN `chat/1`.
    pub quic: Arc<quinn::crypto::rustls::QuicServerConfig>,
    /// The certificate file in use (generated or configured).
    pub cert_path: PathBuf,
    /// The certificate every configuration presents, reloadable.
    pub certificates: Arc<Certificates>,
}

/// The certificate and key presented at each handshake, read from their
/// files at start and again by [`Certificates::reload`].
pub struct Certificates {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    fn open(cert_path: PathBuf, key_path: PathBuf) -> Result<Self, TlsError> {
        let current = RwLock::new(Arc::new(certified(&cert_path, &key_path)?));
        Ok(Self {
            cert_path,
            key_path,
            current,
        })
    }

    /// Reads the certificate and key files again; handshakes from now on
    /// present them. If they cannot be read, or the key does not match the
    /// certificate, the one in use stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = certified(&self.cert_path, &self.key_path)?;
        *self.current.write() = Arc::new(fresh);
        Ok(())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// The chain and key from their PEM files, checked to belong together.
fn certified(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let (certs, key) = load(cert, key)?;
    Ok(CertifiedKey::from_der(certs, key, &provider())?)
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the certificate and key are: configured, or the generated pair
/// under `data_dir/tls` (created now if missing).
pub fn ensure_files(config: &Config) -> Result<(PathBuf, PathBuf), TlsError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => return Ok((c.clone(), k.clone())),
        (None, None) => {}
        _ => return Err(TlsError::HalfConfigured),
    }
    let dir = config.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    let generated = rcgen::generate_simple_self_signed(names)?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, generated.cert.pem()).map_err(io_err(&cert))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed development certificate");
    Ok((cert, key))
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))
}

fn load(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let pem = |path: &Path, e: rustls_pki_types::pem::Error| TlsError::Pem {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert.to_owned(),
            detail: "no certificate found".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e))?;
    Ok((certs, key_der))
}

/// Loads (or generates) the certificate and builds every configuration.
pub fn setup(config: &Config) -> Result<TlsSetup, TlsError> {
    let (cert_path, key_path) = ensure_files(config)?;
    let certificates = Arc::new(Certificates::open(cert_path.clone(), key_path)?);
    let server = |alpn: &[u8]| -> Result<rustls::ServerConfig, TlsError> {
        let mut c = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(c)
    };
    let chat = Arc::new(server(chat_protocol::ALPN)?);
    let https = Arc::new(server(b"http/1.1")?);
    let mut quic = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    quic.alpn_protocols = vec![chat_protocol::ALPN.to_vec()];
    // 0-RTT data could be replayed; chat/1 requests are not all idempotent.
    quic.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(quic)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(TlsSetup {
        chat,
        https,
        quic: Arc::new(quic),
        cert_path,
        certificates,
    })
}
