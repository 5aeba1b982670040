//! Transport security for every pocket connection: mutual TLS (rustls), the
//! identity a certificate carries, and the local PKI that `pocket up`
//! generates so the embedded default is secure without a manual step.
//!
//! Invariants:
//! - Every listener serves TLS and requires a client certificate signed by
//!   the pocket's CA; every outbound connection presents one and checks the
//!   server's against the same CA. There is no plaintext mode.
//! - Who a caller is comes only from its verified certificate: the subject
//!   common name `ROLE:NAME` ([`Identity`]). Services decide what a role may
//!   do ([`authorize`]); nothing is granted by default.
//!
//! Layout: [`tls`] (configs, server and client TLS), [`identity`] (roles and
//! peer identities), [`pki`] (generating a CA and certificates).

pub mod identity;
pub mod pki;
pub mod tls;

pub use identity::{authorize, peer_identity, role_dns_name, Identity, IdentityCache, Role, RoleGate};
pub use tls::{Tls, TlsConfig, TlsError};

/// The connections accepted on `listener`, for tonic's `serve_with_incoming`,
/// with Nagle's algorithm off: tonic sets `TCP_NODELAY` only on listeners it
/// binds itself, and small responses (an append's ack, a PUT's reply) would
/// otherwise wait for the peer's delayed ACK (~40 ms each).
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}
