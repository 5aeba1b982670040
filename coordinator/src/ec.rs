//! Erasure coding of closed volumes (ADR 0005): plan, encode, verify,
//! switch, retire — each step recorded in the cell database, each idempotent.
//!
//! 1. **Plan** (one transaction): k closed replicated volumes move to
//!    `encoding`; a new erasure-coded volume in `building` gets a layout of
//!    k + m OSDs in distinct failure domains. A data shard goes, when it can,
//!    to an OSD already holding a replica of its bucket (nothing to copy).
//! 2. **Encode**: every source replica is verified by its OSD (each record
//!    against its key); then the k sources are streamed stripe by stripe,
//!    parity computed ([`pocket_erasure::StripeEncoder`]), data shards copied
//!    and parity shards written; each target checks the BLAKE3 of what it got
//!    (a data copy must hash like its verified source) before it syncs and
//!    keeps it. Then every written shard is read back and verified by its OSD.
//! 3. **Switch** (one transaction): buckets move to the new volume, which
//!    becomes `ec`; the sources become `retiring`.
//! 4. **Retire**: the replicas of retiring volumes are deleted, one row at a
//!    time after the OSD confirmed; then the volume is `retired`.
//!
//! A crash anywhere leaves a `building` volume, which the next pass encodes
//! again from the start (targets answer "already present" for shards they
//! hold whole), or, after `max_attempts` failures, abandons: its sources go
//! back to `closed` and its shards are deleted as garbage — never a copy an
//! `extents` row names.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pocket_erasure::{Codec, StripeEncoder};
use pocket_proto::{ExtentId, OsdId, VolumeId};
use pocket_rpc_client::{ExtentKind, ExtentReader, ExtentWriter, OsdClient, OsdError, VerifiedExtent};
use rand::seq::SliceRandom;

use crate::cell::{Cell, CellError};
use crate::db::{EcVolume, OsdRow, PlannedData, VolumeKind, VolumeRow, VolumeState};
use crate::health::OsdHealth;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("OSD {0} is not alive")]
    OsdDead(OsdId),
    #[error("extent {extent_id}: {error}")]
    Osd { extent_id: ExtentId, error: OsdError },
    #[error("OSD {osd_id}, extent {extent_id}: {detail}")]
    Mismatch { osd_id: OsdId, extent_id: ExtentId, detail: String },
    #[error(transparent)]
    Erasure(#[from] pocket_erasure::ErasureError),
    #[error("layout of volume {0} is malformed")]
    BadLayout(VolumeId),
}

impl EncodeError {
    /// A failed call about `extent_id`.
    fn osd(extent_id: ExtentId) -> impl FnOnce(OsdError) -> EncodeError {
        move |error| EncodeError::Osd { extent_id, error }
    }
}

/// Shards whose BLAKE3 is recorded per pass for volumes switched before
/// hashes were kept.
const BACKFILL_PER_PASS: u32 = 8;

/// A replica of a closed volume that could become a data shard.
#[derive(Debug, Clone)]
pub struct SourceVolume {
    pub volume_id: VolumeId,
    pub bucket_id: u64,
    pub extent_id: ExtentId,
    /// (OSD, sealed size) of each replica.
    pub replicas: Vec<(OsdId, u64)>,
}

/// Chooses the layout of an erasure-coded volume over `sources` (k of them)
/// with `parity` parity shards: k + m alive OSDs in distinct failure
/// domains. A data shard stays on an OSD holding a replica of its bucket
/// when one is free; copies `excluded` (garbage of an abandoned attempt not
/// yet deleted) are never targets. Ties are broken by `rng`.
pub fn place_ec(
    rng: &mut impl rand::Rng,
    sources: &[SourceVolume],
    parity: usize,
    alive: &HashMap<OsdId, OsdRow>,
    excluded: &HashSet<(ExtentId, OsdId)>,
) -> Option<(Vec<PlannedData>, Vec<OsdId>)> {
    let mut used_domains: HashSet<&str> = HashSet::new();
    let mut used_osds: HashSet<OsdId> = HashSet::new();
    let mut planned: Vec<Option<PlannedData>> = vec![None; sources.len()];
    // Keep data in place where possible.
    for (i, source) in sources.iter().enumerate() {
        let mut replicas: Vec<&(OsdId, u64)> = source
            .replicas
            .iter()
            .filter(|(osd, _)| alive.contains_key(osd) && !excluded.contains(&(source.extent_id, *osd)))
            .collect();
        replicas.shuffle(rng);
        let chosen = replicas.into_iter().find(|(osd, _)| {
            !used_osds.contains(osd) && !used_domains.contains(alive[osd].failure_domain.as_str())
        });
        if let Some(&(osd, size)) = chosen {
            used_osds.insert(osd);
            used_domains.insert(alive[&osd].failure_domain.as_str());
            planned[i] = Some(PlannedData {
                volume_id: source.volume_id,
                bucket_id: source.bucket_id,
                extent_id: source.extent_id,
                size_bytes: size,
                target_osd_id: osd,
                source_osd_id: osd,
            });
        }
    }
    // The rest, least used first.
    let mut pool: Vec<&OsdRow> = alive.values().collect();
    pool.sort_by_key(|osd| osd.osd_id);
    pool.shuffle(rng);
    pool.sort_by_key(|osd| osd.used_bytes >> 30);
    let mut take = |extent: Option<ExtentId>, used_domains: &mut HashSet<&str>| -> Option<OsdId> {
        let osd = pool.iter().find(|osd| {
            !used_osds.contains(&osd.osd_id)
                && !used_domains.contains(osd.failure_domain.as_str())
                && extent.is_none_or(|e| !excluded.contains(&(e, osd.osd_id)))
        })?;
        used_osds.insert(osd.osd_id);
        Some(osd.osd_id)
    };
    for (i, source) in sources.iter().enumerate() {
        if planned[i].is_some() {
            continue;
        }
        let mut replicas: Vec<&(OsdId, u64)> = source.replicas.iter().filter(|(osd, _)| alive.contains_key(osd)).collect();
        replicas.shuffle(rng);
        let &(source_osd, size) = *replicas.first()?;
        let target = take(Some(source.extent_id), &mut used_domains)?;
        used_domains.insert(domain_of(alive, target));
        // An OSD holding a replica of this bucket is its own source.
        let source_osd_id = if source.replicas.iter().any(|(osd, _)| *osd == target) { target } else { source_osd };
        let size_bytes = source.replicas.iter().find(|(osd, _)| *osd == source_osd_id).map_or(size, |(_, s)| *s);
        planned[i] = Some(PlannedData {
            volume_id: source.volume_id,
            bucket_id: source.bucket_id,
            extent_id: source.extent_id,
            size_bytes,
            target_osd_id: target,
            source_osd_id,
        });
    }
    let mut parity_osds = Vec::with_capacity(parity);
    for _ in 0..parity {
        let osd = take(None, &mut used_domains)?;
        used_domains.insert(domain_of(alive, osd));
        parity_osds.push(osd);
    }
    Some((planned.into_iter().collect::<Option<Vec<_>>>()?, parity_osds))
}

fn domain_of(alive: &HashMap<OsdId, OsdRow>, osd: OsdId) -> &str {
    alive.get(&osd).map_or("", |row| row.failure_domain.as_str())
}

impl Cell {
    /// One pass: resume volumes being built, retire switched replicas,
    /// delete garbage of abandoned volumes, plan and build new volumes.
    pub async fn ec_pass(&self) -> Result<(), CellError> {
        let db = self.db().clone();
        let osds = db.list_osds().await?;
        let alive = self.alive(&osds);
        for volume in db.ec_volumes_in_state(VolumeState::Building).await? {
            self.build(volume, &alive).await?;
        }
        let health = self.health(&osds);
        for volume in db.volumes_in_state(VolumeState::Retiring).await? {
            self.retire(volume, &alive, &health).await?;
        }
        self.collect_abandoned(&alive, &health).await?;
        self.backfill_shard_hashes(&alive).await?;
        if self.config().erasure.enabled {
            while let Some(volume_id) = self.plan(&alive).await? {
                let Some(volume) = db.ec_volume(volume_id).await? else { break };
                if !self.build(volume, &alive).await? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Plans one erasure-coded volume if k closed volumes wait for one.
    async fn plan(&self, alive: &HashMap<OsdId, OsdRow>) -> Result<Option<VolumeId>, CellError> {
        let ec = &self.config().erasure;
        let (k, m) = (ec.data_shards as usize, ec.parity_shards as usize);
        let db = self.db();
        let closed: Vec<VolumeRow> = db
            .volumes_in_state(VolumeState::Closed)
            .await?
            .into_iter()
            .filter(|v| v.kind == VolumeKind::Replicated && v.buckets.len() == 1)
            .collect();
        if closed.len() < k {
            return Ok(None);
        }
        let excluded: HashSet<(ExtentId, OsdId)> =
            db.abandoned_layout().await?.into_iter().map(|(_, row)| (row.extent_id, row.osd_id)).collect();
        // A volume with a copy on an OSD that is not up waits: repair (or
        // the OSD's return) comes before encoding.
        let sources: Vec<SourceVolume> = closed
            .iter()
            .filter(|v| v.extents.iter().all(|e| alive.contains_key(&e.osd_id)))
            .take(k)
            .map(|v| SourceVolume {
                volume_id: v.volume_id,
                bucket_id: v.buckets[0],
                extent_id: v.extents[0].extent_id,
                replicas: v.extents.iter().map(|e| (e.osd_id, e.sealed_size_bytes)).collect(),
            })
            .collect();
        if sources.len() < k {
            return Ok(None);
        }
        let placed = {
            let mut rng = self.rng();
            place_ec(&mut *rng, &sources, m, alive, &excluded)
        };
        let Some((data, parity)) = placed else {
            // Once per episode, not every tick.
            if !self.ec_blocked(true) {
                tracing::warn!(k, m, alive = alive.len(), "closed volumes wait for erasure coding: too few failure domains alive");
            }
            return Ok(None);
        };
        if self.ec_blocked(false) {
            tracing::info!(k, m, alive = alive.len(), "enough failure domains again; erasure coding resumes");
        }
        // Under the naming lock: a data shard keeps its extent's id, and
        // reconciliation may be deleting an unnamed copy of it on the
        // target (ADR 20).
        let volume_id = {
            let _naming = self.naming_lock().await;
            db.plan_ec_volume(&data, &parity).await?
        };
        if let Some(id) = volume_id {
            tracing::info!(
                volume_id = id,
                sources = ?data.iter().map(|d| d.volume_id).collect::<Vec<_>>(),
                osds = ?data.iter().map(|d| d.target_osd_id).chain(parity.iter().copied()).collect::<Vec<_>>(),
                "planned erasure-coded volume"
            );
        }
        Ok(volume_id)
    }

    /// Encodes, verifies and switches `volume`; on failure counts an attempt
    /// and abandons the volume after too many. Returns whether it switched.
    async fn build(&self, volume: EcVolume, alive: &HashMap<OsdId, OsdRow>) -> Result<bool, CellError> {
        // One of the background budget's operations for the whole build.
        let _slot = self.budget().operation(pocket_worker::Class::ErasureCoding).await;
        let started = Instant::now();
        match self.encode(&volume, alive).await {
            Ok((encoded_bytes, hashes)) => {
                if self.db().switch_to_ec(&volume, &hashes).await? {
                    let seconds = started.elapsed().as_secs_f64();
                    tracing::info!(
                        volume_id = volume.volume_id,
                        data_bytes = encoded_bytes,
                        seconds,
                        data_mib_per_sec = encoded_bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9),
                        "volume erasure-coded and switched (verify, encode, write, read back)"
                    );
                    metrics::counter!("pocket_coordinator_ec_volumes_built_total").increment(1);
                    metrics::counter!("pocket_coordinator_ec_encoded_bytes_total").increment(encoded_bytes);
                    metrics::counter!("pocket_coordinator_ec_encode_seconds_total").increment(seconds.ceil() as u64);
                }
                Ok(true)
            }
            Err(e) => {
                let attempts = self.db().count_ec_attempt(volume.volume_id).await?;
                tracing::warn!(volume_id = volume.volume_id, attempts, error = %e, "erasure coding attempt failed");
                metrics::counter!("pocket_coordinator_ec_failed_attempts_total").increment(1);
                if attempts >= self.config().erasure.max_attempts && self.db().abandon_ec(&volume).await? {
                    tracing::warn!(volume_id = volume.volume_id, "abandoned erasure-coded volume; its sources stay replicated");
                }
                Ok(false)
            }
        }
    }

    fn client_of(&self, alive: &HashMap<OsdId, OsdRow>, osd_id: OsdId) -> Result<OsdClient, EncodeError> {
        let osd = alive.get(&osd_id).ok_or(EncodeError::OsdDead(osd_id))?;
        self.osd_client(osd_id, &osd.grpc_addr)
            .map(|client| client.for_purpose(pocket_rpc_client::Purpose::ErasureCoding))
            .map_err(|_| EncodeError::OsdDead(osd_id))
    }

    async fn verify(&self, alive: &HashMap<OsdId, OsdRow>, osd_id: OsdId, extent_id: ExtentId) -> Result<VerifiedExtent, EncodeError> {
        self.client_of(alive, osd_id)?.rpc_verify(extent_id).await.map_err(EncodeError::osd(extent_id))
    }

    /// Step 2 of the module docs. Returns the bytes of data encoded and
    /// the BLAKE3 of every shard, in position order.
    async fn encode(&self, volume: &EcVolume, alive: &HashMap<OsdId, OsdRow>) -> Result<(u64, Vec<[u8; 32]>), EncodeError> {
        let (k, m) = (volume.data_count as usize, volume.parity_count as usize);
        if volume.layout.len() != k + m || volume.layout.iter().enumerate().any(|(i, row)| row.position as usize != i) {
            return Err(EncodeError::BadLayout(volume.volume_id));
        }
        let (data_rows, parity_rows) = volume.layout.split_at(k);
        let phase = Instant::now();
        // Every source replica, checked record by record by its OSD.
        let verified = futures::future::join_all(data_rows.iter().map(|row| async move {
            let source = row.source_osd_id.ok_or(EncodeError::BadLayout(volume.volume_id))?;
            let info = self.verify(alive, source, row.extent_id).await?;
            if info.size_bytes != row.size_bytes {
                return Err(EncodeError::Mismatch {
                    osd_id: source,
                    extent_id: row.extent_id,
                    detail: format!("holds {} bytes, the plan says {}", info.size_bytes, row.size_bytes),
                });
            }
            Ok::<_, EncodeError>((source, info.blake3))
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;

        let verify_sources = phase.elapsed();
        let phase = Instant::now();
        let codec = Arc::new(Codec::new(k, m)?);
        let sizes: Vec<u64> = data_rows.iter().map(|row| row.size_bytes).collect();
        let mut encoder = StripeEncoder::new(codec, sizes, self.config().erasure.stripe_bytes as usize)?;
        let shard_len = encoder.shape().shard_len();
        let mut sources = Vec::with_capacity(k);
        for (row, (source, _)) in data_rows.iter().zip(&verified) {
            sources.push(self.client_of(alive, *source)?.extent_reader(row.extent_id, row.size_bytes));
        }
        // Data shards whose target is not their source are copied.
        let mut data_sinks: Vec<Option<ExtentWriter>> = Vec::with_capacity(k);
        for (row, (source, _)) in data_rows.iter().zip(&verified) {
            data_sinks.push(if row.osd_id == *source {
                None
            } else {
                let client = self.client_of(alive, row.osd_id)?;
                let writer = client.rpc_write_extent(row.extent_id, ExtentKind::Data, row.size_bytes).await;
                Some(writer.map_err(EncodeError::osd(row.extent_id))?)
            });
        }
        let mut parity_sinks = Vec::with_capacity(m);
        for row in parity_rows {
            let client = self.client_of(alive, row.osd_id)?;
            let writer = client.rpc_write_extent(row.extent_id, ExtentKind::Parity, shard_len).await;
            parity_sinks.push(writer.map_err(EncodeError::osd(row.extent_id))?);
        }
        while let Some(stripe) = encoder.next_stripe() {
            let shape = encoder.shape().clone();
            // The stripe's source bytes, read under the background byte rate.
            let stripe_bytes = (0..k).map(|i| shape.stored_len(i, stripe.offset, stripe.len) as u64).sum();
            self.budget().bytes(pocket_worker::Class::ErasureCoding, stripe_bytes).await;
            let pieces = futures::future::try_join_all(
                sources.iter_mut().enumerate().map(|(i, source)| take(source, shape.stored_len(i, stripe.offset, stripe.len))),
            )
            .await?;
            let parity = tokio::task::block_in_place(|| encoder.encode_next(&pieces))?;
            for (sink, piece) in data_sinks.iter_mut().zip(&pieces) {
                if let Some(sink) = sink {
                    sink.send(piece).await.map_err(EncodeError::osd(sink.extent_id()))?;
                }
            }
            for (sink, piece) in parity_sinks.iter_mut().zip(&parity) {
                sink.send(piece).await.map_err(EncodeError::osd(sink.extent_id()))?;
            }
        }
        let parity_hashes = encoder.finish().ok_or(EncodeError::BadLayout(volume.volume_id))?;
        let stream = phase.elapsed();
        let phase = Instant::now();
        // The bytes the parity was computed from are the bytes each source
        // verified: otherwise a shard kept in place would not match its parity.
        for (source, (osd_id, hash)) in sources.iter().zip(&verified) {
            if source.streamed_hash() != *hash {
                return Err(EncodeError::Mismatch {
                    osd_id: *osd_id,
                    extent_id: source.extent_id(),
                    detail: "streamed other bytes than it verified".into(),
                });
            }
        }
        let mut expected: Vec<(OsdId, ExtentId, u64, [u8; 32])> = Vec::new();
        let mut finishing = Vec::new();
        for ((sink, row), (_, hash)) in data_sinks.into_iter().zip(data_rows).zip(&verified) {
            if let Some(sink) = sink {
                finishing.push(finish(sink, *hash));
                expected.push((row.osd_id, row.extent_id, row.size_bytes, *hash));
            }
        }
        for ((sink, row), hash) in parity_sinks.into_iter().zip(parity_rows).zip(&parity_hashes) {
            finishing.push(finish(sink, *hash));
            expected.push((row.osd_id, row.extent_id, shard_len, *hash));
        }
        // All at once: each target syncs and checks its shard while the others do.
        futures::future::join_all(finishing).await.into_iter().collect::<Result<Vec<bool>, _>>()?;
        let finish = phase.elapsed();
        let phase = Instant::now();
        // Read back from disk by each target before the switch.
        let checks = futures::future::join_all(expected.iter().map(|&(osd_id, extent_id, size, hash)| async move {
            let info = self.verify(alive, osd_id, extent_id).await?;
            if info.size_bytes != size || info.blake3 != hash {
                return Err(EncodeError::Mismatch { osd_id, extent_id, detail: "reads back other bytes than were written".into() });
            }
            Ok(())
        }))
        .await;
        checks.into_iter().collect::<Result<Vec<()>, _>>()?;
        // Where an encoding's time goes (docs/benchmarks.md).
        tracing::info!(
            volume_id = volume.volume_id,
            verify_sources_ms = verify_sources.as_millis() as u64,
            stream_encode_ms = stream.as_millis() as u64,
            sync_and_check_ms = finish.as_millis() as u64,
            read_back_ms = phase.elapsed().as_millis() as u64,
            copied_shards = expected.len() - m,
            "encoding phases"
        );
        let hashes = verified.iter().map(|(_, hash)| *hash).chain(parity_hashes.iter().copied()).collect();
        Ok((data_rows.iter().map(|row| row.size_bytes).sum(), hashes))
    }

    /// Records the BLAKE3 of shards of volumes switched before hashes were
    /// kept, a few per pass, each verified by its OSD (under the budget's
    /// verification class).
    async fn backfill_shard_hashes(&self, alive: &HashMap<OsdId, OsdRow>) -> Result<(), CellError> {
        let missing = self.db().shards_without_hash(BACKFILL_PER_PASS).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let _slot = self.budget().operation(pocket_worker::Class::Verification).await;
        for (extent_id, osd_id, size) in missing {
            self.budget().bytes(pocket_worker::Class::Verification, size).await;
            match self.verify(alive, osd_id, extent_id).await {
                Ok(info) if info.size_bytes == size => {
                    self.db().record_extent_hash(extent_id, osd_id, info.blake3).await?;
                    tracing::info!(extent_id, osd_id, "shard hash recorded");
                }
                Ok(info) => tracing::warn!(extent_id, osd_id, size, found = info.size_bytes, "shard has another size than recorded; hash not recorded"),
                Err(error) => tracing::debug!(extent_id, osd_id, %error, "shard hash not recorded yet"),
            }
        }
        Ok(())
    }

    /// Deletes the replicas of a retiring volume; retired once none is left.
    /// A replica on an OSD that is out is only forgotten: nothing names it
    /// any more, so it is garbage if its OSD ever comes back.
    async fn retire(
        &self,
        volume: VolumeRow,
        alive: &HashMap<OsdId, OsdRow>,
        health: &HashMap<OsdId, OsdHealth>,
    ) -> Result<(), CellError> {
        let mut left = 0;
        for extent in &volume.extents {
            if health.get(&extent.osd_id).is_none_or(|h| *h == OsdHealth::Out) {
                tracing::info!(volume_id = volume.volume_id, osd_id = extent.osd_id, "retiring replica is on an OSD that is out; forgotten");
                self.db().delete_extent_row(volume.volume_id, extent.extent_id, extent.osd_id).await?;
                continue;
            }
            match self.delete_on_osd(alive, extent.osd_id, extent.extent_id).await {
                Ok(()) => self.db().delete_extent_row(volume.volume_id, extent.extent_id, extent.osd_id).await?,
                Err(e) => {
                    left += 1;
                    tracing::debug!(volume_id = volume.volume_id, error = %e, "replica not deleted yet");
                }
            }
        }
        if left == 0 && self.db().transition(volume.volume_id, VolumeState::Retiring, VolumeState::Retired).await? {
            tracing::info!(volume_id = volume.volume_id, "replicated volume retired");
        }
        Ok(())
    }

    /// Deletes the shards of abandoned erasure-coded volumes, except copies
    /// an `extents` row names (a replica reused in place).
    async fn collect_abandoned(&self, alive: &HashMap<OsdId, OsdRow>, health: &HashMap<OsdId, OsdHealth>) -> Result<(), CellError> {
        for (volume_id, row) in self.db().abandoned_layout().await? {
            let out = health.get(&row.osd_id).is_none_or(|h| *h == OsdHealth::Out);
            // Checked and deleted under the naming lock (ADR 20).
            let _naming = self.naming_lock().await;
            if out || self.db().copy_is_named(row.extent_id, row.osd_id).await? {
                self.db().delete_layout_row(volume_id, row.position).await?;
                continue;
            }
            match self.delete_on_osd(alive, row.osd_id, row.extent_id).await {
                Ok(()) => self.db().delete_layout_row(volume_id, row.position).await?,
                Err(e) => tracing::debug!(volume_id, error = %e, "abandoned shard not deleted yet"),
            }
        }
        Ok(())
    }

    async fn delete_on_osd(&self, alive: &HashMap<OsdId, OsdRow>, osd_id: OsdId, extent_id: ExtentId) -> Result<(), EncodeError> {
        self.client_of(alive, osd_id)?.rpc_delete(extent_id).await.map_err(EncodeError::osd(extent_id))?;
        Ok(())
    }
}

/// The next `len` bytes of a source extent.
async fn take(source: &mut ExtentReader, len: usize) -> Result<bytes::Bytes, EncodeError> {
    let extent_id = source.extent_id();
    source.take(len).await.map_err(EncodeError::osd(extent_id))
}

/// Ends a shard's write with the BLAKE3 of its bytes; whether the OSD held it already.
async fn finish(sink: ExtentWriter, blake3: [u8; 32]) -> Result<bool, EncodeError> {
    let extent_id = sink.extent_id();
    sink.finish(blake3).await.map_err(EncodeError::osd(extent_id))
}

/// Erasure coding as a background job (ADR 16): a pass every tick. A pass
/// may be stopped anywhere: every step it takes is recorded and resumable,
/// and a shard not yet acknowledged is discarded.
pub struct ErasureJob {
    cell: Cell,
}

impl ErasureJob {
    pub fn new(cell: Cell) -> ErasureJob {
        ErasureJob { cell }
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(self.cell.config().erasure.tick_interval_ms)
    }
}

impl pocket_worker::Job for ErasureJob {
    fn name(&self) -> &'static str {
        "erasure-coding"
    }

    async fn step(&mut self) -> Result<pocket_worker::Step, pocket_worker::JobError> {
        self.cell.ec_pass().await.map_err(pocket_worker::JobError::new)?;
        Ok(pocket_worker::Step::Idle(self.tick()))
    }

    fn backoff(&self) -> pocket_worker::Backoff {
        pocket_worker::Backoff { initial: self.tick(), max: self.tick() * 8 }
    }

    fn cancel_safe(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// OSDs 1..=n, each in a failure domain of its own.
    fn osds(n: u64) -> HashMap<OsdId, OsdRow> {
        let domains: Vec<String> = (1..=n).map(|id| format!("d{id}")).collect();
        crate::cell::tests::osds(&domains.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn sources(k: u64) -> Vec<SourceVolume> {
        (0..k)
            .map(|i| SourceVolume {
                volume_id: 100 + i,
                bucket_id: 100 + i,
                extent_id: 100 + i,
                replicas: vec![(1 + i % 9, 1000 + i), (1 + (i + 3) % 9, 1000 + i), (1 + (i + 6) % 9, 1000 + i)],
            })
            .collect()
    }

    #[test]
    fn shards_land_in_distinct_domains_and_data_stays_in_place_when_it_can() {
        let alive = osds(9);
        for seed in 0..50 {
            let (data, parity) = place_ec(&mut StdRng::seed_from_u64(seed), &sources(6), 3, &alive, &HashSet::new())
                .expect("nine domains hold 6+3");
            let all: HashSet<OsdId> = data.iter().map(|d| d.target_osd_id).chain(parity.iter().copied()).collect();
            assert_eq!(all.len(), 9, "seed {seed}: {data:?} {parity:?}");
            for d in &data {
                let holds_replica = sources(6).iter().find(|s| s.volume_id == d.volume_id).expect("source").replicas.iter().any(|(o, _)| *o == d.target_osd_id);
                assert_eq!(d.source_osd_id == d.target_osd_id, holds_replica, "{d:?}");
            }
            // With three replicas each over nine OSDs, most data never moves.
            assert!(data.iter().filter(|d| d.source_osd_id == d.target_osd_id).count() >= 3, "seed {seed}: {data:?}");
        }
    }

    #[test]
    fn too_few_domains_or_excluded_copies_are_respected() {
        assert!(place_ec(&mut StdRng::seed_from_u64(1), &sources(6), 3, &osds(8), &HashSet::new()).is_none());
        // Garbage copies of extent 100 on OSDs 1 (a replica) and 2: neither may be its target.
        let excluded: HashSet<(ExtentId, OsdId)> = [(100, 1), (100, 2)].into_iter().collect();
        for seed in 0..50 {
            let (data, _) = place_ec(&mut StdRng::seed_from_u64(seed), &sources(6), 3, &osds(9), &excluded).expect("placed");
            assert!(![1, 2].contains(&data[0].target_osd_id), "seed {seed}: {:?}", data[0]);
        }
    }
}
