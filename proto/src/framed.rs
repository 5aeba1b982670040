//! Client-streaming calls whose blob chunks reach HTTP/2 without a copy
//! (ADR 10).
//!
//! tonic's encoder writes every message into its own buffer before HTTP/2
//! sends it, so each chunk of a blob was copied once per call: a frontend
//! writing three replicas copied every blob three times. A chunk message of
//! pocket's streams is a `oneof` whose chunk case is one `bytes` field, so
//! its encoding is a short prefix (gRPC's 5-byte message header, the field's
//! key and the length varint) followed by the chunk's own bytes. [`Frames`]
//! builds the prefixes and keeps each large chunk as the `Bytes` it already
//! is; [`client_streaming`] sends them as the request body and reads the one
//! response message the way tonic's own client does (headers, a
//! trailers-only error, the message, then the trailers' status).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tonic::codec::Codec;
use tonic::codegen::{http, Service};
use tonic::{Code, Status};

use crate::MAX_MESSAGE_SIZE_BYTES;

/// `Osd.Append`'s path; its chunks are field [`CHUNK_FIELD`] of `AppendRequest`.
pub const OSD_APPEND_PATH: &str = "/pocket.v1.Osd/Append";
/// `Osd.AppendBatch`'s path: several records, each as in `Osd.Append`.
pub const OSD_APPEND_BATCH_PATH: &str = "/pocket.v1.Osd/AppendBatch";
/// `BlobStore.Put`'s path; its chunks are field [`CHUNK_FIELD`] of `PutRequest`.
pub const BLOB_STORE_PUT_PATH: &str = "/pocket.v1.BlobStore/Put";
/// The field number of `chunk` in `AppendRequest` and `PutRequest` (the
/// unit tests check both against prost's encoding).
pub const CHUNK_FIELD: u32 = 2;

/// gRPC's message header: a compression flag and a big-endian length.
const GRPC_HEADER_BYTES: usize = 5;
/// Chunks shorter than this are copied in with the prefixes around them:
/// one HTTP/2 frame instead of several tiny ones costs less than the copy.
const COPY_BELOW_BYTES: usize = 4 * 1024;

/// The request body of a client stream: encoded messages as `Bytes`, large
/// chunks kept as the buffers they came in.
#[derive(Debug, Default)]
pub struct Frames {
    frames: VecDeque<Bytes>,
    /// Small pieces not yet in `frames`: prefixes, headers, small chunks.
    pending: BytesMut,
    len_bytes: u64,
}

impl Frames {
    pub fn new() -> Frames {
        Frames::default()
    }

    /// Appends a whole message (a stream's header), encoded here.
    pub fn message(&mut self, message: &impl prost::Message) -> Result<(), Status> {
        let len = message.encoded_len();
        self.put_grpc_header(len)?;
        self.pending.reserve(len);
        message.encode(&mut self.pending).map_err(|e| Status::internal(format!("encoding a message: {e}")))?;
        self.len_bytes += len as u64;
        Ok(())
    }

    /// Appends the message whose only field, number `field`, is `bytes`
    /// holding `chunk`: exactly what prost encodes for a `oneof` case
    /// `bytes chunk = field`, with the chunk's bytes not copied.
    pub fn bytes_field(&mut self, field: u32, chunk: Bytes) -> Result<(), Status> {
        let len = prost::encoding::key_len(field) + prost::encoding::encoded_len_varint(chunk.len() as u64) + chunk.len();
        self.put_grpc_header(len)?;
        prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut self.pending);
        prost::encoding::encode_varint(chunk.len() as u64, &mut self.pending);
        self.len_bytes += (len - chunk.len()) as u64;
        if chunk.len() < COPY_BELOW_BYTES {
            self.pending.extend_from_slice(&chunk);
            self.len_bytes += chunk.len() as u64;
        } else {
            self.flush_pending();
            self.len_bytes += chunk.len() as u64;
            self.frames.push_back(chunk);
        }
        Ok(())
    }

    /// The stream pocket's blob uploads send: `header`, then one message
    /// per chunk (field [`CHUNK_FIELD`]).
    pub fn header_and_chunks(header: &impl prost::Message, chunks: impl IntoIterator<Item = Bytes>) -> Result<Frames, Status> {
        let mut frames = Frames::new();
        frames.record(header, chunks)?;
        Ok(frames)
    }

    /// Appends one record: `header`, then one message per chunk. A stream
    /// of several records (`Osd.AppendBatch`) is several of these in turn.
    pub fn record(&mut self, header: &impl prost::Message, chunks: impl IntoIterator<Item = Bytes>) -> Result<(), Status> {
        self.message(header)?;
        for chunk in chunks {
            self.bytes_field(CHUNK_FIELD, chunk)?;
        }
        Ok(())
    }

    /// Bytes of the whole request body.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn put_grpc_header(&mut self, message_len: usize) -> Result<(), Status> {
        if message_len > MAX_MESSAGE_SIZE_BYTES {
            return Err(Status::internal(format!(
                "a message of {message_len} bytes is over the limit of {MAX_MESSAGE_SIZE_BYTES}"
            )));
        }
        self.pending.put_u8(0); // not compressed
        self.pending.put_u32(message_len as u32);
        self.len_bytes += GRPC_HEADER_BYTES as u64;
        Ok(())
    }

    fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            self.frames.push_back(self.pending.split().freeze());
        }
    }

    fn into_body(mut self) -> FramesBody {
        self.flush_pending();
        FramesBody { frames: self.frames, remaining_bytes: self.len_bytes }
    }
}

/// [`Frames`] as an HTTP body: one data frame per buffer, then the end.
struct FramesBody {
    frames: VecDeque<Bytes>,
    remaining_bytes: u64,
}

#[cfg(test)]
impl FramesBody {
    /// The body as one buffer (tests compare it with prost's encoding).
    fn concatenated(&self) -> Vec<u8> {
        self.frames.iter().flat_map(|f| f.iter().copied()).collect()
    }
}

impl http_body::Body for FramesBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.frames.pop_front().map(|frame| {
            this.remaining_bytes -= frame.len() as u64;
            Ok(Frame::data(frame))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining_bytes)
    }
}

/// Calls the client-streaming method `path` (`/package.Service/Method`) on
/// `channel` with `frames` as the request, and returns its one response.
/// Errors are what tonic's generated client returns for the same call.
pub async fn client_streaming<S, R>(channel: &mut S, path: &'static str, frames: Frames) -> Result<R, Status>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    R: prost::Message + Default + Send + 'static,
{
    let request = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        .uri(path)
        .header(http::header::TE, "trailers")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(tonic::body::Body::new(frames.into_body()))
        .map_err(|e| Status::internal(format!("building the request to {path}: {e}")))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {}", e.into())))?;
    let response = channel.call(request).await.map_err(|e| Status::from_error(e.into()))?;
    // A trailers-only response: the status is in the headers, no message.
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != Code::Ok {
            return Err(status);
        }
    }
    let status_code = response.status();
    let mut stream = tonic::codec::Streaming::new_response(
        tonic_prost::ProstCodec::<R, R>::default().decoder(),
        response.into_body(),
        status_code,
        None,
        Some(MAX_MESSAGE_SIZE_BYTES),
    );
    let message = stream.message().await?.ok_or_else(|| Status::internal("Missing response message."))?;
    // The trailers carry the call's status; an error there fails the call.
    stream.trailers().await?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use prost::Message;

    fn grpc_frame(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        framed
    }

    /// The hand-built body is byte for byte what tonic's encoder sends for
    /// the same messages, for chunks below, at and above the copy threshold
    /// and for lengths whose varint takes 1, 2 and 3 bytes.
    #[test]
    fn frames_encode_exactly_what_prost_encodes_and_keep_large_chunks_uncopied() {
        let header = pb::AppendRequest {
            part: Some(pb::append_request::Part::Header(pb::AppendHeader {
                extent_id: 7,
                key: Bytes::from_static(&[9; 32]),
                length_bytes: 1 << 20,
                osd_id: 3,
            })),
        };
        let sizes = [0usize, 1, 127, 128, COPY_BELOW_BYTES - 1, COPY_BELOW_BYTES, 16_384, 65_536, crate::CHUNK_SIZE_BYTES];
        let chunks: Vec<Bytes> =
            sizes.iter().map(|&n| Bytes::from((0..n).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())).collect();

        let mut expected = grpc_frame(&header);
        for chunk in &chunks {
            expected.extend(grpc_frame(&pb::AppendRequest { part: Some(pb::append_request::Part::Chunk(chunk.clone())) }));
        }
        let frames = Frames::header_and_chunks(&header, chunks.iter().cloned()).expect("within the limit");
        assert_eq!(frames.len_bytes(), expected.len() as u64);

        let large: Vec<*const u8> = chunks.iter().filter(|c| c.len() >= COPY_BELOW_BYTES).map(|c| c.as_ptr()).collect();
        let body = frames.into_body();
        let kept: Vec<*const u8> = body.frames.iter().map(|f| f.as_ptr()).filter(|p| large.contains(p)).collect();
        assert_eq!(kept, large, "every chunk of 4 KiB or more is sent as the buffer it came in");
        assert_eq!(body.concatenated(), expected);

        // The PUT stream's chunk field has the same number.
        let mut frames = Frames::new();
        frames.bytes_field(CHUNK_FIELD, chunks[6].clone()).expect("within the limit");
        assert_eq!(frames.into_body().concatenated(), grpc_frame(&pb::PutRequest { part: Some(pb::put_request::Part::Chunk(chunks[6].clone())) }));
    }

    #[test]
    fn a_message_over_the_limit_is_refused() {
        let mut frames = Frames::new();
        let status = frames.bytes_field(2, Bytes::from(vec![0u8; MAX_MESSAGE_SIZE_BYTES])).expect_err("over the limit");
        assert_eq!(status.code(), Code::Internal);
    }
}
