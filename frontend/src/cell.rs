//! The frontend's view of its cell: the writable buckets and bucket
//! locations, cached from the coordinator, and the outbound calls to OSDs.
//! The outbound edge: the only module here that builds OSD and coordinator
//! wire messages.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pocket_proto::framed::{self, Frames};
use pocket_proto::{pb, Body, BodyCollector, BucketId, CellId, ExtentId, Key, OsdId, EXTENT_FULL_PREFIX};
use tonic::transport::Channel;
use tonic::Code;

use crate::batch::{is_batched, Batcher};

/// How long the list of writable buckets is trusted before it is refreshed.
const WRITABLE_TTL: Duration = Duration::from_secs(1);
/// How long a bucket's location is trusted. Locations change only when a
/// volume is re-encoded, and a failed read refreshes it anyway.
const LOCATION_TTL: Duration = Duration::from_secs(30);
/// Most cached OSD channels (one per address ever seen) before the cache is
/// cleared: far above a cell's OSD count, so only restarts on new ports fill it.
const MAX_CACHED_CHANNELS: usize = 4_096;
/// Deadline of a call to the coordinator on the request path.
const COORDINATOR_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one raw range read from an OSD during a degraded read (at
/// most 1 MiB per call).
const RANGE_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `Osd.AppendBatch` calls in flight to one replica at once (ADR 12). One
/// gave 680 and 703 64 KiB PUTs/s where two gave 662 and 680 (C = 8, two
/// interleaved pairs): a second call halves the batches more than it fills
/// the gaps between them.
const BATCH_CALLS_IN_FLIGHT_PER_REPLICA: usize = 1;
/// Most cached bucket locations; the cache is cleared when it grows past this.
const MAX_CACHED_LOCATIONS: usize = 100_000;

#[derive(Debug, Clone)]
pub struct Replica {
    pub osd_id: OsdId,
    pub grpc_addr: String,
    pub extent_id: ExtentId,
    /// Erasure-coded volumes: shard position and length.
    pub position: u32,
    pub size_bytes: u64,
}

/// The erasure code of the volume holding a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcShape {
    pub data_shards: u32,
    pub parity_shards: u32,
    /// The bucket's own data shard.
    pub position: u32,
}

#[derive(Debug, Clone)]
pub struct Bucket {
    pub bucket_id: BucketId,
    /// Replicated: the replicas of the bucket's extent. Erasure-coded: every shard of the volume.
    pub replicas: Vec<Replica>,
    /// Set when the bucket lives in an erasure-coded volume.
    pub ec: Option<EcShape>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("extent is full")]
    Full,
    /// The OSD is busy (its in-flight byte budget is spent): try elsewhere,
    /// but the replica is healthy and its volume must stay open.
    #[error("OSD {osd_id} is busy: {status}")]
    Busy { osd_id: OsdId, status: tonic::Status },
    #[error("OSD {osd_id} at {addr}: {status}")]
    Failed { osd_id: OsdId, addr: String, status: tonic::Status },
    #[error("OSD {osd_id} returned {got} bytes, expected {expected}")]
    WrongLength { osd_id: OsdId, got: u64, expected: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error("coordinator unavailable: {0}")]
    Coordinator(tonic::Status),
    #[error("no writable bucket in the cell")]
    NoWritableBucket,
    #[error("bucket {0} is unknown to the coordinator")]
    UnknownBucket(BucketId),
}

pub struct CellView {
    coordinator: pb::coordinator_client::CoordinatorClient<Channel>,
    writable: tokio::sync::Mutex<Option<(Instant, CellId, Vec<Bucket>)>>,
    locations: Mutex<HashMap<BucketId, (Instant, Bucket)>>,
    channels: Mutex<HashMap<String, Channel>>,
    tls: pocket_transport::Tls,
    /// Small appends waiting for a call to their replica (ADR 12).
    batches: Batcher<AppendDestination, (Key, Body), ReplicaError>,
    /// Records at most this large are batched; 0: none is.
    batch_record_max_bytes: u64,
}

/// Where a batched append goes: one OSD (at one address) and one extent.
type AppendDestination = (OsdId, String, ExtentId);

/// The header of a record appended to `replica`.
fn append_header(replica: &Replica, key: &Key, data: &Body) -> pb::AppendRequest {
    pb::AppendRequest {
        part: Some(pb::append_request::Part::Header(pb::AppendHeader {
            extent_id: replica.extent_id,
            key: Bytes::copy_from_slice(key.as_bytes()),
            length_bytes: data.len_bytes(),
            osd_id: replica.osd_id,
        })),
    }
}

/// What an OSD's refusal of an append means to a PUT.
fn replica_error(replica: &Replica, status: tonic::Status) -> ReplicaError {
    match status.code() {
        Code::ResourceExhausted if status.message().starts_with(EXTENT_FULL_PREFIX) => ReplicaError::Full,
        Code::ResourceExhausted => ReplicaError::Busy { osd_id: replica.osd_id, status },
        _ => ReplicaError::Failed { osd_id: replica.osd_id, addr: replica.grpc_addr.clone(), status },
    }
}

/// One `Osd.AppendBatch` call carrying `records`; one outcome per record.
async fn append_batch(mut channel: Channel, replica: Replica, records: Vec<(Key, Body)>) -> Vec<Result<(), ReplicaError>> {
    let mut frames = Frames::new();
    let mut framing = Ok(());
    for (key, data) in &records {
        framing = frames.record(&append_header(&replica, key, data), data.chunks().iter().cloned());
        if framing.is_err() {
            break;
        }
    }
    let response = match framing {
        Ok(()) => framed::client_streaming::<_, pb::AppendBatchResponse>(&mut channel, framed::OSD_APPEND_BATCH_PATH, frames).await,
        Err(status) => Err(status),
    };
    match response {
        Ok(response) if response.results.len() == records.len() => response
            .results
            .into_iter()
            .map(|result| match Code::from_i32(result.code) {
                Code::Ok => Ok(()),
                code => Err(replica_error(&replica, tonic::Status::new(code, result.message))),
            })
            .collect(),
        Ok(response) => {
            let message = format!("answered {} results for {} records", response.results.len(), records.len());
            records.iter().map(|_| Err(replica_error(&replica, tonic::Status::internal(message.clone())))).collect()
        }
        Err(status) => records.iter().map(|_| Err(replica_error(&replica, status.clone()))).collect(),
    }
}

fn bucket_of(placement: pb::BucketPlacement) -> Bucket {
    let ec = (placement.data_shards > 0).then_some(EcShape {
        data_shards: placement.data_shards,
        parity_shards: placement.parity_shards,
        position: placement.bucket_position,
    });
    Bucket {
        bucket_id: placement.bucket_id,
        replicas: placement
            .replicas
            .into_iter()
            .map(|r| Replica {
                osd_id: r.osd_id,
                grpc_addr: r.grpc_addr,
                extent_id: r.extent_id,
                position: r.position,
                size_bytes: r.size_bytes,
            })
            .collect(),
        ec,
    }
}

impl CellView {
    pub fn new(coordinator_addr: &str, tls: pocket_transport::Tls, batch_record_max_bytes: u64) -> anyhow::Result<CellView> {
        let channel = tls.channel(coordinator_addr, &pocket_transport::role_dns_name(pocket_transport::Role::Coordinator))?;
        Ok(CellView {
            coordinator: pb::coordinator_client::CoordinatorClient::new(channel),
            writable: tokio::sync::Mutex::new(None),
            locations: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            tls,
            batches: Batcher::new(BATCH_CALLS_IN_FLIGHT_PER_REPLICA),
            batch_record_max_bytes,
        })
    }

    /// The cell id and its writable buckets, from cache when fresh.
    pub async fn writable(&self, force_refresh: bool) -> Result<(CellId, Vec<Bucket>), CellError> {
        let mut cached = self.writable.lock().await;
        if let Some((at, cell_id, buckets)) = cached.as_ref() {
            if !force_refresh && at.elapsed() < WRITABLE_TTL && !buckets.is_empty() {
                return Ok((*cell_id, buckets.clone()));
            }
        }
        // One refresh at a time (the lock), each bounded by a deadline; if the
        // coordinator does not answer, the last list is better than none.
        let mut request = tonic::Request::new(pb::WritableBucketsRequest {});
        request.set_timeout(COORDINATOR_CALL_TIMEOUT);
        let response = match self.coordinator.clone().writable_buckets(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                if let Some((_, cell_id, buckets)) = cached.as_ref().filter(|(_, _, b)| !b.is_empty()) {
                    tracing::warn!(%status, "coordinator did not list writable buckets; using the last list");
                    return Ok((*cell_id, buckets.clone()));
                }
                return Err(CellError::Coordinator(status));
            }
        };
        let buckets: Vec<Bucket> = response.buckets.into_iter().map(bucket_of).collect();
        *cached = Some((Instant::now(), response.cell_id, buckets.clone()));
        Ok((response.cell_id, buckets))
    }

    /// Forgets a bucket that failed, so that the next PUT does not pick it.
    pub async fn drop_writable(&self, bucket_id: BucketId) {
        if let Some((_, _, buckets)) = self.writable.lock().await.as_mut() {
            buckets.retain(|bucket| bucket.bucket_id != bucket_id);
        }
    }

    pub async fn report(&self, bucket_id: BucketId, problem: pb::BucketProblem, osd_id: OsdId, detail: String) {
        let request = pb::ReportBucketRequest { bucket_id, problem: problem as i32, osd_id, detail };
        if let Err(status) = self.coordinator.clone().report_bucket(request).await {
            tracing::warn!(bucket_id, %status, "could not report bucket problem to coordinator");
        }
    }

    pub async fn locate(&self, bucket_id: BucketId, force_refresh: bool) -> Result<Bucket, CellError> {
        if !force_refresh {
            let locations = self.locations.lock().expect("location cache lock poisoned");
            if let Some((at, bucket)) = locations.get(&bucket_id) {
                if at.elapsed() < LOCATION_TTL {
                    return Ok(bucket.clone());
                }
            }
        }
        let mut request = tonic::Request::new(pb::LocateBucketRequest { bucket_id });
        request.set_timeout(COORDINATOR_CALL_TIMEOUT);
        let response = self
            .coordinator
            .clone()
            .locate_bucket(request)
            .await
            .map_err(|status| match status.code() {
                Code::NotFound => CellError::UnknownBucket(bucket_id),
                _ => CellError::Coordinator(status),
            })?
            .into_inner();
        let bucket = bucket_of(response.placement.ok_or(CellError::UnknownBucket(bucket_id))?);
        let mut locations = self.locations.lock().expect("location cache lock poisoned");
        if locations.len() >= MAX_CACHED_LOCATIONS {
            locations.clear();
        }
        locations.insert(bucket_id, (Instant::now(), bucket.clone()));
        Ok(bucket)
    }

    fn osd(&self, replica: &Replica) -> Result<pb::osd_client::OsdClient<Channel>, ReplicaError> {
        Ok(pb::osd_client::OsdClient::new(self.osd_channel(replica)?)
            .max_decoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES)
            .max_encoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES))
    }

    fn osd_channel(&self, replica: &Replica) -> Result<Channel, ReplicaError> {
        let mut channels = self.channels.lock().expect("channel map lock poisoned");
        let cache_key = format!("{}@{}", replica.osd_id, replica.grpc_addr);
        let channel = match channels.get(&cache_key) {
            Some(channel) => channel.clone(),
            None => {
                if channels.len() >= MAX_CACHED_CHANNELS {
                    // OSD addresses change on restarts; forget stale ones.
                    channels.clear();
                }
                let name =
                    pocket_transport::Identity::new(pocket_transport::Role::Osd, &format!("osd-{}", replica.osd_id)).dns_name();
                let channel = self.tls.channel(&replica.grpc_addr, &name).map_err(|e| ReplicaError::Failed {
                    osd_id: replica.osd_id,
                    addr: replica.grpc_addr.clone(),
                    status: tonic::Status::internal(e.to_string()),
                })?;
                channels.insert(cache_key, channel.clone());
                channel
            }
        };
        Ok(channel)
    }

    /// Appends `data` under `key` to one replica; Ok once the OSD made it durable.
    pub async fn append(&self, replica: &Replica, key: Key, data: Body) -> Result<(), ReplicaError> {
        if is_batched(data.len_bytes(), self.batch_record_max_bytes) {
            return self.append_batched(replica, key, data).await;
        }
        let mut channel = self.osd_channel(replica)?;
        // The chunks the client sent, forwarded as they are: not copied by
        // pocket, nor by an encoder (ADR 10).
        let call = async {
            let frames = Frames::header_and_chunks(&append_header(replica, &key, &data), data.chunks().iter().cloned())?;
            framed::client_streaming::<_, pb::AppendResponse>(&mut channel, framed::OSD_APPEND_PATH, frames).await
        };
        call.await.map(|_| ()).map_err(|status| replica_error(replica, status))
    }

    /// Appends a small record in the next `Osd.AppendBatch` call to its
    /// replica, with whatever other records wait for that replica (ADR 12).
    async fn append_batched(&self, replica: &Replica, key: Key, data: Body) -> Result<(), ReplicaError> {
        let channel = self.osd_channel(replica)?;
        let destination = (replica.osd_id, replica.grpc_addr.clone(), replica.extent_id);
        let bytes = data.len_bytes();
        let replica = replica.clone();
        let lost = replica.clone();
        let send = move |records: Vec<(Key, Body)>| append_batch(channel.clone(), replica.clone(), records);
        let gone = move || replica_error(&lost, tonic::Status::unavailable("the batched append was lost (frontend shutting down)"));
        self.batches.submit(destination, (key, data), bytes, send, gone).await
    }

    /// Reads raw bytes `[offset, offset + len)` of a sealed or parity extent
    /// (degraded reads). Checked only by what is built from them.
    pub async fn read_range(&self, replica: &Replica, offset: u64, len: usize) -> Result<Bytes, ReplicaError> {
        let failed = |status: tonic::Status| ReplicaError::Failed {
            osd_id: replica.osd_id,
            addr: replica.grpc_addr.clone(),
            status,
        };
        let mut client = self.osd(replica)?;
        let mut request = tonic::Request::new(pb::ReadRangeRequest {
            extent_id: replica.extent_id,
            offset,
            length: len as u64,
            osd_id: replica.osd_id,
        });
        request.set_timeout(RANGE_READ_TIMEOUT);
        let mut stream = client.read_range(request).await.map_err(failed)?.into_inner();
        let mut body = BodyCollector::new(len as u64);
        while let Some(message) = stream.message().await.map_err(failed)? {
            body.push(message.chunk).map_err(failed)?;
        }
        let received = body.received_bytes();
        body.finish()
            .map(Body::contiguous)
            .map_err(|_| ReplicaError::WrongLength { osd_id: replica.osd_id, got: received, expected: len as u64 })
    }

    /// Reads the record of `key` from one replica; `expected_bytes` bounds
    /// the memory it may take. The caller verifies the bytes against the key.
    pub async fn read(&self, replica: &Replica, key: &Key, expected_bytes: u64) -> Result<Body, ReplicaError> {
        let failed = |status: tonic::Status| ReplicaError::Failed {
            osd_id: replica.osd_id,
            addr: replica.grpc_addr.clone(),
            status,
        };
        let mut client = self.osd(replica)?;
        let mut stream = client
            .read(pb::ReadRequest {
                extent_id: replica.extent_id,
                key: Bytes::copy_from_slice(key.as_bytes()),
                osd_id: replica.osd_id,
            })
            .await
            .map_err(failed)?
            .into_inner();
        let mut body = BodyCollector::new(expected_bytes);
        let mut first = true;
        while let Some(message) = stream.message().await.map_err(failed)? {
            if first && message.blob_length_bytes != expected_bytes {
                return Err(ReplicaError::WrongLength {
                    osd_id: replica.osd_id,
                    got: message.blob_length_bytes,
                    expected: expected_bytes,
                });
            }
            first = false;
            body.push(message.chunk).map_err(failed)?;
        }
        let received = body.received_bytes();
        body.finish().map_err(|_| ReplicaError::WrongLength { osd_id: replica.osd_id, got: received, expected: expected_bytes })
    }
}
