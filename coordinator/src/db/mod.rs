//! The cell database: the coordinator's durable state (OSDs, volumes, buckets,
//! extents). SQLite by default, MySQL/MariaDB supported, through `sqlx::Any`;
//! the dialects differ only in their migration files.
//!
//! Every state change of a volume is a compare-and-set on its `state` column,
//! so a step that is retried after a crash either applies once or sees that it
//! already happened.
//!
//! Layout, by what each module stores: `osds` (the OSD registry),
//! `volumes` (volumes and buckets, and the compare-and-set of a volume's
//! state), `extents` (the stored copies of extents), `ec_layout`
//! (erasure-coded volumes and their shards), `meta` (settings an operator changed at runtime), `leadership` (the
//! leader's lease and generation), `repairs` (lost copies being
//! rebuilt, and the switch onto their new copy);
//! `sql` holds what they share (the error type, opening and migrating,
//! decoding columns; the dialect of a URL is `pocket-sql`'s). Every type
//! callers use is re-exported here.

mod ec_layout;
mod disks;
mod extents;
mod leadership;
mod meta;
mod osds;
mod repairs;
mod sql;
mod volumes;

use sqlx::AnyPool;

pub use ec_layout::{EcVolume, LayoutRow, PlannedData};
pub use disks::{DiskConflict, DiskReport, MISSING_DISK};
pub use extents::{NamedCopy, StoredExtent};
pub use leadership::Lease;
pub use meta::{BACKGROUND_BYTES_PER_SEC, RECONCILE_SUMMARY, REPAIR_SUMMARY};
pub use osds::OsdRow;
pub use repairs::{RepairRow, RepairedCopy};
pub use sql::{DbError, RowProblem};
pub use volumes::{ExtentRow, VolumeKind, VolumeRow, VolumeState};

#[derive(Clone)]
pub struct CellDb {
    pool: AnyPool,
}

impl CellDb {
    /// Connects to `url` (`sqlite:`, `mysql:` or `mariadb:`) with at most
    /// `max_connections` and runs the migrations of its dialect.
    pub async fn open(url: &str, max_connections: u32) -> Result<CellDb, DbError> {
        Ok(CellDb { pool: sql::connect(url, max_connections).await? })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
