//! The outbound calls to OSDs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pocket_proto::framed::{self, Frames};
use pocket_proto::{pb, Body, BodyCollector, ExtentId, Key, OsdId};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

use crate::channels::Channels;
use crate::error::OsdError;
use crate::{DELETE_TIMEOUT, OSD_LIFECYCLE_TIMEOUT, RANGE_READ_TIMEOUT, VERIFY_TIMEOUT};

/// Bytes asked of an OSD per ReadRange call of an [`ExtentReader`]: long
/// reads are split so that none comes near the OSD's per-request time limit.
pub const READ_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Messages buffered towards the OSD of an [`ExtentWriter`].
const WRITER_QUEUE_MESSAGES: usize = 4;

/// A process's clients of its cell's OSDs, over one channel cache.
pub struct OsdClients {
    channels: Channels,
    /// The coordinator leadership's generation its mutating calls carry
    /// (ADR 19); 0 for processes that make none.
    generation: Arc<AtomicU64>,
}

impl OsdClients {
    pub fn new(tls: pocket_transport::Tls) -> OsdClients {
        OsdClients { channels: Channels::new(tls), generation: Arc::new(AtomicU64::new(0)) }
    }

    /// Clients whose mutating calls (create, seal, whole writes, delete)
    /// carry the generation `generation` holds when each call is made.
    pub fn with_generation(tls: pocket_transport::Tls, generation: Arc<AtomicU64>) -> OsdClients {
        OsdClients { channels: Channels::new(tls), generation }
    }

    /// The client of OSD `osd_id` at `grpc_addr`; TLS refuses any other server.
    pub fn osd(&self, osd_id: OsdId, grpc_addr: &str) -> Result<OsdClient, OsdError> {
        let channel = self.channels.get(osd_id, grpc_addr).map_err(|e| OsdError::Address {
            osd_id,
            addr: grpc_addr.to_string(),
            detail: e.to_string(),
        })?;
        Ok(OsdClient { osd_id, addr: grpc_addr.to_string(), channel, generation: self.generation.clone(), purpose: pb::Purpose::Unspecified })
    }
}

/// How an extent written whole is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// The extent format (`docs/extent-format.md`): a data shard.
    Data,
    /// Raw Reed-Solomon parity bytes.
    Parity,
}

/// What `Osd.VerifyExtent` found: every record checked against its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedExtent {
    pub size_bytes: u64,
    pub blake3: [u8; 32],
    pub record_count: u64,
}

/// One extent an OSD serves, as `Osd.ListExtents` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedExtent {
    pub extent_id: ExtentId,
    pub sealed: bool,
    pub parity: bool,
    pub size_bytes: u64,
}

/// One extent as `Osd.ExtentStatus` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentStatus {
    pub extent_id: ExtentId,
    pub found: bool,
    pub sealed: bool,
    pub size_bytes: u64,
    pub record_count: u64,
    /// The uuid of the disk holding it, also when that disk failed; empty
    /// if the OSD does not know the extent.
    pub disk: String,
}

/// The outbound calls to one OSD. Cloning clones a channel handle.
#[derive(Clone)]
pub struct OsdClient {
    osd_id: OsdId,
    addr: String,
    channel: Channel,
    generation: Arc<AtomicU64>,
    /// What this client's whole-extent calls are for (the OSD paces them).
    purpose: pb::Purpose,
}

/// Why a coordinator moves or checks whole extents; each OSD charges those
/// bytes to that class of its background budget. `Live` is never paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Live,
    ErasureCoding,
    Repair,
    Verification,
}

fn with_deadline<T>(message: T, timeout: std::time::Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

impl OsdClient {
    pub fn osd_id(&self) -> OsdId {
        self.osd_id
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// This client, its whole-extent reads, writes and verifications
    /// marked as done for `purpose`.
    pub fn for_purpose(&self, purpose: Purpose) -> OsdClient {
        let purpose = match purpose {
            Purpose::Live => pb::Purpose::Unspecified,
            Purpose::ErasureCoding => pb::Purpose::ErasureCoding,
            Purpose::Repair => pb::Purpose::Repair,
            Purpose::Verification => pb::Purpose::Verification,
        };
        OsdClient { purpose, ..self.clone() }
    }

    fn grpc(&self) -> pb::osd_client::OsdClient<Channel> {
        pb::osd_client::OsdClient::new(self.channel.clone())
            .max_decoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES)
            .max_encoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES)
    }

    fn error(&self, status: &tonic::Status) -> OsdError {
        OsdError::from_status(self.osd_id, &self.addr, status)
    }

    fn malformed(&self, detail: impl Into<String>) -> OsdError {
        OsdError::Malformed { osd_id: self.osd_id, addr: self.addr.clone(), detail: detail.into() }
    }

    fn append_header(&self, extent_id: ExtentId, key: &Key, data: &Body) -> pb::AppendRequest {
        pb::AppendRequest {
            part: Some(pb::append_request::Part::Header(pb::AppendHeader {
                extent_id,
                key: Bytes::copy_from_slice(key.as_bytes()),
                length_bytes: data.len_bytes(),
                osd_id: self.osd_id,
            })),
        }
    }

    /// `Osd.CreateExtent`: a new, empty, open extent of at most `max_size_bytes`.
    pub async fn rpc_create(&self, extent_id: ExtentId, max_size_bytes: u64) -> Result<(), OsdError> {
        let request = pb::CreateExtentRequest { extent_id, max_size_bytes, osd_id: self.osd_id, generation: self.generation() };
        self.grpc().create_extent(with_deadline(request, OSD_LIFECYCLE_TIMEOUT)).await.map_err(|s| self.error(&s))?;
        Ok(())
    }

    /// `Osd.Seal`: no more appends; returns the sealed extent's size.
    pub async fn rpc_seal(&self, extent_id: ExtentId) -> Result<u64, OsdError> {
        let request = pb::SealRequest { extent_id, osd_id: self.osd_id, generation: self.generation() };
        let response = self.grpc().seal(with_deadline(request, OSD_LIFECYCLE_TIMEOUT)).await.map_err(|s| self.error(&s))?;
        Ok(response.into_inner().size_bytes)
    }

    /// `Osd.Append` of `data` under `key`; Ok once the OSD made it durable.
    /// The chunks go as they are: not copied by pocket, nor by an encoder
    /// (ADR 10).
    pub async fn rpc_append(&self, extent_id: ExtentId, key: &Key, data: &Body) -> Result<(), OsdError> {
        let mut channel = self.channel.clone();
        let call = async {
            let frames = Frames::header_and_chunks(&self.append_header(extent_id, key, data), data.chunks().iter().cloned())?;
            framed::client_streaming::<_, pb::AppendResponse>(&mut channel, framed::OSD_APPEND_PATH, frames).await
        };
        call.await.map(|_| ()).map_err(|status| self.error(&status))
    }

    /// One `Osd.AppendBatch` call carrying `records` (ADR 12), hand-framed as
    /// [`OsdClient::rpc_append`]; one outcome per record, in order.
    pub async fn rpc_append_batch(&self, extent_id: ExtentId, records: &[(Key, Body)]) -> Vec<Result<(), OsdError>> {
        let mut frames = Frames::new();
        let mut framing = Ok(());
        for (key, data) in records {
            framing = frames.record(&self.append_header(extent_id, key, data), data.chunks().iter().cloned());
            if framing.is_err() {
                break;
            }
        }
        let mut channel = self.channel.clone();
        let response = match framing {
            Ok(()) => {
                framed::client_streaming::<_, pb::AppendBatchResponse>(&mut channel, framed::OSD_APPEND_BATCH_PATH, frames).await
            }
            Err(status) => Err(status),
        };
        match response {
            Ok(response) if response.results.len() == records.len() => response
                .results
                .into_iter()
                .map(|result| match Code::from_i32(result.code) {
                    Code::Ok => Ok(()),
                    code => Err(self.error(&tonic::Status::new(code, result.message))),
                })
                .collect(),
            Ok(response) => {
                let error = self.malformed(format!("answered {} results for {} records", response.results.len(), records.len()));
                records.iter().map(|_| Err(error.clone())).collect()
            }
            Err(status) => {
                let error = self.error(&status);
                records.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }

    /// `Osd.Read` of the record of `key`, which must be `expected_bytes`
    /// long (it bounds the memory taken). The caller checks the bytes
    /// against the key.
    pub async fn rpc_read(&self, extent_id: ExtentId, key: &Key, expected_bytes: u64) -> Result<Body, OsdError> {
        let request = pb::ReadRequest { extent_id, key: Bytes::copy_from_slice(key.as_bytes()), osd_id: self.osd_id };
        let mut stream = self.grpc().read(request).await.map_err(|s| self.error(&s))?.into_inner();
        let mut body = BodyCollector::new(expected_bytes);
        let mut first = true;
        while let Some(message) = stream.message().await.map_err(|s| self.error(&s))? {
            if first && message.blob_length_bytes != expected_bytes {
                return Err(OsdError::WrongLength { osd_id: self.osd_id, got: message.blob_length_bytes, expected: expected_bytes });
            }
            first = false;
            body.push(message.chunk).map_err(|s| self.malformed(s.message()))?;
        }
        let received = body.received_bytes();
        body.finish().map_err(|_| OsdError::WrongLength { osd_id: self.osd_id, got: received, expected: expected_bytes })
    }

    /// `Osd.ReadRange`: raw bytes `[offset, offset + len)` of a sealed or
    /// parity extent (degraded reads), exactly `len` of them. Checked only
    /// by what is built from them.
    pub async fn rpc_read_range(&self, extent_id: ExtentId, offset: u64, len: usize) -> Result<Bytes, OsdError> {
        let request = pb::ReadRangeRequest { extent_id, offset, length: len as u64, osd_id: self.osd_id, purpose: self.purpose as i32 };
        let mut stream =
            self.grpc().read_range(with_deadline(request, RANGE_READ_TIMEOUT)).await.map_err(|s| self.error(&s))?.into_inner();
        let mut body = BodyCollector::new(len as u64);
        while let Some(message) = stream.message().await.map_err(|s| self.error(&s))? {
            body.push(message.chunk).map_err(|s| self.malformed(s.message()))?;
        }
        let received = body.received_bytes();
        body.finish()
            .map(Body::contiguous)
            .map_err(|_| OsdError::WrongLength { osd_id: self.osd_id, got: received, expected: len as u64 })
    }

    /// The `size` bytes of a sealed extent, read in order through
    /// `Osd.ReadRange` calls of at most [`READ_SEGMENT_BYTES`].
    pub fn extent_reader(&self, extent_id: ExtentId, size: u64) -> ExtentReader {
        ExtentReader {
            client: self.clone(),
            extent_id,
            size,
            requested_up_to: 0,
            stream: None,
            stream_left: 0,
            stream_asked: 0,
            buffer: BytesMut::new(),
            hasher: blake3::Hasher::new(),
        }
    }

    /// `Osd.Has`: whether each of `keys` has a record in the extent.
    pub async fn rpc_has(&self, extent_id: ExtentId, keys: &[Key]) -> Result<Vec<bool>, OsdError> {
        let keys = keys.iter().map(|key| Bytes::copy_from_slice(key.as_bytes())).collect();
        let request = pb::HasRequest { extent_id, keys, osd_id: self.osd_id };
        Ok(self.grpc().has(request).await.map_err(|s| self.error(&s))?.into_inner().present)
    }

    /// `Osd.ExtentStatus` of each of `extent_ids`.
    pub async fn rpc_extent_status(&self, extent_ids: &[ExtentId]) -> Result<Vec<ExtentStatus>, OsdError> {
        let request = pb::ExtentStatusRequest { extent_ids: extent_ids.to_vec(), osd_id: self.osd_id };
        let response = self.grpc().extent_status(request).await.map_err(|s| self.error(&s))?.into_inner();
        Ok(response
            .extents
            .into_iter()
            .map(|info| ExtentStatus {
                extent_id: info.extent_id,
                found: info.found,
                sealed: info.sealed,
                size_bytes: info.size_bytes,
                record_count: info.record_count,
                disk: info.disk,
            })
            .collect())
    }

    /// `Osd.VerifyExtent`: the OSD reads the whole extent back and checks it.
    pub async fn rpc_verify(&self, extent_id: ExtentId) -> Result<VerifiedExtent, OsdError> {
        let request = pb::VerifyExtentRequest { extent_id, osd_id: self.osd_id, purpose: self.purpose as i32 };
        let response =
            self.grpc().verify_extent(with_deadline(request, VERIFY_TIMEOUT)).await.map_err(|s| self.error(&s))?.into_inner();
        let blake3: [u8; 32] = response.blake3.as_ref().try_into().map_err(|_| self.malformed("verify returned no BLAKE3"))?;
        Ok(VerifiedExtent { size_bytes: response.size_bytes, blake3, record_count: response.record_count })
    }

    /// `Osd.DeleteExtent`; returns whether the extent existed.
    pub async fn rpc_delete(&self, extent_id: ExtentId) -> Result<bool, OsdError> {
        self.delete(extent_id, false).await
    }

    /// `Osd.DeleteExtent` of garbage that may still be open (sealed first):
    /// only for a copy nothing names and nothing writes to.
    pub async fn rpc_delete_garbage(&self, extent_id: ExtentId) -> Result<bool, OsdError> {
        self.delete(extent_id, true).await
    }

    async fn delete(&self, extent_id: ExtentId, seal_first: bool) -> Result<bool, OsdError> {
        let request = pb::DeleteExtentRequest { extent_id, osd_id: self.osd_id, generation: self.generation(), seal_first };
        let response = self.grpc().delete_extent(with_deadline(request, DELETE_TIMEOUT)).await.map_err(|s| self.error(&s))?;
        Ok(response.into_inner().existed)
    }

    /// `Osd.ListExtents`: one page of the extents the OSD serves after
    /// `after` (at most `limit`, 1 to 10,000), and whether more follow.
    pub async fn rpc_list_extents(&self, after: ExtentId, limit: u32) -> Result<(Vec<ListedExtent>, bool), OsdError> {
        let request = pb::ListExtentsRequest { osd_id: self.osd_id, after_extent_id: after, limit };
        let response =
            self.grpc().list_extents(with_deadline(request, OSD_LIFECYCLE_TIMEOUT)).await.map_err(|s| self.error(&s))?.into_inner();
        let extents = response
            .extents
            .into_iter()
            .map(|listed| ListedExtent { extent_id: listed.extent_id, sealed: listed.sealed, parity: listed.parity, size_bytes: listed.size_bytes })
            .collect();
        Ok((extents, response.more))
    }

    /// Starts `Osd.WriteExtent` of a whole extent of `size_bytes`, fed
    /// through the returned writer.
    pub async fn rpc_write_extent(&self, extent_id: ExtentId, kind: ExtentKind, size_bytes: u64) -> Result<ExtentWriter, OsdError> {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_MESSAGES);
        let kind = match kind {
            ExtentKind::Data => pb::ExtentKind::Data,
            ExtentKind::Parity => pb::ExtentKind::Parity,
        };
        let header = pb::WriteExtentRequest {
            part: Some(pb::write_extent_request::Part::Header(pb::WriteExtentHeader {
                extent_id,
                kind: kind as i32,
                size_bytes,
                osd_id: self.osd_id,
                generation: self.generation(),
                purpose: self.purpose as i32,
            })),
        };
        tx.send(header).await.map_err(|_| self.malformed("the write stream closed before its header"))?;
        let mut grpc = self.grpc();
        let call = tokio::spawn(async move {
            grpc.write_extent(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map(tonic::Response::into_inner)
        });
        Ok(ExtentWriter { client: self.clone(), extent_id, tx, call })
    }
}

/// The bytes of one sealed extent, read in order from its OSD.
pub struct ExtentReader {
    client: OsdClient,
    extent_id: ExtentId,
    size: u64,
    requested_up_to: u64,
    stream: Option<tonic::Streaming<pb::ReadRangeResponse>>,
    /// Bytes of the current range not received yet: a range that ends
    /// short is an error, never bytes shifted into the next range's place.
    stream_left: u64,
    /// Bytes the current range asked for.
    stream_asked: u64,
    buffer: BytesMut,
    /// BLAKE3 of every byte handed out.
    hasher: blake3::Hasher,
}

impl ExtentReader {
    pub fn osd_id(&self) -> OsdId {
        self.client.osd_id
    }

    pub fn extent_id(&self) -> ExtentId {
        self.extent_id
    }

    /// BLAKE3 of every byte [`ExtentReader::take`] has handed out.
    pub fn streamed_hash(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }

    /// The next `len` bytes of the extent.
    pub async fn take(&mut self, len: usize) -> Result<Bytes, OsdError> {
        let osd_id = self.client.osd_id;
        while self.buffer.len() < len {
            let message = match self.stream.as_mut() {
                Some(stream) => stream.message().await.map_err(|status| self.client.error(&status))?,
                None => None,
            };
            match message {
                Some(message) => {
                    let received = message.chunk.len() as u64;
                    if received > self.stream_left {
                        return Err(self.client.malformed("a range read returned more than it asked"));
                    }
                    self.stream_left -= received;
                    self.buffer.extend_from_slice(&message.chunk);
                }
                None if self.stream.is_some() && self.stream_left > 0 => {
                    let asked = self.stream_asked;
                    return Err(OsdError::WrongLength { osd_id, got: asked - self.stream_left, expected: asked });
                }
                None => {
                    if self.requested_up_to >= self.size {
                        let wanted = self.requested_up_to + (len - self.buffer.len()) as u64;
                        return Err(OsdError::WrongLength { osd_id, got: self.size, expected: wanted });
                    }
                    let length = (self.size - self.requested_up_to).min(READ_SEGMENT_BYTES);
                    let request =
                        pb::ReadRangeRequest { extent_id: self.extent_id, offset: self.requested_up_to, length, osd_id, purpose: self.client.purpose as i32 };
                    let stream = self.client.grpc().read_range(request).await.map_err(|s| self.client.error(&s))?.into_inner();
                    self.stream = Some(stream);
                    self.stream_left = length;
                    self.stream_asked = length;
                    self.requested_up_to += length;
                }
            }
        }
        let bytes = self.buffer.split_to(len).freeze();
        self.hasher.update(&bytes);
        Ok(bytes)
    }
}

/// A whole-extent write to one OSD (`Osd.WriteExtent`), fed in order.
pub struct ExtentWriter {
    client: OsdClient,
    extent_id: ExtentId,
    tx: mpsc::Sender<pb::WriteExtentRequest>,
    call: tokio::task::JoinHandle<Result<pb::WriteExtentResponse, tonic::Status>>,
}

impl ExtentWriter {
    pub fn osd_id(&self) -> OsdId {
        self.client.osd_id
    }

    pub fn extent_id(&self) -> ExtentId {
        self.extent_id
    }

    /// Sends the next `bytes` of the extent.
    pub async fn send(&mut self, bytes: &Bytes) -> Result<(), OsdError> {
        for chunk in pocket_proto::chunks(bytes) {
            let message = pb::WriteExtentRequest { part: Some(pb::write_extent_request::Part::Chunk(chunk)) };
            if self.tx.send(message).await.is_err() {
                // The call ended early: its status says why.
                return Err(self.failure().await);
            }
        }
        Ok(())
    }

    async fn failure(&mut self) -> OsdError {
        match (&mut self.call).await {
            Ok(Err(status)) => self.client.error(&status),
            Ok(Ok(_)) => self.client.malformed("the OSD answered before the extent was complete"),
            Err(e) => self.client.malformed(format!("write task failed: {e}")),
        }
    }

    /// Ends the extent with the BLAKE3 of all its bytes; the OSD checks it,
    /// syncs and keeps the extent. Returns whether the OSD already held it whole.
    pub async fn finish(mut self, blake3: [u8; 32]) -> Result<bool, OsdError> {
        let last = pb::WriteExtentRequest {
            part: Some(pb::write_extent_request::Part::Blake3(Bytes::copy_from_slice(&blake3))),
        };
        if self.tx.send(last).await.is_err() {
            return Err(self.failure().await);
        }
        drop(self.tx);
        match self.call.await {
            Ok(Ok(response)) => Ok(response.already_present),
            Ok(Err(status)) => Err(self.client.error(&status)),
            Err(e) => Err(self.client.malformed(format!("write task failed: {e}"))),
        }
    }
}
