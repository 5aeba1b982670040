//! The stored copies of extents (table `extents`, one row per copy: extent
//! id and OSD): a copy's sealed size, whether a copy is live, forgetting a
//! deleted copy, and the copies behind the storage totals.
//!
//! Invariants: a copy an `extents` row names must never be deleted as
//! garbage. Rows are added only with their volume: by its creation
//! ([`CellDb::create_replicated_volume`]) and by the erasure-coded switch
//! ([`CellDb::switch_to_ec`]), which moves a reused replica's row rather
//! than adding a second one.

use pocket_proto::{ExtentId, OsdId, VolumeId};

use super::sql::{to_i64, Columns, DbError, SqlContext};
use super::volumes::{VolumeKind, VolumeState};
use super::CellDb;

/// One stored extent with the kind and state of its volume (for storage totals).
#[derive(Debug, Clone)]
pub struct StoredExtent {
    pub volume_id: VolumeId,
    pub kind: VolumeKind,
    pub state: VolumeState,
    pub data_count: u32,
    pub parity_count: u32,
    pub position: u32,
    pub sealed_size_bytes: u64,
}

/// A copy an `extents` row names, with what was recorded of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCopy {
    pub osd_id: OsdId,
    pub sealed_size_bytes: u64,
    /// Recorded for erasure-coded shards (at the switch, or backfilled).
    pub blake3: Option<[u8; 32]>,
}

impl CellDb {
    /// Records a copy's size once its OSD has sealed it.
    pub async fn record_sealed_size(&self, extent_id: ExtentId, osd_id: OsdId, size_bytes: u64) -> Result<(), DbError> {
        sqlx::query("UPDATE extents SET sealed_size_bytes = ? WHERE extent_id = ? AND osd_id = ?")
            .bind(to_i64(size_bytes))
            .bind(to_i64(extent_id))
            .bind(to_i64(osd_id))
            .execute(&self.pool)
            .await
            .ctx("record sealed size")?;
        Ok(())
    }

    /// Whether an `extents` row names this copy: a copy that is named must
    /// never be deleted as garbage.
    pub async fn extent_is_live(&self, extent_id: ExtentId, osd_id: OsdId) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM extents WHERE extent_id = ? AND osd_id = ?")
            .bind(to_i64(extent_id))
            .bind(to_i64(osd_id))
            .fetch_one(&self.pool)
            .await
            .ctx("check extent row")?;
        Ok(Columns::of(&row, "extents").u64("n")? > 0)
    }

    /// Whether anything still names this copy: an `extents` row, a repair
    /// writing it, or the layout of an erasure-coded volume being built
    /// (once switched, its shards are named by `extents` rows, which repair
    /// moves; its layout is history). Only a copy nothing names may be deleted as garbage.
    pub async fn copy_is_named(&self, extent_id: ExtentId, osd_id: OsdId) -> Result<bool, DbError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM extents WHERE extent_id = ? AND osd_id = ?) + (SELECT COUNT(*) FROM repairs WHERE extent_id = ? AND target_osd_id = ?) + (SELECT COUNT(*) FROM ec_layout l JOIN volumes v ON l.volume_id = v.volume_id WHERE l.extent_id = ? AND l.osd_id = ? AND v.state = 'building') AS n",
        )
        .bind(to_i64(extent_id))
        .bind(to_i64(osd_id))
        .bind(to_i64(extent_id))
        .bind(to_i64(osd_id))
        .bind(to_i64(extent_id))
        .bind(to_i64(osd_id))
        .fetch_one(&self.pool)
        .await
        .ctx("check copy names")?;
        Ok(Columns::of(&row, "extents").u64("n")? > 0)
    }

    /// Every copy on `osd_id` that something names, by the rules of
    /// [`CellDb::copy_is_named`]: what reconciliation must not delete.
    pub async fn named_copies_on(&self, osd_id: OsdId) -> Result<std::collections::HashSet<ExtentId>, DbError> {
        let rows = sqlx::query(
            "SELECT extent_id FROM extents WHERE osd_id = ? UNION SELECT extent_id FROM repairs WHERE target_osd_id = ? UNION SELECT l.extent_id FROM ec_layout l JOIN volumes v ON l.volume_id = v.volume_id WHERE l.osd_id = ? AND v.state = 'building'",
        )
        .bind(to_i64(osd_id))
        .bind(to_i64(osd_id))
        .bind(to_i64(osd_id))
        .fetch_all(&self.pool)
        .await
        .ctx("list named copies of an OSD")?;
        rows.iter().map(|row| Columns::of(row, "extents").u64("extent_id")).collect()
    }

    /// The copies of `extent_id` that `extents` rows name.
    pub async fn named_holders(&self, extent_id: ExtentId) -> Result<Vec<NamedCopy>, DbError> {
        let rows = sqlx::query("SELECT osd_id, sealed_size_bytes, blake3 FROM extents WHERE extent_id = ? ORDER BY osd_id")
            .bind(to_i64(extent_id))
            .fetch_all(&self.pool)
            .await
            .ctx("list holders of an extent")?;
        rows.iter()
            .map(|row| {
                let extent = Columns::of(row, "extents");
                Ok(NamedCopy {
                    osd_id: extent.u64("osd_id")?,
                    sealed_size_bytes: extent.u64("sealed_size_bytes")?,
                    blake3: extent.opt_blake3("blake3")?,
                })
            })
            .collect()
    }

    /// Forgets the copies of replicated volumes abandoned while being
    /// created (never writable, so they hold no data): reconciliation
    /// deletes them from their OSDs. Returns how many rows went.
    pub async fn forget_abandoned_replicas(&self) -> Result<u64, DbError> {
        let done = sqlx::query(
            "DELETE FROM extents WHERE volume_id IN (SELECT volume_id FROM volumes WHERE kind = 'replicated' AND state = 'abandoned')",
        )
        .execute(&self.pool)
        .await
        .ctx("forget copies of abandoned volumes")?;
        Ok(done.rows_affected())
    }

    /// Records the BLAKE3 of a copy (a shard verified by its OSD).
    pub async fn record_extent_hash(&self, extent_id: ExtentId, osd_id: OsdId, blake3: [u8; 32]) -> Result<(), DbError> {
        sqlx::query("UPDATE extents SET blake3 = ? WHERE extent_id = ? AND osd_id = ?")
            .bind(hex::encode(blake3))
            .bind(to_i64(extent_id))
            .bind(to_i64(osd_id))
            .execute(&self.pool)
            .await
            .ctx("record extent hash")?;
        Ok(())
    }

    /// Shards of erasure-coded volumes in service whose BLAKE3 is not
    /// recorded yet (switched before hashes were kept): (extent, OSD,
    /// size), at most `limit`.
    pub async fn shards_without_hash(&self, limit: u32) -> Result<Vec<(ExtentId, OsdId, u64)>, DbError> {
        let rows = sqlx::query(
            "SELECT e.extent_id, e.osd_id, e.sealed_size_bytes FROM extents e JOIN volumes v ON e.volume_id = v.volume_id WHERE v.kind = 'ec' AND v.state = 'ec' AND e.blake3 IS NULL ORDER BY e.extent_id LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("list shards without hash")?;
        rows.iter()
            .map(|row| {
                let extent = Columns::of(row, "extents");
                Ok((extent.u64("extent_id")?, extent.u64("osd_id")?, extent.u64("sealed_size_bytes")?))
            })
            .collect()
    }

    /// Forgets one copy of an extent of `volume_id` once the OSD deleted it.
    pub async fn delete_extent_row(&self, volume_id: VolumeId, extent_id: ExtentId, osd_id: OsdId) -> Result<(), DbError> {
        sqlx::query("DELETE FROM extents WHERE volume_id = ? AND extent_id = ? AND osd_id = ?")
            .bind(to_i64(volume_id))
            .bind(to_i64(extent_id))
            .bind(to_i64(osd_id))
            .execute(&self.pool)
            .await
            .ctx("delete extent row")?;
        Ok(())
    }

    /// Every stored extent of volumes in `states`, with its volume's kind.
    pub async fn stored_extents(&self, states: &[VolumeState]) -> Result<Vec<StoredExtent>, DbError> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; states.len()].join(", ");
        let sql = format!(
            "SELECT e.volume_id, e.position, e.sealed_size_bytes, v.kind, v.state, v.data_count, v.parity_count FROM extents e JOIN volumes v ON e.volume_id = v.volume_id WHERE v.state IN ({placeholders})"
        );
        let mut query = sqlx::query(&sql);
        for state in states {
            query = query.bind(state.as_str());
        }
        let rows = query.fetch_all(&self.pool).await.ctx("list stored extents")?;
        let mut out = Vec::new();
        for row in &rows {
            let (extent, volume) = (Columns::of(row, "extents"), Columns::of(row, "volumes"));
            let state = VolumeState::parse(&volume.string("state")?)?;
            if !states.contains(&state) {
                continue;
            }
            out.push(StoredExtent {
                volume_id: extent.u64("volume_id")?,
                kind: VolumeKind::parse(&volume.string("kind")?)?,
                state,
                data_count: volume.u32("data_count")?,
                parity_count: volume.u32("parity_count")?,
                position: extent.u32("position")?,
                sealed_size_bytes: extent.u64("sealed_size_bytes")?,
            });
        }
        Ok(out)
    }
}
