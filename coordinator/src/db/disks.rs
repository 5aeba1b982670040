//! OSD disks (table `disks`) and which disk holds each copy
//! (`extents.disk`): a disk failed inside a live OSD, or wiped or replaced
//! while it was down, loses its copies while the OSD's other disks serve on.
//!
//! Invariants: a disk belongs to one OSD for good (a uuid reported by
//! another OSD is refused). A disk only goes from `ok` to `failed` or
//! `lost`, never back: once its copies were declared lost and repaired,
//! what it still holds is an extra copy, not a counted one.

use std::collections::HashSet;

use pocket_proto::{now_unix_ms, ExtentId, OsdId};

use super::sql::{to_i64, Columns, DbError, SqlContext};
use super::CellDb;

/// Longest reason kept with a disk state.
const MAX_REASON_LEN: usize = 255;
/// `extents.disk` of a copy its OSD no longer knows.
pub const MISSING_DISK: &str = "missing";

/// One disk as its OSD reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReport {
    pub uuid: String,
    pub failed: Option<String>,
}

/// Why a report of disks was refused.
#[derive(Debug, thiserror::Error)]
pub enum DiskConflict {
    #[error("disk {uuid} belongs to OSD {owner}")]
    OtherOsd { uuid: String, owner: OsdId },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl CellDb {
    /// Records `osd_id`'s disks as reported. With `complete` (a
    /// registration: every disk the OSD has), a disk of this OSD that is not
    /// reported is lost. Refused, changing nothing, if a disk belongs to
    /// another OSD.
    pub async fn record_disks(&self, osd_id: OsdId, reported: &[DiskReport], complete: bool) -> Result<(), DiskConflict> {
        let now = now_unix_ms();
        let mut tx = self.pool.begin().await.ctx("begin record disks")?;
        // The OSD's row first: it serialises reports of one OSD.
        sqlx::query("UPDATE osds SET osd_id = osd_id WHERE osd_id = ?")
            .bind(to_i64(osd_id))
            .execute(&mut *tx)
            .await
            .ctx("lock osd")?;
        for disk in reported {
            let row = sqlx::query("SELECT osd_id, state FROM disks WHERE disk_uuid = ?")
                .bind(disk.uuid.clone())
                .fetch_optional(&mut *tx)
                .await
                .ctx("read disk")?;
            match row {
                Some(row) => {
                    let columns = Columns::of(&row, "disks");
                    let owner = columns.u64("osd_id")?;
                    if owner != osd_id {
                        tx.rollback().await.ctx("roll back record disks")?;
                        return Err(DiskConflict::OtherOsd { uuid: disk.uuid.clone(), owner });
                    }
                    if let Some(reason) = &disk.failed {
                        if columns.string("state")? == "ok" {
                            sqlx::query("UPDATE disks SET state = 'failed', reason = ?, changed_unix_ms = ? WHERE disk_uuid = ? AND state = 'ok'")
                                .bind(reason.chars().take(MAX_REASON_LEN).collect::<String>())
                                .bind(now)
                                .bind(disk.uuid.clone())
                                .execute(&mut *tx)
                                .await
                                .ctx("fail disk")?;
                        }
                    }
                }
                None => {
                    let (state, reason) = match &disk.failed {
                        Some(reason) => ("failed", reason.chars().take(MAX_REASON_LEN).collect::<String>()),
                        None => ("ok", String::new()),
                    };
                    sqlx::query("INSERT INTO disks (disk_uuid, osd_id, state, reason, changed_unix_ms) VALUES (?, ?, ?, ?, ?)")
                        .bind(disk.uuid.clone())
                        .bind(to_i64(osd_id))
                        .bind(state)
                        .bind(reason)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .ctx("insert disk")?;
                }
            }
        }
        if complete {
            let known = sqlx::query("SELECT disk_uuid FROM disks WHERE osd_id = ? AND state = 'ok'")
                .bind(to_i64(osd_id))
                .fetch_all(&mut *tx)
                .await
                .ctx("list osd disks")?;
            for row in known {
                let uuid = Columns::of(&row, "disks").string("disk_uuid")?;
                if !reported.iter().any(|disk| disk.uuid == uuid) {
                    sqlx::query("UPDATE disks SET state = 'lost', reason = 'the OSD registered without it (wiped or replaced)', changed_unix_ms = ? WHERE disk_uuid = ?")
                        .bind(now)
                        .bind(uuid)
                        .execute(&mut *tx)
                        .await
                        .ctx("lose disk")?;
                }
            }
        }
        tx.commit().await.ctx("commit record disks")?;
        Ok(())
    }

    /// Disks whose copies are lost (failed or lost), with their OSDs.
    pub async fn lost_disks(&self) -> Result<HashSet<String>, DbError> {
        let rows = sqlx::query("SELECT disk_uuid FROM disks WHERE state <> 'ok'")
            .fetch_all(&self.pool)
            .await
            .ctx("list lost disks")?;
        rows.iter().map(|row| Columns::of(row, "disks").string("disk_uuid")).collect()
    }

    /// Disks that failed or were lost, per OSD: (OSD, count).
    pub async fn failed_disk_counts(&self) -> Result<Vec<(OsdId, u64)>, DbError> {
        let rows = sqlx::query("SELECT osd_id, COUNT(*) AS n FROM disks WHERE state <> 'ok' GROUP BY osd_id")
            .fetch_all(&self.pool)
            .await
            .ctx("count failed disks")?;
        rows.iter()
            .map(|row| {
                let disks = Columns::of(row, "disks");
                Ok((disks.u64("osd_id")?, disks.u64("n")?))
            })
            .collect()
    }

    /// Copies on `osd_id` whose disk is not known yet, of volumes that hold
    /// data (not being created), at most `limit`.
    pub async fn copies_without_disk(&self, osd_id: OsdId, limit: u32) -> Result<Vec<ExtentId>, DbError> {
        let rows = sqlx::query(
            "SELECT e.extent_id FROM extents e JOIN volumes v ON e.volume_id = v.volume_id WHERE e.osd_id = ? AND e.disk IS NULL AND v.state IN ('open', 'closing', 'closed', 'encoding', 'retiring', 'ec') ORDER BY e.extent_id LIMIT ?",
        )
        .bind(to_i64(osd_id))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("list copies without disk")?;
        rows.iter().map(|row| Columns::of(row, "extents").u64("extent_id")).collect()
    }

    /// Records the disk holding a copy (or [`MISSING_DISK`]).
    pub async fn record_copy_disk(&self, extent_id: ExtentId, osd_id: OsdId, disk: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE extents SET disk = ? WHERE extent_id = ? AND osd_id = ? AND disk IS NULL")
            .bind(disk.to_owned())
            .bind(to_i64(extent_id))
            .bind(to_i64(osd_id))
            .execute(&self.pool)
            .await
            .ctx("record copy disk")?;
        Ok(())
    }
}
