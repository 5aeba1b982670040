//! PUT and GET as DESIGN.md describes them, on domain types: the key is
//! checked before anything is written, data goes to every replica before the
//! index row, and every byte read is checked against its key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pocket_index::{Index, IndexEntry, IndexError, InsertOutcome};
use pocket_proto::{now_unix_ms, Body, BucketId, Key, OsdId};
use pocket_rpc_client::{Bucket, BucketProblem, EcShape, OsdError, Replica};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

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
const PUT_PLACEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before asking again when no writable bucket is left untried.
const NO_BUCKET_WAIT: Duration = Duration::from_millis(100);

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
    /// What a replica's refusal of an append to bucket `bucket_id` means.
    fn from_osd_error(bucket_id: BucketId, osd_id: OsdId, error: OsdError) -> WriteFailure {
        match error {
            OsdError::Full { .. } => WriteFailure::Full { osd_id, detail: format!("extent of bucket {bucket_id} is full") },
            e @ OsdError::Busy { .. } => WriteFailure::Busy { osd_id, detail: e.to_string() },
            e => WriteFailure::ReplicaFailed { osd_id, detail: e.to_string() },
        }
    }

    /// Whether the failure uses up one of a PUT's attempts. A full bucket
    /// is the normal end of a bucket, not a failure: it does not.
    fn uses_attempt(&self) -> bool {
        match self {
            WriteFailure::Full { .. } => false,
            WriteFailure::Busy { .. } | WriteFailure::ReplicaFailed { .. } => true,
        }
    }

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

/// One PUT's search for a bucket that takes its blob: the buckets tried,
/// the attempts used, and the deadline of the whole search (waits for new
/// buckets included). Pure, with the clock passed in.
#[derive(Debug)]
struct PlacementSearch {
    attempts_allowed: u32,
    attempts_used: u32,
    deadline: Instant,
    tried: Vec<BucketId>,
}

impl PlacementSearch {
    fn new(attempts_allowed: u32, started: Instant) -> PlacementSearch {
        PlacementSearch { attempts_allowed, attempts_used: 0, deadline: started + PUT_PLACEMENT_TIMEOUT, tried: Vec::new() }
    }

    /// Whether to try (or wait for) another bucket at `now`.
    fn goes_on(&self, now: Instant) -> bool {
        self.attempts_used < self.attempts_allowed && now < self.deadline
    }

    /// Whether a bucket was tried already: the cached list of writable
    /// buckets is then refreshed, since it may name closed ones.
    fn tried_any(&self) -> bool {
        !self.tried.is_empty()
    }

    /// The buckets of `writable` not tried yet.
    fn untried<'a>(&self, writable: &'a [Bucket]) -> Vec<&'a Bucket> {
        writable.iter().filter(|b| !self.tried.contains(&b.bucket_id)).collect()
    }

    /// Bucket `bucket_id` is being tried.
    fn trying(&mut self, bucket_id: BucketId) {
        self.tried.push(bucket_id);
    }

    /// The try failed with `failure`; returns the attempts used so far.
    fn failed(&mut self, failure: &WriteFailure) -> u32 {
        if failure.uses_attempt() {
            self.attempts_used += 1;
        }
        self.attempts_used
    }
}

/// A bucket for a blob of `len_bytes` out of `candidates`. Large blobs go
/// to a random one. Small blobs, whose appends are batched (ADR 12), go to
/// one bucket at a time, so that concurrent PUTs meet in the same batches:
/// the one at `turn` (modulo their count) in bucket id order. The caller
/// moves `turn` on every second (from a per-process start), so one frontend
/// still spreads its small blobs over every writable bucket, and frontends
/// are not in step with each other.
fn choose_bucket<'a>(
    mut candidates: Vec<&'a Bucket>,
    len_bytes: u64,
    batch_record_max_bytes: u64,
    turn: u64,
    rng: &mut impl Rng,
) -> Option<&'a Bucket> {
    if !is_batched(len_bytes, batch_record_max_bytes) || candidates.is_empty() {
        return candidates.choose(rng).copied();
    }
    candidates.sort_unstable_by_key(|b| b.bucket_id);
    Some(candidates[(turn % candidates.len() as u64) as usize])
}

/// What one replica's answer to a GET is worth.
#[derive(Debug)]
enum ReplicaRead {
    /// Bytes whose BLAKE3 is the key.
    Intact(Body),
    /// Bytes that do not hash to the key.
    Corrupt,
    /// No bytes.
    Failed(OsdError),
}

impl ReplicaRead {
    fn judge(key: &Key, result: Result<Body, OsdError>) -> ReplicaRead {
        match result {
            Ok(data) if data.key() == *key => ReplicaRead::Intact(data),
            Ok(_) => ReplicaRead::Corrupt,
            Err(e) => ReplicaRead::Failed(e),
        }
    }
}

/// Failed reads of one GET so far, and the last one's cause.
#[derive(Debug)]
struct ReadFailures {
    count: usize,
    last: String,
}

/// Reads `replicas` in the order given until one returns bytes whose BLAKE3
/// is `key`; every other answer moves on to the next replica and is counted
/// in `failures`. `None`: no replica returned the blob intact.
async fn first_intact<'a, F, Fut>(replicas: &'a [Replica], key: &Key, mut read: F, failures: &mut ReadFailures) -> Option<Body>
where
    F: FnMut(&'a Replica) -> Fut,
    Fut: std::future::Future<Output = Result<Body, OsdError>>,
{
    for replica in replicas {
        match ReplicaRead::judge(key, read(replica).await) {
            ReplicaRead::Intact(data) => return Some(data),
            ReplicaRead::Corrupt => {
                failures.count += 1;
                failures.last = format!("OSD {} returned bytes that do not hash to the key", replica.osd_id);
                tracing::error!(osd_id = replica.osd_id, %key, "replica returned corrupt bytes");
                metrics::counter!("pocket_frontend_corrupt_replica_reads_total").increment(1);
            }
            ReplicaRead::Failed(e) => {
                failures.count += 1;
                tracing::warn!(osd_id = replica.osd_id, %key, error = %e, "replica read failed; trying the next");
                failures.last = e.to_string();
            }
        }
    }
    None
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
        // A full bucket is the normal end of a bucket, not a failure: it does
        // not use up an attempt. Only replica failures do; and the whole
        // search, waits for new buckets included, is bounded in time.
        let mut search = PlacementSearch::new(self.config.put_attempts, Instant::now());
        while search.goes_on(Instant::now()) {
            let (cell_id, buckets) = self.cell.writable(search.tried_any()).await?;
            let Some(bucket) = self.choose_bucket(search.untried(&buckets), data.len_bytes()).cloned() else {
                last = CellError::NoWritableBucket.to_string();
                // The coordinator replaces closed buckets within a tick; wait for it.
                tokio::time::sleep(NO_BUCKET_WAIT).await;
                continue;
            };
            search.trying(bucket.bucket_id);
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
                    let attempt = search.failed(&failure);
                    match &failure {
                        WriteFailure::Full { .. } => {
                            tracing::debug!(bucket_id = bucket.bucket_id, attempt, "bucket full; trying another");
                        }
                        WriteFailure::ReplicaFailed { .. } => {
                            tracing::warn!(bucket_id = bucket.bucket_id, attempt, %detail, "replica failed a PUT; trying another bucket");
                        }
                        WriteFailure::Busy { .. } => {
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

    /// A bucket for a blob of `len` bytes ([`choose_bucket`]); small blobs
    /// take turns a second each, from this process's start.
    fn choose_bucket<'a>(&self, candidates: Vec<&'a Bucket>, len: u64) -> Option<&'a Bucket> {
        let second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let turn = self.small_blob_turn.wrapping_add(second);
        choose_bucket(candidates, len, self.config.batch_record_max_bytes, turn, &mut rand::rng())
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
            result.map_err(|e| WriteFailure::from_osd_error(bucket.bucket_id, osd_id, e))?;
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
        let mut failures = ReadFailures { count: 0, last: String::from("no replica") };
        for refresh in [false, true] {
            let mut bucket = self.cell.locate(entry.bucket_id, refresh).await?;
            if let Some(shape) = bucket.ec {
                match self.get_erasure_coded(&bucket, shape, key, entry.length_bytes).await {
                    Ok(data) => return Ok(data),
                    Err(e) => {
                        failures.count += 1;
                        tracing::warn!(bucket_id = bucket.bucket_id, %key, error = %e, "erasure-coded read failed");
                        failures.last = e;
                        continue;
                    }
                }
            }
            bucket.replicas.shuffle(&mut rand::rng());
            let read = |replica| self.cell.read(replica, key, entry.length_bytes);
            if let Some(data) = first_intact(&bucket.replicas, key, read, &mut failures).await {
                return Ok(data);
            }
        }
        Err(GetError::Unreadable { failures: failures.count, last: failures.last })
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

/// Why [`ShardRanges`] could not read a shard.
#[derive(Debug, thiserror::Error)]
enum ShardRangeError {
    #[error("no such shard {shard}: the volume has {shards}")]
    NoSuchShard { shard: usize, shards: usize },
    #[error(transparent)]
    Osd(#[from] OsdError),
}

impl pocket_erasure::ShardReader for ShardRanges<'_> {
    type Error = ShardRangeError;

    async fn read(&self, shard: usize, offset: u64, len: usize) -> Result<Bytes, ShardRangeError> {
        let replica = self.shards.get(shard).ok_or(ShardRangeError::NoSuchShard { shard, shards: self.shards.len() })?;
        Ok(self.cell.read_range(replica, offset, len).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn bucket(bucket_id: BucketId) -> Bucket {
        Bucket { bucket_id, replicas: (1..=3).map(|osd_id| replica(osd_id, bucket_id)).collect(), ec: None }
    }

    fn replica(osd_id: OsdId, extent_id: u64) -> Replica {
        Replica { osd_id, grpc_addr: format!("osd-{osd_id}:1"), extent_id, position: 0, size_bytes: 0 }
    }

    /// OSDs 1, 2 and 3, each holding extent 9.
    fn three_replicas() -> Vec<Replica> {
        (1..=3).map(|osd_id| replica(osd_id, 9)).collect()
    }

    fn unavailable(osd_id: OsdId) -> OsdError {
        OsdError::Unavailable { osd_id, addr: format!("osd-{osd_id}:1"), message: "down".into() }
    }

    const BATCH_MAX: u64 = 256 << 10;

    #[test]
    fn small_blobs_in_one_second_all_go_to_the_same_bucket_and_the_next_second_to_the_next() {
        let buckets: Vec<Bucket> = [30, 10, 20].into_iter().map(bucket).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let turn = 7;
        for len in [1, 1000, BATCH_MAX] {
            for _ in 0..20 {
                let chosen = choose_bucket(buckets.iter().collect(), len, BATCH_MAX, turn, &mut rng).expect("a bucket");
                // In bucket id order [10, 20, 30], turn 7 is 7 % 3 = 1.
                assert_eq!(chosen.bucket_id, 20, "a {len}-byte blob");
            }
        }
        let by_turn: Vec<BucketId> = (turn..turn + 6)
            .map(|t| choose_bucket(buckets.iter().collect(), 1, BATCH_MAX, t, &mut rng).expect("a bucket").bucket_id)
            .collect();
        assert_eq!(by_turn, vec![20, 30, 10, 20, 30, 10], "every bucket gets its turn");
    }

    #[test]
    fn large_blobs_go_to_a_random_bucket() {
        let buckets: Vec<Bucket> = (1..=4).map(bucket).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let chosen = choose_bucket(buckets.iter().collect(), BATCH_MAX + 1, BATCH_MAX, 0, &mut rng).expect("a bucket");
            seen.insert(chosen.bucket_id);
        }
        assert_eq!(seen, (1..=4).collect(), "200 large blobs at a fixed turn reach every bucket");
    }

    #[test]
    fn with_batching_off_every_blob_goes_to_a_random_bucket() {
        let buckets: Vec<Bucket> = (1..=4).map(bucket).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let seen: std::collections::BTreeSet<BucketId> =
            (0..200).map(|_| choose_bucket(buckets.iter().collect(), 1, 0, 0, &mut rng).expect("a bucket").bucket_id).collect();
        assert_eq!(seen, (1..=4).collect());
    }

    #[test]
    fn no_candidate_means_no_bucket() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        assert!(choose_bucket(Vec::new(), 1, BATCH_MAX, 0, &mut rng).is_none());
        assert!(choose_bucket(Vec::new(), BATCH_MAX + 1, BATCH_MAX, 0, &mut rng).is_none());
    }

    #[test]
    fn osd_errors_become_full_busy_or_failed_replicas() {
        let full = WriteFailure::from_osd_error(5, 1, OsdError::Full { osd_id: 1 });
        assert_eq!(full, WriteFailure::Full { osd_id: 1, detail: "extent of bucket 5 is full".into() });
        let busy = WriteFailure::from_osd_error(5, 2, OsdError::Busy { osd_id: 2, message: "budget".into() });
        assert!(matches!(busy, WriteFailure::Busy { osd_id: 2, .. }), "{busy:?}");
        let failed = WriteFailure::from_osd_error(5, 3, unavailable(3));
        assert!(matches!(failed, WriteFailure::ReplicaFailed { osd_id: 3, .. }), "{failed:?}");
        assert_eq!(failed.detail(), unavailable(3).to_string());
        let wrong = WriteFailure::from_osd_error(5, 3, OsdError::WrongLength { osd_id: 3, got: 1, expected: 2 });
        assert!(matches!(wrong, WriteFailure::ReplicaFailed { .. }), "{wrong:?}");
    }

    #[test]
    fn full_buckets_do_not_use_up_attempts_and_failed_or_busy_replicas_do() {
        let started = Instant::now();
        let mut search = PlacementSearch::new(2, started);
        let full = WriteFailure::Full { osd_id: 1, detail: "full".into() };
        for bucket_id in 0..50 {
            assert!(search.goes_on(started), "full bucket {bucket_id} ended the search");
            search.trying(bucket_id);
            assert_eq!(search.failed(&full), 0);
        }
        search.trying(50);
        assert_eq!(search.failed(&WriteFailure::ReplicaFailed { osd_id: 1, detail: "down".into() }), 1);
        assert!(search.goes_on(started), "one of two attempts used");
        search.trying(51);
        assert_eq!(search.failed(&WriteFailure::Busy { osd_id: 1, detail: "busy".into() }), 2);
        assert!(!search.goes_on(started), "put_attempts = 2 used up");
    }

    #[test]
    fn the_search_for_a_bucket_ends_after_ten_seconds() {
        let started = Instant::now();
        let search = PlacementSearch::new(16, started);
        assert!(search.goes_on(started));
        assert!(search.goes_on(started + PUT_PLACEMENT_TIMEOUT - Duration::from_millis(1)));
        assert!(!search.goes_on(started + PUT_PLACEMENT_TIMEOUT));
        assert_eq!(PUT_PLACEMENT_TIMEOUT, Duration::from_secs(10));
    }

    #[test]
    fn a_tried_bucket_is_not_tried_again_and_the_list_is_then_refreshed() {
        let writable: Vec<Bucket> = (1..=3).map(bucket).collect();
        let mut search = PlacementSearch::new(3, Instant::now());
        assert!(!search.tried_any(), "the first try uses the cached list");
        assert_eq!(search.untried(&writable).len(), 3);
        search.trying(2);
        assert!(search.tried_any(), "a retry asks for a fresh list");
        let left: Vec<BucketId> = search.untried(&writable).iter().map(|b| b.bucket_id).collect();
        assert_eq!(left, vec![1, 3]);
        search.trying(1);
        search.trying(3);
        assert!(search.untried(&writable).is_empty(), "every bucket tried: wait for new ones");
    }

    #[tokio::test]
    async fn a_get_moves_past_failed_and_corrupt_replicas_to_an_intact_one() {
        let data = Bytes::from_static(b"the blob");
        let key = Key::of(&data);
        let replicas = three_replicas();
        let mut asked = Vec::new();
        let mut failures = ReadFailures { count: 0, last: String::new() };
        let read = |r: &Replica| {
            asked.push(r.osd_id);
            let answer = match r.osd_id {
                1 => Err(unavailable(1)),
                2 => Ok(Body::from(Bytes::from_static(b"other bytes"))),
                _ => Ok(Body::from(data.clone())),
            };
            std::future::ready(answer)
        };
        let got = first_intact(&replicas, &key, read, &mut failures).await.expect("the third replica is intact");
        assert_eq!(got.key(), key);
        assert_eq!(asked, vec![1, 2, 3]);
        assert_eq!(failures.count, 2);
        assert_eq!(failures.last, "OSD 2 returned bytes that do not hash to the key");
    }

    #[tokio::test]
    async fn a_get_stops_at_the_first_intact_replica() {
        let data = Bytes::from_static(b"the blob");
        let key = Key::of(&data);
        let replicas = three_replicas();
        let mut asked = Vec::new();
        let mut failures = ReadFailures { count: 0, last: String::from("no replica") };
        let read = |r: &Replica| {
            asked.push(r.osd_id);
            std::future::ready(Ok(Body::from(data.clone())))
        };
        assert!(first_intact(&replicas, &key, read, &mut failures).await.is_some());
        assert_eq!(asked, vec![1]);
        assert_eq!(failures.count, 0);
    }

    #[tokio::test]
    async fn failures_add_up_over_both_locations_when_no_replica_is_intact() {
        let key = Key::of(b"the blob");
        let replicas = three_replicas();
        let mut failures = ReadFailures { count: 0, last: String::from("no replica") };
        for _location in [false, true] {
            let read = |r: &Replica| std::future::ready(Err(unavailable(r.osd_id)));
            assert!(first_intact(&replicas, &key, read, &mut failures).await.is_none());
        }
        assert_eq!(failures.count, 6);
        assert_eq!(failures.last, unavailable(3).to_string());
    }

    #[test]
    fn a_replica_read_is_intact_only_when_its_bytes_hash_to_the_key() {
        let data = Bytes::from_static(b"the blob");
        let key = Key::of(&data);
        assert!(matches!(ReplicaRead::judge(&key, Ok(Body::from(data))), ReplicaRead::Intact(_)));
        assert!(matches!(ReplicaRead::judge(&key, Ok(Body::from(Bytes::from_static(b"the blob!")))), ReplicaRead::Corrupt));
        assert!(matches!(ReplicaRead::judge(&key, Err(unavailable(1))), ReplicaRead::Failed(_)));
    }

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
