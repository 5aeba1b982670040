//! The store's errors.

use std::io;
use std::path::PathBuf;

use pocket_format::FormatError;
use pocket_proto::{ExtentId, Key};

#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    #[error("unknown extent {0}")]
    UnknownExtent(ExtentId),
    /// The disk holding the extent was failed (gone, replaced, or returning
    /// I/O errors): nothing on it is served.
    #[error("disk {} failed: {reason}", disk.display())]
    DiskFailed { disk: std::path::PathBuf, reason: String },
    #[error("no disk of this OSD is healthy")]
    NoHealthyDisk,
    #[error("extent {extent} is full: {size_bytes} bytes + a {record_bytes}-byte record > {max_size_bytes}")]
    ExtentFull { extent: ExtentId, size_bytes: u64, record_bytes: u64, max_size_bytes: u64 },
    #[error("extent {0} is sealed")]
    Sealed(ExtentId),
    #[error("key {key} not found in extent {extent}")]
    NotFound { extent: ExtentId, key: Key },
    #[error("blob of {len_bytes} bytes exceeds the maximum of {max_bytes}")]
    TooLarge { len_bytes: u64, max_bytes: u64 },
    #[error("corrupt record in extent {extent} at offset {offset}: {detail}")]
    Corrupt { extent: ExtentId, offset: u64, detail: FormatError },
    #[error("corrupt metadata for extent {extent}: {detail}")]
    CorruptMeta { extent: ExtentId, detail: &'static str },
    #[error("extent {0} stopped accepting writes after an I/O failure; restart the OSD to recover it")]
    Poisoned(ExtentId),
    #[error("extent {extent} already exists with max size {existing_max_size_bytes}, not {requested_max_size_bytes}")]
    ExtentConflict { extent: ExtentId, existing_max_size_bytes: u64, requested_max_size_bytes: u64 },
    #[error("extent {extent}: a file the store did not load already exists at {path}")]
    ExtentFileExists { extent: ExtentId, path: PathBuf },
    #[error("extent {extent}: max size {max_size_bytes} cannot hold a header and a record")]
    BadMaxSize { extent: ExtentId, max_size_bytes: u64 },
    #[error("invalid store options: {0}")]
    InvalidOptions(&'static str),
    #[error("disk {path}: {reason}")]
    DiskIdentity { path: PathBuf, reason: &'static str },
    #[error("{path} was written in extent format version {version}, which this binary does not know; refusing to start")]
    UnsupportedFormat { path: PathBuf, version: u32 },
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("metadata database: {0}")]
    Meta(#[from] rocksdb::Error),
    #[error("the store is shutting down")]
    ShuttingDown,
    #[error("range of {len} bytes at {offset} lies outside the extent's {size_bytes} bytes")]
    OutOfRange { offset: u64, len: u64, size_bytes: u64 },
    #[error("extent {0} is not sealed")]
    NotSealed(ExtentId),
    #[error("extent {extent}: expected {expected} bytes, received {got}")]
    WholeLength { extent: ExtentId, expected: u64, got: u64 },
    #[error("extent {0}: the bytes do not hash to the BLAKE3 given")]
    WholeHashMismatch(ExtentId),
    #[error("extent {0} already exists with other content or of another kind")]
    ContentConflict(ExtentId),
    #[error("extent {0} is already being written")]
    WriteInProgress(ExtentId),
    #[error("no disk has room: {needed_bytes} bytes needed, {free_bytes} free")]
    NoSpace { needed_bytes: u64, free_bytes: u64 },
    #[error("extent {extent} is not a valid sealed extent: {detail}")]
    InvalidWhole { extent: ExtentId, detail: String },
}

/// Wraps an I/O error with what the store was doing.
pub(super) fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

impl StoreError {
    /// The same failure, for the other requests of a failed group commit.
    pub(super) fn for_another_waiter(&self, extent: ExtentId) -> StoreError {
        match self {
            StoreError::Io { context, source } => {
                StoreError::Io { context, source: io::Error::new(source.kind(), source.to_string()) }
            }
            StoreError::Meta(e) => StoreError::Meta(e.clone()),
            _ => StoreError::Poisoned(extent),
        }
    }
}
