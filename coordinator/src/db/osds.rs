//! The cell's OSDs (table `osds`): where each one listens, its failure
//! domain, its space and its last heartbeat.
//!
//! Invariants: an OSD has one row, keyed by its id; registering again
//! updates that row in place (a new address after a restart), never adds a
//! second. A heartbeat only updates a registered OSD.

use pocket_proto::{now_unix_ms, OsdId};

use super::sql::{to_i64, Columns, DbError, SqlContext};
use super::CellDb;

#[derive(Debug, Clone)]
pub struct OsdRow {
    pub osd_id: OsdId,
    pub grpc_addr: String,
    pub failure_domain: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub last_heartbeat_unix_ms: i64,
}

impl CellDb {
    /// Inserts or updates an OSD's registration.
    pub async fn upsert_osd(&self, osd: &OsdRow) -> Result<(), DbError> {
        let now = now_unix_ms();
        let mut tx = self.pool.begin().await.ctx("begin upsert osd")?;
        let updated = sqlx::query(
            "UPDATE osds SET grpc_addr = ?, failure_domain = ?, capacity_bytes = ?, used_bytes = ?, last_heartbeat_unix_ms = ? WHERE osd_id = ?",
        )
        .bind(osd.grpc_addr.clone())
        .bind(osd.failure_domain.clone())
        .bind(to_i64(osd.capacity_bytes))
        .bind(to_i64(osd.used_bytes))
        .bind(now)
        .bind(to_i64(osd.osd_id))
        .execute(&mut *tx)
        .await
        .ctx("update osd")?;
        if updated.rows_affected() == 0 {
            sqlx::query(
                "INSERT INTO osds (osd_id, grpc_addr, failure_domain, capacity_bytes, used_bytes, registered_unix_ms, last_heartbeat_unix_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(to_i64(osd.osd_id))
            .bind(osd.grpc_addr.clone())
            .bind(osd.failure_domain.clone())
            .bind(to_i64(osd.capacity_bytes))
            .bind(to_i64(osd.used_bytes))
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("insert osd")?;
        }
        tx.commit().await.ctx("commit upsert osd")
    }

    /// Records a heartbeat; false when the OSD is not registered.
    pub async fn heartbeat(&self, osd_id: OsdId, used_bytes: u64, capacity_bytes: u64, live_bytes_per_sec: u64) -> Result<bool, DbError> {
        let result = sqlx::query(
            "UPDATE osds SET used_bytes = ?, capacity_bytes = ?, live_bytes_per_sec = ?, last_heartbeat_unix_ms = ? WHERE osd_id = ?",
        )
            .bind(to_i64(used_bytes))
            .bind(to_i64(capacity_bytes))
            .bind(to_i64(live_bytes_per_sec))
            .bind(now_unix_ms())
            .bind(to_i64(osd_id))
            .execute(&self.pool)
            .await
            .ctx("heartbeat")?;
        Ok(result.rows_affected() > 0)
    }

    /// The live traffic the OSDs that beat since `since_unix_ms` reported,
    /// in bytes per second over the cell.
    pub async fn live_bytes_per_sec(&self, since_unix_ms: i64) -> Result<u64, DbError> {
        // Summed here: MySQL's SUM is a DECIMAL, which the Any driver cannot read.
        let rows = sqlx::query("SELECT live_bytes_per_sec FROM osds WHERE last_heartbeat_unix_ms >= ?")
            .bind(since_unix_ms)
            .fetch_all(&self.pool)
            .await
            .ctx("read live traffic")?;
        rows.iter().try_fold(0u64, |sum, row| Ok(sum.saturating_add(Columns::of(row, "osds").u64("live_bytes_per_sec")?)))
    }

    pub async fn list_osds(&self) -> Result<Vec<OsdRow>, DbError> {
        let rows = sqlx::query(
            "SELECT osd_id, grpc_addr, failure_domain, capacity_bytes, used_bytes, last_heartbeat_unix_ms FROM osds ORDER BY osd_id",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("list osds")?;
        rows.iter()
            .map(|row| {
                let osd = Columns::of(row, "osds");
                Ok(OsdRow {
                    osd_id: osd.u64("osd_id")?,
                    grpc_addr: osd.string("grpc_addr")?,
                    failure_domain: osd.string("failure_domain")?,
                    capacity_bytes: osd.u64("capacity_bytes")?,
                    used_bytes: osd.u64("used_bytes")?,
                    last_heartbeat_unix_ms: osd.i64("last_heartbeat_unix_ms")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::RowProblem;

    #[tokio::test]
    async fn a_negative_stored_size_is_a_corrupt_row_naming_its_column() {
        // One connection: an in-memory SQLite database lives as long as it.
        let db = CellDb::open("sqlite::memory:", 1).await.expect("open");
        let osd = OsdRow {
            osd_id: 7,
            grpc_addr: "127.0.0.1:7007".into(),
            failure_domain: "rack-7".into(),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            last_heartbeat_unix_ms: 0,
        };
        db.upsert_osd(&osd).await.expect("register");
        sqlx::query("UPDATE osds SET used_bytes = -5 WHERE osd_id = 7").execute(&db.pool).await.expect("corrupt");
        let err = db.list_osds().await.expect_err("negative used_bytes");
        assert!(
            matches!(
                err,
                DbError::CorruptRow { table: "osds", column: "used_bytes", problem: RowProblem::Negative { value: -5 } }
            ),
            "{err}"
        );
        db.close().await;
    }
}
