//! Reconciliation: copies on OSDs that nothing in the cell database names
//! are deleted — to the OSD's trash, never unlinked at once.
//!
//! Such copies appear when an OSD that was *out* comes back with its data
//! (what it held was repaired elsewhere meanwhile), when a volume is
//! abandoned while being created (its empty extents), and when an attempt
//! fails half-way (a repair target or an erasure-coded shard not switched).
//!
//! The leader lists every up OSD's extents a page at a time
//! (`Osd.ListExtents`) and compares them with what names a copy on that OSD
//! ([`crate::db::CellDb::named_copies_on`]: an `extents` row, a repair
//! target, the layout of a volume being built). A copy is deleted only when:
//!
//! 1. passes of this leader have seen it unnamed for at least `grace_ms`;
//! 2. under the cell's naming lock ([`Cell::naming_lock`], which repair
//!    also takes to claim a target), nothing names it still;
//! 3. if it is a duplicate of a copy that is named elsewhere (an OSD back
//!    after its data was repaired), that named copy verifies on its OSD
//!    (every record's checksum and key, or a shard's BLAKE3) at the size
//!    the cell database recorded. Nothing is deleted before its replacement
//!    is verified.
//!
//! A deposed leader's delete is refused by the OSD's fence (ADR 19).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pocket_proto::{now_unix_ms, ExtentId, OsdId};
use pocket_rpc_client::ListedExtent;
use serde::Serialize;

use crate::cell::{Cell, CellError};
use crate::db::{NamedCopy, OsdRow};
use crate::health::OsdHealth;

/// Extents asked for per `ListExtents` page.
const LIST_PAGE: u32 = 5_000;

/// What the last reconciliation pass found, for `CellStatus`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ReconcileSummary {
    /// Bytes of open extents on up OSDs.
    pub open_bytes: u64,
    /// Copies nothing names, still on their OSDs (waiting for the grace or
    /// for their duplicate to verify), and their bytes.
    pub unnamed_copies: u64,
    pub unnamed_bytes: u64,
    /// Unix ms at which the last pass ended (0: none yet).
    pub reconciled_unix_ms: i64,
    /// Copies deleted (to trash) by this coordinator since it started.
    pub deleted_copies: u64,
    pub deleted_bytes: u64,
}

/// Why one copy was not deleted this pass.
#[derive(Debug, thiserror::Error)]
enum Kept {
    #[error("no named copy of it verified: {detail}")]
    NamedCopyUnverified { detail: String },
    #[error("delete on the OSD failed: {0}")]
    Delete(String),
    #[error(transparent)]
    Cell(#[from] CellError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// Reconciliation as a background job (ADR 16), run by the leader only.
pub struct ReconcileJob {
    cell: Cell,
    /// Unnamed copies, (OSD, extent) → when a pass of this leadership first saw them.
    first_seen: HashMap<(OsdId, ExtentId), Instant>,
    /// The generation `first_seen` belongs to: a new term starts afresh.
    generation: Option<u64>,
    deleted_copies: u64,
    deleted_bytes: u64,
}

impl ReconcileJob {
    pub fn new(cell: Cell) -> ReconcileJob {
        ReconcileJob { cell, first_seen: HashMap::new(), generation: None, deleted_copies: 0, deleted_bytes: 0 }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.cell.config().reconcile.interval_ms)
    }

    /// One pass over every up OSD.
    async fn pass(&mut self) -> Result<(), CellError> {
        let generation = self.cell.leadership().leading();
        if generation != self.generation {
            self.first_seen.clear();
            self.generation = generation;
        }
        let cell = self.cell.clone();
        let osds = cell.db().list_osds().await?;
        let health = cell.health(&osds);
        let grace = Duration::from_millis(cell.config().reconcile.grace_ms);
        let mut summary = ReconcileSummary::default();
        let mut seen_now: HashMap<(OsdId, ExtentId), Instant> = HashMap::new();
        for osd in &osds {
            if health.get(&osd.osd_id) != Some(&OsdHealth::Up) {
                continue;
            }
            let listed = match list_all(&cell, osd).await {
                Ok(listed) => listed,
                Err(error) => {
                    tracing::debug!(osd_id = osd.osd_id, %error, "extents not listed; reconciled next pass");
                    continue;
                }
            };
            let named = cell.db().named_copies_on(osd.osd_id).await?;
            for extent in listed {
                if named.contains(&extent.extent_id) {
                    if !extent.sealed {
                        summary.open_bytes += extent.size_bytes;
                    }
                    continue;
                }
                let key = (osd.osd_id, extent.extent_id);
                let first = self.first_seen.get(&key).copied().unwrap_or_else(Instant::now);
                if first.elapsed() < grace {
                    seen_now.insert(key, first);
                    summary.unnamed_copies += 1;
                    summary.unnamed_bytes += extent.size_bytes;
                    continue;
                }
                match self.delete(osd, &extent).await {
                    Ok(true) => {
                        self.deleted_copies += 1;
                        self.deleted_bytes += extent.size_bytes;
                        metrics::counter!("pocket_coordinator_reconciled_copies_total").increment(1);
                        metrics::counter!("pocket_coordinator_reconciled_bytes_total").increment(extent.size_bytes);
                    }
                    Ok(false) => {}
                    Err(kept) => {
                        tracing::warn!(osd_id = osd.osd_id, extent_id = extent.extent_id, reason = %kept, "unnamed copy kept");
                        seen_now.insert(key, first);
                        summary.unnamed_copies += 1;
                        summary.unnamed_bytes += extent.size_bytes;
                    }
                }
            }
        }
        // Copies not listed again (deleted, or their OSD not up) are forgotten.
        self.first_seen = seen_now;
        summary.reconciled_unix_ms = now_unix_ms();
        summary.deleted_copies = self.deleted_copies;
        summary.deleted_bytes = self.deleted_bytes;
        metrics::gauge!("pocket_coordinator_unnamed_copies").set(summary.unnamed_copies as f64);
        metrics::gauge!("pocket_coordinator_unnamed_bytes").set(summary.unnamed_bytes as f64);
        cell.set_reconcile_summary(summary).await;
        Ok(())
    }

    /// Deletes one unnamed copy if it still is unnamed and, when it
    /// duplicates a named copy, that copy verifies. Whether it deleted.
    async fn delete(&self, osd: &OsdRow, extent: &ListedExtent) -> Result<bool, Kept> {
        let cell = &self.cell;
        let holders = cell.db().named_holders(extent.extent_id).await?;
        let others: Vec<_> = holders.iter().filter(|holder| holder.osd_id != osd.osd_id).collect();
        if !others.is_empty() {
            // A duplicate: one of its named replacements must verify first.
            let osds = cell.db().list_osds().await?;
            let mut why = Vec::new();
            let mut verified = false;
            for holder in others {
                match verify_holder(cell, &osds, holder, extent.extent_id).await {
                    Ok(()) => {
                        verified = true;
                        break;
                    }
                    Err(detail) => why.push(format!("OSD {}: {detail}", holder.osd_id)),
                }
            }
            if !verified {
                return Err(Kept::NamedCopyUnverified { detail: why.join("; ") });
            }
        }
        let _naming = cell.naming_lock().await;
        if cell.db().copy_is_named(extent.extent_id, osd.osd_id).await? {
            return Ok(false);
        }
        let client = cell.osd_client(osd.osd_id, &osd.grpc_addr).map_err(|error| Kept::Delete(error.to_string()))?;
        let existed = client.rpc_delete_garbage(extent.extent_id).await.map_err(|error| Kept::Delete(error.to_string()))?;
        if !existed {
            return Ok(false);
        }
        tracing::info!(
            osd_id = osd.osd_id,
            extent_id = extent.extent_id,
            bytes = extent.size_bytes,
            sealed = extent.sealed,
            duplicate = !holders.is_empty(),
            "unnamed copy moved to its OSD's trash"
        );
        Ok(true)
    }
}

/// Verifies a named copy on its OSD, charged to the background budget:
/// every record (a data extent) or its BLAKE3 against the one recorded (a
/// shard), at the size recorded.
async fn verify_holder(cell: &Cell, osds: &[OsdRow], holder: &NamedCopy, extent_id: ExtentId) -> Result<(), String> {
    let row = osds.iter().find(|row| row.osd_id == holder.osd_id).ok_or("OSD not registered")?;
    let client = cell
        .osd_client(holder.osd_id, &row.grpc_addr)
        .map(|client| client.for_purpose(pocket_rpc_client::Purpose::Verification))
        .map_err(|error| error.to_string())?;
    cell.budget().bytes(pocket_worker::Class::Verification, holder.sealed_size_bytes).await;
    let verified = client.rpc_verify(extent_id).await.map_err(|error| error.to_string())?;
    if holder.sealed_size_bytes > 0 && verified.size_bytes != holder.sealed_size_bytes {
        return Err(format!("{} bytes where {} were recorded", verified.size_bytes, holder.sealed_size_bytes));
    }
    if holder.blake3.is_some_and(|recorded| recorded != verified.blake3) {
        return Err("BLAKE3 differs from the one recorded".to_string());
    }
    Ok(())
}

/// Every extent `osd` serves, page by page.
async fn list_all(cell: &Cell, osd: &OsdRow) -> Result<Vec<ListedExtent>, pocket_rpc_client::OsdError> {
    let client = cell.osd_client(osd.osd_id, &osd.grpc_addr)?;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (page, more) = client.rpc_list_extents(after, LIST_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.extent_id;
        out.extend(page);
        if !more {
            break;
        }
    }
    Ok(out)
}

impl pocket_worker::Job for ReconcileJob {
    fn name(&self) -> &'static str {
        "reconcile"
    }

    async fn step(&mut self) -> Result<pocket_worker::Step, pocket_worker::JobError> {
        if !self.cell.config().reconcile.enabled {
            return Ok(pocket_worker::Step::Idle(self.interval()));
        }
        self.pass().await.map_err(pocket_worker::JobError::new)?;
        Ok(pocket_worker::Step::Idle(self.interval()))
    }

    fn backoff(&self) -> pocket_worker::Backoff {
        pocket_worker::Backoff { initial: self.interval(), max: self.interval() * 4 }
    }

    /// A delete is one call; a pass stopped half-way starts over, with its
    /// grace counted again.
    fn cancel_safe(&self) -> bool {
        true
    }
}
