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
//! Layout: [`tls`] (configs, server and client TLS), [`server`] (the one
//! gRPC server of every service: connections, HTTP/2, response streams that
//! cannot pile up or end OK when cut), [`identity`] (roles and peer
//! identities), [`pki`] (generating a CA and certificates), [`net`] (the
//! read-ahead under TLS).

pub mod identity;
pub mod net;
pub mod pki;
pub mod server;
pub mod tls;

pub use identity::{authorize, peer_identity, role_dns_name, Identity, IdentityCache, Role, RoleGate};
pub use server::{serve, ServerSettings};
pub use tls::{Tls, TlsConfig, TlsError};

/// Connections a listener keeps open at once unless its service says
/// otherwise ([`ConnectionCaps`]). Each costs a task, TLS and HTTP/2 state
/// (tens of KiB); pocket's own peers need a few dozen.
pub const MAX_CONNECTIONS_PER_LISTENER: usize = 1024;

/// Connections one source address may hold on a listener unless its service
/// says otherwise: a quarter of the listener's, so one host cannot take
/// every slot. (`pocket up` runs every daemon on 127.0.0.1: one source.)
pub const MAX_CONNECTIONS_PER_SOURCE: usize = MAX_CONNECTIONS_PER_LISTENER / 4;

/// How many connections a listener holds: in all, and per source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub total: usize,
    pub per_source: usize,
}

impl Default for ConnectionCaps {
    fn default() -> ConnectionCaps {
        ConnectionCaps { total: MAX_CONNECTIONS_PER_LISTENER, per_source: MAX_CONNECTIONS_PER_SOURCE }
    }
}

/// [`incoming_capped`] with the default [`ConnectionCaps`].
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<CappedStream>> + Send + 'static {
    incoming_capped(listener, ConnectionCaps::default())
}

type SourceCounts = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// The connections accepted on `listener`, for [`server::serve`]:
/// - at most `caps.total` open at once, counted from the TCP accept, so
///   before any TLS work: at the cap the listener stops accepting (new peers
///   wait in the kernel's backlog) until a connection closes. Connections
///   that never finish the TLS handshake are closed after
///   [`tls::HANDSHAKE_TIMEOUT`], dead peers by HTTP/2 keepalive;
/// - at most `caps.per_source` from one IP address: one more is closed at
///   once, before TLS (counted in `pocket_connections_refused_total`);
/// - with Nagle's algorithm off: tonic sets `TCP_NODELAY` only on listeners
///   it binds itself, and small responses (an append's ack, a PUT's reply)
///   would otherwise wait for the peer's delayed ACK (~40 ms each);
/// - reading through a [`net::READ_AHEAD_BYTES`] buffer ([`net`]).
pub fn incoming_capped(
    listener: tokio::net::TcpListener,
    caps: ConnectionCaps,
) -> impl tokio_stream::Stream<Item = std::io::Result<CappedStream>> + Send + 'static {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(caps.total.max(1)));
    let sources = SourceCounts::default();
    let per_source = caps.per_source.max(1);
    futures::stream::unfold((listener, slots, sources), move |(listener, slots, sources)| async move {
        loop {
            // The semaphore is never closed: the stream ends only when dropped.
            let slot = slots.clone().acquire_owned().await.ok()?;
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => return Some((Err(e), (listener, slots, sources))),
            };
            let source = peer.ip();
            {
                let mut counts = lock_counts(&sources);
                let count = counts.entry(source).or_insert(0);
                if *count >= per_source {
                    drop(counts);
                    metrics::counter!("pocket_connections_refused_total", "reason" => "per_source_cap").increment(1);
                    tracing::debug!(%source, per_source, "connection refused: its source holds its cap");
                    continue; // `stream` and `slot` drop here: closed, slot freed.
                }
                *count += 1;
            }
            let accepted = stream.set_nodelay(true);
            let capped = CappedStream { stream: net::read_ahead(stream), source, sources: sources.clone(), _slot: slot };
            metrics::gauge!("pocket_open_connections").increment(1.0);
            let accepted = accepted.map(|()| capped);
            return Some((accepted, (listener, slots, sources)));
        }
    })
}

fn lock_counts(
    sources: &SourceCounts,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
    // Counts stay consistent after a panic elsewhere: each update is one statement.
    sources.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An accepted connection holding one of its listener's slots (and one of
/// its source's) until dropped.
#[derive(Debug)]
pub struct CappedStream {
    stream: net::ReadAhead,
    source: std::net::IpAddr,
    sources: SourceCounts,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for CappedStream {
    fn drop(&mut self) {
        metrics::gauge!("pocket_open_connections").decrement(1.0);
        let mut counts = lock_counts(&self.sources);
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

impl tonic::transport::server::Connected for CappedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.get_ref().connect_info()
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

    type Incoming = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<CappedStream>> + Send>>;

    /// A capped listener on 127.0.0.1 with three peers connected to it (the
    /// kernel completed their TCP handshakes), the first two accepted.
    async fn three_peers(
        caps: ConnectionCaps,
    ) -> (std::net::SocketAddr, Incoming, Vec<tokio::net::TcpStream>, CappedStream, CappedStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming: Incoming = Box::pin(incoming_capped(listener, caps));
        let mut peers = Vec::new();
        for _ in 0..3 {
            peers.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let first = incoming.next().await.expect("stream").expect("first accepted");
        let second = incoming.next().await.expect("stream").expect("second accepted");
        (addr, incoming, peers, first, second)
    }

    #[tokio::test]
    async fn a_listener_at_its_cap_accepts_again_only_when_a_connection_closes() {
        let (_addr, mut incoming, _peers, first, _second) = three_peers(ConnectionCaps { total: 2, per_source: 2 }).await;
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
        assert!(third.stream.get_ref().nodelay().expect("nodelay"), "accepted connections have Nagle off");
    }

    #[tokio::test]
    async fn a_source_past_its_cap_is_closed_and_others_keep_their_slots() {
        use tokio::io::AsyncReadExt;
        let (addr, mut incoming, mut peers, first, _second) = three_peers(ConnectionCaps { total: 8, per_source: 2 }).await;
        // The third from the same address is accepted and closed at once:
        // the stream yields nothing for it, and its peer reads end-of-stream.
        let more = tokio::time::timeout(std::time::Duration::from_millis(300), incoming.next()).await;
        assert!(more.is_err(), "a third connection from one source was accepted past its cap of 2");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), peers[2].read(&mut byte))
            .await
            .expect("the refused peer sees its connection closed");
        assert!(matches!(read, Ok(0) | Err(_)), "the refused connection delivered data: {read:?}");
        // Another source address still gets in.
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        other.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
        let _other = other.connect(addr).await.expect("connect from 127.0.0.2");
        let from_other = tokio::time::timeout(std::time::Duration::from_secs(10), incoming.next())
            .await
            .expect("another source is accepted")
            .expect("stream")
            .expect("accepted");
        assert_eq!(from_other.source, "127.0.0.2".parse::<std::net::IpAddr>().expect("ip"));
        // When one of the source's connections closes, it may connect again.
        drop(first);
        let _again = tokio::net::TcpStream::connect(addr).await.expect("connect again");
        tokio::time::timeout(std::time::Duration::from_secs(10), incoming.next())
            .await
            .expect("accepted once the source is under its cap")
            .expect("stream")
            .expect("accepted");
    }
}
