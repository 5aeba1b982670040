//! Repair (ADR 18): every copy lost with an OSD that is *out* is rebuilt
//! elsewhere, most endangered volume first, and counts only once verified.
//!
//! Each pass surveys the cell database ([`survey`]): the redundancy left of
//! every volume, and the repair queue — the lost replicas of sealed
//! replicated volumes and the lost shards of erasure-coded ones — ordered by
//! risk (least tolerance left first: a volume one more failure away from
//! loss goes before one that can lose two). A repair:
//!
//! 1. records its target in `repairs` before any byte moves;
//! 2. streams the copy to the target under the background budget (class
//!    `Repair`, bytes/s shared with erasure coding): a replica from a
//!    healthy one its OSD verified first (every record's checksum and key);
//!    a shard rebuilt a stripe at a time from k others, each checked against
//!    its recorded BLAKE3, the result against the lost shard's;
//! 3. has the target check the BLAKE3 of what it got, keep it, and then
//!    verify it from disk;
//! 4. switches, in one transaction, the lost copy's `extents` row to the
//!    target ([`CellDb::switch_repaired_copy`]).
//!
//! Nothing is deleted on the way: the lost copy is on an OSD that is gone,
//! and a target's copy that did not switch is deleted only if nothing names
//! it. Repairs run in parallel, at most `max_in_flight` in the cell and
//! `max_per_osd` reading from or writing to one OSD.
//!
//! [`CellDb::switch_repaired_copy`]: crate::db::CellDb::switch_repaired_copy

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pocket_proto::{now_unix_ms, ExtentId, OsdId, VolumeId};
use pocket_rpc_client::{ExtentKind, OsdClient, OsdError, Purpose};
use rand::seq::SliceRandom;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::cell::{Cell, CellError};
use crate::db::{ExtentRow, OsdRow, RepairRow, RepairedCopy, VolumeKind, VolumeRow, VolumeState, MISSING_DISK};
use crate::health::{HealthClock, OsdHealth};

/// Copies per OSD whose disk is asked for per pass.
const DISK_ATTRIBUTION_BATCH: u32 = 1000;

/// One lost copy, waiting for repair: a replica of a sealed replicated
/// volume, or a shard of an erasure-coded one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairTask {
    pub volume_id: VolumeId,
    pub extent_id: ExtentId,
    pub lost_osd_id: OsdId,
    /// Copies of the volume not on an up OSD (this one included).
    pub missing: u32,
    /// How many more copies the volume can lose before data is lost
    /// (replicas up − 1, or shards up − k): the queue's first key.
    pub tolerance_left: i64,
    /// The lost copy's size.
    pub size_bytes: u64,
    /// Healthy copies on up OSDs: the sources (k of them for a shard).
    pub sources: Vec<OsdId>,
    /// Every OSD that holds a row of this volume's copies (never a target).
    pub holders: Vec<OsdId>,
    /// When the copy was lost (its OSD went out).
    pub lost_since_unix_ms: i64,
    /// Set for a shard of an erasure-coded volume.
    pub shard: Option<ShardTask>,
}

/// What rebuilding a shard needs to know of its volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardTask {
    pub position: u32,
    pub data_count: u32,
    pub parity_count: u32,
    /// Every shard of the volume, in position order.
    pub shards: Vec<ExtentRow>,
}

impl RepairTask {
    pub fn key(&self) -> (ExtentId, OsdId) {
        (self.extent_id, self.lost_osd_id)
    }
}

/// Logical extents and bytes with `missing` copies or shards not on an up OSD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Level {
    pub extents: u64,
    pub bytes: u64,
}

/// What one survey of the cell found.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    /// Missing copies (0 = full redundancy) → logical extents and bytes.
    /// An erasure-coded volume counts as its k data extents.
    pub levels: BTreeMap<u32, Level>,
    /// Lost copies to rebuild, most endangered first: least tolerance
    /// left, then most copies missing, then longest waiting.
    pub tasks: Vec<RepairTask>,
    /// Copies of closed volumes on up OSDs that were never sealed (their
    /// OSD was out when the volume closed, and came back): (extent, OSD).
    pub unsealed: Vec<(VolumeId, ExtentId, OsdId)>,
}

/// The survey of `volumes` (replicated volumes that hold data, and
/// erasure-coded volumes in service) against the OSDs' health.
///
/// A copy is lost when its OSD is out, or its disk failed or was lost
/// (`lost_disks`), or its OSD no longer knows it ([`MISSING_DISK`]).
pub fn survey(
    volumes: &[VolumeRow],
    osds: &[OsdRow],
    lost_disks: &HashSet<String>,
    clock: &HealthClock,
    now_unix_ms: i64,
) -> Survey {
    let rows: HashMap<OsdId, &OsdRow> = osds.iter().map(|osd| (osd.osd_id, osd)).collect();
    let health = |copy: &ExtentRow| {
        if copy.disk.as_deref().is_some_and(|disk| disk == MISSING_DISK || lost_disks.contains(disk)) {
            return OsdHealth::Out;
        }
        rows.get(&copy.osd_id).map_or(OsdHealth::Out, |osd| clock.health(osd, now_unix_ms))
    };
    let mut out = Survey::default();
    for volume in volumes {
        let missing = volume.extents.iter().filter(|e| health(e) != OsdHealth::Up).count() as u32;
        let (extents, bytes) = match volume.kind {
            VolumeKind::Replicated => (1, volume.extents.iter().map(|e| e.sealed_size_bytes).max().unwrap_or(0)),
            VolumeKind::Ec => (
                u64::from(volume.data_count),
                volume.extents.iter().filter(|e| e.position < volume.data_count).map(|e| e.sealed_size_bytes).sum(),
            ),
        };
        let level = out.levels.entry(missing).or_default();
        level.extents += extents;
        level.bytes += bytes;
        let repairable = matches!(
            (volume.kind, volume.state),
            (VolumeKind::Replicated, VolumeState::Closed) | (VolumeKind::Ec, VolumeState::Ec)
        );
        if !repairable {
            continue;
        }
        let sources: Vec<OsdId> = volume
            .extents
            .iter()
            .filter(|e| health(e) == OsdHealth::Up && e.sealed_size_bytes > 0)
            .map(|e| e.osd_id)
            .collect();
        let (tolerance_left, shard_of) = match volume.kind {
            VolumeKind::Replicated => (sources.len() as i64 - 1, None),
            VolumeKind::Ec => (sources.len() as i64 - i64::from(volume.data_count), Some(volume)),
        };
        let replica_size = volume
            .extents
            .iter()
            .filter(|e| sources.contains(&e.osd_id))
            .map(|e| e.sealed_size_bytes)
            .max()
            .unwrap_or(0);
        let holders: Vec<OsdId> = volume.extents.iter().map(|e| e.osd_id).collect();
        // A replica is copied from one of the longest sealed copies (copies
        // may differ by records of PUTs that failed; every acknowledged
        // record is in each).
        let sources: Vec<OsdId> = match volume.kind {
            VolumeKind::Replicated => volume
                .extents
                .iter()
                .filter(|e| sources.contains(&e.osd_id) && e.sealed_size_bytes == replica_size)
                .map(|e| e.osd_id)
                .collect(),
            VolumeKind::Ec => sources,
        };
        for extent in &volume.extents {
            match health(extent) {
                OsdHealth::Out => out.tasks.push(RepairTask {
                    volume_id: volume.volume_id,
                    extent_id: extent.extent_id,
                    lost_osd_id: extent.osd_id,
                    missing,
                    tolerance_left,
                    size_bytes: if shard_of.is_some() { extent.sealed_size_bytes } else { replica_size },
                    sources: sources.clone(),
                    holders: holders.clone(),
                    lost_since_unix_ms: rows.get(&extent.osd_id).map_or(0, |osd| clock.out_since_unix_ms(osd).min(now_unix_ms)),
                    shard: shard_of.map(|volume| ShardTask {
                        position: extent.position,
                        data_count: volume.data_count,
                        parity_count: volume.parity_count,
                        shards: volume.extents.clone(),
                    }),
                }),
                OsdHealth::Up if extent.sealed_size_bytes == 0 && shard_of.is_none() => {
                    out.unsealed.push((volume.volume_id, extent.extent_id, extent.osd_id));
                }
                _ => {}
            }
        }
    }
    out.tasks.sort_by_key(|task| {
        (task.tolerance_left, std::cmp::Reverse(task.missing), task.lost_since_unix_ms, task.volume_id, task.lost_osd_id)
    });
    out
}

/// Where a repaired copy goes: an up OSD that holds no copy of the extent,
/// outside the failure domains of the surviving copies, with fewer than
/// `max_per_osd` repairs under way; the least busy and then least used
/// first, ties broken by `rng`.
pub fn choose_target(
    rng: &mut impl rand::Rng,
    task: &RepairTask,
    up: &HashMap<OsdId, OsdRow>,
    busy: &HashMap<OsdId, usize>,
    max_per_osd: usize,
) -> Option<OsdId> {
    let taken: HashSet<&str> =
        task.sources.iter().filter_map(|osd| up.get(osd)).map(|osd| osd.failure_domain.as_str()).collect();
    let mut candidates: Vec<&OsdRow> = up
        .values()
        .filter(|osd| !task.holders.contains(&osd.osd_id))
        .filter(|osd| !taken.contains(osd.failure_domain.as_str()))
        .filter(|osd| busy.get(&osd.osd_id).copied().unwrap_or(0) < max_per_osd)
        .collect();
    candidates.sort_by_key(|osd| osd.osd_id);
    candidates.shuffle(rng);
    candidates.sort_by_key(|osd| (busy.get(&osd.osd_id).copied().unwrap_or(0), osd.used_bytes >> 30));
    candidates.first().map(|osd| osd.osd_id)
}

/// The repair queue and redundancy as `CellStatus` and `/metrics` show them.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct RepairSummary {
    /// Missing copies → logical extents and bytes at that level.
    pub levels: BTreeMap<u32, Level>,
    pub queue_extents: u64,
    pub queue_bytes: u64,
    pub in_flight: u64,
    /// How long the oldest lost copy has waited, in ms (0: none waits).
    pub oldest_wait_ms: u64,
    /// Bytes repaired per second, averaged over the last several seconds.
    pub bytes_per_sec: u64,
    /// Bytes copied by repairs since this coordinator started.
    pub repaired_bytes_total: u64,
    pub repaired_total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("OSD {0} is not up")]
    NotUp(OsdId),
    #[error("extent {extent_id} on OSD {osd_id}: {error}")]
    Osd { osd_id: OsdId, extent_id: ExtentId, error: OsdError },
    #[error("extent {extent_id} on OSD {osd_id}: {detail}")]
    Mismatch { osd_id: OsdId, extent_id: ExtentId, detail: String },
    #[error("layout of volume {0} is malformed")]
    BadLayout(VolumeId),
    #[error("this coordinator no longer leads the cell")]
    NotLeader,
    #[error(transparent)]
    Cell(#[from] CellError),
}

impl From<crate::db::DbError> for RepairError {
    fn from(error: crate::db::DbError) -> RepairError {
        RepairError::Cell(CellError::Db(error))
    }
}

/// How a repair ended.
enum Outcome {
    /// Switched: the new copy counts. Bytes copied.
    Repaired(u64),
    /// The volume left `closed` meanwhile (erasure coding claimed it): the
    /// new copy is not needed.
    Superseded,
}

/// One repair: the lost copy in `task` rebuilt from `source` on `target`.
async fn repair_replica(
    cell: Cell,
    task: RepairTask,
    source: (OsdId, String),
    target: (OsdId, String),
    meter: Arc<std::sync::atomic::AtomicU64>,
) -> Result<Outcome, RepairError> {
    let config = cell.config().repair.clone();
    let (extent_id, size) = (task.extent_id, task.size_bytes);
    let source_client = client(&cell, &source)?;
    let target_client = client(&cell, &target)?;
    let _slot = cell.budget().operation(pocket_worker::Class::Repair).await;
    let osd_error = |osd_id: OsdId| move |error: OsdError| RepairError::Osd { osd_id, extent_id, error };
    let verified = source_client.rpc_verify(extent_id).await.map_err(osd_error(source.0))?;
    if verified.size_bytes != size {
        return Err(RepairError::Mismatch {
            osd_id: source.0,
            extent_id,
            detail: format!("holds {} bytes, the cell database says {size}", verified.size_bytes),
        });
    }
    let mut writer =
        target_client.rpc_write_extent(extent_id, ExtentKind::Data, size).await.map_err(osd_error(target.0))?;
    let mut reader = source_client.extent_reader(extent_id, size);
    let mut left = size;
    while left > 0 {
        let n = left.min(config.chunk_bytes);
        cell.budget().bytes(pocket_worker::Class::Repair, n).await;
        let bytes = reader.take(n as usize).await.map_err(osd_error(source.0))?;
        writer.send(&bytes).await.map_err(osd_error(target.0))?;
        meter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("pocket_coordinator_repair_bytes_total").increment(n);
        left -= n;
    }
    if reader.streamed_hash() != verified.blake3 {
        return Err(RepairError::Mismatch { osd_id: source.0, extent_id, detail: "streamed other bytes than it verified".into() });
    }
    writer.finish(verified.blake3).await.map_err(osd_error(target.0))?;
    let check = target_client.rpc_verify(extent_id).await.map_err(osd_error(target.0))?;
    if check.size_bytes != size || check.blake3 != verified.blake3 {
        return Err(RepairError::Mismatch { osd_id: target.0, extent_id, detail: "reads back other bytes than were written".into() });
    }
    let repaired = RepairedCopy {
        volume_id: task.volume_id,
        state: VolumeState::Closed,
        extent_id,
        lost_osd_id: task.lost_osd_id,
        target_osd_id: target.0,
        size_bytes: size,
        blake3: None,
        generation: cell.leadership().leading().unwrap_or(u64::MAX),
    };
    switch(&cell, &repaired).await
}

async fn switch(cell: &Cell, repaired: &RepairedCopy) -> Result<Outcome, RepairError> {
    if cell.db().switch_repaired_copy(repaired).await? {
        Ok(Outcome::Repaired(repaired.size_bytes))
    } else {
        Ok(Outcome::Superseded)
    }
}

/// One repair of a shard: rebuilt a stripe at a time from the k shards in
/// `sources` (each read whole, and checked against its recorded BLAKE3
/// where there is one), written to `target`, checked against the lost
/// shard's recorded BLAKE3, then read back and verified by the target.
async fn repair_shard(
    cell: Cell,
    task: RepairTask,
    sources: Vec<(OsdId, String)>,
    target: (OsdId, String),
    meter: Arc<std::sync::atomic::AtomicU64>,
) -> Result<Outcome, RepairError> {
    let shard = task.shard.as_ref().ok_or(RepairError::BadLayout(task.volume_id))?;
    let (k, m) = (shard.data_count as usize, shard.parity_count as usize);
    let extent_id = task.extent_id;
    let want = shard.position as usize;
    if shard.shards.len() != k + m || shard.shards.iter().enumerate().any(|(i, row)| row.position as usize != i) || sources.len() != k {
        return Err(RepairError::BadLayout(task.volume_id));
    }
    let shape = pocket_erasure::VolumeShape {
        data_sizes: shard.shards[..k].iter().map(|row| row.sealed_size_bytes).collect(),
        parity: m,
    };
    if shape.size_of(want) != task.size_bytes {
        return Err(RepairError::BadLayout(task.volume_id));
    }
    let codec = pocket_erasure::Codec::new(k, m).map_err(|e| RepairError::Mismatch { osd_id: target.0, extent_id, detail: e.to_string() })?;
    let _slot = cell.budget().operation(pocket_worker::Class::Repair).await;
    let osd_error = |osd_id: OsdId, extent_id: ExtentId| move |error: OsdError| RepairError::Osd { osd_id, extent_id, error };
    // The readers, by position: the shard each source OSD holds.
    let mut readers: Vec<Option<(usize, pocket_rpc_client::ExtentReader)>> = (0..k + m).map(|_| None).collect();
    for source in &sources {
        let row = shard.shards.iter().find(|row| row.osd_id == source.0).ok_or(RepairError::BadLayout(task.volume_id))?;
        let position = row.position as usize;
        readers[position] = Some((position, client(&cell, source)?.extent_reader(row.extent_id, row.sealed_size_bytes)));
    }
    let kind = if want < k { ExtentKind::Data } else { ExtentKind::Parity };
    let target_client = client(&cell, &target)?;
    let mut writer = target_client.rpc_write_extent(extent_id, kind, task.size_bytes).await.map_err(osd_error(target.0, extent_id))?;
    let stripe_bytes = cell.config().erasure.stripe_bytes as usize;
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    while offset < shape.shard_len() {
        let len = stripe_bytes.min((shape.shard_len() - offset) as usize);
        let read: u64 = (0..k + m).filter(|p| readers[*p].is_some()).map(|p| shape.stored_len(p, offset, len) as u64).sum();
        cell.budget().bytes(pocket_worker::Class::Repair, read).await;
        let mut pieces: Vec<Option<bytes::Bytes>> = vec![None; k + m];
        for (position, reader) in readers.iter_mut().flatten() {
            let stored = shape.stored_len(*position, offset, len);
            let bytes = if stored == 0 {
                bytes::Bytes::new()
            } else {
                reader.take(stored).await.map_err(osd_error(reader.osd_id(), reader.extent_id()))?
            };
            pieces[*position] = Some(bytes);
        }
        let rebuilt = tokio::task::block_in_place(|| pocket_erasure::rebuild_range(&codec, &shape, want, offset, len, &pieces))
            .map_err(|e| RepairError::Mismatch { osd_id: target.0, extent_id, detail: e.to_string() })?;
        if !rebuilt.is_empty() {
            hasher.update(&rebuilt);
            writer.send(&rebuilt).await.map_err(osd_error(target.0, extent_id))?;
            meter.fetch_add(rebuilt.len() as u64, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("pocket_coordinator_repair_bytes_total").increment(rebuilt.len() as u64);
        }
        offset += len as u64;
    }
    // The sources gave the bytes they were recorded with.
    for (position, reader) in readers.iter().flatten() {
        if let Some(recorded) = shard.shards[*position].blake3 {
            if reader.streamed_hash() != recorded {
                return Err(RepairError::Mismatch {
                    osd_id: reader.osd_id(),
                    extent_id: reader.extent_id(),
                    detail: "a source shard is not the one recorded at the switch".into(),
                });
            }
        }
    }
    let hash = *hasher.finalize().as_bytes();
    if let Some(recorded) = shard.shards[want].blake3 {
        if hash != recorded {
            return Err(RepairError::Mismatch { osd_id: target.0, extent_id, detail: "the rebuilt shard is not the one recorded".into() });
        }
    }
    writer.finish(hash).await.map_err(osd_error(target.0, extent_id))?;
    let check = target_client.rpc_verify(extent_id).await.map_err(osd_error(target.0, extent_id))?;
    if check.size_bytes != task.size_bytes || check.blake3 != hash {
        return Err(RepairError::Mismatch { osd_id: target.0, extent_id, detail: "reads back other bytes than were written".into() });
    }
    let repaired = RepairedCopy {
        volume_id: task.volume_id,
        state: VolumeState::Ec,
        extent_id,
        lost_osd_id: task.lost_osd_id,
        target_osd_id: target.0,
        size_bytes: task.size_bytes,
        blake3: Some(hash),
        generation: cell.leadership().leading().unwrap_or(u64::MAX),
    };
    switch(&cell, &repaired).await
}

/// The client of a repair's source or target: its whole-extent calls are
/// paced by each OSD as repair (its `repair` budget class).
fn client(cell: &Cell, (osd_id, addr): &(OsdId, String)) -> Result<OsdClient, RepairError> {
    cell.osd_client(*osd_id, addr).map(|client| client.for_purpose(Purpose::Repair)).map_err(|_| RepairError::NotUp(*osd_id))
}

/// Deletes `extent_id` on `osd_id` unless something names that copy
/// ([`crate::db::CellDb::copy_is_named`]).
async fn delete_unnamed(cell: &Cell, up: &HashMap<OsdId, OsdRow>, extent_id: ExtentId, osd_id: OsdId) -> Result<(), RepairError> {
    // Checked and deleted under the naming lock (ADR 20).
    let _naming = cell.naming_lock().await;
    if cell.db().copy_is_named(extent_id, osd_id).await? {
        return Ok(());
    }
    let osd = up.get(&osd_id).ok_or(RepairError::NotUp(osd_id))?;
    let client = client(cell, &(osd_id, osd.grpc_addr.clone()))?;
    client.rpc_delete(extent_id).await.map_err(|error| RepairError::Osd { osd_id, extent_id, error })?;
    Ok(())
}

/// A repair under way: its sources and target (for the per-OSD bound).
struct Running {
    sources: Vec<OsdId>,
    target: OsdId,
    /// "shard" or "replica", for metrics.
    kind: &'static str,
}

/// Repair as a background job (ADR 16, class `Repair`): each step reaps the
/// repairs that ended, surveys the cell, and starts repairs up to the
/// bounds; while any runs it waits for one to end.
pub struct RepairJob {
    cell: Cell,
    running: JoinSet<((ExtentId, OsdId), Result<Outcome, RepairError>)>,
    in_flight: HashMap<(ExtentId, OsdId), Running>,
    /// Bytes copied since start, and the rate over recent steps.
    meter: Arc<std::sync::atomic::AtomicU64>,
    rate: RateMeter,
    repaired_total: u64,
    /// Warned that no target could be found (once per episode).
    blocked: bool,
    wake: Arc<Notify>,
}

impl RepairJob {
    pub fn new(cell: Cell) -> RepairJob {
        RepairJob {
            cell,
            running: JoinSet::new(),
            in_flight: HashMap::new(),
            meter: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            rate: RateMeter::new(Duration::from_secs(10)),
            repaired_total: 0,
            blocked: false,
            wake: Arc::new(Notify::new()),
        }
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(self.cell.config().repair.tick_interval_ms)
    }

    fn reap(&mut self, key: (ExtentId, OsdId), result: Result<Outcome, RepairError>, failures: &mut Vec<((ExtentId, OsdId), OsdId, String)>) {
        let Some(running) = self.in_flight.remove(&key) else { return };
        match result {
            Ok(Outcome::Repaired(bytes)) => {
                self.repaired_total += 1;
                metrics::counter!("pocket_coordinator_repairs_total", "kind" => running.kind, "outcome" => "repaired").increment(1);
                tracing::info!(extent_id = key.0, lost_osd_id = key.1, target_osd_id = running.target, bytes, "copy repaired and verified");
            }
            Ok(Outcome::Superseded) => {
                metrics::counter!("pocket_coordinator_repairs_total", "kind" => running.kind, "outcome" => "superseded").increment(1);
                tracing::info!(extent_id = key.0, lost_osd_id = key.1, "repair superseded: the volume left closed");
                failures.push((key, running.target, String::new()));
            }
            Err(error) => {
                metrics::counter!("pocket_coordinator_repairs_total", "kind" => running.kind, "outcome" => "failed").increment(1);
                tracing::warn!(extent_id = key.0, lost_osd_id = key.1, sources = ?running.sources, target = running.target, %error, "repair attempt failed");
                failures.push((key, running.target, error.to_string()));
            }
        }
    }

    /// Records repairs that ended without a switch: a superseded one is
    /// forgotten, a failed one counts an attempt; a target given up, or no
    /// longer needed, loses the copy it got (unless a row names it).
    async fn record_failures(
        &self,
        failures: Vec<((ExtentId, OsdId), OsdId, String)>,
        up: &HashMap<OsdId, OsdRow>,
    ) -> Result<(), CellError> {
        let db = self.cell.db();
        let max_attempts = self.cell.config().repair.max_attempts_per_target;
        for ((extent_id, lost), target, error) in failures {
            let stale_copy = if error.is_empty() {
                db.drop_repair(extent_id, lost).await?;
                Some(target)
            } else {
                let released = db.repair_failed(extent_id, lost, &error, max_attempts).await?;
                if let Some(released) = released {
                    tracing::warn!(extent_id, lost_osd_id = lost, target_osd_id = released, "repair target given up; another will be chosen");
                }
                released
            };
            if let Some(osd_id) = stale_copy {
                if let Err(error) = delete_unnamed(&self.cell, up, extent_id, osd_id).await {
                    tracing::debug!(extent_id, osd_id, %error, "copy of an unswitched repair not deleted");
                }
            }
        }
        Ok(())
    }

    /// Learns which disk holds each copy not yet attributed, a bounded
    /// batch per up OSD per pass (`Osd.ExtentStatus`): a copy on a disk
    /// that fails later is then known to be lost. A copy its OSD does not
    /// know at all is recorded as missing.
    async fn attribute_disks(&self, up: &HashMap<OsdId, OsdRow>) -> Result<(), CellError> {
        let db = self.cell.db();
        for osd in up.values() {
            let ids = db.copies_without_disk(osd.osd_id, DISK_ATTRIBUTION_BATCH).await?;
            if ids.is_empty() {
                continue;
            }
            let Ok(client) = self.cell.osd_client(osd.osd_id, &osd.grpc_addr) else { continue };
            match client.rpc_extent_status(&ids).await {
                Ok(statuses) => {
                    for status in statuses {
                        let disk = if status.disk.is_empty() && !status.found { MISSING_DISK.to_string() } else { status.disk };
                        if disk == MISSING_DISK {
                            tracing::warn!(extent_id = status.extent_id, osd_id = osd.osd_id, "the OSD does not hold a copy the cell database names: lost");
                        }
                        if !disk.is_empty() {
                            db.record_copy_disk(status.extent_id, osd.osd_id, &disk).await?;
                        }
                    }
                }
                Err(error) => tracing::debug!(osd_id = osd.osd_id, %error, "disk attribution failed; next pass"),
            }
        }
        Ok(())
    }

    async fn pass(&mut self) -> Result<pocket_worker::Step, CellError> {
        // Repairs that ended since the last step.
        let mut failures = Vec::new();
        while let Some(joined) = self.running.try_join_next() {
            if let Ok((key, result)) = joined {
                self.reap(key, result, &mut failures);
            }
        }
        let cell = self.cell.clone();
        let db = cell.db();
        let config = cell.config().repair.clone();
        let osds = db.list_osds().await?;
        let up = cell.alive(&osds);
        self.record_failures(failures, &up).await?;
        let clock = cell.health_clock();
        let now = now_unix_ms();
        let mut volumes = Vec::new();
        for state in [VolumeState::Open, VolumeState::Closing, VolumeState::Closed, VolumeState::Encoding] {
            volumes.extend(db.volumes_in_state(state).await?.into_iter().filter(|v| v.kind == VolumeKind::Replicated));
        }
        volumes.extend(db.volumes_in_state(VolumeState::Ec).await?);
        self.attribute_disks(&up).await?;
        let lost_disks = db.lost_disks().await?;
        let mut survey = survey(&volumes, &osds, &lost_disks, &clock, now);
        // Garbage of abandoned erasure-coding attempts is about to be
        // deleted: never a target for the same extent.
        let garbage: Vec<(ExtentId, OsdId)> =
            db.abandoned_layout().await?.into_iter().map(|(_, row)| (row.extent_id, row.osd_id)).collect();
        for task in &mut survey.tasks {
            task.holders.extend(garbage.iter().filter(|(extent, _)| *extent == task.extent_id).map(|(_, osd)| *osd));
        }

        // Copies that came back unsealed into a closed volume are sealed.
        for &(volume_id, extent_id, osd_id) in &survey.unsealed {
            if let Some(osd) = up.get(&osd_id) {
                match cell.osd_client(osd_id, &osd.grpc_addr) {
                    Ok(client) => match client.rpc_seal(extent_id).await {
                        Ok(size) => db.record_sealed_size(extent_id, osd_id, size).await?,
                        Err(error) => tracing::warn!(volume_id, extent_id, osd_id, %error, "sealing a returned copy failed"),
                    },
                    Err(error) => tracing::warn!(osd_id, %error, "no client for OSD"),
                }
            }
        }

        // Repairs no longer needed (the copy is back, or the volume moved on)
        // are forgotten; a target's copy that no row names is deleted.
        let wanted: HashSet<(ExtentId, OsdId)> = survey.tasks.iter().map(RepairTask::key).collect();
        let rows: Vec<RepairRow> = db.repairs().await?;
        let rows_by_key: HashMap<(ExtentId, OsdId), RepairRow> =
            rows.into_iter().map(|row| ((row.extent_id, row.lost_osd_id), row)).collect();
        for (key, row) in &rows_by_key {
            if wanted.contains(key) || self.in_flight.contains_key(key) {
                continue;
            }
            if let Some(target) = row.target_osd_id {
                if let Err(error) = delete_unnamed(&cell, &up, row.extent_id, target).await {
                    tracing::debug!(extent_id = row.extent_id, target, %error, "unneeded repair copy not deleted yet");
                    continue;
                }
            }
            db.drop_repair(row.extent_id, row.lost_osd_id).await?;
        }

        // Start repairs, most endangered first, within the bounds.
        let mut busy: HashMap<OsdId, usize> = HashMap::new();
        for running in self.in_flight.values() {
            for source in &running.sources {
                *busy.entry(*source).or_default() += 1;
            }
            *busy.entry(running.target).or_default() += 1;
        }
        let max_per_osd = config.max_per_osd as usize;
        let mut blocked = 0;
        if config.enabled {
            for task in &survey.tasks {
                if self.in_flight.len() >= config.max_in_flight as usize {
                    break;
                }
                if self.in_flight.contains_key(&task.key()) {
                    continue;
                }
                // One healthy replica, or k shards, the least busy first.
                let need = task.shard.as_ref().map_or(1, |shard| shard.data_count as usize);
                let mut sources: Vec<OsdId> = task
                    .sources
                    .iter()
                    .copied()
                    .filter(|osd| busy.get(osd).copied().unwrap_or(0) < max_per_osd)
                    .collect();
                sources.sort_by_key(|osd| busy.get(osd).copied().unwrap_or(0));
                sources.truncate(need);
                if sources.len() < need {
                    if task.sources.len() < need {
                        blocked += 1;
                        tracing::error!(
                            volume_id = task.volume_id,
                            extent_id = task.extent_id,
                            healthy = task.sources.len(),
                            needed = need,
                            "too few healthy copies left to repair from"
                        );
                    }
                    continue;
                }
                // Resume onto the target recorded before, if it can still take it.
                let recorded = rows_by_key.get(&task.key()).and_then(|row| row.target_osd_id).filter(|target| {
                    up.contains_key(target)
                        && !task.holders.contains(target)
                        && busy.get(target).copied().unwrap_or(0) < max_per_osd
                });
                let chosen = match recorded {
                    Some(target) => Some(target),
                    None => {
                        let mut rng = cell.rng();
                        choose_target(&mut *rng, task, &up, &busy, max_per_osd)
                    }
                };
                let Some(target) = chosen else {
                    blocked += 1;
                    continue;
                };
                // Under the naming lock: reconciliation may be deleting an
                // unnamed copy of this extent on the target (ADR 20).
                let target = {
                    let _naming = cell.naming_lock().await;
                    db.claim_repair_target(task.volume_id, task.extent_id, task.lost_osd_id, target).await?
                };
                let Some(target_row) = up.get(&target) else { continue };
                let Some(source_rows) = sources.iter().map(|osd| up.get(osd).map(|row| (*osd, row.grpc_addr.clone()))).collect::<Option<Vec<_>>>()
                else {
                    continue;
                };
                for source in &sources {
                    *busy.entry(*source).or_default() += 1;
                }
                *busy.entry(target).or_default() += 1;
                let kind = if task.shard.is_some() { "shard" } else { "replica" };
                self.in_flight.insert(task.key(), Running { sources: sources.clone(), target, kind });
                let (cell, task, meter) = (cell.clone(), task.clone(), self.meter.clone());
                let target = (target, target_row.grpc_addr.clone());
                tracing::info!(
                    volume_id = task.volume_id,
                    extent_id = task.extent_id,
                    lost_osd_id = task.lost_osd_id,
                    shard = ?task.shard.as_ref().map(|shard| shard.position),
                    missing = task.missing,
                    tolerance_left = task.tolerance_left,
                    sources = ?sources,
                    target = target.0,
                    bytes = task.size_bytes,
                    "repairing a lost copy"
                );
                let mut leadership = cell.leadership().subscribe();
                let generation = *leadership.borrow_and_update();
                self.running.spawn(async move {
                    let key = task.key();
                    let repair = async move {
                        if task.shard.is_some() {
                            repair_shard(cell, task, source_rows, target, meter).await
                        } else {
                            let source = source_rows.into_iter().next().expect("one source");
                            repair_replica(cell, task, source, target, meter).await
                        }
                    };
                    // A repair stops the moment this coordinator stops leading.
                    let result = tokio::select! {
                        result = repair => result,
                        _ = leadership.wait_for(|now| *now != generation) => Err(RepairError::NotLeader),
                    };
                    (key, result)
                });
            }
        }
        if blocked > 0 && !self.blocked {
            tracing::warn!(blocked, "lost copies wait: no healthy source or no target in a free failure domain");
        }
        self.blocked = blocked > 0;

        // What the pass found, for CellStatus and /metrics.
        let copied = self.meter.load(std::sync::atomic::Ordering::Relaxed);
        let summary = RepairSummary {
            levels: survey.levels.clone(),
            queue_extents: survey.tasks.len() as u64,
            queue_bytes: survey.tasks.iter().map(|task| task.size_bytes).sum(),
            in_flight: self.in_flight.len() as u64,
            oldest_wait_ms: survey.tasks.iter().map(|task| now.saturating_sub(task.lost_since_unix_ms).max(0) as u64).max().unwrap_or(0),
            bytes_per_sec: self.rate.observe(Instant::now(), copied),
            repaired_bytes_total: copied,
            repaired_total: self.repaired_total,
        };
        publish_metrics(&summary);
        cell.set_repair_summary(summary).await;

        if self.running.is_empty() {
            return Ok(pocket_worker::Step::Idle(self.tick()));
        }
        // Wait for a repair to end, or a tick (to refresh the figures).
        let tick = self.tick();
        tokio::select! {
            joined = self.running.join_next() => {
                if let Some(Ok((key, result))) = joined {
                    let mut failures = Vec::new();
                    self.reap(key, result, &mut failures);
                    self.record_failures(failures, &up).await?;
                }
            }
            () = tokio::time::sleep(tick) => {}
        }
        Ok(pocket_worker::Step::Busy)
    }
}

fn publish_metrics(summary: &RepairSummary) {
    for missing in 0..=3u32 {
        let level = summary.levels.get(&missing).copied().unwrap_or_default();
        let label = missing.to_string();
        metrics::gauge!("pocket_coordinator_redundancy_extents", "missing" => label.clone()).set(level.extents as f64);
        metrics::gauge!("pocket_coordinator_redundancy_bytes", "missing" => label).set(level.bytes as f64);
    }
    metrics::gauge!("pocket_coordinator_repair_queue_extents").set(summary.queue_extents as f64);
    metrics::gauge!("pocket_coordinator_repair_queue_bytes").set(summary.queue_bytes as f64);
    metrics::gauge!("pocket_coordinator_repairs_in_flight").set(summary.in_flight as f64);
    metrics::gauge!("pocket_coordinator_repair_oldest_wait_seconds").set(summary.oldest_wait_ms as f64 / 1000.0);
    metrics::gauge!("pocket_coordinator_repair_bytes_per_second").set(summary.bytes_per_sec as f64);
}

/// Bytes per second over a sliding window of observations.
struct RateMeter {
    window: Duration,
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl RateMeter {
    fn new(window: Duration) -> RateMeter {
        RateMeter { window, samples: std::collections::VecDeque::new() }
    }

    /// Records the running total at `now`; returns the rate over the window.
    fn observe(&mut self, now: Instant, total: u64) -> u64 {
        self.samples.push_back((now, total));
        while self.samples.len() > 2 && self.samples.front().is_some_and(|(at, _)| now.duration_since(*at) > self.window) {
            self.samples.pop_front();
        }
        let (first_at, first_total) = self.samples.front().copied().unwrap_or((now, total));
        let seconds = now.duration_since(first_at).as_secs_f64();
        if seconds < 0.5 {
            return 0;
        }
        (total.saturating_sub(first_total) as f64 / seconds) as u64
    }
}

impl pocket_worker::Job for RepairJob {
    fn name(&self) -> &'static str {
        "repair"
    }

    async fn step(&mut self) -> Result<pocket_worker::Step, pocket_worker::JobError> {
        self.pass().await.map_err(pocket_worker::JobError::new)
    }

    fn backoff(&self) -> pocket_worker::Backoff {
        pocket_worker::Backoff { initial: self.tick(), max: self.tick() * 8 }
    }

    /// Every effect is recorded (`repairs` rows, the switch), a copy not
    /// finished is discarded by its target, and one finished but not
    /// switched is found again by the next pass.
    fn cancel_safe(&self) -> bool {
        true
    }

    fn wake(&self) -> Option<Arc<Notify>> {
        Some(self.wake.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ExtentRow;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const NOW: i64 = 10_000_000;

    fn clock() -> HealthClock {
        HealthClock { down_after: Duration::from_secs(10), out_after: Duration::from_secs(60), watching_since_unix_ms: 0 }
    }

    /// OSDs 1..=n in domains d1..dn; those in `out` silent for 2 minutes,
    /// those in `down` for 30 s.
    fn osds(n: u64, out: &[u64], down: &[u64]) -> Vec<OsdRow> {
        (1..=n)
            .map(|id| OsdRow {
                osd_id: id,
                grpc_addr: format!("127.0.0.1:{}", 7000 + id),
                failure_domain: format!("d{id}"),
                capacity_bytes: 1 << 40,
                used_bytes: 0,
                last_heartbeat_unix_ms: if out.contains(&id) {
                    NOW - 120_000
                } else if down.contains(&id) {
                    NOW - 30_000
                } else {
                    NOW
                },
            })
            .collect()
    }

    fn replicated(volume_id: u64, state: VolumeState, on: &[u64]) -> VolumeRow {
        VolumeRow {
            volume_id,
            kind: VolumeKind::Replicated,
            state,
            data_count: 1,
            parity_count: 0,
            extent_size_bytes: 1 << 20,
            buckets: vec![volume_id],
            extents: on
                .iter()
                .map(|osd| ExtentRow { extent_id: volume_id, osd_id: *osd, position: 0, sealed_size_bytes: 1000, blake3: None, disk: None })
                .collect(),
        }
    }

    #[test]
    fn lost_copies_of_closed_volumes_are_queued_most_endangered_first() {
        let osds = osds(9, &[1, 2], &[3]);
        let volumes = vec![
            replicated(10, VolumeState::Closed, &[1, 4, 5]), // one lost
            replicated(11, VolumeState::Closed, &[1, 2, 6]), // two lost
            replicated(12, VolumeState::Closed, &[3, 7, 8]), // one down: waits, no task
            replicated(13, VolumeState::Open, &[2, 4, 5]),   // open: closes first, no task yet
            replicated(14, VolumeState::Closed, &[4, 5, 6]), // healthy
        ];
        let survey = survey(&volumes, &osds, &HashSet::new(), &clock(), NOW);
        let queued: Vec<(u64, u64, u32)> = survey.tasks.iter().map(|t| (t.volume_id, t.lost_osd_id, t.missing)).collect();
        assert_eq!(queued, vec![(11, 1, 2), (11, 2, 2), (10, 1, 1)]);
        assert_eq!(survey.tasks[0].sources, vec![6]);
        assert_eq!(survey.tasks[0].holders, vec![1, 2, 6]);
        // Levels: 14 at full; 10, 12, 13 one short; 11 two short.
        assert_eq!(survey.levels[&0].extents, 1);
        assert_eq!(survey.levels[&1].extents, 3);
        assert_eq!(survey.levels[&2].extents, 1);
        assert_eq!(survey.levels[&2].bytes, 1000);
    }

    #[test]
    fn a_shard_one_failure_from_loss_goes_before_a_replica_two_failures_from_loss() {
        let osds = osds(9, &[1], &[]);
        let mut ec = replicated(20, VolumeState::Ec, &[1, 2, 3]);
        ec.kind = VolumeKind::Ec;
        ec.data_count = 2;
        ec.parity_count = 1;
        for (i, extent) in ec.extents.iter_mut().enumerate() {
            extent.position = i as u32;
            extent.extent_id = 20 + i as u64;
        }
        let volumes = vec![replicated(10, VolumeState::Closed, &[1, 4, 5]), ec];
        let survey = survey(&volumes, &osds, &HashSet::new(), &clock(), NOW);
        let queued: Vec<(u64, i64)> = survey.tasks.iter().map(|t| (t.volume_id, t.tolerance_left)).collect();
        assert_eq!(queued, vec![(20, 0), (10, 1)]);
        let shard = survey.tasks[0].shard.as_ref().expect("a shard task");
        assert_eq!((shard.position, shard.data_count, shard.parity_count, shard.shards.len()), (0, 2, 1, 3));
        assert_eq!(survey.tasks[0].sources, vec![2, 3]);
        // An erasure-coded volume counts as its k data extents.
        assert_eq!(survey.levels[&1].extents, 3);
    }

    #[test]
    fn copies_on_a_lost_disk_or_missing_are_lost_while_their_osd_is_up() {
        let osds = osds(6, &[], &[]);
        let mut on_failed_disk = replicated(10, VolumeState::Closed, &[1, 2, 3]);
        on_failed_disk.extents[0].disk = Some("aa".into());
        on_failed_disk.extents[1].disk = Some("bb".into());
        let mut missing = replicated(11, VolumeState::Closed, &[4, 5, 6]);
        missing.extents[2].disk = Some(MISSING_DISK.into());
        let lost: HashSet<String> = ["aa".to_string()].into_iter().collect();
        let survey = survey(&[on_failed_disk, missing], &osds, &lost, &clock(), NOW);
        let queued: Vec<(u64, u64)> = survey.tasks.iter().map(|t| (t.volume_id, t.lost_osd_id)).collect();
        assert_eq!(queued, vec![(10, 1), (11, 6)]);
        assert_eq!(survey.tasks[0].sources, vec![2, 3]);
        // The OSD of a lost copy is never its target.
        assert!(survey.tasks[0].holders.contains(&1));
        assert_eq!(survey.levels[&1].extents, 2);
    }

    #[test]
    fn a_copy_that_came_back_unsealed_is_sealed_not_repaired() {
        let osds = osds(5, &[], &[]);
        let mut volume = replicated(10, VolumeState::Closed, &[1, 2, 3]);
        volume.extents[2].sealed_size_bytes = 0;
        let survey = survey(&[volume], &osds, &HashSet::new(), &clock(), NOW);
        assert!(survey.tasks.is_empty());
        assert_eq!(survey.unsealed, vec![(10, 10, 3)]);
        // A sealed copy of size 0 is not a source.
        let osds_out = self::osds(5, &[1], &[]);
        let mut volume = replicated(11, VolumeState::Closed, &[1, 2, 3]);
        volume.extents[2].sealed_size_bytes = 0;
        let survey = super::survey(&[volume], &osds_out, &HashSet::new(), &clock(), NOW);
        assert_eq!(survey.tasks[0].sources, vec![2]);
    }

    #[test]
    fn targets_avoid_holders_surviving_domains_and_busy_osds() {
        let rows = osds(6, &[1], &[]);
        let up: HashMap<OsdId, OsdRow> =
            rows.iter().filter(|o| o.osd_id != 1).map(|o| (o.osd_id, o.clone())).collect();
        let volumes = vec![replicated(10, VolumeState::Closed, &[1, 2, 3])];
        let task = survey(&volumes, &rows, &HashSet::new(), &clock(), NOW).tasks.remove(0);
        let busy: HashMap<OsdId, usize> = [(4, 2)].into_iter().collect();
        for seed in 0..50 {
            let target = choose_target(&mut StdRng::seed_from_u64(seed), &task, &up, &busy, 2).expect("5 and 6 are free");
            assert!([5, 6].contains(&target), "seed {seed}: {target}");
        }
        // A surviving copy's failure domain is never a target's.
        let mut same_domain = up.clone();
        for id in [5, 6] {
            same_domain.get_mut(&id).expect("osd").failure_domain = "d2".into();
        }
        assert_eq!(choose_target(&mut StdRng::seed_from_u64(1), &task, &same_domain, &busy, 2), None);
    }

    #[test]
    fn the_rate_meter_averages_over_its_window() {
        let mut meter = RateMeter::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(meter.observe(start, 0), 0);
        assert_eq!(meter.observe(start + Duration::from_secs(2), 200), 100);
        assert_eq!(meter.observe(start + Duration::from_secs(4), 400), 100);
        // Samples older than the window drop out.
        assert_eq!(meter.observe(start + Duration::from_secs(30), 400), 0);
    }
}
