//! The TCP streams under every TLS connection: Nagle off, and reads in
//! large pieces.
//!
//! rustls asks its transport for at most 4 KiB more than it already holds
//! (its buffer stays under one TLS record, about 16 KiB), so a socket read
//! by rustls alone costs several `recvfrom` calls per record it carries.
//! Under rustls each socket reads through a [`READ_AHEAD_BYTES`] buffer
//! instead: one call takes whatever the kernel holds, and rustls's small
//! reads are served from memory. The calls saved are counted in ADR 14.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::BufReader;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

/// Most bytes one read of a socket takes. A connection holds one buffer of
/// this size for its lifetime (a listener's connections are capped).
pub const READ_AHEAD_BYTES: usize = 64 * 1024;

/// A TCP stream that reads ahead; writes go straight to the socket.
pub type ReadAhead = BufReader<TcpStream>;

/// `stream` reading through a [`READ_AHEAD_BYTES`] buffer.
pub fn read_ahead(stream: TcpStream) -> ReadAhead {
    BufReader::with_capacity(READ_AHEAD_BYTES, stream)
}

/// Opens the connections of [`crate::Tls::channel`]: `TCP_NODELAY`, reads
/// through [`read_ahead`]. tonic puts TLS and the connect timeout on top.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connector;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<ReadAhead>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
            // An IPv6 literal keeps its brackets in a URI's host.
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(read_ahead(stream)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tonic::codegen::Service;

    /// What a peer sends: 1 MiB, every byte depending on its position.
    fn pattern() -> Vec<u8> {
        (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    #[tokio::test]
    async fn small_reads_through_the_connector_get_every_byte_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sent = pattern();
        let peer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.expect("accept");
                socket.write_all(&sent).await.expect("send");
                // Then read the client's reply through a read-ahead stream.
                let mut reply = Vec::new();
                read_ahead(socket).read_to_end(&mut reply).await.expect("read reply");
                reply
            })
        };
        let uri: Uri = format!("https://{addr}").parse().expect("uri");
        let io = Connector.call(uri).await.expect("connect");
        let mut stream = io.into_inner();
        assert!(stream.get_ref().nodelay().expect("nodelay"), "TCP_NODELAY is set");
        // 4 KiB at a time, as rustls asks.
        let mut received = Vec::new();
        let mut piece = [0u8; 4096];
        while received.len() < sent.len() {
            let n = stream.read(&mut piece).await.expect("read");
            assert!(n > 0, "early EOF after {} bytes", received.len());
            received.extend_from_slice(&piece[..n]);
        }
        assert!(received == sent, "the bytes read differ from the bytes sent");
        // Writes go through to the socket.
        stream.write_all(b"reply through the buffer").await.expect("write");
        stream.shutdown().await.expect("shutdown");
        assert_eq!(peer.await.expect("peer"), b"reply through the buffer");
    }

    #[tokio::test]
    async fn a_uri_without_a_host_is_refused() {
        let uri = Uri::from_static("/no/authority");
        let err = Connector.call(uri).await.expect_err("no host");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
