//! One data extent in memory: its file, its size limit and its mutable state.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use pocket_proto::ExtentId;

use super::direct::DirectAppender;
use super::error::{io_err, StoreError};
use super::lock;
use super::types::{ExtentInfo, StoreOptions};

pub(super) struct Extent {
    pub(super) id: ExtentId,
    /// Index of the disk holding the file, in the store's disk order.
    pub(super) disk: usize,
    pub(super) file: File,
    pub(super) max_size_bytes: u64,
    pub(super) state: Mutex<ExtentMut>,
    /// Pages before this offset were dropped from the page cache. Only the
    /// disk's writer thread touches it.
    pub(super) uncached_up_to: AtomicU64,
    /// The `O_DIRECT` appender of an open extent (ADR 11); None once sealed,
    /// or where the filesystem refuses `O_DIRECT`. Only the disk's writer
    /// thread touches it.
    pub(super) direct: Mutex<Option<DirectAppender>>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ExtentMut {
    pub(super) sealed: bool,
    /// Set after a failed write or sync: the file's tail is unknown until recovery.
    pub(super) poisoned: bool,
    /// End of the last record: where the next append (or the footer) goes.
    pub(super) records_end: u64,
    /// File size: `records_end`, plus the footer once sealed.
    pub(super) size_bytes: u64,
    pub(super) record_count: u64,
}

impl Extent {
    /// An extent in `state`, with no page dropped from the cache yet.
    pub(super) fn new(
        id: ExtentId,
        disk: usize,
        file: File,
        max_size_bytes: u64,
        state: ExtentMut,
        direct: Option<DirectAppender>,
    ) -> Extent {
        Extent {
            id,
            disk,
            file,
            max_size_bytes,
            state: Mutex::new(state),
            uncached_up_to: AtomicU64::new(0),
            direct: Mutex::new(direct),
        }
    }

    pub(super) fn snapshot(&self) -> ExtentMut {
        *lock(&self.state)
    }

    pub(super) fn info(&self) -> ExtentInfo {
        let s = self.snapshot();
        ExtentInfo {
            id: self.id,
            sealed: s.sealed,
            size_bytes: s.size_bytes,
            record_count: s.record_count,
            max_size_bytes: self.max_size_bytes,
        }
    }
}

/// The `O_DIRECT` appender of an open extent whose records end at `end`, if
/// the options ask for one and the filesystem allows it.
pub(super) fn open_direct(
    path: &Path,
    file: &File,
    end: u64,
    opts: &StoreOptions,
) -> Result<Option<DirectAppender>, StoreError> {
    if !opts.direct_io {
        return Ok(None);
    }
    DirectAppender::open(path, file, end).map_err(io_err("open extent file for direct writes"))
}
