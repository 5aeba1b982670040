//! Erasure-coded volumes and their layouts (table `ec_layout`, one row per
//! shard): planning one over closed replicated volumes, the switch of its
//! buckets onto it, giving it up.
//!
//! Invariants: each step is one transaction whose volume state changes are
//! compare-and-sets; if any volume is not in the expected state, nothing
//! changes. Planning claims the sources (closed → encoding) and writes the
//! whole layout at once; a layout is never edited afterwards. Only an
//! abandoned volume loses layout rows, each once its shard is deleted or is
//! found to be a copy an `extents` row still names. Data
//! positions 0..k-1 are the buckets' own extents (same id, same bytes),
//! parity positions k..k+m-1 fresh extents.

use pocket_proto::{now_unix_ms, BucketId, ExtentId, OsdId, VolumeId};

use super::sql::{to_i64, Columns, DbError, SqlContext};
use super::volumes::{set_states, VolumeKind, VolumeState};
use super::CellDb;

/// One shard of an erasure-coded volume's layout (`ec_layout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRow {
    pub position: u32,
    pub osd_id: OsdId,
    pub extent_id: ExtentId,
    /// Data positions: the bucket whose extent this is.
    pub bucket_id: Option<BucketId>,
    /// Data positions: the replicated volume the bucket comes from.
    pub source_volume_id: Option<VolumeId>,
    /// Data positions: the OSD whose replica is read (the target itself when it holds one).
    pub source_osd_id: Option<OsdId>,
    pub size_bytes: u64,
}

/// An erasure-coded volume with its layout.
#[derive(Debug, Clone)]
pub struct EcVolume {
    pub volume_id: VolumeId,
    pub state: VolumeState,
    pub data_count: u32,
    pub parity_count: u32,
    pub layout: Vec<LayoutRow>,
}

impl EcVolume {
    /// The replicated volumes this one is encoded from, in position order.
    pub fn source_volumes(&self) -> Vec<VolumeId> {
        self.layout.iter().filter_map(|row| row.source_volume_id).collect()
    }
}

/// One data position of a planned erasure-coded volume.
#[derive(Debug, Clone)]
pub struct PlannedData {
    /// The closed replicated volume, its bucket and extent.
    pub volume_id: VolumeId,
    pub bucket_id: BucketId,
    pub extent_id: ExtentId,
    /// Sealed size of the extent (the shard's length).
    pub size_bytes: u64,
    /// Where the data shard will live.
    pub target_osd_id: OsdId,
    /// Which replica is read: the target itself when it holds one.
    pub source_osd_id: OsdId,
}

impl CellDb {
    /// Plans an erasure-coded volume over `sources` (closed replicated
    /// volumes, one per data position, in order) and `parity_osds`: in one
    /// transaction the sources move closed → encoding, a new volume is
    /// created in state `building`, and its layout is written. None if a
    /// source was no longer closed (nothing changes then).
    pub async fn plan_ec_volume(&self, sources: &[PlannedData], parity_osds: &[OsdId]) -> Result<Option<VolumeId>, DbError> {
        let now = now_unix_ms();
        let k = sources.len() as u64;
        let m = parity_osds.len() as u64;
        let mut tx = self.pool.begin().await.ctx("begin plan ec volume")?;
        let claims: Vec<_> =
            sources.iter().map(|source| (source.volume_id, VolumeState::Closed, VolumeState::Encoding)).collect();
        if !set_states(&mut tx, &claims, "claim source volume").await? {
            tx.rollback().await.ctx("roll back plan")?;
            return Ok(None);
        }
        sqlx::query("UPDATE id_alloc SET next_id = next_id + ? WHERE name = 'ids'")
            .bind(to_i64(1 + m))
            .execute(&mut *tx)
            .await
            .ctx("allocate ids")?;
        let row = sqlx::query("SELECT next_id FROM id_alloc WHERE name = 'ids'").fetch_one(&mut *tx).await.ctx("read ids")?;
        let first = Columns::of(&row, "id_alloc").u64("next_id")? - (1 + m);
        let volume_id = first;
        let shard_len = sources.iter().map(|s| s.size_bytes).max().unwrap_or(0);
        sqlx::query(
            "INSERT INTO volumes (volume_id, kind, state, data_count, parity_count, extent_size_bytes, created_unix_ms, state_changed_unix_ms) VALUES (?, 'ec', ?, ?, ?, ?, ?, ?)",
        )
        .bind(to_i64(volume_id))
        .bind(VolumeState::Building.as_str())
        .bind(to_i64(k))
        .bind(to_i64(m))
        .bind(to_i64(shard_len))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .ctx("insert ec volume")?;
        let data_rows = sources.iter().enumerate().map(|(i, s)| LayoutRow {
            position: i as u32,
            osd_id: s.target_osd_id,
            extent_id: s.extent_id,
            bucket_id: Some(s.bucket_id),
            source_volume_id: Some(s.volume_id),
            source_osd_id: Some(s.source_osd_id),
            size_bytes: s.size_bytes,
        });
        let parity_rows = parity_osds.iter().enumerate().map(|(j, osd_id)| LayoutRow {
            position: (sources.len() + j) as u32,
            osd_id: *osd_id,
            extent_id: first + 1 + j as u64,
            bucket_id: None,
            source_volume_id: None,
            source_osd_id: None,
            size_bytes: shard_len,
        });
        for row in data_rows.chain(parity_rows) {
            sqlx::query(
                "INSERT INTO ec_layout (volume_id, position, osd_id, extent_id, bucket_id, source_volume_id, source_osd_id, size_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(to_i64(volume_id))
            .bind(i64::from(row.position))
            .bind(to_i64(row.osd_id))
            .bind(to_i64(row.extent_id))
            .bind(row.bucket_id.map(to_i64))
            .bind(row.source_volume_id.map(to_i64))
            .bind(row.source_osd_id.map(to_i64))
            .bind(to_i64(row.size_bytes))
            .execute(&mut *tx)
            .await
            .ctx("insert ec layout")?;
        }
        tx.commit().await.ctx("commit plan ec volume")?;
        Ok(Some(volume_id))
    }

    pub async fn ec_volume(&self, volume_id: VolumeId) -> Result<Option<EcVolume>, DbError> {
        let Some(volume) = self.volume(volume_id).await? else { return Ok(None) };
        if volume.kind != VolumeKind::Ec {
            return Ok(None);
        }
        let layout = self.layout(volume_id).await?;
        Ok(Some(EcVolume {
            volume_id,
            state: volume.state,
            data_count: volume.data_count,
            parity_count: volume.parity_count,
            layout,
        }))
    }

    async fn layout(&self, volume_id: VolumeId) -> Result<Vec<LayoutRow>, DbError> {
        sqlx::query(
            "SELECT position, osd_id, extent_id, bucket_id, source_volume_id, source_osd_id, size_bytes FROM ec_layout WHERE volume_id = ? ORDER BY position",
        )
        .bind(to_i64(volume_id))
        .fetch_all(&self.pool)
        .await
        .ctx("read ec layout")?
        .iter()
        .map(|row| {
            let shard = Columns::of(row, "ec_layout");
            Ok(LayoutRow {
                position: shard.u32("position")?,
                osd_id: shard.u64("osd_id")?,
                extent_id: shard.u64("extent_id")?,
                bucket_id: shard.opt_u64("bucket_id")?,
                source_volume_id: shard.opt_u64("source_volume_id")?,
                source_osd_id: shard.opt_u64("source_osd_id")?,
                size_bytes: shard.u64("size_bytes")?,
            })
        })
        .collect()
    }

    /// Every erasure-coded volume in `state`, with its layout.
    pub async fn ec_volumes_in_state(&self, state: VolumeState) -> Result<Vec<EcVolume>, DbError> {
        let rows = sqlx::query("SELECT volume_id FROM volumes WHERE state = ? AND kind = 'ec' ORDER BY volume_id")
            .bind(state.as_str())
            .fetch_all(&self.pool)
            .await
            .ctx("list ec volumes")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(volume) = self.ec_volume(Columns::of(&row, "volumes").u64("volume_id")?).await? {
                out.push(volume);
            }
        }
        Ok(out)
    }

    /// The switch, in one transaction: the erasure-coded volume building →
    /// ec, each source volume encoding → retiring, each bucket moved to its
    /// data position, and an `extents` row per shard (a replica that became
    /// a data shard keeps its row, moved to the new volume). False (and
    /// nothing changed) if any state was not as expected.
    pub async fn switch_to_ec(&self, volume: &EcVolume, hashes: &[[u8; 32]]) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await.ctx("begin switch")?;
        let mut changes = vec![(volume.volume_id, VolumeState::Building, VolumeState::Ec)];
        changes.extend(volume.source_volumes().into_iter().map(|id| (id, VolumeState::Encoding, VolumeState::Retiring)));
        if !set_states(&mut tx, &changes, "switch volume state").await? {
            tx.rollback().await.ctx("roll back switch")?;
            return Ok(false);
        }
        for (i, row) in volume.layout.iter().enumerate() {
            let blake3 = hashes.get(i).map(hex::encode);
            if let Some(bucket_id) = row.bucket_id {
                sqlx::query("UPDATE buckets SET volume_id = ?, position = ? WHERE bucket_id = ?")
                    .bind(to_i64(volume.volume_id))
                    .bind(i64::from(row.position))
                    .bind(to_i64(bucket_id))
                    .execute(&mut *tx)
                    .await
                    .ctx("move bucket")?;
            }
            let moved = sqlx::query(
                "UPDATE extents SET volume_id = ?, position = ?, sealed_size_bytes = ?, blake3 = ? WHERE extent_id = ? AND osd_id = ?",
            )
            .bind(to_i64(volume.volume_id))
            .bind(i64::from(row.position))
            .bind(to_i64(row.size_bytes))
            .bind(blake3.clone())
            .bind(to_i64(row.extent_id))
            .bind(to_i64(row.osd_id))
            .execute(&mut *tx)
            .await
            .ctx("move reused extent")?;
            if moved.rows_affected() == 0 {
                sqlx::query("INSERT INTO extents (extent_id, osd_id, volume_id, position, sealed_size_bytes, blake3) VALUES (?, ?, ?, ?, ?, ?)")
                    .bind(to_i64(row.extent_id))
                    .bind(to_i64(row.osd_id))
                    .bind(to_i64(volume.volume_id))
                    .bind(i64::from(row.position))
                    .bind(to_i64(row.size_bytes))
                    .bind(blake3)
                    .execute(&mut *tx)
                    .await
                    .ctx("insert ec extent")?;
            }
        }
        tx.commit().await.ctx("commit switch")?;
        Ok(true)
    }

    /// Gives up an erasure-coded volume before its switch: building →
    /// abandoned and its sources encoding → closed, in one transaction. Its
    /// layout rows stay, naming the shards to delete.
    pub async fn abandon_ec(&self, volume: &EcVolume) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await.ctx("begin abandon")?;
        let mut changes = vec![(volume.volume_id, VolumeState::Building, VolumeState::Abandoned)];
        changes.extend(volume.source_volumes().into_iter().map(|id| (id, VolumeState::Encoding, VolumeState::Closed)));
        if !set_states(&mut tx, &changes, "abandon volume state").await? {
            tx.rollback().await.ctx("roll back abandon")?;
            return Ok(false);
        }
        tx.commit().await.ctx("commit abandon")?;
        Ok(true)
    }

    /// Counts one more failed attempt to build `volume_id`; returns the count
    /// (kept in the database, so a new leader goes on counting).
    pub async fn count_ec_attempt(&self, volume_id: VolumeId) -> Result<u32, DbError> {
        let mut tx = self.pool.begin().await.ctx("begin count attempt")?;
        sqlx::query("UPDATE volumes SET ec_attempts = ec_attempts + 1 WHERE volume_id = ?")
            .bind(to_i64(volume_id))
            .execute(&mut *tx)
            .await
            .ctx("count attempt")?;
        let row = sqlx::query("SELECT ec_attempts FROM volumes WHERE volume_id = ?")
            .bind(to_i64(volume_id))
            .fetch_one(&mut *tx)
            .await
            .ctx("read attempts")?;
        let attempts = Columns::of(&row, "volumes").u32("ec_attempts")?;
        tx.commit().await.ctx("commit count attempt")?;
        Ok(attempts)
    }

    /// Layout rows of abandoned erasure-coded volumes: shards to delete.
    pub async fn abandoned_layout(&self) -> Result<Vec<(VolumeId, LayoutRow)>, DbError> {
        let mut out = Vec::new();
        for volume in self.ec_volumes_in_state(VolumeState::Abandoned).await? {
            out.extend(volume.layout.into_iter().map(|row| (volume.volume_id, row)));
        }
        Ok(out)
    }

    pub async fn delete_layout_row(&self, volume_id: VolumeId, position: u32) -> Result<(), DbError> {
        sqlx::query("DELETE FROM ec_layout WHERE volume_id = ? AND position = ?")
            .bind(to_i64(volume_id))
            .bind(i64::from(position))
            .execute(&self.pool)
            .await
            .ctx("delete layout row")?;
        Ok(())
    }
}
