//! The wire schema of pocket (`proto/pocket.proto`, compiled by tonic), size
//! limits, and the mapping of a malformed key to a gRPC status
//! ([`key_from_wire`]). [`Key`] and the id aliases live in `pocket-types`
//! and are re-exported here, so `pocket_proto::Key` names the same type.
//!
//! Invariant: domain logic never touches prost types; only this crate and
//! the wire edges of each service do. Domain code works with [`Key`] and
//! plain integers.

pub use pocket_types::{now_unix_ms, BucketId, CellId, ExtentId, Key, KeyError, OsdId, VolumeId, KEY_LEN};

pub mod framed;

/// Generated code for package `pocket.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("pocket.v1");
}

/// Bytes per streamed chunk on every RPC that carries blob bytes. 1 MiB keeps
/// messages far below tonic's 4 MiB default decode limit.
pub const CHUNK_SIZE_BYTES: usize = 1024 * 1024;

/// Default maximum blob size (32 MiB, DESIGN.md).
pub const DEFAULT_MAX_BLOB_SIZE_BYTES: u64 = 32 * 1024 * 1024;

/// Largest gRPC message any pocket service accepts: a chunk plus framing.
pub const MAX_MESSAGE_SIZE_BYTES: usize = CHUNK_SIZE_BYTES + 64 * 1024;

/// Most records one `Osd.AppendBatch` call may carry (ADR 12).
pub const APPEND_BATCH_MAX_RECORDS: usize = 64;
/// Most record bytes one `Osd.AppendBatch` call may carry: bounds what an
/// OSD holds for one call, and one call's share of a group commit.
pub const APPEND_BATCH_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// How an OSD starts the message of an append it refuses because the extent
/// is full (status RESOURCE_EXHAUSTED); frontends then close that volume.
pub const EXTENT_FULL_PREFIX: &str = "extent full";

/// The key in a request's `key` bytes, or `INVALID_ARGUMENT` naming what is
/// wrong with it: every wire edge parses keys through this.
pub fn key_from_wire(bytes: &[u8]) -> Result<Key, tonic::Status> {
    Key::from_slice(bytes).map_err(|e| tonic::Status::invalid_argument(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_key_on_the_wire_is_invalid_argument() {
        let key = Key::of(b"pocket");
        assert_eq!(key_from_wire(key.as_bytes()).expect("32 bytes"), key);
        let status = key_from_wire(&[0u8; 31]).expect_err("31 bytes");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "key must be 32 bytes, got 31");
    }

    /// A held stream gives its messages and then ends; asked after its
    /// deadline it ends with DEADLINE_EXCEEDED, never with OK, and what it
    /// holds is released only when it is dropped.
    #[tokio::test]
    async fn a_held_stream_past_its_deadline_ends_with_a_status_not_ok() {
        use tokio_stream::StreamExt;
        let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let permit = budget.clone().try_acquire_owned().expect("permit");
        let mut whole = held_stream([1, 2, 3].into_iter(), permit, std::time::Duration::from_secs(60));
        let mut got = Vec::new();
        while let Some(item) = whole.next().await {
            got.push(item.expect("within the deadline"));
        }
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(budget.available_permits(), 0, "held until the stream is dropped");
        drop(whole);
        assert_eq!(budget.available_permits(), 1);

        let mut late = held_stream([1, 2, 3].into_iter(), (), std::time::Duration::ZERO);
        let status = late.next().await.expect("an item").expect_err("past the deadline");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(late.next().await.is_none(), "nothing after the status");
    }

    /// Tiny chunks are coalesced; chunks of 64 KiB and more are kept as the
    /// very buffers that arrived; the bytes and their order never change.
    #[test]
    fn a_body_coalesces_tiny_chunks_and_keeps_large_ones() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let data = bytes::Bytes::from(data);
        let mut collector = BodyCollector::new(data.len() as u64);
        let (mut at, mut large) = (0, Vec::new());
        for size in [1usize, 7, 0, 300, CHUNK_SIZE_BYTES, 5, COALESCE_BELOW_BYTES].iter().cycle() {
            let end = (at + size).min(data.len());
            let chunk = data.slice(at..end);
            if chunk.len() >= COALESCE_BELOW_BYTES {
                large.push(chunk.as_ptr());
            }
            collector.push(chunk).expect("within the announced length");
            at = end;
            if at == data.len() {
                break;
            }
        }
        let body = collector.finish().expect("complete");
        assert_eq!(body.len_bytes(), data.len() as u64);
        let joined: Vec<u8> = body.chunks().iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, data);
        assert!(body.chunks().len() <= 2 * data.len() / COALESCE_BELOW_BYTES + 1, "{} chunks", body.chunks().len());
        let kept: Vec<_> = body.chunks().iter().map(|c| c.as_ptr()).filter(|p| large.contains(p)).collect();
        assert_eq!(kept, large, "large chunks are the buffers that arrived, in order");

        // 1-byte chunks: one chunk per 64 KiB, not one per byte.
        let mut collector = BodyCollector::new(200_000);
        for i in 0..200_000u32 {
            collector.push(bytes::Bytes::copy_from_slice(&[i as u8])).expect("within length");
        }
        let body = collector.finish().expect("complete");
        assert_eq!(body.chunks().len(), 200_000usize.div_ceil(COALESCE_BELOW_BYTES));
        assert!(body.chunks().iter().flat_map(|c| c.iter()).enumerate().all(|(i, b)| *b == i as u8));
    }
}

/// `data` cut into the slices of at most [`CHUNK_SIZE_BYTES`] that every
/// blob-carrying stream sends (no copy). Always at least one slice, so an
/// empty blob is still one message.
pub fn chunks(data: &bytes::Bytes) -> impl Iterator<Item = bytes::Bytes> + Send + 'static {
    let data = data.clone();
    let count = data.len().div_ceil(CHUNK_SIZE_BYTES).max(1);
    (0..count).map(move |index| {
        let start = index * CHUNK_SIZE_BYTES;
        data.slice(start..(start + CHUNK_SIZE_BYTES).min(data.len()))
    })
}

/// Collects a blob streamed in chunks, refusing more or fewer bytes than the
/// header announced. The chunks are kept as they arrived (`Bytes` from the
/// decoder), never copied into one buffer: a blob that is only hashed and
/// forwarded is never copied by pocket. Memory is the announced length, which
/// the caller has checked against its limit before creating the collector.
///
/// Chunks smaller than `COALESCE_BELOW_BYTES` are copied together into
/// chunks of at least that size: a sender of many tiny chunks cannot make a
/// body hold (and an OSD write) one buffer per byte. pocket's own senders
/// use `CHUNK_SIZE_BYTES` chunks, which are kept as they are.
pub struct BodyCollector {
    expected_bytes: u64,
    received_bytes: u64,
    chunks: Vec<bytes::Bytes>,
    small: bytes::BytesMut,
}

/// Chunks below this size are coalesced (see [`BodyCollector`]); a body then
/// has at most 2 × len / 64 KiB + 1 chunks.
pub const COALESCE_BELOW_BYTES: usize = 64 * 1024;

impl BodyCollector {
    pub fn new(expected_bytes: u64) -> BodyCollector {
        let chunks = (expected_bytes as usize).div_ceil(CHUNK_SIZE_BYTES).min(1024);
        BodyCollector { expected_bytes, received_bytes: 0, chunks: Vec::with_capacity(chunks), small: bytes::BytesMut::new() }
    }

    pub fn push(&mut self, chunk: bytes::Bytes) -> Result<(), tonic::Status> {
        if chunk.len() > CHUNK_SIZE_BYTES {
            return Err(tonic::Status::invalid_argument(format!(
                "chunk of {} bytes exceeds the {CHUNK_SIZE_BYTES}-byte chunk limit",
                chunk.len()
            )));
        }
        if self.received_bytes + chunk.len() as u64 > self.expected_bytes {
            return Err(tonic::Status::invalid_argument(format!(
                "stream carries more than the {} bytes its header announced",
                self.expected_bytes
            )));
        }
        self.received_bytes += chunk.len() as u64;
        if chunk.len() < COALESCE_BELOW_BYTES {
            self.small.extend_from_slice(&chunk);
            if self.small.len() >= COALESCE_BELOW_BYTES {
                self.chunks.push(self.small.split().freeze());
            }
        } else {
            self.flush_small();
            self.chunks.push(chunk);
        }
        Ok(())
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
    }

    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// The whole body, or `INVALID_ARGUMENT` if the stream ended early.
    pub fn finish(mut self) -> Result<Body, tonic::Status> {
        self.flush_small();
        if self.received_bytes != self.expected_bytes {
            return Err(tonic::Status::invalid_argument(format!(
                "stream ended after {} of {} announced bytes",
                self.received_bytes, self.expected_bytes
            )));
        }
        Ok(Body { chunks: self.chunks, len_bytes: self.received_bytes })
    }
}

/// A blob as the chunks it arrived in (each at most `CHUNK_SIZE_BYTES`).
/// Cloning clones handles, not bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    chunks: Vec<bytes::Bytes>,
    len_bytes: u64,
}

impl Body {
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// The chunks in order; none is empty or longer than `CHUNK_SIZE_BYTES`.
    pub fn chunks(&self) -> &[bytes::Bytes] {
        &self.chunks
    }

    /// BLAKE3 of the bytes.
    pub fn key(&self) -> Key {
        let mut hasher = blake3::Hasher::new();
        for chunk in &self.chunks {
            hasher.update(chunk);
        }
        Key(*hasher.finalize().as_bytes())
    }

    /// The bytes `[start, end)` (clamped to the body) as slices of its chunks: no copy.
    pub fn range(&self, start: u64, end: u64) -> Vec<bytes::Bytes> {
        let end = end.min(self.len_bytes);
        let mut out = Vec::new();
        let mut at = 0u64;
        for chunk in &self.chunks {
            let chunk_end = at + chunk.len() as u64;
            if chunk_end > start && at < end {
                let from = start.saturating_sub(at) as usize;
                let to = (end.min(chunk_end) - at) as usize;
                out.push(chunk.slice(from..to));
            }
            at = chunk_end;
            if at >= end {
                break;
            }
        }
        out
    }

    /// One contiguous buffer: free for a one-chunk body, one copy otherwise.
    pub fn contiguous(self) -> bytes::Bytes {
        match self.chunks.len() {
            0 => bytes::Bytes::new(),
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut buffer = bytes::BytesMut::with_capacity(self.len_bytes as usize);
                for chunk in &self.chunks {
                    buffer.extend_from_slice(chunk);
                }
                buffer.freeze()
            }
        }
    }
}

impl From<bytes::Bytes> for Body {
    /// Split into `CHUNK_SIZE_BYTES` slices (no copy).
    fn from(data: bytes::Bytes) -> Body {
        let len_bytes = data.len() as u64;
        let chunks = if data.is_empty() { Vec::new() } else { chunks(&data).collect() };
        Body { chunks, len_bytes }
    }
}

/// A budget of blob bytes held in memory at once by one daemon. Callers take
/// a permit for a blob's length before buffering it and wait (up to a bound)
/// while the budget is spent, so memory stays bounded under any load.
#[derive(Clone)]
pub struct ByteBudget {
    semaphore: std::sync::Arc<tokio::sync::Semaphore>,
    total_kib: u32,
}

impl ByteBudget {
    /// How long a request waits for budget before it is refused with
    /// `RESOURCE_EXHAUSTED`: long enough to ride out a burst, short enough
    /// that a client sees back-pressure instead of a hang.
    pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

    pub fn new(total_bytes: u64) -> ByteBudget {
        let total_kib = u32::try_from(total_bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1);
        ByteBudget { semaphore: std::sync::Arc::new(tokio::sync::Semaphore::new(total_kib as usize)), total_kib }
    }

    /// Reserves `bytes` (rounded up to KiB) until the permit is dropped.
    pub async fn reserve(&self, bytes: u64) -> Result<tokio::sync::OwnedSemaphorePermit, tonic::Status> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        if kib > self.total_kib {
            return Err(tonic::Status::resource_exhausted(format!(
                "{bytes} bytes exceed this daemon's in-flight byte budget"
            )));
        }
        let acquire = self.semaphore.clone().acquire_many_owned(kib);
        match tokio::time::timeout(Self::MAX_WAIT, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(tonic::Status::unavailable("shutting down")),
            Err(_) => Err(tonic::Status::resource_exhausted("in-flight byte budget exhausted; retry later")),
        }
    }
}

/// The next message of a client stream, or `DEADLINE_EXCEEDED` when the
/// sender stays silent for `idle`: a stalled client cannot hold a handler,
/// and the memory it reserved, for longer than that.
pub async fn next_message<T>(
    stream: &mut tonic::Streaming<T>,
    idle: std::time::Duration,
) -> Result<Option<T>, tonic::Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "stream idle for more than {} ms",
            idle.as_millis()
        ))),
    }
}

/// A response stream of `messages` that holds `hold` (e.g. the byte-budget
/// permits of the bytes it carries) for as long as it lives. pocket's
/// server (`pocket_transport::server`, ADR 15) drops a response stream
/// only once its last byte has left the send queue, or when it resets the
/// stream because the reader took nothing for its stall timeout, so what
/// `hold` counts stays counted until it is gone.
///
/// Asked for a message after `total` has passed, the stream ends with
/// `DEADLINE_EXCEEDED` instead: a stream that is cut never ends with OK.
pub fn held_stream<T, I, H>(messages: I, hold: H, total: std::time::Duration) -> HeldStream<I, H>
where
    I: Iterator<Item = T> + Unpin,
    H: Unpin,
{
    HeldStream { messages, _hold: hold, deadline: tokio::time::Instant::now() + total, total, done: false }
}

/// See [`held_stream`].
pub struct HeldStream<I, H> {
    messages: I,
    _hold: H,
    deadline: tokio::time::Instant,
    total: std::time::Duration,
    done: bool,
}

impl<T, I, H> tokio_stream::Stream for HeldStream<I, H>
where
    I: Iterator<Item = T> + Unpin,
    H: Unpin,
{
    type Item = Result<T, tonic::Status>;

    fn poll_next(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return std::task::Poll::Ready(None);
        }
        if tokio::time::Instant::now() >= this.deadline {
            this.done = true;
            return std::task::Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                "the response took longer than {} ms to send; it was cut",
                this.total.as_millis()
            )))));
        }
        let next = this.messages.next();
        this.done = next.is_none();
        std::task::Poll::Ready(next.map(Ok))
    }
}
