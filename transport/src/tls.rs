//! TLS material and the server and client configurations built from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TonicIdentity};

/// Time allowed for a TLS handshake: a peer that opens a connection and
/// stalls cannot hold a server task longer than this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to establish a TCP connection to a peer before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Interval of HTTP/2 keepalive pings on every connection, both directions.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Largest HTTP/2 frame a pocket server or client accepts
/// (SETTINGS_MAX_FRAME_SIZE; the protocol's default is 16 KiB). Blob chunks are up to 1 MiB, so with
/// the default a 64 KiB message leaves the sender as four DATA frames, each
/// its own write to the TLS stream. Frames stay within the flow-control
/// windows, so this bounds no more memory than before.
pub const HTTP2_MAX_FRAME_BYTES: u32 = 256 * 1024;
/// A peer that does not answer a keepalive ping within this is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for one outbound unary RPC or one whole blob transfer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Paths of the PEM files a daemon or client uses (`[tls]` in every config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The pocket's CA certificate: peers must be signed by it.
    pub ca: PathBuf,
    /// This process's certificate (subject CN `ROLE:NAME`).
    pub cert: PathBuf,
    /// This process's private key. Never logged.
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM {what}")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid peer address {addr:?}: {detail}")]
    Address { addr: String, detail: String },
}

/// Loaded TLS material. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Material>,
}

struct Material {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

impl Tls {
    pub fn load(config: &TlsConfig) -> Result<Tls, TlsError> {
        let material = Material { ca_pem: read(&config.ca)?, cert_pem: read(&config.cert)?, key_pem: read(&config.key)? };
        for (pem, path, what) in [
            (&material.ca_pem, &config.ca, "CERTIFICATE"),
            (&material.cert_pem, &config.cert, "CERTIFICATE"),
            (&material.key_pem, &config.key, "PRIVATE KEY"),
        ] {
            if !String::from_utf8_lossy(pem).contains(&format!("{what}-----")) {
                return Err(TlsError::NoPem { path: path.clone(), what });
            }
        }
        Ok(Tls { inner: Arc::new(material) })
    }

    /// A rustls server configuration for the HTTP operations endpoint:
    /// this identity, client certificates required and checked against the
    /// CA (chain and validity period).
    pub fn rustls_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server_config(b"http/1.1")
    }

    /// The same rules for gRPC ([`crate::server`]): HTTP/2 by ALPN.
    pub fn grpc_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server_config(b"h2")
    }

    fn server_config(&self, alpn: &[u8]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let roots = self.root_store()?;
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let certs = self.cert_chain()?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&self.inner.key_pem)
            .map_err(|_| TlsError::NoPem { path: PathBuf::from("<key>"), what: "PRIVATE KEY" })?;
        let mut config =
            rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(certs, key)?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    }

    /// A rustls client configuration presenting this identity and trusting
    /// only the pocket's CA (for HTTP clients and tests).
    pub fn rustls_client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let roots = self.root_store()?;
        let certs = self.cert_chain()?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&self.inner.key_pem)
            .map_err(|_| TlsError::NoPem { path: PathBuf::from("<key>"), what: "PRIVATE KEY" })?;
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(certs, key)?;
        Ok(Arc::new(config))
    }

    fn root_store(&self) -> Result<rustls::RootCertStore, TlsError> {

        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&self.inner.ca_pem) {
            let cert = cert.map_err(|_| TlsError::NoPem { path: PathBuf::from("<ca>"), what: "CERTIFICATE" })?;
            roots.add(cert)?;
        }
        Ok(roots)
    }

    fn cert_chain(&self) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, TlsError> {

        rustls_pki_types::CertificateDer::pem_slice_iter(&self.inner.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TlsError::NoPem { path: PathBuf::from("<cert>"), what: "CERTIFICATE" })
    }

    /// A lazily connected mutual-TLS channel to `addr` (`host:port`). The
    /// server must present a certificate from the pocket's CA carrying the
    /// DNS name `server_name`: [`crate::role_dns_name`] for any daemon of a
    /// role, [`crate::Identity::dns_name`] for one daemon. So a daemon of
    /// another role, or another OSD now on a reused address, is refused.
    pub fn channel(&self, addr: &str, server_name: &str) -> Result<Channel, TlsError> {
        // TCP_NODELAY and read-ahead come from the connector.
        Ok(self.endpoint(addr, server_name)?.connect_with_connector_lazy(crate::net::Connector))
    }

    /// The endpoint [`Tls::channel`] connects to, for a caller (a test) that
    /// changes a setting first; connect it with [`crate::net::Connector`].
    pub fn endpoint(&self, addr: &str, server_name: &str) -> Result<Endpoint, TlsError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.inner.ca_pem))
            .identity(TonicIdentity::from_pem(&self.inner.cert_pem, &self.inner.key_pem))
            .domain_name(server_name.to_string())
            .timeout(HANDSHAKE_TIMEOUT);
        let bad = |detail: String| TlsError::Address { addr: addr.to_string(), detail };
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| bad(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // Responses (GET chunks) in frames of up to 256 KiB too.
            .max_frame_size(HTTP2_MAX_FRAME_BYTES)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        Ok(endpoint)
    }
}
