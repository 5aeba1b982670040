//! The public BlobStore service: validates every request at the edge and
//! converts between wire messages and [`Blobs`] calls.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use pocket_index::IndexError;
use pocket_proto::{key_from_wire, pb, BodyCollector, ByteBudget, Key, MAX_MESSAGE_SIZE_BYTES};
use tonic::{Request, Response, Status, Streaming};

use crate::blobs::{Blobs, GetError, PutError};
use pocket_transport::{Role, RoleGate};

use crate::access::Access;
use crate::config::{FrontendConfig, Permission};

pub struct BlobService {
    blobs: Arc<Blobs>,
    access: Access,
    budget: ByteBudget,
    max_blob_size_bytes: u64,
    max_exists_batch: usize,
    stream_idle_timeout: Duration,
    request_timeout: Duration,
}

impl BlobService {
    pub fn new(blobs: Arc<Blobs>, config: &FrontendConfig) -> Self {
        BlobService {
            blobs,
            access: Access::new(config),
            budget: ByteBudget::new(config.max_inflight_bytes),
            max_blob_size_bytes: config.max_blob_size_bytes,
            max_exists_batch: config.max_exists_batch,
            stream_idle_timeout: Duration::from_millis(config.stream_idle_timeout_ms),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
        }
    }

    /// The service behind a gate that refuses non-client callers before
    /// their request is decoded.
    pub fn into_server(
        self,
    ) -> tonic::service::interceptor::InterceptedService<pb::blob_store_server::BlobStoreServer<BlobService>, RoleGate> {
        let server = pb::blob_store_server::BlobStoreServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_SIZE_BYTES);
        tonic::service::interceptor::InterceptedService::new(server, RoleGate::new(&[Role::Client]))
    }
}

fn index_status(error: IndexError) -> Status {
    tracing::error!(error = %error, "index failure");
    match error {
        IndexError::Database { .. } | IndexError::Cancelled { .. } => Status::unavailable("index unavailable; retry later"),
        IndexError::CorruptRow { .. } => Status::data_loss("an index row is corrupt; operators are alerted"),
        _ => Status::internal("index error"),
    }
}

fn put_status(error: PutError) -> Status {
    match error {
        PutError::Index(e) => index_status(e),
        e => {
            // Details (OSD addresses, internal errors) go to the log, not to clients.
            tracing::error!(error = %e, "PUT failed");
            Status::unavailable("no bucket accepted the blob; retry later")
        }
    }
}

fn get_status(error: GetError) -> Status {
    match error {
        GetError::NotFound => Status::not_found("key not found"),
        GetError::Index(e) => index_status(e),
        e @ GetError::Unreadable { .. } => {
            tracing::error!(error = %e, "GET found no intact replica");
            Status::unavailable("no replica returned the blob intact; retry later")
        }
        e => {
            tracing::error!(error = %e, "GET failed");
            Status::unavailable("the cell could not serve the blob; retry later")
        }
    }
}

type GetStream = Pin<Box<dyn Stream<Item = Result<pb::GetResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::blob_store_server::BlobStore for BlobService {
    #[tracing::instrument(name = "put", skip_all, fields(key, bytes))]
    async fn put(&self, request: Request<Streaming<pb::PutRequest>>) -> Result<Response<pb::PutResponse>, Status> {
        let admission = self.access.admit(&request, Permission::Put)?;
        let mut stream = request.into_inner();
        let header = match pocket_proto::next_message(&mut stream, self.stream_idle_timeout).await? {
            Some(pb::PutRequest { part: Some(pb::put_request::Part::Header(header)) }) => header,
            Some(_) => return Err(Status::invalid_argument("the first message of a PUT must be its header")),
            None => return Err(Status::invalid_argument("empty PUT stream")),
        };
        let key = key_from_wire(&header.key)?;
        tracing::Span::current().record("key", tracing::field::display(&key));
        tracing::Span::current().record("bytes", header.length_bytes);
        if header.length_bytes > self.max_blob_size_bytes {
            metrics::counter!("pocket_frontend_rejected_total", "reason" => "too_large").increment(1);
            return Err(Status::invalid_argument(format!(
                "blob of {} bytes exceeds the maximum of {} bytes",
                header.length_bytes, self.max_blob_size_bytes
            )));
        }
        let _client_share = admission.reserve(header.length_bytes).await?;
        let _permit = self.budget.reserve(header.length_bytes).await?;
        let receive = async {
            let mut body = BodyCollector::new(header.length_bytes);
            let mut hasher = blake3::Hasher::new();
            while let Some(message) = pocket_proto::next_message(&mut stream, self.stream_idle_timeout).await? {
                match message.part {
                    Some(pb::put_request::Part::Chunk(chunk)) => {
                        hasher.update(&chunk);
                        body.push(chunk)?;
                    }
                    _ => return Err(Status::invalid_argument("only chunks may follow the header")),
                }
            }
            Ok::<_, Status>((body.finish()?, Key(*hasher.finalize().as_bytes())))
        };
        // The dedup lookup runs while the body arrives; its answer counts
        // only once the body is complete and hashes to the key.
        let (received, indexed) = tokio::join!(receive, self.blobs.is_indexed(&key));
        let (data, actual) = received?;
        if actual != key {
            metrics::counter!("pocket_frontend_rejected_total", "reason" => "hash_mismatch").increment(1);
            return Err(Status::invalid_argument(format!("content hashes to {actual}, not to the key {key}")));
        }
        let started = std::time::Instant::now();
        let created = match indexed.map_err(put_status)? {
            true => {
                metrics::counter!("pocket_frontend_put_dedup_total").increment(1);
                false
            }
            false => self.blobs.store(key, data).await.map_err(put_status)?,
        };
        metrics::histogram!("pocket_frontend_put_store_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("pocket_frontend_puts_total").increment(1);
        metrics::counter!("pocket_frontend_put_bytes_total").increment(header.length_bytes);
        Ok(Response::new(pb::PutResponse { key: Bytes::copy_from_slice(key.as_bytes()), created }))
    }

    type GetStream = GetStream;

    #[tracing::instrument(name = "get", skip_all, fields(key))]
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<GetStream>, Status> {
        // Held by the response stream until its last byte has left: the
        // client's in-flight cap counts streams that are still sending.
        let admission = self.access.admit(&request, Permission::Get)?;
        let request = request.into_inner();
        let key = key_from_wire(&request.key)?;
        tracing::Span::current().record("key", tracing::field::display(&key));
        let entry = self.blobs.stat(&key).await.map_err(get_status)?;
        if request.offset > entry.length_bytes {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of the {}-byte blob",
                request.offset, entry.length_bytes
            )));
        }
        let client_share = admission.reserve(entry.length_bytes).await?;
        let permit = self.budget.reserve(entry.length_bytes).await?;
        // The row looked up above: one index query per GET.
        let data = self.blobs.read(&entry).await.map_err(get_status)?;
        metrics::counter!("pocket_frontend_gets_total").increment(1);
        let end = match request.length {
            0 => entry.length_bytes,
            n => request.offset.saturating_add(n).min(entry.length_bytes),
        };
        // Slices of the chunks as they came from the OSD: no copy.
        let mut range = data.range(request.offset, end);
        metrics::counter!("pocket_frontend_get_bytes_total").increment(end - request.offset);
        if range.is_empty() {
            // The first message carries the blob's length, even for an empty range.
            range.push(bytes::Bytes::new());
        }
        let total = entry.length_bytes;
        let messages = range.into_iter().enumerate().map(move |(index, chunk)| pb::GetResponse {
            blob_length_bytes: if index == 0 { total } else { 0 },
            chunk,
        });
        // Held until the last byte has left or the stream is reset (ADR 15).
        let stream = pocket_proto::held_stream(messages, (permit, client_share, admission), self.request_timeout);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn exists(&self, request: Request<pb::ExistsRequest>) -> Result<Response<pb::ExistsResponse>, Status> {
        let _admission = self.access.admit(&request, Permission::Get)?;
        let request = request.into_inner();
        if request.keys.len() > self.max_exists_batch {
            return Err(Status::invalid_argument(format!(
                "{} keys exceed the limit of {} per Exists call",
                request.keys.len(),
                self.max_exists_batch
            )));
        }
        let keys = request.keys.iter().map(|k| key_from_wire(k)).collect::<Result<Vec<_>, _>>()?;
        let found = self.blobs.index.lookup_many(&keys).await.map_err(index_status)?;
        Ok(Response::new(pb::ExistsResponse { exists: found.iter().map(Option::is_some).collect() }))
    }

    async fn stat(&self, request: Request<pb::StatRequest>) -> Result<Response<pb::StatResponse>, Status> {
        let _admission = self.access.admit(&request, Permission::Get)?;
        let key = key_from_wire(&request.into_inner().key)?;
        let entry = self.blobs.stat(&key).await.map_err(get_status)?;
        Ok(Response::new(pb::StatResponse {
            key: Bytes::copy_from_slice(key.as_bytes()),
            length_bytes: entry.length_bytes,
            cell_id: entry.cell_id,
            bucket_id: entry.bucket_id,
            created_unix_ms: entry.created_unix_ms,
        }))
    }
}
