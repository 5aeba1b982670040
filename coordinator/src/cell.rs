//! The coordinator's decisions: placement, the open-bucket pool and the
//! volume lifecycle, driven by a maintenance loop over the cell database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pocket_proto::{now_unix_ms, BucketId, OsdId};
use pocket_rpc_client::{OsdClient, OsdClients, OsdError};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokio::sync::Notify;

use crate::config::CoordinatorConfig;
use crate::db::{CellDb, DbError, DiskConflict, DiskReport, OsdRow, VolumeKind, VolumeRow, VolumeState};
use crate::health::{HealthClock, OsdHealth};
use crate::leadership::Leadership;
use crate::repair::RepairSummary;

/// The stored background rate meaning "no operator's rate" (`cell_meta`).
const AUTOMATIC: &str = "auto";

/// A replica (or shard) of a volume with the address of the OSD that holds it.
#[derive(Debug, Clone)]
pub struct PlacedExtent {
    pub osd_id: OsdId,
    pub grpc_addr: String,
    pub extent_id: u64,
    pub position: u32,
    pub size_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Placement {
    pub volume: VolumeRow,
    pub extents: Vec<PlacedExtent>,
    /// The bucket asked for (or the volume's only bucket) and its position in the volume.
    pub bucket_id: BucketId,
    pub bucket_position: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("unknown bucket {0}")]
    UnknownBucket(BucketId),
    #[error("{0}")]
    DiskConflict(String),
}

impl CellError {
    fn from_disks(error: DiskConflict) -> CellError {
        match error {
            DiskConflict::Db(e) => CellError::Db(e),
            conflict @ DiskConflict::OtherOsd { .. } => CellError::DiskConflict(conflict.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct Cell {
    inner: Arc<Inner>,
}

struct Inner {
    db: CellDb,
    config: CoordinatorConfig,
    rng: Mutex<StdRng>,
    /// The outbound calls to OSDs (lifecycle, and erasure coding's).
    osds: OsdClients,
    wake: Arc<Notify>,
    /// The coordinator's background budget (ADR 16): erasure coding runs under it.
    budget: pocket_worker::Budget,
    /// Unix ms at which this coordinator began watching heartbeats.
    watching_since_unix_ms: i64,
    /// What the last repair pass found, for `CellStatus`.
    repair_summary: Mutex<RepairSummary>,
    /// Leadership among the cell's coordinators (ADR 19).
    leadership: Leadership,
    /// Whether planning last found too few failure domains (to warn once).
    ec_blocked: std::sync::atomic::AtomicBool,
    /// Held while a copy gets a new name on an OSD that may hold an unnamed
    /// one of the same extent (repair claiming a target), and while
    /// reconciliation checks that a copy is unnamed and deletes it.
    naming: tokio::sync::Mutex<()>,
    /// What the last reconciliation pass found, for `CellStatus`.
    reconcile_summary: Mutex<crate::reconcile::ReconcileSummary>,
    /// Summaries last published in `cell_meta`: name → (JSON, when).
    published: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// The operator's background rate, which holds whatever the traffic
    /// (inner None: no limit); None: automatic, the configured rates by
    /// live traffic.
    operator_rate: Mutex<Option<Option<u64>>>,
    /// The live traffic over the cell at the last maintenance pass, bytes/s
    /// (None before the first: the cell counts as busy).
    live: Mutex<Option<u64>>,
}

impl Cell {
    pub fn new(db: CellDb, config: CoordinatorConfig, tls: pocket_transport::Tls, leadership: Leadership) -> Cell {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let background_bytes_per_sec = config.background.bytes_per_sec.filter(|rate| *rate > 0);
        Cell {
            inner: Arc::new(Inner {
                db,
                config,
                rng: Mutex::new(rng),
                osds: OsdClients::with_generation(tls, leadership.generation_handle()),
                wake: Arc::new(Notify::new()),
                budget: pocket_worker::Budget::new(pocket_worker::BudgetConfig {
                    bytes_per_sec: background_bytes_per_sec,
                    ..pocket_worker::BudgetConfig::default()
                }),
                watching_since_unix_ms: now_unix_ms(),
                repair_summary: Mutex::new(RepairSummary::default()),
                leadership,
                ec_blocked: std::sync::atomic::AtomicBool::new(false),
                naming: tokio::sync::Mutex::new(()),
                reconcile_summary: Mutex::new(crate::reconcile::ReconcileSummary::default()),
                published: Mutex::new(HashMap::new()),
                operator_rate: Mutex::new(None),
                live: Mutex::new(None),
            }),
        }
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.inner.config
    }

    pub fn db(&self) -> &CellDb {
        &self.inner.db
    }

    pub(crate) fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        self.inner.rng.lock().expect("rng lock poisoned")
    }

    pub fn leadership(&self) -> &Leadership {
        &self.inner.leadership
    }

    /// Records whether erasure coding is blocked; returns the previous value.
    pub(crate) fn ec_blocked(&self, blocked: bool) -> bool {
        self.inner.ec_blocked.swap(blocked, std::sync::atomic::Ordering::Relaxed)
    }


    /// Registers an OSD with every disk it has now: a disk it registered
    /// before and lacks now is lost. Refused, changing nothing, if one of
    /// its disks belongs to another OSD.
    pub async fn register(&self, osd: OsdRow, disks: &[DiskReport]) -> Result<(), CellError> {
        self.inner.db.record_disks(osd.osd_id, disks, true).await.map_err(CellError::from_disks)?;
        tracing::info!(osd_id = osd.osd_id, addr = %osd.grpc_addr, domain = %osd.failure_domain, disks = disks.len(), "OSD registered");
        self.inner.db.upsert_osd(&osd).await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    pub async fn heartbeat(
        &self,
        osd_id: OsdId,
        used_bytes: u64,
        capacity_bytes: u64,
        live_bytes_per_sec: u64,
        disks: &[DiskReport],
    ) -> Result<bool, CellError> {
        let known = self.inner.db.heartbeat(osd_id, used_bytes, capacity_bytes, live_bytes_per_sec).await?;
        if known {
            self.inner.db.record_disks(osd_id, disks, false).await.map_err(CellError::from_disks)?;
        }
        Ok(known)
    }

    /// The down and out thresholds, counted from when this coordinator began watching.
    pub(crate) fn health_clock(&self) -> HealthClock {
        HealthClock {
            down_after: Duration::from_millis(self.inner.config.osd_down_after_ms),
            out_after: Duration::from_millis(self.inner.config.osd_out_after_ms),
            watching_since_unix_ms: self.inner.watching_since_unix_ms,
        }
    }

    /// The health of each of `osds` now.
    pub(crate) fn health(&self, osds: &[OsdRow]) -> HashMap<OsdId, OsdHealth> {
        crate::health::classify(&self.health_clock(), osds, now_unix_ms()).into_iter().collect()
    }

    /// The OSDs that are up (not down, not out): the only ones that get new
    /// volumes, shards and repaired copies.
    pub(crate) fn alive(&self, osds: &[OsdRow]) -> HashMap<OsdId, OsdRow> {
        let clock = self.health_clock();
        let now = now_unix_ms();
        osds.iter()
            .filter(|osd| clock.health(osd, now) == OsdHealth::Up)
            .map(|osd| (osd.osd_id, osd.clone()))
            .collect()
    }

    pub async fn osd_health(&self) -> Result<Vec<(OsdRow, OsdHealth)>, CellError> {
        let osds = self.inner.db.list_osds().await?;
        let clock = self.health_clock();
        let now = now_unix_ms();
        Ok(osds.into_iter().map(|osd| {
            let health = clock.health(&osd, now);
            (osd, health)
        }).collect())
    }

    /// The naming lock (see [`crate::reconcile`]).
    pub(crate) async fn naming_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.naming.lock().await
    }

    /// Records what the last reconciliation pass found, in memory and in
    /// the cell database, where a standby's `CellStatus` reads it.
    pub(crate) async fn set_reconcile_summary(&self, summary: crate::reconcile::ReconcileSummary) {
        self.publish(crate::db::RECONCILE_SUMMARY, &summary).await;
        *self.inner.reconcile_summary.lock().expect("reconcile summary lock poisoned") = summary;
    }

    /// What the leader's last reconciliation pass found (a standby reads
    /// what the leader published).
    pub async fn reconcile_summary(&self) -> crate::reconcile::ReconcileSummary {
        if self.inner.leadership.leading().is_some() {
            return self.inner.reconcile_summary.lock().expect("reconcile summary lock poisoned").clone();
        }
        self.published(crate::db::RECONCILE_SUMMARY).await
    }

    /// Records what the last repair pass found, in memory and in the cell
    /// database, where a standby's `CellStatus` reads it.
    pub(crate) async fn set_repair_summary(&self, summary: RepairSummary) {
        self.publish(crate::db::REPAIR_SUMMARY, &summary).await;
        *self.inner.repair_summary.lock().expect("repair summary lock poisoned") = summary;
    }

    /// What the leader's last repair pass found (a standby reads what the
    /// leader published).
    pub async fn repair_summary(&self) -> RepairSummary {
        if self.inner.leadership.leading().is_some() {
            return self.inner.repair_summary.lock().expect("repair summary lock poisoned").clone();
        }
        self.published(crate::db::REPAIR_SUMMARY).await
    }

    /// Stores a leader's summary for standbys: when it changed, at most
    /// once a second, and every ten seconds regardless. A failure only costs
    /// standbys freshness.
    async fn publish(&self, name: &str, summary: &impl serde::Serialize) {
        let text = match serde_json::to_string(summary) {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(name, %error, "summary not serialisable");
                return;
            }
        };
        {
            let published = self.inner.published.lock().expect("published lock poisoned");
            if let Some((last, at)) = published.get(name) {
                let age = at.elapsed();
                let due = (*last != text && age >= Duration::from_secs(1)) || age >= Duration::from_secs(10);
                if !due {
                    return;
                }
            }
        }
        match self.inner.db.set_meta(name, &text).await {
            Ok(()) => {
                self.inner.published.lock().expect("published lock poisoned").insert(name.to_string(), (text, std::time::Instant::now()));
            }
            Err(error) => tracing::debug!(name, %error, "summary not published"),
        }
    }

    /// A summary the leader published, or an empty one.
    async fn published<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> T {
        match self.inner.db.meta(name).await {
            Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_default(),
            _ => T::default(),
        }
    }

    fn place(&self, volume: VolumeRow, bucket_id: BucketId, osds: &HashMap<OsdId, OsdRow>) -> Placement {
        let bucket_position = volume.buckets.iter().position(|b| *b == bucket_id).unwrap_or(0) as u32;
        let extents = volume
            .extents
            .iter()
            .map(|extent| PlacedExtent {
                osd_id: extent.osd_id,
                grpc_addr: osds.get(&extent.osd_id).map(|osd| osd.grpc_addr.clone()).unwrap_or_default(),
                extent_id: extent.extent_id,
                position: extent.position,
                size_bytes: extent.sealed_size_bytes,
            })
            .collect();
        Placement { volume, extents, bucket_id, bucket_position }
    }

    /// Open volumes whose replicas are all on alive OSDs.
    pub async fn writable_buckets(&self) -> Result<Vec<Placement>, CellError> {
        let osds = self.inner.db.list_osds().await?;
        let alive = self.alive(&osds);
        let open = self.inner.db.volumes_in_state(VolumeState::Open).await?;
        Ok(open
            .into_iter()
            .filter(|volume| volume.kind == VolumeKind::Replicated)
            .filter(|volume| volume.extents.iter().all(|extent| alive.contains_key(&extent.osd_id)))
            .map(|volume| {
                let bucket_id = volume.buckets.first().copied().unwrap_or(volume.volume_id);
                self.place(volume, bucket_id, &alive)
            })
            .collect())
    }

    pub async fn locate(&self, bucket_id: BucketId) -> Result<Placement, CellError> {
        let volume = self.inner.db.volume_of_bucket(bucket_id).await?.ok_or(CellError::UnknownBucket(bucket_id))?;
        let osds: HashMap<OsdId, OsdRow> =
            self.inner.db.list_osds().await?.into_iter().map(|osd| (osd.osd_id, osd)).collect();
        Ok(self.place(volume, bucket_id, &osds))
    }

    /// A frontend could not write to `bucket_id`: stop writes to its volume.
    pub async fn report_bucket(&self, bucket_id: BucketId, problem: &str) -> Result<(), CellError> {
        let volume = self.inner.db.volume_of_bucket(bucket_id).await?.ok_or(CellError::UnknownBucket(bucket_id))?;
        if self.inner.db.transition(volume.volume_id, VolumeState::Open, VolumeState::Closing).await? {
            tracing::info!(volume_id = volume.volume_id, bucket_id, problem, "closing volume on frontend report");
            metrics::counter!("pocket_coordinator_volumes_closed_total", "reason" => problem.to_string()).increment(1);
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// The client of OSD `osd_id` at `addr`; TLS refuses any other server.
    pub(crate) fn osd_client(&self, osd_id: OsdId, addr: &str) -> Result<OsdClient, OsdError> {
        self.inner.osds.osd(osd_id, addr)
    }

    fn open_buckets_target(&self, alive_count: usize) -> usize {
        match self.inner.config.open_buckets_target {
            0 => (alive_count / self.inner.config.replication_factor.max(1) as usize).max(2),
            n => n as usize,
        }
    }

    /// Applies the background byte rate an operator stored, if any (at start,
    /// and on each maintenance pass of the leader).
    pub async fn load_background_rate(&self) -> Result<(), CellError> {
        if let Some(value) = self.inner.db.meta(crate::db::BACKGROUND_BYTES_PER_SEC).await? {
            let stored = if value == AUTOMATIC { Some(None) } else { value.parse::<u64>().ok().map(|rate| Some(Some(rate).filter(|r| *r > 0))) };
            match stored {
                Some(rate) => {
                    let mut operator = self.inner.operator_rate.lock().expect("operator rate lock poisoned");
                    if *operator != rate {
                        *operator = rate;
                        tracing::info!(rate = ?rate, "background byte rate set by an operator (None: automatic)");
                    }
                }
                None => tracing::warn!(value, "ignoring an unreadable stored background byte rate"),
            }
        }
        self.apply_background_rate();
        Ok(())
    }

    /// Sets the operator's background byte rate now and for later starts
    /// (0: no limit); it holds whatever the traffic.
    pub async fn set_background_rate(&self, bytes_per_sec: u64) -> Result<(), CellError> {
        self.inner.db.set_meta(crate::db::BACKGROUND_BYTES_PER_SEC, &bytes_per_sec.to_string()).await?;
        *self.inner.operator_rate.lock().expect("operator rate lock poisoned") = Some(Some(bytes_per_sec).filter(|rate| *rate > 0));
        self.apply_background_rate();
        tracing::info!(bytes_per_sec, "background byte rate changed by an operator (0: no limit)");
        Ok(())
    }

    /// Back to the configured rates (paced under live traffic only), now
    /// and for later starts.
    pub async fn set_background_automatic(&self) -> Result<(), CellError> {
        self.inner.db.set_meta(crate::db::BACKGROUND_BYTES_PER_SEC, AUTOMATIC).await?;
        *self.inner.operator_rate.lock().expect("operator rate lock poisoned") = None;
        self.apply_background_rate();
        tracing::info!("background byte rate back to the configured ones, by live traffic");
        Ok(())
    }

    /// Whether no operator's rate holds (the configured ones apply).
    pub fn background_automatic(&self) -> bool {
        self.inner.operator_rate.lock().expect("operator rate lock poisoned").is_none()
    }

    /// The background rate while the cell has live traffic: the operator's,
    /// else the configured one (None: no limit).
    pub fn busy_background_rate(&self) -> Option<u64> {
        match *self.inner.operator_rate.lock().expect("operator rate lock poisoned") {
            Some(rate) => rate,
            None => self.inner.config.background.bytes_per_sec.filter(|rate| *rate > 0),
        }
    }

    /// The live traffic over the cell at the last maintenance pass (None: not known yet).
    pub fn live_bytes_per_sec(&self) -> Option<u64> {
        *self.inner.live.lock().expect("live lock poisoned")
    }

    /// Puts the budget at the operator's rate if one holds; else at the
    /// configured busy rate while the cell has live traffic (or it is not
    /// known yet), at the idle rate when it has none.
    fn apply_background_rate(&self) {
        let background = &self.inner.config.background;
        let idle = self.live_bytes_per_sec().is_some_and(|live| live < background.live_threshold_bytes_per_sec);
        let operator = *self.inner.operator_rate.lock().expect("operator rate lock poisoned");
        let rate = match operator {
            Some(rate) => rate,
            None if idle => background.idle_bytes_per_sec.filter(|rate| *rate > 0),
            None => background.bytes_per_sec.filter(|rate| *rate > 0),
        };
        if self.inner.budget.bytes_per_sec() != rate {
            self.inner.budget.set_bytes_per_sec(rate);
            tracing::debug!(idle, bytes_per_sec = rate.unwrap_or(0), "background byte rate in force (0: no limit)");
        }
    }

    /// Reads the live traffic the OSDs reported in their last beats.
    async fn observe_live_traffic(&self) -> Result<(), CellError> {
        let recent = now_unix_ms() - 3 * i64::try_from(self.inner.config.heartbeat_interval_ms).unwrap_or(i64::MAX / 4);
        let live = self.inner.db.live_bytes_per_sec(recent).await?;
        *self.inner.live.lock().expect("live lock poisoned") = Some(live);
        metrics::gauge!("pocket_coordinator_live_bytes_per_sec").set(live as f64);
        Ok(())
    }

    /// The coordinator's background budget (ADR 16).
    pub fn budget(&self) -> &pocket_worker::Budget {
        &self.inner.budget
    }

    /// One pass: finish creating volumes, close volumes with dead replicas,
    /// seal closing volumes, top up the pool of open buckets.
    pub async fn maintain(&self) -> Result<(), CellError> {
        let db = &self.inner.db;
        let osds = db.list_osds().await?;
        let alive = self.alive(&osds);
        metrics::gauge!("pocket_coordinator_osds_alive").set(alive.len() as f64);
        // Background work is paced while the cell has live traffic; an
        // operator may have changed the rate through another coordinator.
        self.observe_live_traffic().await?;
        self.load_background_rate().await?;
        metrics::gauge!("pocket_coordinator_osds_registered").set(osds.len() as f64);

        for volume in db.volumes_in_state(VolumeState::Creating).await? {
            self.finish_creating(volume, &alive).await?;
        }
        // Abandoned while being created: never writable, so their copies hold
        // nothing; once forgotten, reconciliation deletes them.
        let forgotten = db.forget_abandoned_replicas().await?;
        if forgotten > 0 {
            tracing::info!(copies = forgotten, "forgot the copies of volumes abandoned while being created");
        }
        let lost_disks = db.lost_disks().await?;
        // A copy on a failed or lost disk, or one its OSD no longer knows.
        let on_lost_disk = |extent: &crate::db::ExtentRow| {
            extent.disk.as_ref().is_some_and(|disk| disk == crate::db::MISSING_DISK || lost_disks.contains(disk))
        };
        for volume in db.volumes_in_state(VolumeState::Open).await? {
            if let Some(dead) = volume.extents.iter().find(|extent| !alive.contains_key(&extent.osd_id) || on_lost_disk(extent)) {
                if db.transition(volume.volume_id, VolumeState::Open, VolumeState::Closing).await? {
                    tracing::warn!(volume_id = volume.volume_id, osd_id = dead.osd_id, "closing volume: a replica's OSD is down or its disk failed");
                }
            }
        }
        let health = self.health(&osds);
        for volume in db.volumes_in_state(VolumeState::Closing).await? {
            // A replica on a failed or lost disk is lost, like one on an OSD that is out.
            let lost: Vec<OsdId> = volume.extents.iter().filter(|e| on_lost_disk(e)).map(|e| e.osd_id).collect();
            let mut view = health.clone();
            for osd_id in lost {
                view.insert(osd_id, OsdHealth::Out);
            }
            self.seal_volume(volume, &alive, &view).await?;
        }
        let open = db.volumes_in_state(VolumeState::Open).await?;
        let mut open_load: HashMap<OsdId, usize> = HashMap::new();
        for volume in &open {
            for extent in &volume.extents {
                *open_load.entry(extent.osd_id).or_default() += 1;
            }
        }
        let target = self.open_buckets_target(alive.len());
        for _ in open.len()..target {
            let chosen = {
                let mut rng = self.inner.rng.lock().expect("rng lock poisoned");
                choose_osds(&mut *rng, self.inner.config.replication_factor as usize, &alive, &open_load)
            };
            let Some(chosen) = chosen else {
                tracing::warn!(alive = alive.len(), "not enough failure domains alive to place a new volume");
                break;
            };
            for osd in &chosen {
                *open_load.entry(*osd).or_default() += 1;
            }
            let volume = db.create_replicated_volume(&chosen, self.inner.config.extent_size_bytes).await?;
            tracing::info!(volume_id = volume.volume_id, osds = ?chosen, "created volume");
            self.finish_creating(volume, &alive).await?;
        }
        for (kind, state, count) in db.volume_counts().await? {
            metrics::gauge!("pocket_coordinator_volumes", "kind" => kind.as_str(), "state" => state.as_str()).set(count as f64);
        }
        let totals = self.storage_totals().await?;
        metrics::gauge!("pocket_coordinator_sealed_stored_bytes").set(totals.stored_bytes as f64);
        metrics::gauge!("pocket_coordinator_sealed_logical_bytes").set(totals.logical_bytes as f64);
        if totals.logical_bytes > 0 {
            metrics::gauge!("pocket_coordinator_storage_overhead_ratio").set(totals.overhead());
        }
        Ok(())
    }

    async fn finish_creating(&self, volume: VolumeRow, alive: &HashMap<OsdId, OsdRow>) -> Result<(), CellError> {
        for extent in &volume.extents {
            let created = match alive.get(&extent.osd_id) {
                Some(osd) => match self.osd_client(osd.osd_id, &osd.grpc_addr) {
                    Ok(client) => {
                        let created = client.rpc_create(extent.extent_id, volume.extent_size_bytes).await;
                        if created.is_ok() {
                            metrics::counter!("pocket_coordinator_osd_mutations_total", "call" => "create").increment(1);
                        }
                        created.map_err(|error| error.to_string())
                    }
                    Err(error) => Err(error.to_string()),
                },
                None => Err("OSD is dead".to_string()),
            };
            if let Err(reason) = created {
                // Never writable, so it holds no data: give it up; its copies
                // are forgotten next pass and reconciliation deletes them.
                tracing::warn!(volume_id = volume.volume_id, osd_id = extent.osd_id, %reason, "abandoning new volume");
                self.inner.db.transition(volume.volume_id, VolumeState::Creating, VolumeState::Abandoned).await?;
                return Ok(());
            }
        }
        self.inner.db.transition(volume.volume_id, VolumeState::Creating, VolumeState::Open).await?;
        Ok(())
    }

    /// Seals every replica of a closing volume; closed once each replica
    /// is sealed or lost (on an OSD that is out: repair rebuilds it from a
    /// sealed one). A replica on an OSD that is only down is waited for.
    async fn seal_volume(
        &self,
        volume: VolumeRow,
        alive: &HashMap<OsdId, OsdRow>,
        health: &HashMap<OsdId, OsdHealth>,
    ) -> Result<(), CellError> {
        let mut all_sealed = true;
        let mut sealed = 0;
        for extent in &volume.extents {
            if health.get(&extent.osd_id).is_none_or(|h| *h == OsdHealth::Out) {
                continue;
            }
            let Some(osd) = alive.get(&extent.osd_id) else {
                all_sealed = false;
                continue;
            };
            let Ok(client) = self.osd_client(osd.osd_id, &osd.grpc_addr) else {
                all_sealed = false;
                continue;
            };
            match client.rpc_seal(extent.extent_id).await {
                Ok(size_bytes) => {
                    metrics::counter!("pocket_coordinator_osd_mutations_total", "call" => "seal").increment(1);
                    self.inner.db.record_sealed_size(extent.extent_id, extent.osd_id, size_bytes).await?;
                    sealed += 1;
                }
                Err(error) => {
                    tracing::warn!(volume_id = volume.volume_id, osd_id = extent.osd_id, %error, "seal failed; will retry");
                    all_sealed = false;
                }
            }
        }
        if sealed == 0 {
            if all_sealed {
                // Every replica is on an OSD that is out: nothing to seal or repair from.
                tracing::error!(volume_id = volume.volume_id, "every replica of a closing volume is lost");
            }
            return Ok(());
        }
        if all_sealed && self.inner.db.transition(volume.volume_id, VolumeState::Closing, VolumeState::Closed).await? {
            let lost = volume.extents.len() - sealed;
            tracing::info!(volume_id = volume.volume_id, lost_replicas = lost, "volume closed");
        }
        Ok(())
    }
}

/// Bytes of sealed data in the cell: what its extents take on disk, one
/// copy of each bucket (the logical size), and what the volumes' kinds imply.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StorageTotals {
    pub stored_bytes: u64,
    pub logical_bytes: u64,
    /// R copies of each closed (or encoding) replicated volume's longest
    /// replica; for an erasure-coded volume its data shards and m parity
    /// shards as long as its longest data shard. Retiring replicas imply
    /// nothing: they are on their way out.
    pub implied_bytes: u64,
}

impl StorageTotals {
    /// Bytes on disk per logical byte: R for replicated data, about (k+m)/k once erasure-coded.
    pub fn overhead(&self) -> f64 {
        self.stored_bytes as f64 / self.logical_bytes.max(1) as f64
    }
}

impl Cell {
    /// Sealed data only (closed, encoding, retiring, erasure-coded volumes):
    /// open volumes grow until they close and are counted then. A retiring
    /// volume's remaining replicas are stored bytes; its buckets are counted
    /// once, in their erasure-coded volume.
    pub async fn storage_totals(&self) -> Result<StorageTotals, CellError> {
        let states = [VolumeState::Closed, VolumeState::Encoding, VolumeState::Retiring, VolumeState::Ec];
        let extents = self.inner.db.stored_extents(&states).await?;
        let mut totals = StorageTotals::default();
        // Per replicated volume: its longest replica. Per erasure-coded
        // volume: (parity shards, longest data shard).
        let mut replicated_copy: HashMap<u64, u64> = HashMap::new();
        let mut ec_volumes: HashMap<u64, (u64, u64)> = HashMap::new();
        for extent in &extents {
            totals.stored_bytes += extent.sealed_size_bytes;
            match (extent.kind, extent.state) {
                (VolumeKind::Ec, _) => {
                    let volume = ec_volumes.entry(extent.volume_id).or_default();
                    volume.0 = u64::from(extent.parity_count);
                    if extent.position < extent.data_count {
                        totals.logical_bytes += extent.sealed_size_bytes;
                        totals.implied_bytes += extent.sealed_size_bytes;
                        volume.1 = volume.1.max(extent.sealed_size_bytes);
                    }
                }
                (VolumeKind::Replicated, VolumeState::Closed | VolumeState::Encoding) => {
                    let copy = replicated_copy.entry(extent.volume_id).or_default();
                    *copy = (*copy).max(extent.sealed_size_bytes);
                }
                _ => {}
            }
        }
        for (parity, longest) in ec_volumes.values() {
            totals.implied_bytes += parity * longest;
        }
        let replicas = u64::from(self.inner.config.replication_factor);
        totals.logical_bytes += replicated_copy.values().sum::<u64>();
        totals.implied_bytes += replicated_copy.values().map(|copy| copy * replicas).sum::<u64>();
        Ok(totals)
    }
}

/// Chooses `count` alive OSDs in distinct failure domains, preferring those
/// with the fewest open extents and then the least used space (in GiB steps);
/// ties are broken by `rng`, so a seeded RNG reproduces the choice.
pub fn choose_osds(
    rng: &mut impl rand::Rng,
    count: usize,
    alive: &HashMap<OsdId, OsdRow>,
    open_load: &HashMap<OsdId, usize>,
) -> Option<Vec<OsdId>> {
    let mut candidates: Vec<&OsdRow> = alive.values().collect();
    candidates.sort_by_key(|osd| osd.osd_id);
    candidates.shuffle(rng);
    candidates.sort_by_key(|osd| (open_load.get(&osd.osd_id).copied().unwrap_or(0), osd.used_bytes >> 30));
    let mut domains = HashSet::new();
    let mut chosen = Vec::with_capacity(count);
    for osd in candidates {
        if chosen.len() == count {
            break;
        }
        if domains.insert(osd.failure_domain.as_str()) {
            chosen.push(osd.osd_id);
        }
    }
    (chosen.len() == count).then_some(chosen)
}

/// The maintenance pass as a background job (ADR 16): every tick, and at
/// once when woken (an OSD registered, a bucket was reported).
pub struct MaintenanceJob {
    cell: Cell,
}

impl MaintenanceJob {
    pub fn new(cell: Cell) -> MaintenanceJob {
        MaintenanceJob { cell }
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(self.cell.inner.config.tick_interval_ms)
    }
}

impl pocket_worker::Job for MaintenanceJob {
    fn name(&self) -> &'static str {
        "maintenance"
    }

    async fn step(&mut self) -> Result<pocket_worker::Step, pocket_worker::JobError> {
        self.cell.maintain().await.map_err(pocket_worker::JobError::new)?;
        Ok(pocket_worker::Step::Idle(self.tick()))
    }

    /// A failed pass (the cell database) is retried after a tick, then
    /// less often, up to eight ticks apart.
    fn backoff(&self) -> pocket_worker::Backoff {
        pocket_worker::Backoff { initial: self.tick(), max: self.tick() * 8 }
    }

    fn wake(&self) -> Option<Arc<Notify>> {
        Some(self.cell.inner.wake.clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// OSDs 1..=n in the given failure domains.
    pub(crate) fn osds(domains: &[&str]) -> HashMap<OsdId, OsdRow> {
        domains
            .iter()
            .enumerate()
            .map(|(i, domain)| {
                let id = i as u64 + 1;
                let row = OsdRow {
                    osd_id: id,
                    grpc_addr: format!("127.0.0.1:{}", 7000 + id),
                    failure_domain: domain.to_string(),
                    capacity_bytes: 1 << 40,
                    used_bytes: 0,
                    last_heartbeat_unix_ms: 0,
                };
                (id, row)
            })
            .collect()
    }

    #[test]
    fn replicas_land_in_distinct_failure_domains() {
        let alive = osds(&["a", "a", "a", "b", "b", "b", "c", "c", "c"]);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let chosen = choose_osds(&mut rng, 3, &alive, &HashMap::new()).expect("three domains exist");
            let domains: HashSet<&str> = chosen.iter().map(|id| alive[id].failure_domain.as_str()).collect();
            assert_eq!(domains.len(), 3, "{chosen:?}");
        }
    }

    #[test]
    fn too_few_domains_places_nothing() {
        let alive = osds(&["a", "a", "b", "b"]);
        assert_eq!(choose_osds(&mut StdRng::seed_from_u64(1), 3, &alive, &HashMap::new()), None);
    }

    #[test]
    fn least_loaded_osds_are_preferred_and_a_seed_reproduces_the_choice() {
        let alive = osds(&["a", "b", "c", "d", "e", "f"]);
        let load: HashMap<OsdId, usize> = [(1, 5), (2, 5), (3, 5)].into_iter().collect();
        let chosen = choose_osds(&mut StdRng::seed_from_u64(3), 3, &alive, &load).expect("placed");
        let mut sorted = chosen.clone();
        sorted.sort();
        assert_eq!(sorted, vec![4, 5, 6]);
        let again = choose_osds(&mut StdRng::seed_from_u64(3), 3, &alive, &load).expect("placed");
        assert_eq!(chosen, again);
    }
}
