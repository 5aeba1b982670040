//! The cell database: the coordinator's durable state (OSDs, volumes, buckets,
//! extents). SQLite by default, MySQL/MariaDB supported, through `sqlx::Any`;
//! the dialects differ only in their migration files.
//!
//! Every state change of a volume is a compare-and-set on its `state` column,
//! so a step that is retried after a crash either applies once or sees that it
//! already happened.

use std::sync::Once;
use std::time::Duration;

use pocket_proto::{now_unix_ms, BucketId, ExtentId, OsdId, VolumeId};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported cell database URL {url:?}: expected sqlite: or mysql:")]
    UnknownScheme { url: String },
    #[error("cell database: {context}: {source}")]
    Sql {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("cell database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cell database holds an invalid row: {0}")]
    CorruptRow(String),
}

trait SqlContext<T> {
    fn ctx(self, context: &'static str) -> Result<T, DbError>;
}

impl<T> SqlContext<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: &'static str) -> Result<T, DbError> {
        self.map_err(|source| DbError::Sql { context, source })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Mysql,
}

impl Dialect {
    pub fn of_url(url: &str) -> Result<Dialect, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Ok(Dialect::Mysql)
        } else {
            Err(DbError::UnknownScheme { url: url.split('@').next_back().unwrap_or_default().to_string() })
        }
    }
}

/// Volume states, as stored in `volumes.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeState {
    /// Rows written, extents being created on the OSDs; not writable yet.
    Creating,
    /// Writable: frontends append to every replica.
    Open,
    /// No new writes; replicas being sealed.
    Closing,
    /// Sealed on every replica; never reopens.
    Closed,
    /// Creation failed before the volume was ever writable; holds no data.
    Abandoned,
}

impl VolumeState {
    pub const ALL: [VolumeState; 5] =
        [VolumeState::Creating, VolumeState::Open, VolumeState::Closing, VolumeState::Closed, VolumeState::Abandoned];

    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Open => "open",
            VolumeState::Closing => "closing",
            VolumeState::Closed => "closed",
            VolumeState::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Result<VolumeState, DbError> {
        VolumeState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| DbError::CorruptRow(format!("unknown volume state {s:?}")))
    }
}

#[derive(Debug, Clone)]
pub struct OsdRow {
    pub osd_id: OsdId,
    pub grpc_addr: String,
    pub failure_domain: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub last_heartbeat_unix_ms: i64,
}

#[derive(Debug, Clone)]
pub struct ExtentRow {
    pub extent_id: ExtentId,
    pub osd_id: OsdId,
    pub position: u32,
    pub sealed_size_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct VolumeRow {
    pub volume_id: VolumeId,
    pub state: VolumeState,
    pub extent_size_bytes: u64,
    pub buckets: Vec<BucketId>,
    pub extents: Vec<ExtentRow>,
}

#[derive(Clone)]
pub struct CellDb {
    pool: AnyPool,
}

fn u64_of(row: &AnyRow, column: &str) -> Result<u64, DbError> {
    let value: i64 = row.try_get(column).ctx("decode column")?;
    u64::try_from(value).map_err(|_| DbError::CorruptRow(format!("negative {column}: {value}")))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl CellDb {
    pub async fn open(url: &str, max_connections: u32) -> Result<CellDb, DbError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let dialect = Dialect::of_url(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL with synchronous=FULL: a committed transaction survives power loss.
                        for pragma in [
                            "PRAGMA journal_mode=WAL",
                            "PRAGMA synchronous=FULL",
                            "PRAGMA busy_timeout=5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .ctx("connect")?;
        match dialect {
            Dialect::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await?,
            Dialect::Mysql => sqlx::migrate!("migrations/mysql").run(&pool).await?,
        }
        Ok(CellDb { pool })
    }

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
    pub async fn heartbeat(&self, osd_id: OsdId, used_bytes: u64, capacity_bytes: u64) -> Result<bool, DbError> {
        let result = sqlx::query("UPDATE osds SET used_bytes = ?, capacity_bytes = ?, last_heartbeat_unix_ms = ? WHERE osd_id = ?")
            .bind(to_i64(used_bytes))
            .bind(to_i64(capacity_bytes))
            .bind(now_unix_ms())
            .bind(to_i64(osd_id))
            .execute(&self.pool)
            .await
            .ctx("heartbeat")?;
        Ok(result.rows_affected() > 0)
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
                Ok(OsdRow {
                    osd_id: u64_of(row, "osd_id")?,
                    grpc_addr: row.try_get("grpc_addr").ctx("decode grpc_addr")?,
                    failure_domain: row.try_get("failure_domain").ctx("decode failure_domain")?,
                    capacity_bytes: u64_of(row, "capacity_bytes")?,
                    used_bytes: u64_of(row, "used_bytes")?,
                    last_heartbeat_unix_ms: row.try_get("last_heartbeat_unix_ms").ctx("decode heartbeat")?,
                })
            })
            .collect()
    }

    /// Writes a new replicated volume in state `creating`: one bucket, one
    /// extent id, a row per replica. Returns the volume.
    pub async fn create_replicated_volume(&self, osds: &[OsdId], extent_size_bytes: u64) -> Result<VolumeRow, DbError> {
        let now = now_unix_ms();
        let mut tx = self.pool.begin().await.ctx("begin create volume")?;
        // Taking the row lock first serialises id allocation on every backend.
        sqlx::query("UPDATE id_alloc SET next_id = next_id + 1 WHERE name = 'ids'")
            .execute(&mut *tx)
            .await
            .ctx("allocate id")?;
        let row = sqlx::query("SELECT next_id FROM id_alloc WHERE name = 'ids'")
            .fetch_one(&mut *tx)
            .await
            .ctx("read allocated id")?;
        let id = u64_of(&row, "next_id")? - 1;
        sqlx::query(
            "INSERT INTO volumes (volume_id, kind, state, data_count, parity_count, extent_size_bytes, created_unix_ms, state_changed_unix_ms) VALUES (?, 'replicated', ?, 1, 0, ?, ?, ?)",
        )
        .bind(to_i64(id))
        .bind(VolumeState::Creating.as_str())
        .bind(to_i64(extent_size_bytes))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .ctx("insert volume")?;
        sqlx::query("INSERT INTO buckets (bucket_id, volume_id, position, created_unix_ms) VALUES (?, ?, 0, ?)")
            .bind(to_i64(id))
            .bind(to_i64(id))
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("insert bucket")?;
        for osd_id in osds {
            sqlx::query("INSERT INTO extents (extent_id, osd_id, volume_id, position, sealed_size_bytes) VALUES (?, ?, ?, 0, 0)")
                .bind(to_i64(id))
                .bind(to_i64(*osd_id))
                .bind(to_i64(id))
                .execute(&mut *tx)
                .await
                .ctx("insert extent")?;
        }
        tx.commit().await.ctx("commit create volume")?;
        Ok(VolumeRow {
            volume_id: id,
            state: VolumeState::Creating,
            extent_size_bytes,
            buckets: vec![id],
            extents: osds
                .iter()
                .map(|osd_id| ExtentRow { extent_id: id, osd_id: *osd_id, position: 0, sealed_size_bytes: 0 })
                .collect(),
        })
    }

    /// Moves a volume from `from` to `to`; false if it was not in `from`.
    pub async fn transition(&self, volume_id: VolumeId, from: VolumeState, to: VolumeState) -> Result<bool, DbError> {
        let result = sqlx::query("UPDATE volumes SET state = ?, state_changed_unix_ms = ? WHERE volume_id = ? AND state = ?")
            .bind(to.as_str())
            .bind(now_unix_ms())
            .bind(to_i64(volume_id))
            .bind(from.as_str())
            .execute(&self.pool)
            .await
            .ctx("transition volume")?;
        Ok(result.rows_affected() == 1)
    }

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

    /// Every volume in `state`, with its buckets and extents.
    pub async fn volumes_in_state(&self, state: VolumeState) -> Result<Vec<VolumeRow>, DbError> {
        let rows = sqlx::query("SELECT volume_id FROM volumes WHERE state = ? ORDER BY volume_id")
            .bind(state.as_str())
            .fetch_all(&self.pool)
            .await
            .ctx("list volumes")?;
        let mut volumes = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(volume) = self.volume(u64_of(&row, "volume_id")?).await? {
                volumes.push(volume);
            }
        }
        Ok(volumes)
    }

    pub async fn volume(&self, volume_id: VolumeId) -> Result<Option<VolumeRow>, DbError> {
        let Some(row) = sqlx::query("SELECT state, extent_size_bytes FROM volumes WHERE volume_id = ?")
            .bind(to_i64(volume_id))
            .fetch_optional(&self.pool)
            .await
            .ctx("read volume")?
        else {
            return Ok(None);
        };
        let state: String = row.try_get("state").ctx("decode state")?;
        let buckets = sqlx::query("SELECT bucket_id FROM buckets WHERE volume_id = ? ORDER BY position")
            .bind(to_i64(volume_id))
            .fetch_all(&self.pool)
            .await
            .ctx("read buckets")?
            .iter()
            .map(|row| u64_of(row, "bucket_id"))
            .collect::<Result<Vec<_>, _>>()?;
        let extents = sqlx::query(
            "SELECT extent_id, osd_id, position, sealed_size_bytes FROM extents WHERE volume_id = ? ORDER BY position, osd_id",
        )
        .bind(to_i64(volume_id))
        .fetch_all(&self.pool)
        .await
        .ctx("read extents")?
        .iter()
        .map(|row| {
            Ok(ExtentRow {
                extent_id: u64_of(row, "extent_id")?,
                osd_id: u64_of(row, "osd_id")?,
                position: u32::try_from(u64_of(row, "position")?)
                    .map_err(|_| DbError::CorruptRow("extent position out of range".into()))?,
                sealed_size_bytes: u64_of(row, "sealed_size_bytes")?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
        Ok(Some(VolumeRow {
            volume_id,
            state: VolumeState::parse(&state)?,
            extent_size_bytes: u64_of(&row, "extent_size_bytes")?,
            buckets,
            extents,
        }))
    }

    pub async fn volume_of_bucket(&self, bucket_id: BucketId) -> Result<Option<VolumeRow>, DbError> {
        let Some(row) = sqlx::query("SELECT volume_id FROM buckets WHERE bucket_id = ?")
            .bind(to_i64(bucket_id))
            .fetch_optional(&self.pool)
            .await
            .ctx("read bucket")?
        else {
            return Ok(None);
        };
        self.volume(u64_of(&row, "volume_id")?).await
    }

    pub async fn volume_counts(&self) -> Result<Vec<(VolumeState, u64)>, DbError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM volumes GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .ctx("count volumes")?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state").ctx("decode state")?;
                Ok((VolumeState::parse(&state)?, u64_of(row, "n")?))
            })
            .collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
