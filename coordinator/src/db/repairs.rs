//! Repairs in progress (table `repairs`, one row per lost copy being rebuilt,
//! ADR 18) and the switch that puts a verified new copy in a lost one's place.
//!
//! Invariants: a repair's target is recorded before any byte moves, so a
//! copy on a target is always named by a row of `extents` or `repairs` and
//! never mistaken for garbage while it is being written. The switch is one
//! transaction: the `extents` row of the lost copy moves to the target and
//! the `repairs` row goes, only while the volume is still in the state the
//! repair began in (`closed`, or `ec` for a shard): a volume claimed
//! meanwhile by erasure coding keeps its rows as they were.

use pocket_proto::{now_unix_ms, ExtentId, OsdId, VolumeId};

use super::sql::{to_i64, Columns, DbError, SqlContext};
use super::volumes::VolumeState;
use super::CellDb;

/// Longest error text kept with a repair.
const MAX_ERROR_LEN: usize = 255;

/// One repair in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairRow {
    pub extent_id: ExtentId,
    /// Where the lost copy was.
    pub lost_osd_id: OsdId,
    pub volume_id: VolumeId,
    /// Where the new copy is being written; none between targets.
    pub target_osd_id: Option<OsdId>,
    /// Failed attempts onto the current target.
    pub attempts: u32,
    pub created_unix_ms: i64,
    pub last_error: Option<String>,
}

impl CellDb {
    /// Every repair in progress, oldest first.
    pub async fn repairs(&self) -> Result<Vec<RepairRow>, DbError> {
        let rows = sqlx::query(
            "SELECT extent_id, lost_osd_id, volume_id, target_osd_id, attempts, created_unix_ms, last_error FROM repairs ORDER BY created_unix_ms, extent_id",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("list repairs")?;
        rows.iter()
            .map(|row| {
                let repair = Columns::of(row, "repairs");
                Ok(RepairRow {
                    extent_id: repair.u64("extent_id")?,
                    lost_osd_id: repair.u64("lost_osd_id")?,
                    volume_id: repair.u64("volume_id")?,
                    target_osd_id: repair.opt_u64("target_osd_id")?,
                    attempts: repair.u32("attempts")?,
                    created_unix_ms: repair.i64("created_unix_ms")?,
                    last_error: repair.opt_string("last_error")?,
                })
            })
            .collect()
    }

    /// Records that the lost copy of `extent_id` on `lost_osd_id` is being
    /// rebuilt on `target_osd_id`: a new row, or the target of a row that
    /// has none. A row that already has another target keeps it. Returns
    /// the target the row names.
    pub async fn claim_repair_target(
        &self,
        volume_id: VolumeId,
        extent_id: ExtentId,
        lost_osd_id: OsdId,
        target_osd_id: OsdId,
    ) -> Result<OsdId, DbError> {
        let now = now_unix_ms();
        let mut tx = self.pool.begin().await.ctx("begin claim repair")?;
        let updated = sqlx::query(
            "UPDATE repairs SET target_osd_id = ?, updated_unix_ms = ? WHERE extent_id = ? AND lost_osd_id = ? AND target_osd_id IS NULL",
        )
        .bind(to_i64(target_osd_id))
        .bind(now)
        .bind(to_i64(extent_id))
        .bind(to_i64(lost_osd_id))
        .execute(&mut *tx)
        .await
        .ctx("set repair target")?;
        if updated.rows_affected() == 0 {
            let existing = sqlx::query("SELECT target_osd_id FROM repairs WHERE extent_id = ? AND lost_osd_id = ?")
                .bind(to_i64(extent_id))
                .bind(to_i64(lost_osd_id))
                .fetch_optional(&mut *tx)
                .await
                .ctx("read repair")?;
            match existing {
                Some(row) => {
                    tx.rollback().await.ctx("roll back claim repair")?;
                    let target = Columns::of(&row, "repairs").opt_u64("target_osd_id")?;
                    return Ok(target.unwrap_or(target_osd_id));
                }
                None => {
                    sqlx::query(
                        "INSERT INTO repairs (extent_id, lost_osd_id, volume_id, target_osd_id, attempts, created_unix_ms, updated_unix_ms, last_error) VALUES (?, ?, ?, ?, 0, ?, ?, NULL)",
                    )
                    .bind(to_i64(extent_id))
                    .bind(to_i64(lost_osd_id))
                    .bind(to_i64(volume_id))
                    .bind(to_i64(target_osd_id))
                    .bind(now)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .ctx("insert repair")?;
                }
            }
        }
        tx.commit().await.ctx("commit claim repair")?;
        Ok(target_osd_id)
    }

    /// Counts a failed attempt. After `max_attempts` onto one target the
    /// target is released (the next attempt chooses another); returns the
    /// released target, whose partial copy the caller deletes.
    pub async fn repair_failed(
        &self,
        extent_id: ExtentId,
        lost_osd_id: OsdId,
        error: &str,
        max_attempts: u32,
    ) -> Result<Option<OsdId>, DbError> {
        let error: String = error.chars().take(MAX_ERROR_LEN).collect();
        let mut tx = self.pool.begin().await.ctx("begin repair failed")?;
        sqlx::query("UPDATE repairs SET attempts = attempts + 1, last_error = ?, updated_unix_ms = ? WHERE extent_id = ? AND lost_osd_id = ?")
            .bind(error)
            .bind(now_unix_ms())
            .bind(to_i64(extent_id))
            .bind(to_i64(lost_osd_id))
            .execute(&mut *tx)
            .await
            .ctx("count repair attempt")?;
        let row = sqlx::query("SELECT attempts, target_osd_id FROM repairs WHERE extent_id = ? AND lost_osd_id = ?")
            .bind(to_i64(extent_id))
            .bind(to_i64(lost_osd_id))
            .fetch_optional(&mut *tx)
            .await
            .ctx("read repair attempts")?;
        let mut released = None;
        if let Some(row) = row {
            let repair = Columns::of(&row, "repairs");
            if repair.u32("attempts")? >= max_attempts {
                released = repair.opt_u64("target_osd_id")?;
                sqlx::query("UPDATE repairs SET attempts = 0, target_osd_id = NULL WHERE extent_id = ? AND lost_osd_id = ?")
                    .bind(to_i64(extent_id))
                    .bind(to_i64(lost_osd_id))
                    .execute(&mut *tx)
                    .await
                    .ctx("release repair target")?;
            }
        }
        tx.commit().await.ctx("commit repair failed")?;
        Ok(released)
    }

    /// Forgets a repair that is no longer needed (its copy came back, or its
    /// volume left `closed`).
    pub async fn drop_repair(&self, extent_id: ExtentId, lost_osd_id: OsdId) -> Result<(), DbError> {
        sqlx::query("DELETE FROM repairs WHERE extent_id = ? AND lost_osd_id = ?")
            .bind(to_i64(extent_id))
            .bind(to_i64(lost_osd_id))
            .execute(&self.pool)
            .await
            .ctx("drop repair")?;
        Ok(())
    }

    /// The switch of a repaired copy, in one transaction: the `extents`
    /// row of the lost copy moves to `target_osd_id` with the verified size
    /// (and BLAKE3, when given), and the repair row goes. False (nothing
    /// changed) unless the volume is still in `state` (`closed` for a
    /// replica, `ec` for a shard), still names the lost copy, and the
    /// repair's leadership generation is still the current one.
    pub async fn switch_repaired_copy(&self, repaired: &RepairedCopy) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await.ctx("begin repair switch")?;
        // The subquery reads the volume's state under a lock on MariaDB
        // (an UPDATE's subquery is a locking read), so erasure coding's
        // claim of the volume and this switch are ordered.
        let moved = sqlx::query(
            "UPDATE extents SET osd_id = ?, sealed_size_bytes = ?, blake3 = COALESCE(?, blake3), disk = NULL WHERE extent_id = ? AND osd_id = ? AND volume_id = ? AND EXISTS (SELECT 1 FROM volumes WHERE volume_id = ? AND state = ?) AND (? = 0 OR EXISTS (SELECT 1 FROM leadership WHERE name = 'leader' AND generation = ?))",
        )
        .bind(to_i64(repaired.target_osd_id))
        .bind(to_i64(repaired.size_bytes))
        .bind(repaired.blake3.map(hex::encode))
        .bind(to_i64(repaired.extent_id))
        .bind(to_i64(repaired.lost_osd_id))
        .bind(to_i64(repaired.volume_id))
        .bind(to_i64(repaired.volume_id))
        .bind(repaired.state.as_str())
        .bind(to_i64(repaired.generation))
        .bind(to_i64(repaired.generation))
        .execute(&mut *tx)
        .await
        .ctx("move repaired extent")?;
        if moved.rows_affected() != 1 {
            tx.rollback().await.ctx("roll back repair switch")?;
            return Ok(false);
        }
        sqlx::query("DELETE FROM repairs WHERE extent_id = ? AND lost_osd_id = ?")
            .bind(to_i64(repaired.extent_id))
            .bind(to_i64(repaired.lost_osd_id))
            .execute(&mut *tx)
            .await
            .ctx("finish repair")?;
        tx.commit().await.ctx("commit repair switch")?;
        Ok(true)
    }
}

/// A verified new copy, ready to take a lost one's place.
#[derive(Debug, Clone)]
pub struct RepairedCopy {
    pub volume_id: VolumeId,
    /// The state the volume must still be in.
    pub state: VolumeState,
    pub extent_id: ExtentId,
    pub lost_osd_id: OsdId,
    pub target_osd_id: OsdId,
    pub size_bytes: u64,
    pub blake3: Option<[u8; 32]>,
    /// The leadership generation the repair ran under: the switch applies
    /// only if it is still the current one (0: not checked).
    pub generation: u64,
}
