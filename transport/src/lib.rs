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

/// Connections a listener keeps open at once unless its service says
/// otherwise ([`incoming_capped`]). Each costs a task, TLS and HTTP/2 state
/// (tens of KiB); pocket's own peers need a few dozen.
pub const MAX_CONNECTIONS_PER_LISTENER: usize = 1024;

/// [`incoming_capped`] with [`MAX_CONNECTIONS_PER_LISTENER`].
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<CappedStream>> + Send + 'static {
    incoming_capped(listener, MAX_CONNECTIONS_PER_LISTENER)
}

/// The connections accepted on `listener`, for tonic's `serve_with_incoming`:
/// - at most `max_connections` open at once, counted from the TCP accept, so
///   before any TLS work: at the cap the listener stops accepting (new peers
///   wait in the kernel's backlog) until a connection closes. Connections
///   that never finish the TLS handshake are closed after
///   [`tls::HANDSHAKE_TIMEOUT`], dead peers by HTTP/2 keepalive;
/// - with Nagle's algorithm off: tonic sets `TCP_NODELAY` only on listeners
///   it binds itself, and small responses (an append's ack, a PUT's reply)
///   would otherwise wait for the peer's delayed ACK (~40 ms each).
pub fn incoming_capped(
    listener: tokio::net::TcpListener,
    max_connections: usize,
) -> impl tokio_stream::Stream<Item = std::io::Result<CappedStream>> + Send + 'static {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    futures::stream::unfold((listener, slots), |(listener, slots)| async move {
        // The semaphore is never closed: the stream ends only when dropped.
        let slot = slots.clone().acquire_owned().await.ok()?;
        let accepted = listener.accept().await.and_then(|(stream, _peer)| {
            stream.set_nodelay(true)?;
            metrics::gauge!("pocket_open_connections").increment(1.0);
            Ok(CappedStream { stream, _slot: slot })
        });
        Some((accepted, (listener, slots)))
    })
}

/// An accepted connection holding one of its listener's slots until dropped.
#[derive(Debug)]
pub struct CappedStream {
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for CappedStream {
    fn drop(&mut self) {
        metrics::gauge!("pocket_open_connections").decrement(1.0);
    }
}

impl tonic::transport::server::Connected for CappedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for CappedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CappedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_listener_at_its_cap_accepts_again_only_when_a_connection_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = Box::pin(incoming_capped(listener, 2));
        // Three peers connect; the kernel completes all three TCP handshakes.
        let mut peers = Vec::new();
        for _ in 0..3 {
            peers.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let first = incoming.next().await.expect("stream").expect("first accepted");
        let _second = incoming.next().await.expect("stream").expect("second accepted");
        // The third is waiting in the backlog, but the cap holds it there.
        let third = tokio::time::timeout(std::time::Duration::from_millis(300), incoming.next()).await;
        assert!(third.is_err(), "a third connection was accepted past the cap of 2");
        // Closing one connection frees its slot.
        drop(first);
        let third = tokio::time::timeout(std::time::Duration::from_secs(10), incoming.next())
            .await
            .expect("the third connection is accepted once a slot is free")
            .expect("stream")
            .expect("accepted");
        assert!(third.stream.nodelay().expect("nodelay"), "accepted connections have Nagle off");
    }
}
