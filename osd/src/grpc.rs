//! The OSD's gRPC edge: converts wire messages to store calls and store
//! errors to statuses. With the register/heartbeat loop in `lib.rs`, the
//! only code of this crate that touches prost types.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use pocket_proto::{
    key_from_wire, pb, Body, BodyCollector, ByteBudget, Key, APPEND_BATCH_MAX_BYTES, APPEND_BATCH_MAX_RECORDS,
    EXTENT_FULL_PREFIX, MAX_MESSAGE_SIZE_BYTES,
};
use tonic::{Request, Response, Status, Streaming};

use pocket_transport::{authorize, Role, RoleGate};

use crate::fence::{Fence, FenceError};

use crate::config::OsdConfig;
use crate::store::{AppendOutcome, Store, StoreError, WholeKind};

/// Smallest extent the coordinator may ask for: room for a header and a record.
const MIN_EXTENT_SIZE_BYTES: u64 = 64 * 1024;
/// Largest extent the coordinator may ask for (prod uses 1 GiB).
const MAX_EXTENT_SIZE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Longest a read's response stream may take in total, however steadily the
/// reader takes chunks: a slow reader cannot hold the byte budget longer.
const MAX_READ_STREAM_DURATION: std::time::Duration = std::time::Duration::from_secs(120);
/// Most extents one ExtentStatus call may ask about.
const MAX_STATUS_BATCH: usize = 10_000;
/// Most keys one Has call may ask about.
const MAX_HAS_BATCH: usize = 10_000;
/// Most extents one ListExtents page lists.
const MAX_LIST_PAGE: usize = 10_000;
/// Largest whole extent WriteExtent accepts: the largest extent, plus as
/// much again for its footer (an index entry is smaller than a record).
const MAX_WHOLE_EXTENT_BYTES: u64 = 2 * MAX_EXTENT_SIZE_BYTES;

pub struct OsdService {
    osd_id: u64,
    store: Store,
    fence: Fence,
    budget: ByteBudget,
    /// The OSD's background budget: a coordinator's whole-extent reads,
    /// writes and verifications are paced by it (ADR 16, issue 19).
    background: pocket_worker::Budget,
    /// Frontends' appends and reads, for the heartbeat's live traffic.
    live: crate::live::LiveTraffic,
    max_blob_size_bytes: u64,
    stream_idle_timeout: std::time::Duration,
}

impl OsdService {
    pub fn new(
        store: Store,
        fence: Fence,
        config: &OsdConfig,
        background: pocket_worker::Budget,
        live: crate::live::LiveTraffic,
    ) -> OsdService {
        OsdService {
            osd_id: config.osd_id,
            store,
            fence,
            budget: ByteBudget::new(config.max_inflight_bytes),
            background,
            live,
            max_blob_size_bytes: config.max_blob_size_bytes,
            stream_idle_timeout: std::time::Duration::from_millis(config.stream_idle_timeout_ms),
        }
    }

    /// The budget class a coordinator's call is charged to, if it is
    /// background work; live traffic (a frontend's) is never paced.
    fn background_class<T>(request: &Request<T>, purpose: i32) -> Option<pocket_worker::Class> {
        let caller = pocket_transport::peer_identity(request).ok()?;
        if caller.role != Role::Coordinator {
            return None;
        }
        purpose_class(purpose)
    }

    /// Refuses a mutating call from a coordinator whose leadership is not
    /// the newest this OSD has seen (ADR 19).
    async fn admit(&self, generation: u64) -> Result<(), Status> {
        self.fence.admit(generation).await.map_err(|error| match error {
            FenceError::Stale { .. } => Status::failed_precondition(error.to_string()),
            FenceError::Persist(_) => Status::unavailable(error.to_string()),
        })
    }

    /// Refuses a request meant for another OSD (stale address in the caller's cache).
    fn check_addressee(&self, osd_id: u64) -> Result<(), Status> {
        if osd_id != self.osd_id {
            return Err(Status::failed_precondition(format!(
                "this is OSD {}, not OSD {osd_id}; refresh its address",
                self.osd_id
            )));
        }
        Ok(())
    }

    /// Checks a record's header and reserves its bytes in the budget.
    async fn start_record(&self, header: pb::AppendHeader) -> Result<IncomingRecord, Status> {
        self.check_addressee(header.osd_id)?;
        let key = key_from_wire(&header.key)?;
        if header.length_bytes > self.max_blob_size_bytes {
            return Err(Status::invalid_argument(format!(
                "record of {} bytes exceeds the maximum of {}",
                header.length_bytes, self.max_blob_size_bytes
            )));
        }
        let permit = self.budget.reserve(header.length_bytes).await?;
        Ok(IncomingRecord {
            extent_id: header.extent_id,
            key,
            body: BodyCollector::new(header.length_bytes),
            hasher: blake3::Hasher::new(),
            permit,
        })
    }

    /// The service behind a gate that refuses non-daemon callers before
    /// their request is decoded.
    pub fn into_server(
        self,
    ) -> tonic::service::interceptor::InterceptedService<pb::osd_server::OsdServer<OsdService>, RoleGate> {
        let server = pb::osd_server::OsdServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_SIZE_BYTES);
        tonic::service::interceptor::InterceptedService::new(
            server,
            RoleGate::new(&[Role::Frontend, Role::Coordinator, Role::Osd]),
        )
    }
}

fn status_of(error: StoreError) -> Status {
    let message = error.to_string();
    match error {
        StoreError::UnknownExtent(_) | StoreError::NotFound { .. } => Status::not_found(message),
        // Frontends recognise a full extent by this prefix and close its volume.
        StoreError::ExtentFull { .. } => Status::resource_exhausted(format!("{EXTENT_FULL_PREFIX}: {message}")),
        StoreError::Sealed(_) => Status::failed_precondition(message),
        StoreError::TooLarge { .. } | StoreError::ExtentConflict { .. } | StoreError::BadMaxSize { .. } => {
            Status::invalid_argument(message)
        }
        StoreError::Poisoned(_) | StoreError::DiskFailed { .. } | StoreError::NoHealthyDisk => Status::unavailable(message),
        StoreError::Corrupt { .. } => Status::data_loss(message),
        StoreError::ShuttingDown => Status::unavailable(message),
        StoreError::OutOfRange { .. } => Status::out_of_range(message),
        StoreError::NotSealed(_) => Status::failed_precondition(message),
        StoreError::WholeLength { .. } => Status::invalid_argument(message),
        StoreError::WholeHashMismatch(_) | StoreError::InvalidWhole { .. } => Status::data_loss(message),
        StoreError::ContentConflict(_) | StoreError::ExtentFileExists { .. } => Status::already_exists(message),
        StoreError::WriteInProgress(_) => Status::aborted(message),
        StoreError::NoSpace { .. } => Status::resource_exhausted(message),
        _ => {
            tracing::error!(error = %message, "OSD store failure");
            Status::internal(message)
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("store task failed: {e}")))?
        .map_err(status_of)
}

/// Counts a durable append of `bytes` and turns its outcome into the wire response.
fn append_response(outcome: AppendOutcome, bytes: u64) -> pb::AppendResponse {
    metrics::counter!("pocket_osd_appends_total").increment(1);
    metrics::counter!("pocket_osd_append_bytes_total").increment(bytes);
    match outcome {
        AppendOutcome::Appended { offset } => pb::AppendResponse { offset, already_present: false },
        AppendOutcome::AlreadyPresent { offset } => pb::AppendResponse { offset, already_present: true },
    }
}

/// One record arriving in an Append or AppendBatch stream: its header
/// checked, its bytes collected and hashed as they come, its share of the
/// byte budget held until it is written.
struct IncomingRecord {
    extent_id: u64,
    key: Key,
    body: BodyCollector,
    hasher: blake3::Hasher,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// A record whose bytes all came and hash to its key.
struct CheckedRecord {
    extent_id: u64,
    key: Key,
    data: Body,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl IncomingRecord {
    fn push(&mut self, chunk: Bytes) -> Result<(), Status> {
        self.hasher.update(&chunk);
        self.body.push(chunk)
    }

    /// The OSD checks the key itself: a record it stores always hashes to
    /// its key, so AlreadyPresent can trust the key alone, and bytes damaged
    /// between the frontend's check and here are never stored.
    fn finish(self) -> Result<CheckedRecord, Status> {
        // The chunks go to the file as they arrived (one vectored write).
        let data = self.body.finish()?;
        if Key(*self.hasher.finalize().as_bytes()) != self.key {
            return Err(Status::invalid_argument(format!("record bytes do not hash to the key {}", self.key)));
        }
        Ok(CheckedRecord { extent_id: self.extent_id, key: self.key, data, _permit: self.permit })
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::ReadResponse, Status>> + Send>>;
type ReadRangeStream = Pin<Box<dyn Stream<Item = Result<pb::ReadRangeResponse, Status>> + Send>>;

fn whole_kind(kind: i32) -> Result<WholeKind, Status> {
    match pb::ExtentKind::try_from(kind) {
        Ok(pb::ExtentKind::Data) => Ok(WholeKind::Data),
        Ok(pb::ExtentKind::Parity) => Ok(WholeKind::Parity),
        _ => Err(Status::invalid_argument("extent kind must be DATA or PARITY")),
    }
}

fn kind_of(kind: WholeKind) -> pb::ExtentKind {
    match kind {
        WholeKind::Data => pb::ExtentKind::Data,
        WholeKind::Parity => pb::ExtentKind::Parity,
    }
}

#[tonic::async_trait]
impl pb::osd_server::Osd for OsdService {
    async fn create_extent(
        &self,
        request: Request<pb::CreateExtentRequest>,
    ) -> Result<Response<pb::CreateExtentResponse>, Status> {
        authorize(&request, &[Role::Coordinator])?;
        let request = request.into_inner();
        self.check_addressee(request.osd_id)?;
        self.admit(request.generation).await?;
        if !(MIN_EXTENT_SIZE_BYTES..=MAX_EXTENT_SIZE_BYTES).contains(&request.max_size_bytes) {
            return Err(Status::invalid_argument(format!(
                "max_size_bytes must be between {MIN_EXTENT_SIZE_BYTES} and {MAX_EXTENT_SIZE_BYTES}"
            )));
        }
        let store = self.store.clone();
        blocking(move || store.create_extent(request.extent_id, request.max_size_bytes)).await?;
        Ok(Response::new(pb::CreateExtentResponse {}))
    }

    #[tracing::instrument(name = "osd.append", skip_all, fields(extent, key, bytes))]
    async fn append(&self, request: Request<Streaming<pb::AppendRequest>>) -> Result<Response<pb::AppendResponse>, Status> {
        authorize(&request, &[Role::Frontend])?;
        let mut stream = request.into_inner();
        let header = match pocket_proto::next_message(&mut stream, self.stream_idle_timeout).await? {
            Some(pb::AppendRequest { part: Some(pb::append_request::Part::Header(header)) }) => header,
            Some(_) => return Err(Status::invalid_argument("the first message of an append must be its header")),
            None => return Err(Status::invalid_argument("empty append stream")),
        };
        let span = tracing::Span::current();
        span.record("extent", header.extent_id);
        span.record("bytes", header.length_bytes);
        let mut record = self.start_record(header).await?;
        span.record("key", tracing::field::display(&record.key));
        while let Some(message) = pocket_proto::next_message(&mut stream, self.stream_idle_timeout).await? {
            match message.part {
                Some(pb::append_request::Part::Chunk(chunk)) => record.push(chunk)?,
                _ => return Err(Status::invalid_argument("only chunks may follow the header")),
            }
        }
        let record = record.finish()?;
        let bytes = record.data.len_bytes();
        let outcome = self.store.append(record.extent_id, record.key, record.data).await.map_err(status_of)?;
        self.live.add(bytes);
        Ok(Response::new(append_response(outcome, bytes)))
    }

    #[tracing::instrument(name = "osd.append_batch", skip_all, fields(records, bytes))]
    async fn append_batch(
        &self,
        request: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<pb::AppendBatchResponse>, Status> {
        authorize(&request, &[Role::Frontend])?;
        let mut stream = request.into_inner();
        // Every record is received and checked before any is written: a bad
        // one fails the whole call and changes nothing.
        let mut records = Vec::new();
        let mut current: Option<IncomingRecord> = None;
        let mut total_bytes = 0u64;
        while let Some(message) = pocket_proto::next_message(&mut stream, self.stream_idle_timeout).await? {
            match message.part {
                Some(pb::append_request::Part::Header(header)) => {
                    if let Some(record) = current.take() {
                        records.push(record.finish()?);
                    }
                    if records.len() == APPEND_BATCH_MAX_RECORDS {
                        return Err(Status::invalid_argument(format!(
                            "a batch holds at most {APPEND_BATCH_MAX_RECORDS} records"
                        )));
                    }
                    total_bytes = total_bytes.saturating_add(header.length_bytes);
                    if total_bytes > APPEND_BATCH_MAX_BYTES {
                        return Err(Status::invalid_argument(format!(
                            "a batch holds at most {APPEND_BATCH_MAX_BYTES} record bytes"
                        )));
                    }
                    current = Some(self.start_record(header).await?);
                }
                Some(pb::append_request::Part::Chunk(chunk)) => match current.as_mut() {
                    Some(record) => record.push(chunk)?,
                    None => return Err(Status::invalid_argument("the first message of a batch must be a record's header")),
                },
                None => return Err(Status::invalid_argument("a batch message must be a header or a chunk")),
            }
        }
        match current {
            Some(record) => records.push(record.finish()?),
            None => return Err(Status::invalid_argument("empty append batch")),
        }
        let span = tracing::Span::current();
        span.record("records", records.len());
        span.record("bytes", total_bytes);
        metrics::counter!("pocket_osd_append_batches_total").increment(1);
        metrics::counter!("pocket_osd_append_batch_records_total").increment(records.len() as u64);
        // Queued together, so they share a group commit.
        let appends = records.into_iter().map(|record| async move {
            let bytes = record.data.len_bytes();
            match self.store.append(record.extent_id, record.key, record.data).await {
                Ok(outcome) => {
                    self.live.add(bytes);
                    let response = append_response(outcome, bytes);
                    pb::AppendResult {
                        code: 0,
                        message: String::new(),
                        offset: response.offset,
                        already_present: response.already_present,
                    }
                }
                Err(e) => {
                    let status = status_of(e);
                    pb::AppendResult { code: status.code() as i32, message: status.message().to_owned(), ..Default::default() }
                }
            }
        });
        let results = futures::future::join_all(appends).await;
        Ok(Response::new(pb::AppendBatchResponse { results }))
    }

    type ReadStream = ReadStream;

    #[tracing::instrument(name = "osd.read", skip_all, fields(extent, key))]
    async fn read(&self, request: Request<pb::ReadRequest>) -> Result<Response<ReadStream>, Status> {
        authorize(&request, &[Role::Frontend, Role::Coordinator, Role::Osd])?;
        let request = request.into_inner();
        self.check_addressee(request.osd_id)?;
        let key = key_from_wire(&request.key)?;
        tracing::Span::current().record("extent", request.extent_id);
        tracing::Span::current().record("key", tracing::field::display(&key));
        // One metadata lookup finds the record; its length (from metadata)
        // is budgeted before its bytes are read, a corrupt length capped by
        // the largest record this OSD accepts.
        let store = self.store.clone();
        let (extent_id, lookup_key) = (request.extent_id, key);
        let record = blocking(move || store.locate(extent_id, &lookup_key))
            .await?
            .ok_or_else(|| Status::not_found(format!("extent {extent_id} holds no record for {key}")))?;
        let permit = self.budget.reserve(record.data_len().min(self.max_blob_size_bytes)).await?;
        let data = self.store.read_located(record).await.map_err(|e| {
            if matches!(e, StoreError::Corrupt { .. }) {
                metrics::counter!("pocket_osd_corrupt_reads_total").increment(1);
            }
            status_of(e)
        })?;
        metrics::counter!("pocket_osd_reads_total").increment(1);
        metrics::counter!("pocket_osd_read_bytes_total").increment(data.len() as u64);
        self.live.add(data.len() as u64);
        Ok(Response::new(chunked(data, permit)))
    }

    async fn seal(&self, request: Request<pb::SealRequest>) -> Result<Response<pb::SealResponse>, Status> {
        authorize(&request, &[Role::Coordinator])?;
        let request = request.into_inner();
        self.check_addressee(request.osd_id)?;
        self.admit(request.generation).await?;
        let info = self.store.seal(request.extent_id).await.map_err(status_of)?;
        Ok(Response::new(pb::SealResponse { size_bytes: info.size_bytes, record_count: info.record_count }))
    }

    async fn has(&self, request: Request<pb::HasRequest>) -> Result<Response<pb::HasResponse>, Status> {
        authorize(&request, &[Role::Frontend, Role::Coordinator, Role::Osd])?;
        let request = request.into_inner();
        self.check_addressee(request.osd_id)?;
        if request.keys.len() > MAX_HAS_BATCH {
            return Err(Status::invalid_argument(format!("at most {MAX_HAS_BATCH} keys per call")));
        }
        let keys = request.keys.iter().map(|k| key_from_wire(k)).collect::<Result<Vec<_>, _>>()?;
        let store = self.store.clone();
        let present = blocking(move || {
            keys.iter().map(|key| store.has(request.extent_id, key)).collect::<Result<Vec<bool>, StoreError>>()
        })
        .await?;
        Ok(Response::new(pb::HasResponse { present }))
    }

    async fn extent_status(
        &self,
        request: Request<pb::ExtentStatusRequest>,
    ) -> Result<Response<pb::ExtentStatusResponse>, Status> {
        authorize(&request, &[Role::Frontend, Role::Coordinator, Role::Osd])?;
        let request = request.into_inner();
        self.check_addressee(request.osd_id)?;
        let ids = request.extent_ids;
        if ids.len() > MAX_STATUS_BATCH {
            return Err(Status::invalid_argument(format!("at most {MAX_STATUS_BATCH} extents per call")));
        }
        let mut extents = Vec::with_capacity(ids.len());
        for id in ids {
            let info = self.store.extent_info(id).map_err(status_of)?;
            let disk = self.store.extent_disk(id).map(|uuid| format!("{uuid:032x}")).unwrap_or_default();
            extents.push(match info {
                Some(info) => pb::ExtentInfo {
                    extent_id: id,
                    found: true,
                    sealed: info.sealed,
                    size_bytes: info.size_bytes,
                    record_count: info.record_count,
                    disk,
                },
                None => pb::ExtentInfo { extent_id: id, found: false, disk, ..Default::default() },
            });
        }
        Ok(Response::new(pb::ExtentStatusResponse { extents }))
    }

    type ReadRangeStream = ReadRangeStream;

    async fn read_range(&self, request: Request<pb::ReadRangeRequest>) -> Result<Response<ReadRangeStream>, Status> {
        authorize(&request, &[Role::Frontend, Role::Coordinator])?;
        let paced = Self::background_class(&request, request.get_ref().purpose).map(|class| (class, self.background.clone()));
        let request = request.into_inner();
        self.check_addressee(request.osd_id)?;
        let store = self.store.clone();
        let id = request.extent_id;
        let source = blocking(move || store.range_source(id)).await?;
        let end = request
            .offset
            .checked_add(request.length)
            .filter(|&end| end <= source.size_bytes())
            .ok_or_else(|| {
                Status::out_of_range(format!("range lies outside the extent's {} bytes", source.size_bytes()))
            })?;
        metrics::counter!("pocket_osd_range_reads_total").increment(1);
        metrics::counter!("pocket_osd_range_read_bytes_total").increment(request.length);
        if paced.is_none() {
            // A frontend's degraded read is live traffic.
            self.live.add(request.length);
        }
        // One chunk read at a time, when the reader asks for it: memory per
        // stream is one chunk whatever the range.
        let chunks = futures::stream::unfold((source, request.offset), move |(source, at)| {
            let paced = paced.clone();
            async move {
            if at >= end {
                return None;
            }
            let len = (end - at).min(pocket_proto::CHUNK_SIZE_BYTES as u64) as usize;
            if let Some((class, budget)) = &paced {
                budget.bytes(*class, len as u64).await;
            }
            let reader = source.clone();
            let read = tokio::task::spawn_blocking(move || reader.read(at, len))
                .await
                .map_err(|e| Status::internal(format!("store task failed: {e}")))
                .and_then(|result| result.map_err(status_of));
            match read {
                Ok(chunk) => Some((Ok(pb::ReadRangeResponse { chunk }), (source, at + len as u64))),
                Err(status) => Some((Err(status), (source, end))),
            }
            }
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn write_extent(
        &self,
        request: Request<Streaming<pb::WriteExtentRequest>>,
    ) -> Result<Response<pb::WriteExtentResponse>, Status> {
        authorize(&request, &[Role::Coordinator])?;
        let mut stream = request.into_inner();
        let header = match pocket_proto::next_message(&mut stream, self.stream_idle_timeout).await? {
            Some(pb::WriteExtentRequest { part: Some(pb::write_extent_request::Part::Header(header)) }) => header,
            Some(_) => return Err(Status::invalid_argument("the first message of a whole-extent write must be its header")),
            None => return Err(Status::invalid_argument("empty whole-extent write")),
        };
        self.check_addressee(header.osd_id)?;
        self.admit(header.generation).await?;
        // Only coordinators may call this: its purpose decides the pacing.
        let paced = purpose_class(header.purpose);
        let kind = whole_kind(header.kind)?;
        if header.size_bytes > MAX_WHOLE_EXTENT_BYTES {
            return Err(Status::invalid_argument(format!("an extent of {} bytes is too large", header.size_bytes)));
        }
        let store = self.store.clone();
        let (id, size) = (header.extent_id, header.size_bytes);
        let mut write = blocking(move || store.begin_whole_write(id, kind, size)).await?;
        let mut blake3: Option<[u8; 32]> = None;
        while let Some(message) = pocket_proto::next_message(&mut stream, self.stream_idle_timeout).await? {
            match message.part {
                Some(pb::write_extent_request::Part::Chunk(chunk)) if blake3.is_none() => {
                    if let Some(class) = paced {
                        self.background.bytes(class, chunk.len() as u64).await;
                    }
                    let (back, result) = tokio::task::spawn_blocking(move || {
                        let result = write.write(&chunk);
                        (write, result)
                    })
                    .await
                    .map_err(|e| Status::internal(format!("store task failed: {e}")))?;
                    result.map_err(status_of)?;
                    write = back;
                }
                Some(pb::write_extent_request::Part::Blake3(hash)) if blake3.is_none() => {
                    blake3 = Some(
                        hash.as_ref().try_into().map_err(|_| Status::invalid_argument("blake3 must be 32 bytes"))?,
                    );
                }
                _ => return Err(Status::invalid_argument("chunks, then one blake3, may follow the header")),
            }
        }
        let blake3 = blake3.ok_or_else(|| Status::invalid_argument("a whole-extent write must end with its blake3"))?;
        let store = self.store.clone();
        let already_present = blocking(move || store.finish_whole_write(write, blake3)).await?;
        metrics::counter!("pocket_osd_whole_writes_total").increment(1);
        Ok(Response::new(pb::WriteExtentResponse { already_present }))
    }

    async fn verify_extent(
        &self,
        request: Request<pb::VerifyExtentRequest>,
    ) -> Result<Response<pb::VerifyExtentResponse>, Status> {
        authorize(&request, &[Role::Coordinator])?;
        let request = request.into_inner();
        self.check_addressee(request.osd_id)?;
        if let Some(class) = purpose_class(request.purpose) {
            // The whole extent is read: its bytes are charged up front.
            let size = self.store.extent_info(request.extent_id).map_err(status_of)?.map_or(0, |info| info.size_bytes);
            self.background.bytes(class, size).await;
        }
        let store = self.store.clone();
        let info = blocking(move || store.verify_whole(request.extent_id)).await?;
        Ok(Response::new(pb::VerifyExtentResponse {
            kind: kind_of(info.kind) as i32,
            size_bytes: info.size_bytes,
            blake3: Bytes::copy_from_slice(&info.blake3),
            record_count: info.record_count,
        }))
    }

    async fn delete_extent(
        &self,
        request: Request<pb::DeleteExtentRequest>,
    ) -> Result<Response<pb::DeleteExtentResponse>, Status> {
        authorize(&request, &[Role::Coordinator])?;
        let request = request.into_inner();
        self.check_addressee(request.osd_id)?;
        self.admit(request.generation).await?;
        if request.seal_first && self.store.extent_info(request.extent_id).map_err(status_of)?.is_some_and(|info| !info.sealed) {
            self.store.seal(request.extent_id).await.map_err(status_of)?;
        }
        let store = self.store.clone();
        let existed = blocking(move || store.delete_whole(request.extent_id)).await?;
        Ok(Response::new(pb::DeleteExtentResponse { existed }))
    }

    async fn list_extents(
        &self,
        request: Request<pb::ListExtentsRequest>,
    ) -> Result<Response<pb::ListExtentsResponse>, Status> {
        authorize(&request, &[Role::Coordinator])?;
        let request = request.into_inner();
        self.check_addressee(request.osd_id)?;
        if request.limit == 0 || request.limit as usize > MAX_LIST_PAGE {
            return Err(Status::invalid_argument(format!("limit must be between 1 and {MAX_LIST_PAGE}")));
        }
        let store = self.store.clone();
        let (page, more) = blocking(move || Ok::<_, StoreError>(store.list_page(request.after_extent_id, request.limit as usize))).await?;
        let extents = page
            .into_iter()
            .map(|listed| pb::ListedExtent {
                extent_id: listed.id,
                sealed: listed.sealed,
                parity: listed.parity,
                size_bytes: listed.size_bytes,
            })
            .collect();
        Ok(Response::new(pb::ListExtentsResponse { extents, more }))
    }
}

/// The background budget class of a coordinator call's purpose; none for
/// live traffic (or a purpose this OSD does not know).
fn purpose_class(purpose: i32) -> Option<pocket_worker::Class> {
    match pb::Purpose::try_from(purpose).unwrap_or(pb::Purpose::Unspecified) {
        pb::Purpose::Unspecified => None,
        pb::Purpose::ErasureCoding => Some(pocket_worker::Class::ErasureCoding),
        pb::Purpose::Repair => Some(pocket_worker::Class::Repair),
        pb::Purpose::Verification => Some(pocket_worker::Class::Verification),
    }
}

/// Streams `data` in chunks, holding `permit` until its last byte has left
/// or the stream is reset (ADR 15).
fn chunked(data: Bytes, permit: tokio::sync::OwnedSemaphorePermit) -> ReadStream {
    let total = data.len() as u64;
    let messages = pocket_proto::chunks(&data).enumerate().map(move |(index, chunk)| pb::ReadResponse {
        blob_length_bytes: if index == 0 { total } else { 0 },
        chunk,
    });
    Box::pin(pocket_proto::held_stream(messages, permit, MAX_READ_STREAM_DURATION))
}
