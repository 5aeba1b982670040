//! The frontend's view of its cell: the writable buckets and bucket
//! locations, cached from the coordinator, and the appends (batched or
//! not, ADR 12) and reads of its replicas. The calls themselves are
//! `pocket-rpc-client`'s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pocket_proto::{Body, BucketId, CellId, ExtentId, Key, OsdId};
use pocket_rpc_client::{Bucket, BucketProblem, CoordinatorClient, CoordinatorError, OsdClient, OsdClients, OsdError, Replica};

use crate::batch::{is_batched, Batcher};

/// How long the list of writable buckets is trusted before it is refreshed.
const WRITABLE_TTL: Duration = Duration::from_secs(1);
/// How long a bucket's location is trusted. Locations change only when a
/// volume is re-encoded, and a failed read refreshes it anyway.
const LOCATION_TTL: Duration = Duration::from_secs(30);
/// `Osd.AppendBatch` calls in flight to one replica at once (ADR 12). One
/// gave 680 and 703 64 KiB PUTs/s where two gave 662 and 680 (C = 8, two
/// interleaved pairs): a second call halves the batches more than it fills
/// the gaps between them.
const BATCH_CALLS_IN_FLIGHT_PER_REPLICA: usize = 1;
/// Most cached bucket locations; the cache is cleared when it grows past this.
const MAX_CACHED_LOCATIONS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error(transparent)]
    Coordinator(CoordinatorError),
    #[error("no writable bucket in the cell")]
    NoWritableBucket,
    #[error("bucket {0} is unknown to the coordinator")]
    UnknownBucket(BucketId),
}

pub struct CellView {
    coordinator: CoordinatorClient,
    writable: tokio::sync::Mutex<Option<(Instant, CellId, Vec<Bucket>)>>,
    locations: Mutex<HashMap<BucketId, (Instant, Bucket)>>,
    osds: OsdClients,
    /// Small appends waiting for a call to their replica (ADR 12).
    batches: Batcher<AppendDestination, (Key, Body), OsdError>,
    /// Records at most this large are batched; 0: none is.
    batch_record_max_bytes: u64,
}

/// Where a batched append goes: one OSD (at one address) and one extent.
type AppendDestination = (OsdId, String, ExtentId);

impl CellView {
    pub fn new(coordinator_addrs: &[String], tls: pocket_transport::Tls, batch_record_max_bytes: u64) -> Result<CellView, CoordinatorError> {
        Ok(CellView {
            coordinator: CoordinatorClient::connect_any(&tls, coordinator_addrs)?,
            writable: tokio::sync::Mutex::new(None),
            locations: Mutex::new(HashMap::new()),
            osds: OsdClients::new(tls),
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
        let (cell_id, buckets) = match self.coordinator.rpc_writable_buckets().await {
            Ok(answer) => answer,
            Err(error) => {
                if let Some((_, cell_id, buckets)) = cached.as_ref().filter(|(_, _, b)| !b.is_empty()) {
                    tracing::warn!(%error, "coordinator did not list writable buckets; using the last list");
                    return Ok((*cell_id, buckets.clone()));
                }
                return Err(CellError::Coordinator(error));
            }
        };
        *cached = Some((Instant::now(), cell_id, buckets.clone()));
        Ok((cell_id, buckets))
    }

    /// Forgets a bucket that failed, so that the next PUT does not pick it.
    pub async fn drop_writable(&self, bucket_id: BucketId) {
        if let Some((_, _, buckets)) = self.writable.lock().await.as_mut() {
            buckets.retain(|bucket| bucket.bucket_id != bucket_id);
        }
    }

    pub async fn report(&self, bucket_id: BucketId, problem: BucketProblem, osd_id: OsdId, detail: String) {
        if let Err(error) = self.coordinator.rpc_report(bucket_id, problem, osd_id, detail).await {
            tracing::warn!(bucket_id, %error, "could not report bucket problem to coordinator");
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
        let bucket = self.coordinator.rpc_locate(bucket_id).await.map_err(|error| match error {
            CoordinatorError::UnknownBucket(bucket_id) => CellError::UnknownBucket(bucket_id),
            error => CellError::Coordinator(error),
        })?;
        let mut locations = self.locations.lock().expect("location cache lock poisoned");
        if locations.len() >= MAX_CACHED_LOCATIONS {
            locations.clear();
        }
        locations.insert(bucket_id, (Instant::now(), bucket.clone()));
        Ok(bucket)
    }

    fn osd(&self, replica: &Replica) -> Result<OsdClient, OsdError> {
        self.osds.osd(replica.osd_id, &replica.grpc_addr)
    }

    /// Appends `data` under `key` to one replica; Ok once the OSD made it durable.
    pub async fn append(&self, replica: &Replica, key: Key, data: Body) -> Result<(), OsdError> {
        if is_batched(data.len_bytes(), self.batch_record_max_bytes) {
            return self.append_batched(replica, key, data).await;
        }
        self.osd(replica)?.rpc_append(replica.extent_id, &key, &data).await
    }

    /// Appends a small record in the next `Osd.AppendBatch` call to its
    /// replica, with whatever other records wait for that replica (ADR 12).
    async fn append_batched(&self, replica: &Replica, key: Key, data: Body) -> Result<(), OsdError> {
        let osd = self.osd(replica)?;
        let destination = (replica.osd_id, replica.grpc_addr.clone(), replica.extent_id);
        let bytes = data.len_bytes();
        let extent_id = replica.extent_id;
        let send = move |records: Vec<(Key, Body)>| {
            let osd = osd.clone();
            async move { osd.rpc_append_batch(extent_id, &records).await }
        };
        let (osd_id, addr) = (replica.osd_id, replica.grpc_addr.clone());
        let gone = move || OsdError::Unavailable {
            osd_id,
            addr,
            message: "the batched append was lost (frontend shutting down)".to_string(),
        };
        self.batches.submit(destination, (key, data), bytes, send, gone).await
    }

    /// Reads raw bytes `[offset, offset + len)` of a sealed or parity extent
    /// (degraded reads). Checked only by what is built from them.
    pub async fn read_range(&self, replica: &Replica, offset: u64, len: usize) -> Result<Bytes, OsdError> {
        self.osd(replica)?.rpc_read_range(replica.extent_id, offset, len).await
    }

    /// Reads the record of `key` from one replica; `expected_bytes` bounds
    /// the memory it may take. The caller verifies the bytes against the key.
    pub async fn read(&self, replica: &Replica, key: &Key, expected_bytes: u64) -> Result<Body, OsdError> {
        self.osd(replica)?.rpc_read(replica.extent_id, key, expected_bytes).await
    }
}
