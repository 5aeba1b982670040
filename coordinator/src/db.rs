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
///
/// Replicated: creating → open → closing → closed → encoding → retiring →
/// retired, or creating → abandoned; encoding → closed when its
/// erasure-coded volume is abandoned. Erasure-coded: building → ec, or
/// building → abandoned.
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
    /// Creation failed before the volume was ever writable (holds no data),
    /// or an erasure-coded volume given up before its switch.
    Abandoned,
    /// Closed, and claimed by an erasure-coded volume being built.
    Encoding,
    /// Its buckets now live in an erasure-coded volume; replicas being deleted.
    Retiring,
    /// Every replica deleted.
    Retired,
    /// Erasure-coded volume whose shards are being written and verified.
    Building,
    /// Erasure-coded volume serving its buckets.
    Ec,
}

impl VolumeState {
    pub const ALL: [VolumeState; 10] = [
        VolumeState::Creating,
        VolumeState::Open,
        VolumeState::Closing,
        VolumeState::Closed,
        VolumeState::Abandoned,
        VolumeState::Encoding,
        VolumeState::Retiring,
        VolumeState::Retired,
        VolumeState::Building,
        VolumeState::Ec,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Open => "open",
            VolumeState::Closing => "closing",
            VolumeState::Closed => "closed",
            VolumeState::Abandoned => "abandoned",
            VolumeState::Encoding => "encoding",
            VolumeState::Retiring => "retiring",
            VolumeState::Retired => "retired",
            VolumeState::Building => "building",
            VolumeState::Ec => "ec",
        }
    }

    pub fn parse(s: &str) -> Result<VolumeState, DbError> {
        VolumeState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| DbError::CorruptRow(format!("unknown volume state {s:?}")))
    }
}

/// How a volume stores its buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeKind {
    /// One bucket, R identical-content replicas of its extent.
    Replicated,
    /// k buckets' extents plus m parity extents (`data_count`, `parity_count`).
    Ec,
}

impl VolumeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Replicated => "replicated",
            VolumeKind::Ec => "ec",
        }
    }

    pub fn parse(s: &str) -> Result<VolumeKind, DbError> {
        match s {
            "replicated" => Ok(VolumeKind::Replicated),
            "ec" => Ok(VolumeKind::Ec),
            _ => Err(DbError::CorruptRow(format!("unknown volume kind {s:?}"))),
        }
    }
}

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

/// One stored extent with the kind and state of its volume (for storage totals).
#[derive(Debug, Clone)]
pub struct StoredExtent {
    pub volume_id: VolumeId,
    pub kind: VolumeKind,
    pub state: VolumeState,
    pub data_count: u32,
    pub position: u32,
    pub sealed_size_bytes: u64,
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
    pub kind: VolumeKind,
    pub state: VolumeState,
    pub data_count: u32,
    pub parity_count: u32,
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

fn small(value: u64) -> Result<u32, DbError> {
    u32::try_from(value).map_err(|_| DbError::CorruptRow(format!("count out of range: {value}")))
}

fn opt_u64_of(row: &AnyRow, column: &str) -> Result<Option<u64>, DbError> {
    let value: Option<i64> = row.try_get(column).ctx("decode column")?;
    value
        .map(|v| u64::try_from(v).map_err(|_| DbError::CorruptRow(format!("negative {column}: {v}"))))
        .transpose()
}

/// The one compare-and-set of a volume's state: `from` → `to`; false if the
/// volume was not in `from`. Inside a transaction or on a pooled connection.
async fn set_state(
    conn: &mut sqlx::AnyConnection,
    volume_id: VolumeId,
    from: VolumeState,
    to: VolumeState,
    context: &'static str,
) -> Result<bool, DbError> {
    let result = sqlx::query("UPDATE volumes SET state = ?, state_changed_unix_ms = ? WHERE volume_id = ? AND state = ?")
        .bind(to.as_str())
        .bind(now_unix_ms())
        .bind(to_i64(volume_id))
        .bind(from.as_str())
        .execute(conn)
        .await
        .ctx(context)?;
    Ok(result.rows_affected() == 1)
}

/// Applies every (volume, from, to) in order; false at the first volume not
/// in its `from` state (the caller then rolls the transaction back).
async fn set_states(
    conn: &mut sqlx::AnyConnection,
    changes: &[(VolumeId, VolumeState, VolumeState)],
    context: &'static str,
) -> Result<bool, DbError> {
    for &(volume_id, from, to) in changes {
        if !set_state(&mut *conn, volume_id, from, to, context).await? {
            return Ok(false);
        }
    }
    Ok(true)
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
            kind: VolumeKind::Replicated,
            state: VolumeState::Creating,
            data_count: 1,
            parity_count: 0,
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
        let mut conn = self.pool.acquire().await.ctx("acquire connection")?;
        set_state(&mut conn, volume_id, from, to, "transition volume").await
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
        let Some(row) =
            sqlx::query("SELECT kind, state, data_count, parity_count, extent_size_bytes FROM volumes WHERE volume_id = ?")
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
        let kind: String = row.try_get("kind").ctx("decode kind")?;
        Ok(Some(VolumeRow {
            volume_id,
            kind: VolumeKind::parse(&kind)?,
            state: VolumeState::parse(&state)?,
            data_count: small(u64_of(&row, "data_count")?)?,
            parity_count: small(u64_of(&row, "parity_count")?)?,
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

    /// Volumes per (kind, state).
    pub async fn volume_counts(&self) -> Result<Vec<(VolumeKind, VolumeState, u64)>, DbError> {
        let rows = sqlx::query("SELECT kind, state, COUNT(*) AS n FROM volumes GROUP BY kind, state")
            .fetch_all(&self.pool)
            .await
            .ctx("count volumes")?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind").ctx("decode kind")?;
                let state: String = row.try_get("state").ctx("decode state")?;
                Ok((VolumeKind::parse(&kind)?, VolumeState::parse(&state)?, u64_of(row, "n")?))
            })
            .collect()
    }

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
        let first = u64_of(&row, "next_id")? - (1 + m);
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
            Ok(LayoutRow {
                position: small(u64_of(row, "position")?)?,
                osd_id: u64_of(row, "osd_id")?,
                extent_id: u64_of(row, "extent_id")?,
                bucket_id: opt_u64_of(row, "bucket_id")?,
                source_volume_id: opt_u64_of(row, "source_volume_id")?,
                source_osd_id: opt_u64_of(row, "source_osd_id")?,
                size_bytes: u64_of(row, "size_bytes")?,
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
            if let Some(volume) = self.ec_volume(u64_of(&row, "volume_id")?).await? {
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
    pub async fn switch_to_ec(&self, volume: &EcVolume) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await.ctx("begin switch")?;
        let mut changes = vec![(volume.volume_id, VolumeState::Building, VolumeState::Ec)];
        changes.extend(volume.source_volumes().into_iter().map(|id| (id, VolumeState::Encoding, VolumeState::Retiring)));
        if !set_states(&mut tx, &changes, "switch volume state").await? {
            tx.rollback().await.ctx("roll back switch")?;
            return Ok(false);
        }
        for row in &volume.layout {
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
                "UPDATE extents SET volume_id = ?, position = ?, sealed_size_bytes = ? WHERE extent_id = ? AND osd_id = ?",
            )
            .bind(to_i64(volume.volume_id))
            .bind(i64::from(row.position))
            .bind(to_i64(row.size_bytes))
            .bind(to_i64(row.extent_id))
            .bind(to_i64(row.osd_id))
            .execute(&mut *tx)
            .await
            .ctx("move reused extent")?;
            if moved.rows_affected() == 0 {
                sqlx::query("INSERT INTO extents (extent_id, osd_id, volume_id, position, sealed_size_bytes) VALUES (?, ?, ?, ?, ?)")
                    .bind(to_i64(row.extent_id))
                    .bind(to_i64(row.osd_id))
                    .bind(to_i64(volume.volume_id))
                    .bind(i64::from(row.position))
                    .bind(to_i64(row.size_bytes))
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

    /// Whether an `extents` row names this copy: a copy that is named must
    /// never be deleted as garbage.
    pub async fn extent_is_live(&self, extent_id: ExtentId, osd_id: OsdId) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM extents WHERE extent_id = ? AND osd_id = ?")
            .bind(to_i64(extent_id))
            .bind(to_i64(osd_id))
            .fetch_one(&self.pool)
            .await
            .ctx("check extent row")?;
        Ok(u64_of(&row, "n")? > 0)
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
            "SELECT e.volume_id, e.position, e.sealed_size_bytes, v.kind, v.state, v.data_count FROM extents e JOIN volumes v ON e.volume_id = v.volume_id WHERE v.state IN ({placeholders})"
        );
        let mut query = sqlx::query(&sql);
        for state in states {
            query = query.bind(state.as_str());
        }
        let rows = query.fetch_all(&self.pool).await.ctx("list stored extents")?;
        let mut out = Vec::new();
        for row in &rows {
            let state = VolumeState::parse(&row.try_get::<String, _>("state").ctx("decode state")?)?;
            if !states.contains(&state) {
                continue;
            }
            out.push(StoredExtent {
                volume_id: u64_of(row, "volume_id")?,
                kind: VolumeKind::parse(&row.try_get::<String, _>("kind").ctx("decode kind")?)?,
                state,
                data_count: small(u64_of(row, "data_count")?)?,
                position: small(u64_of(row, "position")?)?,
                sealed_size_bytes: u64_of(row, "sealed_size_bytes")?,
            });
        }
        Ok(out)
    }

    pub async fn close(&self) {
        self.pool.close().await;
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

