//! Coordinator leadership (table `leadership`, one row; ADR 19): a lease
//! taken by a conditional update, renewed by its holder, and a generation
//! that grows with every takeover — the fencing token of every mutating
//! call to an OSD.
//!
//! Invariants: at most one holder at a time, since taking the lease is one
//! `UPDATE` whose condition (expired, or already ours) the database checks
//! under the row's lock. A generation is never reused: each acquisition adds
//! one. A holder renews only the generation it acquired, so a coordinator
//! that lost the lease (even briefly) cannot extend another's.

use pocket_proto::now_unix_ms;

use super::sql::{to_i64, Columns, DbError, SqlContext};
use super::CellDb;

/// The lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    /// Where the holder serves gRPC.
    pub holder_addr: String,
    pub generation: u64,
    pub expires_unix_ms: i64,
    pub acquired_unix_ms: i64,
}

impl CellDb {
    pub async fn lease(&self) -> Result<Lease, DbError> {
        let row = sqlx::query(
            "SELECT holder, holder_addr, generation, expires_unix_ms, acquired_unix_ms FROM leadership WHERE name = 'leader'",
        )
        .fetch_one(&self.pool)
        .await
        .ctx("read lease")?;
        let lease = Columns::of(&row, "leadership");
        Ok(Lease {
            holder: lease.string("holder")?,
            holder_addr: lease.string("holder_addr")?,
            generation: lease.u64("generation")?,
            expires_unix_ms: lease.i64("expires_unix_ms")?,
            acquired_unix_ms: lease.i64("acquired_unix_ms")?,
        })
    }

    /// Takes the lease for `ttl_ms` if it expired (or is ours), and no
    /// other holder took it less than `min_term_ms` ago (anti-flap: a
    /// takeover is not followed at once by another). Returns the new
    /// generation, or None if someone else holds it.
    pub async fn try_acquire_lease(
        &self,
        holder: &str,
        holder_addr: &str,
        ttl_ms: u64,
        min_term_ms: u64,
    ) -> Result<Option<u64>, DbError> {
        let now = now_unix_ms();
        let mut tx = self.pool.begin().await.ctx("begin acquire lease")?;
        let taken = sqlx::query(
            "UPDATE leadership SET holder = ?, holder_addr = ?, generation = generation + 1, expires_unix_ms = ?, acquired_unix_ms = ? \
             WHERE name = 'leader' AND expires_unix_ms < ? AND (holder = ? OR holder = '' OR acquired_unix_ms + ? <= ?)",
        )
        .bind(holder.to_owned())
        .bind(holder_addr.to_owned())
        .bind(now + to_i64(ttl_ms))
        .bind(now)
        .bind(now)
        .bind(holder.to_owned())
        .bind(to_i64(min_term_ms))
        .bind(now)
        .execute(&mut *tx)
        .await
        .ctx("acquire lease")?;
        if taken.rows_affected() != 1 {
            tx.rollback().await.ctx("roll back acquire lease")?;
            return Ok(None);
        }
        let row = sqlx::query("SELECT generation FROM leadership WHERE name = 'leader'")
            .fetch_one(&mut *tx)
            .await
            .ctx("read generation")?;
        let generation = Columns::of(&row, "leadership").u64("generation")?;
        tx.commit().await.ctx("commit acquire lease")?;
        Ok(Some(generation))
    }

    /// Extends our lease (`generation`) to now + `ttl_ms`; false if it is
    /// no longer ours.
    pub async fn renew_lease(&self, holder: &str, generation: u64, ttl_ms: u64) -> Result<bool, DbError> {
        let now = now_unix_ms();
        let renewed = sqlx::query(
            "UPDATE leadership SET expires_unix_ms = ? WHERE name = 'leader' AND holder = ? AND generation = ? AND expires_unix_ms >= ?",
        )
        .bind(now + to_i64(ttl_ms))
        .bind(holder.to_owned())
        .bind(to_i64(generation))
        .bind(now)
        .execute(&self.pool)
        .await
        .ctx("renew lease")?;
        if renewed.rows_affected() == 1 {
            return Ok(true);
        }
        // MariaDB counts changed rows: an update to the same value (renewed
        // twice within a millisecond) reports 0. Read to tell the cases apart.
        let lease = self.lease().await?;
        Ok(lease.holder == holder && lease.generation == generation && lease.expires_unix_ms >= now)
    }

    /// Gives the lease up (a clean stop): a standby may take it at once.
    pub async fn release_lease(&self, holder: &str, generation: u64) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE leadership SET expires_unix_ms = 0, acquired_unix_ms = 0 WHERE name = 'leader' AND holder = ? AND generation = ?",
        )
        .bind(holder.to_owned())
        .bind(to_i64(generation))
        .execute(&self.pool)
        .await
        .ctx("release lease")?;
        Ok(())
    }
}
