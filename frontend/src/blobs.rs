//! PUT and GET as DESIGN.md describes them, on domain types: the key is
//! checked before anything is written, data goes to every replica before the
//! index row, and every byte read is checked against its key.

use std::sync::Arc;

use bytes::Bytes;
use pocket_index::{Index, IndexEntry, IndexError, InsertOutcome};
use pocket_proto::{now_unix_ms, Body, Key, OsdId};
use pocket_rpc_client::{Bucket, BucketProblem, EcShape, OsdError, Replica};
use rand::seq::{IndexedRandom, SliceRandom};

use crate::batch::is_batched;
use crate::cell::{CellError, CellView};
use crate::config::FrontendConfig;

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Cell(#[from] CellError),
    #[error("no bucket accepted the blob ({attempts} failed attempts allowed, 10 s at most); last error: {last}")]
    Exhausted { attempts: u32, last: String },
}

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Cell(#[from] CellError),
    #[error("key not found")]
    NotFound,
    #[error("no replica returned the blob intact ({failures} failures; last: {last})")]
    Unreadable { failures: usize, last: String },
}

/// Longest a PUT searches for a bucket that takes it (full buckets, waits
/// for the coordinator to open new ones, retries after replica failures).
const PUT_PLACEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Pause before asking again when no writable bucket is left untried.
const NO_BUCKET_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a PUT's appends to a bucket failed, and what that means for the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WriteFailure {
    /// The bucket's extent is full: the normal end of a bucket, not a
    /// failure. Reported, so that the coordinator closes its volume.
    Full { osd_id: OsdId, detail: String },
    /// A replica is busy: try another bucket; this one stays open.
    Busy { osd_id: OsdId, detail: String },
    /// A replica failed: reported, so that the coordinator closes its volume.
    ReplicaFailed { osd_id: OsdId, detail: String },
}

impl WriteFailure {
    /// What the coordinator is told, if anything.
    fn problem(&self) -> Option<BucketProblem> {
        match self {
            WriteFailure::Full { .. } => Some(BucketProblem::Full),
            WriteFailure::Busy { .. } => None,
            WriteFailure::ReplicaFailed { .. } => Some(BucketProblem::ReplicaFailed),
        }
    }

    fn osd_id(&self) -> OsdId {
        match self {
            WriteFailure::Full { osd_id, .. } | WriteFailure::Busy { osd_id, .. } | WriteFailure::ReplicaFailed { osd_id, .. } => {
                *osd_id
            }
        }
    }

    fn detail(&self) -> &str {
        match self {
            WriteFailure::Full { detail, .. } | WriteFailure::Busy { detail, .. } | WriteFailure::ReplicaFailed { detail, .. } => {
                detail
            }
        }
    }
}

pub struct Blobs {
    pub index: Index,
    pub cell: CellView,
    config: FrontendConfig,
    /// Where this process starts its turns over the buckets for small blobs.
    small_blob_turn: u64,
}

impl Blobs {
    pub fn new(index: Index, cell: CellView, config: FrontendConfig) -> Arc<Blobs> {
        Arc::new(Blobs { index, cell, config, small_blob_turn: rand::random() })
    }

    /// Whether `key` is indexed: a PUT of it stores nothing (dedup). Runs
    /// while the PUT's body is still arriving.
    pub async fn is_indexed(&self, key: &Key) -> Result<bool, PutError> {
        Ok(self.index.lookup(key).await?.is_some())
    }

    /// Stores `data` under `key`, which the caller has already checked is its
    /// BLAKE3 hash and found not indexed ([`Blobs::is_indexed`]): every
    /// replica first, then the index row. Returns whether a new index row was
    /// written (false: a concurrent PUT of the key indexed it first).
    pub async fn store(&self, key: Key, data: Body) -> Result<bool, PutError> {
        let mut last = String::from("no attempt made");
        let mut tried = Vec::new();
        // A full bucket is the normal end of a bucket, not a failure: it does
        // not use up an attempt. Only replica failures do; and the whole
        // search, waits for new buckets included, is bounded in time.
        let deadline = std::time::Instant::now() + PUT_PLACEMENT_TIMEOUT;
        let mut attempt = 0;
        while attempt < self.config.put_attempts && std::time::Instant::now() < deadline {
            let (cell_id, buckets) = self.cell.writable(!tried.is_empty()).await?;
            let candidates: Vec<&Bucket> = buckets.iter().filter(|b| !tried.contains(&b.bucket_id)).collect();
            let Some(bucket) = self.choose_bucket(candidates, data.len_bytes()).cloned() else {
                last = CellError::NoWritableBucket.to_string();
                // The coordinator replaces closed buckets within a tick; wait for it.
                tokio::time::sleep(NO_BUCKET_WAIT).await;
                continue;
            };
            tried.push(bucket.bucket_id);
            match self.write_replicas(&bucket, key, &data).await {
                Ok(()) => {
                    let entry = IndexEntry {
                        key,
                        cell_id,
                        bucket_id: bucket.bucket_id,
                        length_bytes: data.len_bytes(),
                        created_unix_ms: now_unix_ms(),
                    };
                    return match self.index.insert(&entry, &self.config.remote_zones).await? {
                        InsertOutcome::Inserted => Ok(true),
                        // A concurrent PUT of the same key won; our copy is garbage for compaction.
                        InsertOutcome::AlreadyPresent(_) => Ok(false),
                    };
                }
                Err(failure) => {
                    metrics::counter!("pocket_frontend_put_retries_total").increment(1);
                    let detail = failure.detail().to_string();
                    match &failure {
                        WriteFailure::Full { .. } => {
                            tracing::debug!(bucket_id = bucket.bucket_id, attempt, "bucket full; trying another");
                        }
                        WriteFailure::ReplicaFailed { .. } => {
                            attempt += 1;
                            tracing::warn!(bucket_id = bucket.bucket_id, attempt, %detail, "replica failed a PUT; trying another bucket");
                        }
                        WriteFailure::Busy { .. } => {
                            attempt += 1;
                            tracing::debug!(bucket_id = bucket.bucket_id, attempt, %detail, "replica busy; trying another bucket");
                        }
                    }
                    if let Some(problem) = failure.problem() {
                        self.cell.drop_writable(bucket.bucket_id).await;
                        self.cell.report(bucket.bucket_id, problem, failure.osd_id(), detail.clone()).await;
                    }
                    last = detail;
                }
            }
        }
        Err(PutError::Exhausted { attempts: self.config.put_attempts, last })
    }

    /// A bucket for a blob of `len` bytes. Large blobs go to a random one.
    /// Small blobs, whose appends are batched (ADR 12), go to one bucket at
    /// a time, so that concurrent PUTs meet in the same batches; the bucket
    /// changes every second (from a per-process start), so one frontend
    /// still spreads its small blobs over every writable bucket, and
    /// frontends are not in step with each other.
    fn choose_bucket<'a>(&self, mut candidates: Vec<&'a Bucket>, len: u64) -> Option<&'a Bucket> {
        if !is_batched(len, self.config.batch_record_max_bytes) || candidates.is_empty() {
            return candidates.choose(&mut rand::rng()).copied();
        }
        candidates.sort_unstable_by_key(|b| b.bucket_id);
        let second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let turn = self.small_blob_turn.wrapping_add(second);
        Some(candidates[(turn % candidates.len() as u64) as usize])
    }

    /// Appends to every replica in parallel; Err names the first problem.
    async fn write_replicas(
        &self,
        bucket: &Bucket,
        key: Key,
        data: &Body,
    ) -> Result<(), WriteFailure> {
        let writes = bucket.replicas.iter().map(|replica| {
            let data = data.clone();
            async move { (replica.osd_id, self.cell.append(replica, key, data).await) }
        });
        let results = futures::future::join_all(writes).await;
        for (osd_id, result) in results {
            match result {
                Ok(()) => {}
                Err(OsdError::Full { .. }) => {
                    let detail = format!("extent of bucket {} is full", bucket.bucket_id);
                    return Err(WriteFailure::Full { osd_id, detail });
                }
                Err(e @ OsdError::Busy { .. }) => return Err(WriteFailure::Busy { osd_id, detail: e.to_string() }),
                Err(e) => return Err(WriteFailure::ReplicaFailed { osd_id, detail: e.to_string() }),
            }
        }
        Ok(())
    }

    pub async fn stat(&self, key: &Key) -> Result<IndexEntry, GetError> {
        self.index.lookup(key).await?.ok_or(GetError::NotFound)
    }

    /// Reads the whole blob from the first replica that returns bytes whose
    /// BLAKE3 is the key. Tries every replica, then once more with a fresh
    /// location from the coordinator. In an erasure-coded volume the bucket's
    /// own data shard is read; if that fails, the record is reconstructed
    /// from the other shards (and checked against the key all the same).
    /// `entry` is the key's index row, from [`Blobs::stat`].
    pub async fn read(&self, entry: &IndexEntry) -> Result<Body, GetError> {
        let key = &entry.key;
        let mut failures = 0;
        let mut last = String::from("no replica");
        for refresh in [false, true] {
            let mut bucket = self.cell.locate(entry.bucket_id, refresh).await?;
            if let Some(shape) = bucket.ec {
                match self.get_erasure_coded(&bucket, shape, key, entry.length_bytes).await {
                    Ok(data) => return Ok(data),
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(bucket_id = bucket.bucket_id, %key, error = %e, "erasure-coded read failed");
                        last = e;
                        continue;
                    }
                }
            }
            bucket.replicas.shuffle(&mut rand::rng());
            for replica in &bucket.replicas {
                match self.cell.read(replica, key, entry.length_bytes).await {
                    Ok(data) if data.key() == *key => return Ok(data),
                    Ok(_) => {
                        failures += 1;
                        last = format!("OSD {} returned bytes that do not hash to the key", replica.osd_id);
                        tracing::error!(osd_id = replica.osd_id, %key, "replica returned corrupt bytes");
                        metrics::counter!("pocket_frontend_corrupt_replica_reads_total").increment(1);
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(osd_id = replica.osd_id, %key, error = %e, "replica read failed; trying the next");
                        last = e.to_string();
                    }
                }
            }
        }
        Err(GetError::Unreadable { failures, last })
    }

    /// The data shard first; reconstruction from the others if it fails.
    async fn get_erasure_coded(&self, bucket: &Bucket, shape: EcShape, key: &Key, length: u64) -> Result<Body, String> {
        let own = bucket.replicas.iter().find(|r| r.position == shape.position).ok_or("the volume lists no such shard")?;
        let first_error = match self.cell.read(own, key, length).await {
            Ok(data) if data.key() == *key => return Ok(data),
            Ok(_) => {
                metrics::counter!("pocket_frontend_corrupt_replica_reads_total").increment(1);
                format!("OSD {} returned bytes that do not hash to the key", own.osd_id)
            }
            Err(e) => e.to_string(),
        };
        tracing::warn!(bucket_id = bucket.bucket_id, osd_id = own.osd_id, %key, error = %first_error, "data shard unreadable; reconstructing");
        metrics::counter!("pocket_frontend_degraded_reads_total").increment(1);
        let (k, m) = (shape.data_shards as usize, shape.parity_shards as usize);
        let codec = pocket_erasure::Codec::new(k, m).map_err(|e| e.to_string())?;
        let mut shards: Vec<Option<&Replica>> = vec![None; k + m];
        for replica in &bucket.replicas {
            if let Some(slot) = shards.get_mut(replica.position as usize) {
                *slot = Some(replica);
            }
        }
        let shards: Vec<&Replica> = shards.into_iter().collect::<Option<Vec<_>>>().ok_or("the volume's layout is incomplete")?;
        let volume_shape = pocket_erasure::VolumeShape {
            data_sizes: shards[..k].iter().map(|r| r.size_bytes).collect(),
            parity: m,
        };
        let reader = ShardRanges { cell: &self.cell, shards };
        let data = pocket_erasure::read_record_degraded(
            &codec,
            &volume_shape,
            &reader,
            shape.position as usize,
            key,
            self.config.max_blob_size_bytes,
        )
        .await
        .map_err(|e| format!("{first_error}; reconstruction failed: {e}"))?;
        if data.len() as u64 != length {
            return Err(format!("reconstructed {} bytes, the index says {length}", data.len()));
        }
        Ok(Body::from(data))
    }
}

/// Raw ranges of an erasure-coded volume's shards, read from their OSDs.
struct ShardRanges<'a> {
    cell: &'a CellView,
    shards: Vec<&'a Replica>,
}

impl pocket_erasure::ShardReader for ShardRanges<'_> {
    async fn read(&self, shard: usize, offset: u64, len: usize) -> Result<Bytes, String> {
        let replica = self.shards.get(shard).ok_or("no such shard")?;
        self.cell.read_range(replica, offset, len).await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_extent_and_a_failed_replica_are_reported_and_a_busy_one_is_not() {
        let detail = String::from("d");
        let full = WriteFailure::Full { osd_id: 1, detail: detail.clone() };
        let busy = WriteFailure::Busy { osd_id: 2, detail: detail.clone() };
        let failed = WriteFailure::ReplicaFailed { osd_id: 3, detail };
        assert_eq!(full.problem(), Some(BucketProblem::Full));
        assert_eq!(busy.problem(), None);
        assert_eq!(failed.problem(), Some(BucketProblem::ReplicaFailed));
        assert_eq!((full.osd_id(), busy.osd_id(), failed.osd_id()), (1, 2, 3));
        assert_eq!(failed.detail(), "d");
    }
}
