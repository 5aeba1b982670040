//! The one gRPC server every pocket service runs (ADR 15): mutual TLS on
//! capped connections ([`crate::incoming_capped`]), HTTP/2 with the pocket's
//! frame size and keepalive, a deadline on each handler, a bounded drain at
//! shutdown, and response streams that can neither pile up in the send
//! queue nor end with OK when they were cut.
//!
//! How a response is sent. hyper hands a response body's data to h2 one
//! frame at a time and asks the body for the next frame only once h2 has
//! flow-control capacity for the one it holds (hyper 1.12,
//! `PipeToSendStream`). [`PacedBody`] therefore cuts every frame into
//! pieces of at most [`SEND_PIECE_BYTES`] and the last byte of each frame
//! into a piece of its own. Being asked for a piece proves that everything
//! before the previous piece left the stream's send queue, and the body
//! ends (and drops what it holds: the byte-budget permits of a GET) only
//! after its last byte was given capacity. So what a stream holds stays
//! counted until it has left, and its send queue holds at most one piece.
//!
//! A reader that takes nothing: while a piece waits for capacity hyper does
//! not poll the body, so the body cannot notice. Each stream's task is
//! spawned through [`StreamExecutor`], which watches it: when the body has
//! waited [`ServerSettings::send_stall_timeout`] to be asked for its next
//! piece, the task is dropped, and h2 resets the stream (RST_STREAM
//! CANCEL, its queue freed). The client sees CANCELLED, never OK. A stream
//! cut for a reason the body knows (a deadline, a failing source) ends with
//! trailers carrying that status instead.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::StreamExt;

use crate::tls::{Tls, TlsError, HANDSHAKE_TIMEOUT, HTTP2_MAX_FRAME_BYTES, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
use crate::ConnectionCaps;

/// Largest piece of a response handed to HTTP/2 at once, and the most a
/// stream's send queue holds: the unit by which a reader must make progress
/// within the stall timeout (64 KiB per 10 s by default, 6.4 KiB/s).
pub const SEND_PIECE_BYTES: usize = 64 * 1024;

/// How long a stopping server lets open connections finish their streams
/// (after telling their peers with GOAWAY) before it closes them.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// What a pocket gRPC server allows.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// Connections held at once, in all and per source address.
    pub caps: ConnectionCaps,
    /// Streams one connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS;
    /// a stream counts until its last byte has left).
    pub max_concurrent_streams: u32,
    /// Longest a handler may take to produce its response (a streamed
    /// response carries its own deadline after that).
    pub request_timeout: Duration,
    /// Longest a response may wait for its reader to take the next piece
    /// before the stream is reset.
    pub send_stall_timeout: Duration,
}

/// The certificates the peer of a request's connection presented, as TLS
/// verified them; every request of a [`serve`]d connection carries them as
/// an extension ([`crate::peer_identity`] reads them).
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// Serves `routes` on `listener` with mutual TLS until `shutdown` resolves;
/// then stops accepting, asks open connections to finish (GOAWAY) and
/// closes those still open after [`SHUTDOWN_DRAIN`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: &Tls,
    settings: ServerSettings,
    routes: tonic::service::Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TlsError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.grpc_server_config()?);
    let mut http2 = hyper::server::conn::http2::Builder::new(StreamExecutor { stall: settings.send_stall_timeout });
    http2
        .timer(TokioTimer::new())
        .max_frame_size(HTTP2_MAX_FRAME_BYTES)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_send_buf_size(SEND_PIECE_BYTES);
    let http2 = Arc::new(http2);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    {
        let incoming = crate::incoming_capped(listener, settings.caps);
        tokio::pin!(incoming);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = incoming.next() => match accepted {
                    Some(Ok(stream)) => {
                        let connection = Connection {
                            acceptor: acceptor.clone(),
                            http2: http2.clone(),
                            routes: routes.clone(),
                            request_timeout: settings.request_timeout,
                            stop: stop_rx.clone(),
                        };
                        connections.spawn(connection.serve(stream));
                    }
                    Some(Err(error)) => tracing::debug!(%error, "accept failed"),
                    None => break,
                },
            }
        }
        // `incoming` drops here: the listener closes.
    }
    stop_tx.send_replace(true);
    let open = connections.len();
    let drained = tokio::time::timeout(SHUTDOWN_DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(open, still_open = connections.len(), "connections still open after the shutdown drain; closing them");
        connections.shutdown().await;
    }
    Ok(())
}

/// One accepted connection and what serving it needs.
struct Connection {
    acceptor: tokio_rustls::TlsAcceptor,
    http2: Arc<hyper::server::conn::http2::Builder<StreamExecutor>>,
    routes: tonic::service::Routes,
    request_timeout: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    async fn serve(mut self, stream: crate::CappedStream) {
        let tls = tokio::select! {
            handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)) => match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            },
            _ = self.stop.wait_for(|stop| *stop) => return,
        };
        let certificates = tls.get_ref().1.peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
        let peer = PeerCertificates(Arc::new(certificates));
        let (routes, request_timeout) = (self.routes, self.request_timeout);
        let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer.clone());
            let routes = routes.clone();
            async move { Ok::<_, Infallible>(respond(routes, request, request_timeout).await.map(PacedBody::new)) }
        });
        let connection = self.http2.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = self.stop.wait_for(|stop| *stop) => {}
        }
        connection.as_mut().graceful_shutdown();
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection ended with an error while draining");
        }
    }
}

/// The response of `routes` to `request`, or DEADLINE_EXCEEDED if the
/// handler takes longer than `timeout`.
async fn respond(
    mut routes: tonic::service::Routes,
    request: http::Request<hyper::body::Incoming>,
    timeout: Duration,
) -> http::Response<tonic::body::Body> {
    use tonic::codegen::Service;
    let call = async {
        std::future::poll_fn(|cx| Service::<http::Request<hyper::body::Incoming>>::poll_ready(&mut routes, cx)).await?;
        routes.call(request).await
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => {
            metrics::counter!("pocket_requests_timed_out_total").increment(1);
            tonic::Status::deadline_exceeded(format!("the server's {} ms for a request ran out", timeout.as_millis()))
                .into_http()
        }
    }
}

tokio::task_local! {
    /// The watch of the stream whose task is being polled ([`StreamExecutor`]).
    static SEND_WATCH: Arc<SendWatch>;
}

/// Since when the response body of one stream has been waiting to be asked
/// for its next piece (`None`: it is not waiting on its reader).
#[derive(Debug, Default)]
struct SendWatch {
    waiting_since: Mutex<Option<Instant>>,
}

impl SendWatch {
    fn set(&self, since: Option<Instant>) {
        // A plain value: valid after any panic.
        *self.waiting_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = since;
    }

    fn get(&self) -> Option<Instant> {
        *self.waiting_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Marks the current stream as waiting on its reader from now on (or not).
fn mark_waiting(waiting: bool) {
    let _ = SEND_WATCH.try_with(|watch| watch.set(waiting.then(Instant::now)));
}

/// The executor of hyper's per-stream tasks: spawns each on tokio under a
/// watch, and drops the task (h2 then resets its stream) once its response
/// has waited `stall` for its reader.
#[derive(Debug, Clone, Copy)]
pub struct StreamExecutor {
    stall: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(WatchedStream { task: Some(Box::pin(task)), watch: Arc::default(), stall: self.stall, timer: None });
    }
}

/// A stream's task and its stall watch ([`StreamExecutor`]).
struct WatchedStream<F> {
    task: Option<Pin<Box<F>>>,
    watch: Arc<SendWatch>,
    stall: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F: Future<Output = ()>> Future for WatchedStream<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(task) = this.task.as_mut() else { return Poll::Ready(()) };
        if SEND_WATCH.sync_scope(this.watch.clone(), || task.as_mut().poll(cx)).is_ready() {
            this.task = None;
            return Poll::Ready(());
        }
        let Some(since) = this.watch.get() else {
            this.timer = None;
            return Poll::Pending;
        };
        let deadline = since + this.stall;
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Dropping hyper's task drops its handle on the h2 stream, which
        // h2 then resets (CANCEL) and whose queued data it frees; the
        // response body and what it holds drop with the task.
        this.task = None;
        metrics::counter!("pocket_response_streams_reset_total", "reason" => "stalled_reader").increment(1);
        tracing::debug!(stall_ms = this.stall.as_millis() as u64, "reset a response stream whose reader took nothing");
        Poll::Ready(())
    }
}

/// A response body handed to HTTP/2 in pieces of at most
/// [`SEND_PIECE_BYTES`], the last byte of each frame alone (see the module
/// documentation), that marks its stream as waiting on the reader while a
/// piece it gave out waits for capacity.
pub struct PacedBody<B: Body = tonic::body::Body> {
    inner: B,
    /// What is left of the inner body's current data frame.
    rest: Bytes,
    /// The inner body's end (trailers, an error or nothing), given out
    /// after its last data.
    end: Option<Option<Result<Frame<Bytes>, B::Error>>>,
    ended: bool,
}

impl<B: Body<Data = Bytes>> PacedBody<B> {
    pub fn new(inner: B) -> PacedBody<B> {
        PacedBody { inner, rest: Bytes::new(), end: None, ended: false }
    }

    /// The next piece of `rest`: at most a piece's size, and never the last
    /// byte together with others.
    fn next_piece(&mut self) -> Option<Bytes> {
        match self.rest.len() {
            0 => None,
            1 => Some(std::mem::take(&mut self.rest)),
            n => Some(self.rest.split_to((n - 1).min(SEND_PIECE_BYTES))),
        }
    }
}

impl<B> Body for PacedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(piece) = this.next_piece() {
                mark_waiting(true);
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            // Asked again after the last piece: it had capacity, so
            // everything given out so far has left or is leaving.
            mark_waiting(false);
            if let Some(end) = this.end.take() {
                this.ended = true;
                return Poll::Ready(end);
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(data) => this.rest = data,
                    Err(frame) => this.end = Some(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(error))) => this.end = Some(Some(Err(error))),
                Poll::Ready(None) => this.end = Some(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.rest.is_empty() && self.end.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower().saturating_add(rest));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of the given frames, then trailers.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn drain(body: &mut PacedBody<Frames>) -> Vec<Frame<Bytes>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        loop {
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => out.push(frame),
                Poll::Ready(None) => return out,
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Pending => panic!("a ready body is never pending"),
            }
        }
    }

    #[test]
    fn frames_leave_in_bounded_pieces_with_each_last_byte_alone_and_trailers_last() {
        let big: Bytes = (0..(3 * SEND_PIECE_BYTES + 10)).map(|i| i as u8).collect();
        let small = Bytes::from_static(b"ab");
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = [Frame::data(big.clone()), Frame::data(small.clone()), Frame::trailers(trailers)];
        let mut body = PacedBody::new(Frames(frames.into_iter().collect()));
        let out = drain(&mut body);
        let (data, rest): (Vec<_>, Vec<_>) = out.into_iter().partition(Frame::is_data);
        let pieces: Vec<Bytes> = data.into_iter().map(|f| f.into_data().expect("data")).collect();
        let sizes: Vec<usize> = pieces.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [SEND_PIECE_BYTES, SEND_PIECE_BYTES, SEND_PIECE_BYTES, 9, 1, 1, 1]);
        let joined: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        let expected: Vec<u8> = big.iter().chain(small.iter()).copied().collect();
        assert_eq!(joined, expected, "the bytes and their order never change");
        assert_eq!(rest.len(), 1);
        assert!(rest[0].is_trailers(), "trailers come after every byte");
        assert!(body.is_end_stream());
    }
}
