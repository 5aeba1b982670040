//! The OSD's storage engine: extents on disks, one group-committing writer
//! thread per disk, RocksDB per disk for metadata, crash recovery at open.
//!
//! Disk layout (one OSD owns one or more disk directories; `layout.rs`):
//!
//! ```text
//! DISK/OSD_ID                           the owning OSD's id (text), checked at start-up
//! DISK/POCKET_DISK                      identity: magic, DISK_FORMAT_VERSION, disk uuid
//! DISK/extents/{extent_id:016x}.ext     extent files (format: pocket-format, docs/extent-format.md)
//! DISK/extents/{..}.ext.corrupt         quarantined extents (invalid header unknown to the metadata)
//! DISK/parity/{extent_id:016x}.par      parity extents (erasure coding, whole.rs)
//! DISK/trash/{file}.{unix_ms}          deleted extents, purged after the trash delay (trash.rs)
//! DISK/meta/                            RocksDB (schema: meta.rs)
//! DISK/meta.corrupt-{unix_ms}/          a metadata database that failed to open, set aside
//! *.tmp                                 files being written; removed at start-up
//! ```
//!
//! Invariants:
//! - The extent files are the truth. RocksDB is an index over them that
//!   recovery completes or rebuilds; its WAL is not synced.
//! - Extent files are written sequentially and only at their end: bytes that
//!   were ever acknowledged are never changed or truncated by the store
//!   (direct writes rewrite an extent's last partial block with the same
//!   leading bytes, ADR 11).
//! - An append is acknowledged only after its record is fdatasync'd and its
//!   metadata is in RocksDB; a record's `r` entry never points at unsynced data.
//! - Only a disk's writer thread writes to that disk's open extents (and
//!   recovery, before the writer starts).
//!
//! # Layout
//! - `types` — [`StoreOptions`] and what the operations return.
//! - `error` — [`StoreError`].
//! - `api` — [`Store`]: opening, the operations, and the few accessors the
//!   other modules use.
//! - `extent` — one extent in memory: its file and mutable state.
//! - `writer` — each disk's writer thread: group commit and the seal.
//! - `recovery` — bringing a disk's extents and metadata back in line at open.
//! - `scan` — bounded reads over an extent file for recovery: records, footers.
//! - `layout` — disk identity and layout: directories, identity files,
//!   opening a disk, temporary files, filesystem space.
//! - `direct` — `O_DIRECT` appends (ADR 11); `page_cache` — drop-behind (ADR 8).
//! - `whole` — whole-extent operations for erasure coding, and parity extents.
//! - `trash` — deleted extents kept for the trash delay, then purged.

use std::sync::{Mutex, MutexGuard};

mod api;
mod direct;
mod error;
mod extent;
mod layout;
mod page_cache;
mod recovery;
mod scan;
mod trash;
mod types;
mod whole;
mod writer;

pub use api::{LocatedRecord, Store};
pub use direct::{DirectAppender, DIRECT_IO_ALIGN};
pub use error::StoreError;
pub(crate) use layout::claim_disk;
pub use layout::{ClaimDiskError, EXTENTS_DIR, META_DIR};
pub use page_cache::drop_behind;
pub use types::{AppendOutcome, DiskInfo, ExtentInfo, ListedExtent, SealInfo, StoreOptions, DEFAULT_PAGE_CACHE_WINDOW_BYTES};
pub use trash::{TrashReport, TRASH_DIR};
pub use whole::{RangeSource, WholeInfo, WholeKind, WholeWrite, PARITY_DIR};

/// Locks `m`, ignoring poisoning.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data are plain values updated in one statement; a panic
    // elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
