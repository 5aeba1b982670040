//! Cell-wide settings an operator changed at runtime (table `cell_meta`,
//! name → value), so that they hold across restarts and leader changes.

use super::sql::{Columns, DbError, SqlContext};
use super::CellDb;

/// The background byte rate (`SetBackgroundRate`); "0" means no limit.
pub const BACKGROUND_BYTES_PER_SEC: &str = "background_bytes_per_sec";
/// The leader's last repair summary (JSON), for standbys' `CellStatus`.
pub const REPAIR_SUMMARY: &str = "repair_summary";
/// The leader's last reconciliation summary (JSON), for standbys' `CellStatus`.
pub const RECONCILE_SUMMARY: &str = "reconcile_summary";

impl CellDb {
    pub async fn meta(&self, name: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT value FROM cell_meta WHERE name = ?")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await
            .ctx("read cell setting")?;
        row.map(|row| Columns::of(&row, "cell_meta").string("value")).transpose()
    }

    /// Sets `name` to `value` (replacing any value), in one transaction.
    pub async fn set_meta(&self, name: &str, value: &str) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await.ctx("begin cell setting")?;
        sqlx::query("DELETE FROM cell_meta WHERE name = ?")
            .bind(name.to_owned())
            .execute(&mut *tx)
            .await
            .ctx("replace cell setting")?;
        sqlx::query("INSERT INTO cell_meta (name, value) VALUES (?, ?)")
            .bind(name.to_owned())
            .bind(value.to_owned())
            .execute(&mut *tx)
            .await
            .ctx("write cell setting")?;
        tx.commit().await.ctx("commit cell setting")
    }
}
