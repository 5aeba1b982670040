//! Volumes and their buckets (tables `volumes`, `buckets`; a volume is read
//! with its `extents` rows and created with them), and the one
//! compare-and-set every volume state change goes through.
//!
//! Invariants: every state change of a volume is a compare-and-set on its
//! `state` column ([`set_state`]), so a step retried after a crash either
//! applies once or sees that it already happened. Changes that belong
//! together go through [`set_states`] inside one transaction, which the
//! caller rolls back at the first refusal, so they apply all or not at all.
//! A bucket never changes identity; only the volume holding it changes
//! (when erasure coding switches it).

use pocket_proto::{now_unix_ms, BucketId, ExtentId, OsdId, VolumeId};

use super::sql::{to_i64, Columns, DbError, RowProblem, SqlContext};
use super::CellDb;

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
        VolumeState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| DbError::CorruptRow {
            table: "volumes",
            column: "state",
            problem: RowProblem::Unknown { value: s.to_owned() },
        })
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
            _ => Err(DbError::CorruptRow {
                table: "volumes",
                column: "kind",
                problem: RowProblem::Unknown { value: s.to_owned() },
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentRow {
    pub extent_id: ExtentId,
    pub osd_id: OsdId,
    pub position: u32,
    pub sealed_size_bytes: u64,
    /// The BLAKE3 of the copy's bytes, where recorded (erasure-coded shards).
    pub blake3: Option<[u8; 32]>,
    /// The disk holding the copy, once its OSD said ([`super::MISSING_DISK`]
    /// if it no longer knows it).
    pub disk: Option<String>,
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

/// The one compare-and-set of a volume's state: `from` → `to`; false if the
/// volume was not in `from`. Inside a transaction or on a pooled connection.
pub(super) async fn set_state(
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
pub(super) async fn set_states(
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

impl CellDb {
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
        let id = Columns::of(&row, "id_alloc").u64("next_id")? - 1;
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
                .map(|osd_id| ExtentRow { extent_id: id, osd_id: *osd_id, position: 0, sealed_size_bytes: 0, blake3: None, disk: None })
                .collect(),
        })
    }

    /// Moves a volume from `from` to `to`; false if it was not in `from`.
    pub async fn transition(&self, volume_id: VolumeId, from: VolumeState, to: VolumeState) -> Result<bool, DbError> {
        let mut conn = self.pool.acquire().await.ctx("acquire connection")?;
        set_state(&mut conn, volume_id, from, to, "transition volume").await
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
            if let Some(volume) = self.volume(Columns::of(&row, "volumes").u64("volume_id")?).await? {
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
        let volume = Columns::of(&row, "volumes");
        let state = volume.string("state")?;
        let buckets = sqlx::query("SELECT bucket_id FROM buckets WHERE volume_id = ? ORDER BY position")
            .bind(to_i64(volume_id))
            .fetch_all(&self.pool)
            .await
            .ctx("read buckets")?
            .iter()
            .map(|row| Columns::of(row, "buckets").u64("bucket_id"))
            .collect::<Result<Vec<_>, _>>()?;
        let extents = sqlx::query(
            "SELECT extent_id, osd_id, position, sealed_size_bytes, blake3, disk FROM extents WHERE volume_id = ? ORDER BY position, osd_id",
        )
        .bind(to_i64(volume_id))
        .fetch_all(&self.pool)
        .await
        .ctx("read extents")?
        .iter()
        .map(|row| {
            let extent = Columns::of(row, "extents");
            Ok(ExtentRow {
                extent_id: extent.u64("extent_id")?,
                osd_id: extent.u64("osd_id")?,
                position: extent.u32("position")?,
                sealed_size_bytes: extent.u64("sealed_size_bytes")?,
                blake3: extent.opt_blake3("blake3")?,
                disk: extent.opt_string("disk")?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
        let kind = volume.string("kind")?;
        Ok(Some(VolumeRow {
            volume_id,
            kind: VolumeKind::parse(&kind)?,
            state: VolumeState::parse(&state)?,
            data_count: volume.u32("data_count")?,
            parity_count: volume.u32("parity_count")?,
            extent_size_bytes: volume.u64("extent_size_bytes")?,
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
        self.volume(Columns::of(&row, "buckets").u64("volume_id")?).await
    }

    /// Volumes per (kind, state).
    pub async fn volume_counts(&self) -> Result<Vec<(VolumeKind, VolumeState, u64)>, DbError> {
        let rows = sqlx::query("SELECT kind, state, COUNT(*) AS n FROM volumes GROUP BY kind, state")
            .fetch_all(&self.pool)
            .await
            .ctx("count volumes")?;
        rows.iter()
            .map(|row| {
                let volumes = Columns::of(row, "volumes");
                let kind = volumes.string("kind")?;
                let state = volumes.string("state")?;
                Ok((VolumeKind::parse(&kind)?, VolumeState::parse(&state)?, volumes.u64("n")?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_and_kind_reads_back_as_written() {
        for state in VolumeState::ALL {
            assert_eq!(VolumeState::parse(state.as_str()).expect("known state"), state);
        }
        for kind in [VolumeKind::Replicated, VolumeKind::Ec] {
            assert_eq!(VolumeKind::parse(kind.as_str()).expect("known kind"), kind);
        }
    }

    #[test]
    fn unknown_names_are_corrupt_rows_of_their_column() {
        let err = VolumeState::parse("melted").expect_err("unknown state");
        assert!(
            matches!(&err, DbError::CorruptRow { table: "volumes", column: "state", problem: RowProblem::Unknown { value } } if value == "melted"),
            "{err}"
        );
        let err = VolumeKind::parse("mirrored").expect_err("unknown kind");
        assert!(matches!(&err, DbError::CorruptRow { table: "volumes", column: "kind", .. }), "{err}");
        assert_eq!(err.to_string(), r#"cell database holds an invalid row: volumes.kind: unknown value "mirrored""#);
    }
}
