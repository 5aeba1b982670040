//! The store's tuning and what its operations return.

use std::path::PathBuf;

use pocket_proto::ExtentId;

/// Default largest blob (DESIGN.md: 32 MiB).
pub const DEFAULT_MAX_RECORD_BYTES: u64 = pocket_proto::DEFAULT_MAX_BLOB_SIZE_BYTES;
/// Default bytes one group commit may write before it syncs: two max-size
/// blobs, enough to amortise an fdatasync without delaying acks much.
pub const DEFAULT_GROUP_COMMIT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default depth of each disk's request queue: appends beyond it wait
/// (back-pressure) instead of piling up in memory.
pub const DEFAULT_APPEND_QUEUE_DEPTH: usize = 64;
/// How much of an open extent's tail stays in the page cache after a group
/// commit (ADR 8): older pages are durable and clean, and are dropped.
pub const DEFAULT_PAGE_CACHE_WINDOW_BYTES: u64 = 32 * 1024 * 1024;

/// Tuning of a [`Store`](super::Store).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Largest record data (= largest blob) an append accepts.
    pub max_record_bytes: u64,
    /// A group commit stops taking queued appends once it holds this many data bytes.
    pub group_commit_max_bytes: u64,
    /// Capacity of each disk's bounded request queue.
    pub append_queue_depth: usize,
    /// After each group commit, an open extent's pages more than this far
    /// behind its end are dropped from the page cache (drop-behind, ADR 8);
    /// None keeps every written page cached.
    pub page_cache_window_bytes: Option<u64>,
    /// Appends go to the disk with `O_DIRECT` (ADR 11), not through the page
    /// cache; where the filesystem refuses it, they go through the cache.
    pub direct_io: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            group_commit_max_bytes: DEFAULT_GROUP_COMMIT_MAX_BYTES,
            append_queue_depth: DEFAULT_APPEND_QUEUE_DEPTH,
            page_cache_window_bytes: Some(DEFAULT_PAGE_CACHE_WINDOW_BYTES),
            direct_io: true,
        }
    }
}

/// Result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The record was written at `offset` (of its record header) and is durable.
    Appended { offset: u64 },
    /// The extent already holds this key at `offset`; nothing was written.
    AlreadyPresent { offset: u64 },
}

impl AppendOutcome {
    pub fn offset(&self) -> u64 {
        match *self {
            AppendOutcome::Appended { offset } | AppendOutcome::AlreadyPresent { offset } => offset,
        }
    }
}

/// Result of a seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealInfo {
    /// Size of the sealed file, footer included.
    pub size_bytes: u64,
    pub record_count: u64,
}

/// What the store knows about one extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentInfo {
    pub id: ExtentId,
    pub sealed: bool,
    /// Current file size (header + records, plus the footer once sealed).
    pub size_bytes: u64,
    pub record_count: u64,
    pub max_size_bytes: u64,
}

/// One extent as [`super::Store::list_page`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedExtent {
    pub id: ExtentId,
    pub sealed: bool,
    /// A parity extent (erasure coding) rather than an extent-format file.
    pub parity: bool,
    pub size_bytes: u64,
}

/// One disk directory of this store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    pub path: PathBuf,
    /// Random id written in `POCKET_DISK` when the disk was first opened.
    pub uuid: u128,
    pub extent_count: u64,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// Why the disk was failed, if it was.
    pub failed: Option<String>,
}
