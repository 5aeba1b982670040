//! The OSD's storage engine: extents on disks, one group-committing writer
//! thread per disk, RocksDB per disk for metadata, crash recovery at open.
//!
//! Disk layout (one OSD owns one or more disk directories):
//!
//! ```text
//! DISK/POCKET_DISK                      identity: magic, DISK_FORMAT_VERSION, disk uuid
//! DISK/extents/{extent_id:016x}.ext     extent files (format: extent.rs, docs/extent-format.md)
//! DISK/extents/{..}.ext.corrupt         quarantined extents (invalid header unknown to the metadata)
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

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;
use pocket_proto::{Body, ExtentId, Key};
use rocksdb::{WriteBatch, DB};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{error, info, warn};

use crate::extent::{
    self, ExtentHeader, FormatError, IndexEntry, RecordHeader, Structure, Trailer, CORRUPT_SUFFIX, EXTENT_HEADER_LEN,
    RECORD_HEADER_LEN, RECORD_MAGIC, TMP_SUFFIX, TRAILER_LEN,
};
use crate::meta::{self, ExtentMeta, ExtentState, Lookup, RecordLocation, RecordStats};

mod direct;
mod whole;

pub use direct::{DirectAppender, DIRECT_IO_ALIGN};
pub use whole::{RangeSource, WholeInfo, WholeKind, WholeWrite, PARITY_DIR};

/// Name of the identity file at the root of every disk.
pub const DISK_IDENTITY_FILE: &str = "POCKET_DISK";
/// First line of the identity file.
pub const DISK_IDENTITY_MAGIC: &str = "pocket-disk";
/// Version of the disk layout described above.
pub const DISK_FORMAT_VERSION: u32 = 1;
/// Directory of extent files inside a disk.
pub const EXTENTS_DIR: &str = "extents";
/// Directory of the metadata database inside a disk.
pub const META_DIR: &str = "meta";
/// Prefix of a metadata directory set aside because it would not open.
pub const META_CORRUPT_PREFIX: &str = "meta.corrupt-";

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

/// Bytes read per I/O while recovery scans an extent: bounds recovery memory
/// regardless of extent size, large enough for sequential throughput.
const SCAN_WINDOW_BYTES: usize = 1024 * 1024;
/// Record entries restored per RocksDB write batch during recovery.
const RESTORE_BATCH_RECORDS: usize = 4096;
/// Bytes of record buffers that concurrent reads may hold at once; reads
/// beyond it wait. 256 MiB = 8 max-size blobs.
const READ_BUFFER_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// Tuning of a [`Store`].
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
}

#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    #[error("unknown extent {0}")]
    UnknownExtent(ExtentId),
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

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

impl StoreError {
    /// The same failure, for the other requests of a failed group commit.
    fn for_another_waiter(&self, extent: ExtentId) -> StoreError {
        match self {
            StoreError::Io { context, source } => {
                StoreError::Io { context, source: io::Error::new(source.kind(), source.to_string()) }
            }
            StoreError::Meta(e) => StoreError::Meta(e.clone()),
            _ => StoreError::Poisoned(extent),
        }
    }
}

/// The storage engine of one OSD: all its disks. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    opts: StoreOptions,
    disks: Vec<Disk>,
    extents: RwLock<HashMap<ExtentId, Arc<Extent>>>,
    /// Parity extents (erasure coding; `whole.rs`).
    parity: RwLock<HashMap<ExtentId, Arc<whole::ParityExtent>>>,
    /// Ids of whole extents being received.
    whole_writes: Mutex<HashSet<ExtentId>>,
    /// Serialises `create_extent`, whole-extent loading and deletion (blocking, rare).
    create_lock: Mutex<()>,
    read_budget: Arc<Semaphore>,
}

struct Disk {
    dir: PathBuf,
    uuid: u128,
    db: Arc<DB>,
    /// Taken (closing the queue) at shutdown.
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Disk {
    fn sender(&self) -> Result<mpsc::Sender<Request>, StoreError> {
        lock(&self.tx).clone().ok_or(StoreError::ShuttingDown)
    }
}

struct Extent {
    id: ExtentId,
    disk: usize,
    file: File,
    max_size_bytes: u64,
    state: Mutex<ExtentMut>,
    /// Pages before this offset were dropped from the page cache. Only the
    /// disk's writer thread touches it.
    uncached_up_to: AtomicU64,
    /// The `O_DIRECT` appender of an open extent (ADR 11); None once sealed,
    /// or where the filesystem refuses `O_DIRECT`. Only the disk's writer
    /// thread touches it.
    direct: Mutex<Option<DirectAppender>>,
}

#[derive(Debug, Clone, Copy)]
struct ExtentMut {
    sealed: bool,
    /// Set after a failed write or sync: the file's tail is unknown until recovery.
    poisoned: bool,
    /// End of the last record: where the next append (or the footer) goes.
    records_end: u64,
    /// File size: `records_end`, plus the footer once sealed.
    size_bytes: u64,
    record_count: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data are plain values updated in one statement; a panic
    // elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Extent {
    fn snapshot(&self) -> ExtentMut {
        *lock(&self.state)
    }

    fn info(&self) -> ExtentInfo {
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

/// A disk after `open_disk` and recovery: its uuid, database, extents and parity extents.
type OpenedDisk = (u128, DB, Vec<Extent>, Vec<(ExtentId, whole::ParityExtent)>);

enum Request {
    Append { extent: Arc<Extent>, key: Key, data: Body, resp: AppendResponder },
    Seal { extent: Arc<Extent>, resp: oneshot::Sender<Result<SealInfo, StoreError>> },
}

impl Store {
    /// Opens (creating if needed) every disk, recovers each one (see the
    /// module docs and `docs/extent-format.md`), then starts one writer thread
    /// per disk. Blocking.
    pub fn open(disk_dirs: &[PathBuf], opts: StoreOptions) -> Result<Store, StoreError> {
        if disk_dirs.is_empty() {
            return Err(StoreError::InvalidOptions("no disk directories"));
        }
        if opts.max_record_bytes == 0 {
            return Err(StoreError::InvalidOptions("max_record_bytes must be > 0"));
        }
        if opts.group_commit_max_bytes == 0 {
            return Err(StoreError::InvalidOptions("group_commit_max_bytes must be > 0"));
        }
        if opts.append_queue_depth == 0 {
            return Err(StoreError::InvalidOptions("append_queue_depth must be > 0"));
        }
        let mut disks = Vec::with_capacity(disk_dirs.len());
        let mut extents: HashMap<ExtentId, Arc<Extent>> = HashMap::new();
        let mut receivers = Vec::with_capacity(disk_dirs.len());
        // Disks recover in parallel: recovery time is that of the slowest disk.
        let opened: Vec<Result<OpenedDisk, StoreError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = disk_dirs
                .iter()
                .enumerate()
                .map(|(index, dir)| {
                    let opts = &opts;
                    scope.spawn(move || {
                        let (uuid, db) = open_disk(dir)?;
                        let recovered = recover_disk(index, dir, &db, opts)?;
                        let parity = whole::recover_parity(index, dir, &db)?;
                        Ok((uuid, db, recovered, parity))
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
        });
        let mut parity_extents: HashMap<ExtentId, Arc<whole::ParityExtent>> = HashMap::new();
        for (dir, result) in disk_dirs.iter().zip(opened) {
            let (uuid, db, recovered, parity) = result?;
            for (id, p) in parity {
                if extents.contains_key(&id) || parity_extents.contains_key(&id) {
                    error!(extent = id, disk = %dir.display(), "parity extent id is taken by another extent of this OSD; ignoring this copy");
                    continue;
                }
                parity_extents.insert(id, Arc::new(p));
            }
            for ext in recovered {
                if extents.contains_key(&ext.id) {
                    error!(extent = ext.id, disk = %dir.display(), "extent exists on two disks of this OSD; serving the first copy, ignoring this one");
                    continue;
                }
                extents.insert(ext.id, Arc::new(ext));
            }
            let (tx, rx) = mpsc::channel(opts.append_queue_depth);
            receivers.push(rx);
            disks.push(Disk {
                dir: dir.clone(),
                uuid,
                db: Arc::new(db),
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(None),
            });
        }
        for (index, (disk, rx)) in disks.iter_mut().zip(receivers).enumerate() {
            let db = disk.db.clone();
            let writer_opts = opts.clone();
            let handle = std::thread::Builder::new()
                .name(format!("osd-writer-{index}"))
                .spawn(move || run_writer(db, rx, writer_opts))
                .map_err(io_err("spawn disk writer thread"))?;
            *lock(&disk.writer) = Some(handle);
        }
        Ok(Store {
            inner: Arc::new(Inner {
                opts,
                disks,
                extents: RwLock::new(extents),
                parity: RwLock::new(parity_extents),
                whole_writes: Mutex::new(HashSet::new()),
                create_lock: Mutex::new(()),
                read_budget: Arc::new(Semaphore::new(READ_BUFFER_BUDGET_BYTES)),
            }),
        })
    }

    fn extent(&self, id: ExtentId) -> Result<Arc<Extent>, StoreError> {
        let map = self.inner.extents.read().unwrap_or_else(|p| p.into_inner());
        map.get(&id).cloned().ok_or(StoreError::UnknownExtent(id))
    }

    /// Creates an empty open extent on the disk holding the fewest extents.
    /// Idempotent: Ok if `id` already exists with the same `max_size_bytes`.
    /// The header is durable (file and directory synced) before Ok. Blocking.
    pub fn create_extent(&self, id: ExtentId, max_size_bytes: u64) -> Result<(), StoreError> {
        if max_size_bytes < (EXTENT_HEADER_LEN + RECORD_HEADER_LEN) as u64 {
            return Err(StoreError::BadMaxSize { extent: id, max_size_bytes });
        }
        let _creating = lock(&self.inner.create_lock);
        if self.parity_extent(id).is_some() {
            return Err(StoreError::ContentConflict(id));
        }
        if let Ok(existing) = self.extent(id) {
            if existing.max_size_bytes == max_size_bytes {
                return Ok(());
            }
            return Err(StoreError::ExtentConflict {
                extent: id,
                existing_max_size_bytes: existing.max_size_bytes,
                requested_max_size_bytes: max_size_bytes,
            });
        }
        let disk_index = self.pick_disk();
        let disk = &self.inner.disks[disk_index];
        let extents_dir = disk.dir.join(EXTENTS_DIR);
        let path = extents_dir.join(extent::extent_file_name(id));
        if path.exists() {
            // Not loaded (e.g. a duplicate of an extent on another disk): never overwrite it.
            return Err(StoreError::ExtentFileExists { extent: id, path });
        }
        let header = ExtentHeader { extent_id: id, max_size_bytes, created_unix_ms: pocket_proto::now_unix_ms() };
        let header_bytes = header.encode();
        assert_eq!(ExtentHeader::decode(&header_bytes), Ok(header), "encoded extent header must decode");
        let tmp = tmp_path(&path);
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err("create extent file"))?;
            f.write_all(&header_bytes).map_err(io_err("write extent header"))?;
            f.sync_all().map_err(io_err("sync extent header"))?;
        }
        fs::rename(&tmp, &path).map_err(io_err("rename new extent file"))?;
        sync_dir(&extents_dir)?;
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io_err("open new extent file"))?;
        let records_end = EXTENT_HEADER_LEN as u64;
        let direct = open_direct(&path, &file, records_end, &self.inner.opts)?;
        let ext = Arc::new(Extent {
            id,
            disk: disk_index,
            file,
            max_size_bytes,
            uncached_up_to: AtomicU64::new(0),
            direct: Mutex::new(direct),
            state: Mutex::new(ExtentMut {
                sealed: false,
                poisoned: false,
                records_end,
                size_bytes: records_end,
                record_count: 0,
            }),
        });
        // The file is durable: from here the extent exists (recovery would
        // find it), so it is served even if the metadata write fails.
        self.inner.extents.write().unwrap_or_else(|p| p.into_inner()).insert(id, ext);
        let meta = ExtentMeta { state: ExtentState::Open, max_size_bytes, indexed_up_to: records_end, record_count: 0 };
        disk.db.put(meta::extent_key(id), meta.encode())?;
        info!(extent = id, disk = %disk.dir.display(), max_size_bytes, "created extent");
        Ok(())
    }

    fn pick_disk(&self) -> usize {
        let mut counts = vec![0u64; self.inner.disks.len()];
        for ext in self.inner.extents.read().unwrap_or_else(|p| p.into_inner()).values() {
            counts[ext.disk] += 1;
        }
        let free: Vec<u64> =
            self.inner.disks.iter().map(|d| fs_space(&d.dir).map(|s| s.free_bytes).unwrap_or(0)).collect();
        (0..self.inner.disks.len())
            .min_by_key(|&i| (counts[i], std::cmp::Reverse(free[i])))
            .expect("a store has at least one disk")
    }

    /// Appends `data` under `key` to extent `id`. Ok means durable: written,
    /// fdatasync'd and indexed. A key already in the extent is not written again.
    /// `data` may come in chunks (as it arrived from the network): they are
    /// written to the file as they are, with one vectored write per record.
    pub async fn append(&self, id: ExtentId, key: Key, data: impl Into<Body>) -> Result<AppendOutcome, StoreError> {
        let data: Body = data.into();
        let ext = self.extent(id)?;
        if data.len_bytes() > self.inner.opts.max_record_bytes {
            return Err(StoreError::TooLarge {
                len_bytes: data.len_bytes(),
                max_bytes: self.inner.opts.max_record_bytes,
            });
        }
        if ext.snapshot().sealed {
            return Err(StoreError::Sealed(id));
        }
        let (resp, rx) = oneshot::channel();
        let tx = self.inner.disks[ext.disk].sender()?;
        tx.send(Request::Append { extent: ext, key, data, resp }).await.map_err(|_| StoreError::ShuttingDown)?;
        // Hold no sender while waiting: shutdown waits for every sender to go.
        drop(tx);
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Seals extent `id`: after every append queued before it, writes the
    /// footer (index + trailer), syncs, and records the extent as sealed.
    /// Idempotent.
    pub async fn seal(&self, id: ExtentId) -> Result<SealInfo, StoreError> {
        let ext = self.extent(id)?;
        let s = ext.snapshot();
        if s.sealed {
            return Ok(SealInfo { size_bytes: s.size_bytes, record_count: s.record_count });
        }
        let (resp, rx) = oneshot::channel();
        let tx = self.inner.disks[ext.disk].sender()?;
        tx.send(Request::Seal { extent: ext, resp }).await.map_err(|_| StoreError::ShuttingDown)?;
        drop(tx);
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Reads the data of `key` in extent `id`: one positioned read of that
    /// record, whose header checksum, key and data checksum are verified.
    pub async fn read(&self, id: ExtentId, key: &Key) -> Result<Bytes, StoreError> {
        let ext = self.extent(id)?;
        let db = self.inner.disks[ext.disk].db.clone();
        let key = *key;
        let loc = tokio::task::spawn_blocking(move || meta::get_record(&db, id, &key))
            .await
            .map_err(|_| StoreError::ShuttingDown)??;
        let loc = match loc {
            Lookup::Found(loc) => loc,
            Lookup::Missing => return Err(StoreError::NotFound { extent: id, key }),
            Lookup::Undecodable => {
                return Err(StoreError::CorruptMeta { extent: id, detail: "undecodable record entry" })
            }
        };
        let corrupt = move |detail: FormatError| StoreError::Corrupt { extent: id, offset: loc.offset, detail };
        let records_end = ext.snapshot().records_end;
        match loc.end() {
            Some(end) if end <= records_end && loc.offset >= EXTENT_HEADER_LEN as u64 => {}
            _ => return Err(corrupt(FormatError::OutOfRange { what: Structure::RecordData })),
        }
        // end <= records_end, a file size: the record length fits in memory terms.
        let record_len = RECORD_HEADER_LEN + loc.data_len as usize;
        let permits = u32::try_from(record_len.min(READ_BUFFER_BUDGET_BYTES)).unwrap_or(u32::MAX);
        let _budget = self.inner.read_budget.acquire_many(permits).await.map_err(|_| StoreError::ShuttingDown)?;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; record_len];
            match ext.file.read_exact_at(&mut buf, loc.offset) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(corrupt(FormatError::Truncated {
                        what: Structure::RecordData,
                        needed: loc.data_len,
                        available: 0,
                    }))
                }
                Err(e) => return Err(StoreError::Io { context: "read record", source: e }),
            }
            let header = RecordHeader::decode(&buf).map_err(corrupt)?;
            if header.key != key {
                return Err(corrupt(FormatError::KeyMismatch { expected: key, found: header.key }));
            }
            if header.data_len != loc.data_len {
                return Err(corrupt(FormatError::DataLenMismatch { expected: loc.data_len, found: header.data_len }));
            }
            header.check_data(&buf[RECORD_HEADER_LEN..]).map_err(corrupt)?;
            Ok(Bytes::from(buf).slice(RECORD_HEADER_LEN..))
        })
        .await
        .map_err(|_| StoreError::ShuttingDown)?
    }

    /// Whether extent `id` holds `key`, from metadata only (no extent I/O).
    pub fn has(&self, id: ExtentId, key: &Key) -> Result<bool, StoreError> {
        Ok(self.record_len(id, key)?.is_some())
    }

    /// The data length of `key`'s record in extent `id`, from metadata only
    /// (no data read): what a reader must budget before `read`.
    pub fn record_len(&self, id: ExtentId, key: &Key) -> Result<Option<u64>, StoreError> {
        let ext = self.extent(id)?;
        match meta::get_record(&self.inner.disks[ext.disk].db, id, key)? {
            Lookup::Found(location) => Ok(Some(location.data_len)),
            Lookup::Missing => Ok(None),
            Lookup::Undecodable => Err(StoreError::CorruptMeta { extent: id, detail: "undecodable record entry" }),
        }
    }

    /// An extent's state; a parity extent shows as sealed, with no records.
    pub fn extent_info(&self, id: ExtentId) -> Result<Option<ExtentInfo>, StoreError> {
        if let Some(parity) = self.parity_extent(id) {
            return Ok(Some(ExtentInfo {
                id,
                sealed: true,
                size_bytes: parity.size_bytes,
                record_count: 0,
                max_size_bytes: parity.size_bytes,
            }));
        }
        Ok(self.extent(id).ok().map(|e| e.info()))
    }

    /// Every extent, in id order.
    pub fn list_extents(&self) -> Vec<ExtentInfo> {
        let map = self.inner.extents.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ExtentInfo> = map.values().map(|e| e.info()).collect();
        out.sort_by_key(|e| e.id);
        out
    }

    /// Bytes held by extent files, parity extents included.
    pub fn used_bytes(&self) -> u64 {
        let map = self.inner.extents.read().unwrap_or_else(|p| p.into_inner());
        map.values().map(|e| e.snapshot().size_bytes).sum::<u64>() + self.parity_bytes()
    }

    /// Total size of the filesystems holding the disks (each filesystem
    /// counted once, so disk directories sharing one are not double-counted).
    pub fn capacity_bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        let mut total = 0u64;
        for disk in &self.inner.disks {
            let Ok(space) = fs_space(&disk.dir) else { continue };
            if seen.insert(space.device) {
                total = total.saturating_add(space.total_bytes);
            }
        }
        total
    }

    /// Stops taking appends and seals (they fail with
    /// [`StoreError::ShuttingDown`]), lets each disk's writer commit and answer
    /// what is already queued, and waits for the writers to exit. Reads keep
    /// working until the last clone of the store is dropped. Idempotent;
    /// blocks for at most one group commit per disk. Dropping the last clone
    /// does the same.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// Per-disk view, in the order the disks were given to [`Store::open`].
    pub fn disks(&self) -> Vec<DiskInfo> {
        let map = self.inner.extents.read().unwrap_or_else(|p| p.into_inner());
        self.inner
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let on_disk: Vec<&Arc<Extent>> = map.values().filter(|e| e.disk == i).collect();
                let space = fs_space(&d.dir).ok();
                DiskInfo {
                    path: d.dir.clone(),
                    uuid: d.uuid,
                    extent_count: on_disk.len() as u64,
                    used_bytes: on_disk.iter().map(|e| e.snapshot().size_bytes).sum(),
                    capacity_bytes: space.map_or(0, |s| s.total_bytes),
                    free_bytes: space.map_or(0, |s| s.free_bytes),
                }
            })
            .collect()
    }
}

impl Inner {
    fn shutdown(&self) {
        // Closing the queues stops each writer once the requests already
        // queued are committed and answered.
        for disk in &self.disks {
            lock(&disk.tx).take();
        }
        for disk in &self.disks {
            let Some(handle) = lock(&disk.writer).take() else { continue };
            let started = std::time::Instant::now();
            if handle.join().is_err() {
                error!(disk = %disk.dir.display(), "disk writer thread panicked");
            }
            let elapsed_ms = started.elapsed().as_millis() as u64;
            if elapsed_ms > 1000 {
                warn!(disk = %disk.dir.display(), elapsed_ms, "disk writer was slow to drain");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ---------------------------------------------------------------------------
// Writer: group commit
// ---------------------------------------------------------------------------

fn run_writer(db: Arc<DB>, mut rx: mpsc::Receiver<Request>, opts: StoreOptions) {
    while let Some(first) = rx.blocking_recv() {
        let mut appends = Vec::new();
        let mut seal = None;
        let mut group_bytes = 0u64;
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Append { extent, key, data, resp } => {
                    group_bytes += data.len_bytes();
                    appends.push(PendingAppend { extent, key, data, resp });
                }
                Request::Seal { extent, resp } => {
                    // A seal ends the group: it must see every append before it.
                    seal = Some((extent, resp));
                    break;
                }
            }
            if group_bytes >= opts.group_commit_max_bytes {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !appends.is_empty() {
            // Average group commit = bytes / commits: what one fdatasync covers.
            metrics::counter!("pocket_osd_group_commits_total").increment(1);
            metrics::counter!("pocket_osd_group_commit_appends_total").increment(appends.len() as u64);
            metrics::counter!("pocket_osd_group_commit_bytes_total").increment(group_bytes);
            commit_group(&db, appends, &opts);
        }
        if let Some((extent, resp)) = seal {
            let _ = resp.send(seal_extent(&db, &extent));
        }
    }
}

type AppendResponder = oneshot::Sender<Result<AppendOutcome, StoreError>>;

struct PendingAppend {
    extent: Arc<Extent>,
    key: Key,
    data: Body,
    resp: AppendResponder,
}

/// One extent's share of a group commit.
struct Staged {
    extent: Arc<Extent>,
    start: ExtentMut,
    next_offset: u64,
    records: Vec<(Key, RecordLocation)>,
    pending_keys: HashMap<Key, u64>,
    /// (responder, offset, whether it duplicates a record of this group)
    waiters: Vec<(AppendResponder, u64, bool)>,
    failed: Option<StoreError>,
    /// With direct appends (ADR 11): the group's record bytes for this
    /// extent, written with one direct write before the sync.
    direct_parts: Vec<Bytes>,
}

enum Staging {
    /// Respond after the group is durable.
    Wait { offset: u64, duplicate: bool },
    /// Respond now.
    Done(Result<AppendOutcome, StoreError>),
}

fn commit_group(db: &DB, appends: Vec<PendingAppend>, opts: &StoreOptions) {
    let mut staged: Vec<Staged> = Vec::new();
    let mut slot: HashMap<ExtentId, usize> = HashMap::new();
    for a in appends {
        let i = *slot.entry(a.extent.id).or_insert_with(|| {
            let start = a.extent.snapshot();
            staged.push(Staged {
                extent: a.extent.clone(),
                start,
                next_offset: start.records_end,
                records: Vec::new(),
                pending_keys: HashMap::new(),
                waiters: Vec::new(),
                failed: None,
                direct_parts: Vec::new(),
            });
            staged.len() - 1
        });
        let s = &mut staged[i];
        match stage_append(db, s, a.key, a.data.chunks(), opts) {
            Staging::Wait { offset, duplicate } => s.waiters.push((a.resp, offset, duplicate)),
            Staging::Done(result) => {
                let _ = a.resp.send(result);
            }
        }
    }

    // One direct write per touched extent that appends directly.
    for s in staged.iter_mut().filter(|s| s.failed.is_none() && !s.direct_parts.is_empty()) {
        let parts: Vec<&[u8]> = s.direct_parts.iter().map(|part| &part[..]).collect();
        let written = match lock(&s.extent.direct).as_mut() {
            Some(direct) => direct.append(&parts, s.start.records_end),
            None => Err(io::Error::other("the extent's direct appender is gone")),
        };
        if let Err(e) = written {
            s.failed = Some(StoreError::Io { context: "write records", source: e });
        }
    }

    // One fdatasync per touched file.
    for s in staged.iter_mut().filter(|s| s.failed.is_none() && !s.records.is_empty()) {
        match s.extent.file.sync_data() {
            Ok(()) => drop_extent_behind(&s.extent, s.next_offset, opts.page_cache_window_bytes),
            Err(e) => s.failed = Some(StoreError::Io { context: "sync extent file", source: e }),
        }
    }

    // One RocksDB batch for the whole group.
    let mut batch = WriteBatch::default();
    for s in staged.iter().filter(|s| s.failed.is_none() && !s.records.is_empty()) {
        for (key, loc) in &s.records {
            batch.put(meta::record_key(s.extent.id, key), loc.encode());
        }
        let meta = ExtentMeta {
            state: ExtentState::Open,
            max_size_bytes: s.extent.max_size_bytes,
            indexed_up_to: s.next_offset,
            record_count: s.start.record_count + s.records.len() as u64,
        };
        batch.put(meta::extent_key(s.extent.id), meta.encode());
    }
    if !batch.is_empty() {
        if let Err(e) = db.write(batch) {
            for s in staged.iter_mut().filter(|s| s.failed.is_none() && !s.records.is_empty()) {
                s.failed = Some(StoreError::Meta(e.clone()));
            }
        }
    }

    for s in staged {
        let id = s.extent.id;
        match &s.failed {
            Some(failure) => {
                error!(extent = id, error = %failure, "group commit failed; extent stops accepting writes until restart");
                lock(&s.extent.state).poisoned = true;
                for (resp, _, _) in s.waiters {
                    let _ = resp.send(Err(failure.for_another_waiter(id)));
                }
            }
            None => {
                if !s.records.is_empty() {
                    let mut st = lock(&s.extent.state);
                    st.records_end = s.next_offset;
                    st.size_bytes = s.next_offset;
                    st.record_count = s.start.record_count + s.records.len() as u64;
                }
                for (resp, offset, duplicate) in s.waiters {
                    let outcome = if duplicate {
                        AppendOutcome::AlreadyPresent { offset }
                    } else {
                        AppendOutcome::Appended { offset }
                    };
                    let _ = resp.send(Ok(outcome));
                }
            }
        }
    }
}

/// Pages are dropped in steps of at least this much (fewer syscalls).
const DROP_BEHIND_STEP_BYTES: u64 = 4 * 1024 * 1024;

/// Drops the pages of `extent` more than `window` bytes behind `synced_end`
/// from the page cache (see [`drop_behind`]), remembering how far it got.
fn drop_extent_behind(extent: &Extent, synced_end: u64, window: Option<u64>) {
    let Some(window) = window else { return };
    if lock(&extent.direct).is_some() {
        return; // written around the page cache
    }
    let from = extent.uncached_up_to.load(Ordering::Relaxed);
    let to = drop_behind(&extent.file, from, synced_end, window);
    if to > from {
        extent.uncached_up_to.store(to, Ordering::Relaxed);
        metrics::counter!("pocket_osd_page_cache_dropped_bytes_total").increment(to - from);
    }
}

/// Drop-behind (ADR 8): drops the pages of `file` from `uncached` up to
/// `window` bytes behind `synced_end` from the page cache, in steps of at
/// least 4 MiB, and returns how far pages are dropped now. The pages were
/// just made durable by fdatasync, so they are clean and the kernel frees
/// them at once; the next writes reuse that memory instead of taking new
/// pages, and the cache keeps room for reads. Advisory: a failure costs only
/// memory, never data. `pocket limits` writes its OSD-pattern files with it.
pub fn drop_behind(file: &File, uncached: u64, synced_end: u64, window: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let to = synced_end.saturating_sub(window) & !(4096 - 1);
    // Never a length of 0: posix_fadvise reads it as "to the end of the file".
    if to < uncached.saturating_add(DROP_BEHIND_STEP_BYTES) {
        return uncached;
    }
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(uncached), libc::off_t::try_from(to - uncached)) else {
        return uncached;
    };
    #[allow(unsafe_code)]
    // SAFETY: posix_fadvise(2) on a file descriptor the caller owns; advisory only.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    if rc == 0 {
        to
    } else {
        uncached
    }
}

fn stage_append(db: &DB, s: &mut Staged, key: Key, data: &[Bytes], opts: &StoreOptions) -> Staging {
    let id = s.extent.id;
    if s.start.sealed {
        return Staging::Done(Err(StoreError::Sealed(id)));
    }
    if s.start.poisoned || s.failed.is_some() {
        return Staging::Done(Err(StoreError::Poisoned(id)));
    }
    if let Some(&offset) = s.pending_keys.get(&key) {
        return Staging::Wait { offset, duplicate: true };
    }
    match meta::get_record(db, id, &key) {
        Ok(Lookup::Found(loc)) => return Staging::Done(Ok(AppendOutcome::AlreadyPresent { offset: loc.offset })),
        Ok(Lookup::Missing) => {}
        Ok(Lookup::Undecodable) => {
            warn!(extent = id, %key, "undecodable record entry; appending the record again");
        }
        Err(e) => return Staging::Done(Err(StoreError::Meta(e))),
    }
    let data_len: u64 = data.iter().map(|chunk| chunk.len() as u64).sum();
    if data_len > opts.max_record_bytes {
        return Staging::Done(Err(StoreError::TooLarge { len_bytes: data_len, max_bytes: opts.max_record_bytes }));
    }
    let record_bytes = RECORD_HEADER_LEN as u64 + data_len;
    if s.next_offset.saturating_add(record_bytes) > s.extent.max_size_bytes {
        return Staging::Done(Err(StoreError::ExtentFull {
            extent: id,
            size_bytes: s.next_offset,
            record_bytes,
            max_size_bytes: s.extent.max_size_bytes,
        }));
    }
    let header = RecordHeader::for_chunks(key, data);
    let header_bytes = header.encode();
    // Pair assertion: the bytes about to be written decode to what we meant.
    assert_eq!(RecordHeader::decode(&header_bytes), Ok(header), "encoded record header must decode");
    let offset = s.next_offset;
    if lock(&s.extent.direct).is_some() {
        // Written with the group's other records of this extent, in one
        // direct write before the sync (ADR 11).
        s.direct_parts.push(Bytes::copy_from_slice(&header_bytes));
        s.direct_parts.extend(data.iter().cloned());
    } else {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + data.len());
        parts.push(&header_bytes);
        parts.extend(data.iter().map(|chunk| &chunk[..]));
        if let Err(e) = write_all_vectored_at(&s.extent.file, &parts, offset) {
            let err = StoreError::Io { context: "write record", source: e };
            s.failed = Some(err.for_another_waiter(id));
            return Staging::Done(Err(err));
        }
    }
    s.next_offset = offset + record_bytes;
    s.records.push((key, RecordLocation { offset, data_len }));
    s.pending_keys.insert(key, offset);
    Staging::Wait { offset, duplicate: false }
}

/// Whether `[at, file_len)` is the zero padding a direct append leaves: less
/// than a block of zeros ending on a block boundary.
fn is_direct_padding(file: &File, at: u64, file_len: u64) -> io::Result<bool> {
    let align = DIRECT_IO_ALIGN as u64;
    if !file_len.is_multiple_of(align) || file_len - at >= align {
        return Ok(false);
    }
    let mut tail = vec![0u8; (file_len - at) as usize];
    file.read_exact_at(&mut tail, at)?;
    Ok(tail.iter().all(|b| *b == 0))
}

/// The `O_DIRECT` appender of an open extent whose records end at `end`, if
/// the options ask for one and the filesystem allows it.
fn open_direct(path: &Path, file: &File, end: u64, opts: &StoreOptions) -> Result<Option<DirectAppender>, StoreError> {
    if !opts.direct_io {
        return Ok(None);
    }
    DirectAppender::open(path, file, end).map_err(io_err("open extent file for direct writes"))
}

/// Writes every byte of `parts`, in order, at `offset`: vectored writes
/// (writev) from the buffers the record arrived in, with no copy into one
/// buffer first. The file position is used only here, on the disk's writer
/// thread; every other access to an extent file is positional.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    let mut file = file;
    file.seek(io::SeekFrom::Start(offset))?;
    let mut slices: Vec<io::IoSlice<'_>> = parts.iter().map(|part| io::IoSlice::new(part)).collect();
    let mut remaining = &mut slices[..];
    io::IoSlice::advance_slices(&mut remaining, 0);
    while !remaining.is_empty() {
        match file.write_vectored(remaining) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut remaining, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the footer of an open extent from its RocksDB entries, syncs it and
/// records the extent as sealed. Idempotent. Runs on the disk's writer thread
/// (or in recovery, before it starts).
fn seal_extent(db: &DB, ext: &Extent) -> Result<SealInfo, StoreError> {
    let s = ext.snapshot();
    if s.sealed {
        return Ok(SealInfo { size_bytes: s.size_bytes, record_count: s.record_count });
    }
    if s.poisoned {
        return Err(StoreError::Poisoned(ext.id));
    }
    let (records, undecodable) = meta::load_records(db, ext.id)?;
    if undecodable > 0 {
        warn!(extent = ext.id, undecodable, "sealing without undecodable record entries");
    }
    let mut located: Vec<IndexEntry> =
        records.into_iter().map(|(key, loc)| IndexEntry { key, offset: loc.offset, data_len: loc.data_len }).collect();
    located.sort_by_key(|e| e.offset);
    let mut entries = Vec::with_capacity(located.len());
    let mut previous_end = EXTENT_HEADER_LEN as u64;
    for e in located {
        match e.end() {
            Some(end) if e.offset >= previous_end && end <= s.records_end => {
                previous_end = end;
                entries.push(e);
            }
            _ => {
                warn!(extent = ext.id, offset = e.offset, key = %e.key, "record entry overlaps another or lies past the records; left out of the footer")
            }
        }
    }
    let footer = extent::encode_footer(&entries, s.records_end);
    // Pair assertion: the footer decodes to exactly the index we meant to write.
    assert!(
        extent::decode_footer(&footer).is_ok_and(|(t, decoded)| t.index_offset == s.records_end && decoded == entries),
        "encoded footer must decode to its entries"
    );
    let size_bytes = s.records_end + footer.len() as u64;
    // Direct appends leave zeros up to a whole block after the records: the
    // footer's end is the file's end.
    let written = ext
        .file
        .write_all_at(&footer, s.records_end)
        .and_then(|()| ext.file.set_len(size_bytes))
        .and_then(|()| ext.file.sync_data());
    if let Err(e) = written {
        lock(&ext.state).poisoned = true;
        error!(extent = ext.id, error = %e, "writing the footer failed; extent stops accepting writes until restart");
        return Err(StoreError::Io { context: "write extent footer", source: e });
    }
    let record_count = entries.len() as u64;
    lock(&ext.direct).take();
    {
        let mut st = lock(&ext.state);
        st.sealed = true;
        st.size_bytes = size_bytes;
        st.record_count = record_count;
    }
    let meta = ExtentMeta {
        state: ExtentState::Sealed,
        max_size_bytes: ext.max_size_bytes,
        indexed_up_to: s.records_end,
        record_count,
    };
    if let Err(e) = db.put(meta::extent_key(ext.id), meta.encode()) {
        // The footer is durable, so the extent is sealed: recovery finds the
        // footer where the records end and records the state then.
        warn!(extent = ext.id, error = %e, "recording the seal in metadata failed; recovery will redo it");
    }
    info!(extent = ext.id, size_bytes, record_count, "sealed extent");
    Ok(SealInfo { size_bytes, record_count })
}

// ---------------------------------------------------------------------------
// Opening a disk
// ---------------------------------------------------------------------------

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync directory"))
}

fn random_u128() -> io::Result<u128> {
    let mut b = [0u8; 16];
    io::Read::read_exact(&mut File::open("/dev/urandom")?, &mut b)?;
    Ok(u128::from_le_bytes(b))
}

/// Reads the disk's identity file, creating it on a fresh disk.
fn load_or_create_identity(dir: &Path) -> Result<u128, StoreError> {
    let path = dir.join(DISK_IDENTITY_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => parse_identity(&text).map_err(|reason| StoreError::DiskIdentity { path, reason }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let uuid = random_u128().map_err(io_err("generate disk uuid"))?;
            let text = format!("{DISK_IDENTITY_MAGIC}\nformat_version={DISK_FORMAT_VERSION}\nuuid={uuid:032x}\n");
            let tmp = tmp_path(&path);
            {
                let mut f = File::create(&tmp).map_err(io_err("create disk identity file"))?;
                f.write_all(text.as_bytes()).map_err(io_err("write disk identity file"))?;
                f.sync_all().map_err(io_err("sync disk identity file"))?;
            }
            fs::rename(&tmp, &path).map_err(io_err("rename disk identity file"))?;
            sync_dir(dir)?;
            info!(disk = %dir.display(), uuid = %format!("{uuid:032x}"), "initialised new disk");
            Ok(uuid)
        }
        Err(e) => Err(StoreError::Io { context: "read disk identity file", source: e }),
    }
}

fn parse_identity(text: &str) -> Result<u128, &'static str> {
    let mut lines = text.lines();
    if lines.next() != Some(DISK_IDENTITY_MAGIC) {
        return Err("identity file has a bad magic");
    }
    let version =
        lines.next().and_then(|l| l.strip_prefix("format_version=")).ok_or("identity file lacks format_version")?;
    if version.parse::<u32>() != Ok(DISK_FORMAT_VERSION) {
        return Err("unsupported disk format version");
    }
    let uuid = lines.next().and_then(|l| l.strip_prefix("uuid=")).ok_or("identity file lacks uuid")?;
    if uuid.len() != 32 {
        return Err("identity file has a malformed uuid");
    }
    u128::from_str_radix(uuid, 16).map_err(|_| "identity file has a malformed uuid")
}

/// Creates the disk layout if needed and opens its metadata database
/// (setting aside one that will not open or belongs to another disk).
fn open_disk(dir: &Path) -> Result<(u128, DB), StoreError> {
    fs::create_dir_all(dir.join(EXTENTS_DIR)).map_err(io_err("create disk directories"))?;
    sync_dir(dir)?;
    let uuid = load_or_create_identity(dir)?;
    let meta_dir = dir.join(META_DIR);
    let db = match meta::open_db(&meta_dir) {
        Ok(db) => db,
        Err(e) if is_lock_error(&e) => {
            // Another Store (or process) has this disk open: touching it would be wrong.
            return Err(StoreError::Meta(e));
        }
        Err(e) => {
            error!(disk = %dir.display(), error = %e, "metadata database will not open; setting it aside and rebuilding from the extent files");
            set_meta_aside(dir)?;
            meta::open_db(&meta_dir)?
        }
    };
    let db = match db.get(meta::DISK_UUID_KEY)? {
        None => {
            db.put(meta::DISK_UUID_KEY, uuid.to_le_bytes())?;
            db
        }
        Some(stored) if stored.as_slice() == uuid.to_le_bytes() => db,
        Some(_) => {
            error!(disk = %dir.display(), "metadata database belongs to another disk; setting it aside and rebuilding from the extent files");
            drop(db);
            set_meta_aside(dir)?;
            let db = meta::open_db(&meta_dir)?;
            db.put(meta::DISK_UUID_KEY, uuid.to_le_bytes())?;
            db
        }
    };
    // RocksDB's LOCK is held from here: the disk is ours.
    let removed = remove_tmp_files(dir)?;
    if removed > 0 {
        info!(disk = %dir.display(), removed, "removed temporary files");
    }
    Ok((uuid, db))
}

/// RocksDB's words for "another process (or this one) holds the database's LOCK".
fn is_lock_error(e: &rocksdb::Error) -> bool {
    let message = e.to_string();
    message.contains("While lock file") || message.contains("lock hold by current process")
}

fn set_meta_aside(dir: &Path) -> Result<(), StoreError> {
    let aside = dir.join(format!("{META_CORRUPT_PREFIX}{}", pocket_proto::now_unix_ms()));
    fs::rename(dir.join(META_DIR), &aside).map_err(io_err("set aside metadata database"))?;
    sync_dir(dir)?;
    warn!(disk = %dir.display(), to = %aside.display(), "metadata database set aside");
    Ok(())
}

/// Removes every `*.tmp` file under `dir`, except inside metadata databases
/// (RocksDB owns their file names).
fn remove_tmp_files(dir: &Path) -> Result<u64, StoreError> {
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err("list disk directory"))? {
            let entry = entry.map_err(io_err("list disk directory"))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let file_type = entry.file_type().map_err(io_err("stat disk entry"))?;
            if file_type.is_dir() {
                if d == dir && (name == META_DIR || name.starts_with(META_CORRUPT_PREFIX)) {
                    continue;
                }
                stack.push(entry.path());
            } else if name.ends_with(TMP_SUFFIX) {
                fs::remove_file(entry.path()).map_err(io_err("remove temporary file"))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------
// Recovery
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct RecoveryStats {
    extents: u64,
    sealed: u64,
    trusted: u64,
    scanned: u64,
    scanned_bytes: u64,
    records_restored: u64,
    entries_removed: u64,
    torn_tails: u64,
    truncated_bytes: u64,
    /// Open extents whose zero padding after the last record was cut (ADR 11).
    padding_cut: u64,
    corrupt_ranges: u64,
    corrupt_bytes: u64,
    quarantined: u64,
    damaged_headers: u64,
    resealed: u64,
    orphan_metas: u64,
}

fn recover_disk(disk: usize, dir: &Path, db: &DB, opts: &StoreOptions) -> Result<Vec<Extent>, StoreError> {
    let started = std::time::Instant::now();
    let mut stats = RecoveryStats::default();
    let metas: HashMap<ExtentId, Option<ExtentMeta>> = meta::load_extent_metas(db)?.into_iter().collect();
    let record_stats = meta::record_stats(db)?;
    let extents_dir = dir.join(EXTENTS_DIR);
    let mut files = Vec::new();
    for entry in fs::read_dir(&extents_dir).map_err(io_err("list extents directory"))? {
        let entry = entry.map_err(io_err("list extents directory"))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match extent::parse_extent_file_name(&name) {
            Some(id) => files.push((id, entry.path())),
            None if name.ends_with(CORRUPT_SUFFIX) => {}
            None => warn!(path = %entry.path().display(), "ignoring unexpected file in extents directory"),
        }
    }
    files.sort_by_key(|(id, _)| *id);
    let mut out = Vec::with_capacity(files.len());
    let mut present = HashSet::new();
    for (id, path) in files {
        present.insert(id);
        let meta = metas.get(&id).copied().flatten();
        if metas.get(&id).is_some_and(|m| m.is_none()) {
            warn!(extent = id, "undecodable extent metadata; rebuilding it from the file");
        }
        let rstats = record_stats.get(&id).copied().unwrap_or_default();
        if let Some(ext) = recover_extent(disk, db, id, &path, meta, rstats, &mut stats)? {
            stats.extents += 1;
            if ext.snapshot().sealed {
                stats.sealed += 1;
            } else {
                let direct = open_direct(&path, &ext.file, ext.snapshot().records_end, opts)?;
                *lock(&ext.direct) = direct;
            }
            out.push(ext);
        }
    }
    // Metadata whose extent file is gone: the data is not on this disk.
    let mut batch = WriteBatch::default();
    let orphan_ids = metas.keys().chain(record_stats.keys()).filter(|id| !present.contains(id)).copied();
    for id in orphan_ids.collect::<HashSet<_>>() {
        error!(extent = id, disk = %dir.display(), "metadata names an extent whose file is missing; dropping the metadata");
        meta::delete_extent(&mut batch, id);
        stats.orphan_metas += 1;
    }
    if !batch.is_empty() {
        db.write(batch)?;
    }
    info!(
        disk = %dir.display(),
        extents = stats.extents,
        sealed = stats.sealed,
        trusted_metadata = stats.trusted,
        scanned = stats.scanned,
        scanned_bytes = stats.scanned_bytes,
        records_restored = stats.records_restored,
        entries_removed = stats.entries_removed,
        torn_tails = stats.torn_tails,
        truncated_bytes = stats.truncated_bytes,
        padding_cut = stats.padding_cut,
        corrupt_ranges = stats.corrupt_ranges,
        corrupt_bytes = stats.corrupt_bytes,
        quarantined = stats.quarantined,
        damaged_headers = stats.damaged_headers,
        resealed = stats.resealed,
        orphan_metadata = stats.orphan_metas,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered disk"
    );
    Ok(out)
}

fn quarantine(
    db: &DB,
    id: ExtentId,
    path: &Path,
    why: &dyn std::fmt::Display,
    stats: &mut RecoveryStats,
) -> Result<(), StoreError> {
    let mut target = path.as_os_str().to_owned();
    target.push(CORRUPT_SUFFIX);
    let mut target = PathBuf::from(target);
    if target.exists() {
        target = PathBuf::from(format!("{}.{}", target.display(), pocket_proto::now_unix_ms()));
    }
    fs::rename(path, &target).map_err(io_err("quarantine extent file"))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    let mut batch = WriteBatch::default();
    meta::delete_extent(&mut batch, id);
    db.write(batch)?;
    error!(extent = id, path = %target.display(), reason = %why, "extent header is invalid; quarantined the extent");
    stats.quarantined += 1;
    Ok(())
}

/// How recovery should treat one extent file.
enum Plan {
    /// Metadata is consistent with the file: no extent I/O at all.
    TrustSealed(ExtentMeta),
    /// Scan records from `start` (and also treat as sealed before if `was_sealed`).
    Scan { start: u64, was_sealed: bool },
    /// A verified footer: its index is the record list.
    Footer(Trailer, Vec<IndexEntry>),
}

fn recover_extent(
    disk: usize,
    db: &DB,
    id: ExtentId,
    path: &Path,
    meta: Option<ExtentMeta>,
    rstats: RecordStats,
    stats: &mut RecoveryStats,
) -> Result<Option<Extent>, StoreError> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err("open extent file"))?;
    let file_len = file.metadata().map_err(io_err("stat extent file"))?.len();
    let mut header_bytes = [0u8; EXTENT_HEADER_LEN];
    let header = if file_len >= EXTENT_HEADER_LEN as u64 {
        file.read_exact_at(&mut header_bytes, 0).map_err(io_err("read extent header"))?;
        ExtentHeader::decode(&header_bytes)
    } else {
        Err(FormatError::Truncated {
            what: Structure::ExtentHeader,
            needed: EXTENT_HEADER_LEN as u64,
            available: file_len,
        })
    };
    let max_size_bytes = match header {
        Ok(h) if h.extent_id == id => h.max_size_bytes,
        Ok(h) => {
            let why = format!("header names extent {} but the file name names {id}", h.extent_id);
            quarantine(db, id, path, &why, stats)?;
            return Ok(None);
        }
        // A newer format is not corruption: refuse to run rather than
        // discard extents a newer binary wrote.
        Err(FormatError::UnsupportedVersion(version)) => {
            return Err(StoreError::UnsupportedFormat { path: path.to_path_buf(), version });
        }
        // The header is damaged but the metadata knows the extent: its
        // records are independent of the header and each carries its own
        // checksums, so keep serving them rather than drop acknowledged data.
        Err(e) if meta.is_some() => {
            let m = meta.as_ref().map(|m| m.max_size_bytes).unwrap_or_default();
            error!(extent = id, error = %e, "extent header is damaged; keeping the extent on its metadata, records are still checked one by one");
            stats.damaged_headers += 1;
            m
        }
        Err(e) => {
            quarantine(db, id, path, &e, stats)?;
            return Ok(None);
        }
    };
    if let Some(m) = meta {
        if m.max_size_bytes != max_size_bytes {
            warn!(
                extent = id,
                meta = m.max_size_bytes,
                header = max_size_bytes,
                "metadata disagrees with the extent header on max size; using the header"
            );
        }
    }
    // Every record RocksDB knows of ends at or before this offset: recovery
    // never truncates below it (those records were, or may have been, acknowledged).
    let floor = rstats.max_end.max(EXTENT_HEADER_LEN as u64);
    let mut window = Window::new(&file, file_len);

    let plan = match meta {
        Some(m) if m.state == ExtentState::Sealed => {
            let expected_len = m.indexed_up_to.checked_add(extent::footer_len(m.record_count));
            if expected_len == Some(file_len) && rstats.count == m.record_count {
                Plan::TrustSealed(m)
            } else if expected_len == Some(file_len) {
                warn!(
                    extent = id,
                    entries = rstats.count,
                    expected = m.record_count,
                    "sealed extent is missing record entries; reloading them from its footer"
                );
                match footer_at(&mut window, m.indexed_up_to).map_err(io_err("read extent footer"))? {
                    Some((t, entries)) => Plan::Footer(t, entries),
                    None => Plan::Scan { start: EXTENT_HEADER_LEN as u64, was_sealed: true },
                }
            } else {
                error!(extent = id, file_len, expected_len = ?expected_len, "sealed extent's length does not match its metadata; rescanning it");
                Plan::Scan { start: EXTENT_HEADER_LEN as u64, was_sealed: true }
            }
        }
        Some(m) => {
            let consistent = rstats.count == m.record_count && m.indexed_up_to >= floor && m.indexed_up_to <= file_len;
            if consistent {
                Plan::Scan { start: m.indexed_up_to, was_sealed: false }
            } else {
                warn!(
                    extent = id,
                    entries = rstats.count,
                    record_count = m.record_count,
                    indexed_up_to = m.indexed_up_to,
                    file_len,
                    "open extent's metadata is inconsistent; rescanning the whole extent"
                );
                Plan::Scan { start: EXTENT_HEADER_LEN as u64, was_sealed: false }
            }
        }
        None => match footer_from_end(&mut window).map_err(io_err("read extent footer"))? {
            Some((t, entries))
                if footer_tiles_records(&mut window, &t, &entries).map_err(io_err("verify extent footer"))? =>
            {
                Plan::Footer(t, entries)
            }
            _ => Plan::Scan { start: EXTENT_HEADER_LEN as u64, was_sealed: false },
        },
    };

    let mut reseal = false;
    let state = match plan {
        Plan::TrustSealed(m) => {
            stats.trusted += 1;
            ExtentMut {
                sealed: true,
                poisoned: false,
                records_end: m.indexed_up_to,
                size_bytes: file_len,
                record_count: m.record_count,
            }
        }
        Plan::Footer(trailer, entries) => {
            let (restored, removed) = sync_sealed_entries(db, id, &entries)?;
            stats.records_restored += restored;
            stats.entries_removed += removed;
            let record_count = entries.len() as u64;
            put_extent_meta(db, id, ExtentState::Sealed, max_size_bytes, trailer.index_offset, record_count)?;
            ExtentMut {
                sealed: true,
                poisoned: false,
                records_end: trailer.index_offset,
                size_bytes: file_len,
                record_count,
            }
        }
        Plan::Scan { start, was_sealed } => {
            stats.scanned += 1;
            stats.scanned_bytes += file_len.saturating_sub(start);
            let scan = scan_records(&mut window, id, start, floor).map_err(io_err("scan extent"))?;
            stats.corrupt_ranges += scan.skipped.len() as u64;
            stats.corrupt_bytes += scan.skipped.iter().map(|(a, b)| b - a).sum::<u64>();
            if let Some(at) = scan.torn_tail_at {
                if is_direct_padding(&file, at, file_len).map_err(io_err("read extent tail"))? {
                    // What direct appends leave after the last record (ADR 11).
                    stats.padding_cut += 1;
                } else {
                    warn!(
                        extent = id,
                        at,
                        cut_bytes = file_len - at,
                        "torn tail; truncating the extent after its last valid record"
                    );
                    stats.torn_tails += 1;
                    stats.truncated_bytes += file_len - at;
                }
                file.set_len(at).map_err(io_err("truncate torn extent tail"))?;
                file.sync_all().map_err(io_err("sync truncated extent"))?;
            }
            let size_bytes = scan.torn_tail_at.unwrap_or(file_len);
            match scan.footer {
                Some((trailer, entries)) => {
                    // The seal wrote the footer from the metadata after every
                    // record before it was indexed, so it lists every record.
                    let (restored, removed) = sync_sealed_entries(db, id, &entries)?;
                    stats.records_restored += restored;
                    stats.entries_removed += removed;
                    let record_count = trailer.record_count;
                    put_extent_meta(db, id, ExtentState::Sealed, max_size_bytes, trailer.index_offset, record_count)?;
                    ExtentMut {
                        sealed: true,
                        poisoned: false,
                        records_end: trailer.index_offset,
                        size_bytes,
                        record_count,
                    }
                }
                None => {
                    let restored = restore_entries(db, id, &scan.records)?;
                    stats.records_restored += restored;
                    let record_count = rstats.count + restored;
                    put_extent_meta(db, id, ExtentState::Open, max_size_bytes, scan.records_end, record_count)?;
                    // Sealed once, it must never take appends again.
                    reseal = was_sealed;
                    ExtentMut {
                        sealed: false,
                        poisoned: false,
                        records_end: scan.records_end,
                        size_bytes,
                        record_count,
                    }
                }
            }
        }
    };
    let ext = Extent {
        id,
        disk,
        file,
        max_size_bytes,
        state: Mutex::new(state),
        uncached_up_to: AtomicU64::new(0),
        // Set by the caller for an extent that takes appends.
        direct: Mutex::new(None),
    };
    if reseal {
        seal_extent(db, &ext)?;
        stats.resealed += 1;
    }
    Ok(Some(ext))
}

fn put_extent_meta(
    db: &DB,
    id: ExtentId,
    state: ExtentState,
    max_size_bytes: u64,
    indexed_up_to: u64,
    record_count: u64,
) -> Result<(), StoreError> {
    let m = ExtentMeta { state, max_size_bytes, indexed_up_to, record_count };
    db.put(meta::extent_key(id), m.encode())?;
    Ok(())
}

/// Adds an entry for every record RocksDB lacks (the first occurrence of a
/// key wins). Returns how many were added.
fn restore_entries(db: &DB, id: ExtentId, records: &[IndexEntry]) -> Result<u64, StoreError> {
    let mut restored = 0;
    let mut seen = HashSet::new();
    let mut batch = WriteBatch::default();
    for r in records {
        if !seen.insert(r.key) {
            continue;
        }
        if meta::get_record(db, id, &r.key)? == Lookup::Missing {
            batch.put(meta::record_key(id, &r.key), RecordLocation { offset: r.offset, data_len: r.data_len }.encode());
            restored += 1;
            if batch.len() >= RESTORE_BATCH_RECORDS {
                db.write(std::mem::take(&mut batch))?;
            }
        }
    }
    if !batch.is_empty() {
        db.write(batch)?;
    }
    Ok(restored)
}

/// Makes a sealed extent's record entries exactly its footer's index.
/// Returns (entries added or corrected, entries removed).
fn sync_sealed_entries(db: &DB, id: ExtentId, entries: &[IndexEntry]) -> Result<(u64, u64), StoreError> {
    let mut wanted: HashMap<Key, RecordLocation> =
        entries.iter().map(|e| (e.key, RecordLocation { offset: e.offset, data_len: e.data_len })).collect();
    let mut batch = WriteBatch::default();
    let mut removed = 0;
    let prefix = meta::record_prefix(id);
    for item in db.iterator(rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward)) {
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        let Some((_, key)) = meta::parse_record_key(&k) else { continue };
        match wanted.get(&key) {
            // Already right: nothing to write.
            Some(loc) if RecordLocation::decode(&v).as_ref() == Some(loc) => {
                wanted.remove(&key);
            }
            // Wrong or undecodable: rewritten below.
            Some(_) => {}
            None => {
                batch.delete(&k);
                removed += 1;
            }
        }
    }
    let restored = wanted.len() as u64;
    for (key, loc) in &wanted {
        batch.put(meta::record_key(id, key), loc.encode());
    }
    if !batch.is_empty() {
        db.write(batch)?;
    }
    Ok((restored, removed))
}

/// Bounded, positioned read-ahead over an extent file, for recovery.
struct Window<'a> {
    file: &'a File,
    file_len: u64,
    buf: Vec<u8>,
    start: u64,
}

impl<'a> Window<'a> {
    fn new(file: &'a File, file_len: u64) -> Window<'a> {
        Window { file, file_len, buf: Vec::new(), start: 0 }
    }

    /// Up to `want` (≤ SCAN_WINDOW_BYTES) bytes at `pos`; fewer only at end of file.
    fn get(&mut self, pos: u64, want: usize) -> io::Result<&[u8]> {
        debug_assert!(want <= SCAN_WINDOW_BYTES);
        let pos = pos.min(self.file_len);
        let end = pos.saturating_add(want as u64).min(self.file_len);
        let buf_end = self.start + self.buf.len() as u64;
        if !(pos >= self.start && end <= buf_end) {
            let n = (self.file_len - pos).min(SCAN_WINDOW_BYTES as u64) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.start = pos;
        }
        let from = (pos - self.start) as usize;
        let to = (end - self.start) as usize;
        Ok(&self.buf[from..to])
    }

    /// Validates the record at `pos`: header, data fully present, data checksum.
    fn check_record(&mut self, pos: u64) -> io::Result<Result<RecordHeader, FormatError>> {
        let header = match RecordHeader::decode(self.get(pos, RECORD_HEADER_LEN)?) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let available = self.file_len.saturating_sub(pos + RECORD_HEADER_LEN as u64);
        if header.data_len > available {
            return Ok(Err(FormatError::Truncated { what: Structure::RecordData, needed: header.data_len, available }));
        }
        let mut crc = 0u32;
        let mut at = pos + RECORD_HEADER_LEN as u64;
        let mut remaining = header.data_len;
        while remaining > 0 {
            let n = remaining.min(SCAN_WINDOW_BYTES as u64) as usize;
            let chunk = self.get(at, n)?;
            crc = crc32c::crc32c_append(crc, chunk);
            at += chunk.len() as u64;
            remaining -= chunk.len() as u64;
        }
        Ok(header.check_data_crc(crc).map(|()| header))
    }

    /// Whether the data of the record at `pos` hashes to its key (BLAKE3).
    fn data_hashes_to_key(&mut self, pos: u64, header: &RecordHeader) -> io::Result<bool> {
        let mut hasher = blake3::Hasher::new();
        let mut at = pos + RECORD_HEADER_LEN as u64;
        let mut remaining = header.data_len;
        while remaining > 0 {
            let n = remaining.min(SCAN_WINDOW_BYTES as u64) as usize;
            let chunk = self.get(at, n)?;
            hasher.update(chunk);
            at += chunk.len() as u64;
            remaining -= chunk.len() as u64;
        }
        Ok(*hasher.finalize().as_bytes() == *header.key.as_bytes())
    }

    /// The first valid record starting at or after `from`, if any.
    fn find_next_record(&mut self, from: u64) -> io::Result<Option<u64>> {
        let magic = RECORD_MAGIC.to_le_bytes();
        let mut p = from;
        while p.saturating_add(RECORD_HEADER_LEN as u64) <= self.file_len {
            let chunk = self.get(p, SCAN_WINDOW_BYTES)?;
            let n = chunk.len();
            let candidates: Vec<u64> = chunk
                .windows(magic.len())
                .enumerate()
                .filter(|(_, w)| *w == magic)
                .map(|(i, _)| p + i as u64)
                .collect();
            for c in candidates {
                // A record-shaped run of bytes can sit inside a blob's data;
                // only a record whose data hashes to its key is a real one.
                if let Ok(header) = self.check_record(c)? {
                    if self.data_hashes_to_key(c, &header)? {
                        return Ok(Some(c));
                    }
                }
            }
            if n < magic.len() {
                break;
            }
            // Overlap by magic.len() - 1 so a magic across two windows is seen.
            p += (n - (magic.len() - 1)) as u64;
        }
        Ok(None)
    }
}

/// A valid footer (trailer + index) at the end of the file, wherever it starts.
fn footer_from_end(w: &mut Window<'_>) -> io::Result<Option<(Trailer, Vec<IndexEntry>)>> {
    if w.file_len < (EXTENT_HEADER_LEN + TRAILER_LEN) as u64 {
        return Ok(None);
    }
    let Ok(trailer) = Trailer::decode(w.get(w.file_len - TRAILER_LEN as u64, TRAILER_LEN)?) else {
        return Ok(None);
    };
    if trailer.file_len() != Some(w.file_len) {
        return Ok(None);
    }
    let index_len = trailer.index_len().unwrap_or(u64::MAX);
    // index_offset + index_len + TRAILER_LEN == file_len, so this is a file-bounded read.
    let mut index = vec![0u8; index_len as usize];
    w.file.read_exact_at(&mut index, trailer.index_offset)?;
    Ok(extent::decode_index(&index, &trailer).ok().map(|entries| (trailer, entries)))
}

/// A valid footer whose index starts exactly at `pos` (where the records end).
fn footer_at(w: &mut Window<'_>, pos: u64) -> io::Result<Option<(Trailer, Vec<IndexEntry>)>> {
    Ok(footer_from_end(w)?.filter(|(t, _)| t.index_offset == pos))
}

/// Whether a footer found without metadata describes this file: its records
/// tile the file from the header to the index, and each record header it
/// names is valid and agrees with it. (A blob may contain bytes that look like
/// a footer; they cannot pass this.) Reads record headers only.
fn footer_tiles_records(w: &mut Window<'_>, t: &Trailer, entries: &[IndexEntry]) -> io::Result<bool> {
    let mut expected = EXTENT_HEADER_LEN as u64;
    for e in entries {
        if e.offset != expected {
            return Ok(false);
        }
        match RecordHeader::decode(w.get(e.offset, RECORD_HEADER_LEN)?) {
            Ok(h) if h.key == e.key && h.data_len == e.data_len => {}
            _ => return Ok(false),
        }
        expected = e.end().unwrap_or(u64::MAX);
    }
    Ok(expected == t.index_offset)
}

struct ScanResult {
    records: Vec<IndexEntry>,
    records_end: u64,
    /// A footer found where the records end: the extent is sealed.
    footer: Option<(Trailer, Vec<IndexEntry>)>,
    /// Invalid ranges skipped because valid records follow them.
    skipped: Vec<(u64, u64)>,
    /// Where to cut a torn tail, if the file ends in invalid bytes.
    torn_tail_at: Option<u64>,
}

/// Validates records from `start` to the end of the file. At an invalid
/// record: a footer starting there means sealed; a later valid record means
/// mid-extent corruption (skipped, later records kept); otherwise a torn tail
/// (cut, but never below `floor`).
fn scan_records(w: &mut Window<'_>, id: ExtentId, start: u64, floor: u64) -> io::Result<ScanResult> {
    let mut result =
        ScanResult { records: Vec::new(), records_end: start, footer: None, skipped: Vec::new(), torn_tail_at: None };
    let mut pos = start;
    while pos < w.file_len {
        let why = match w.check_record(pos)? {
            Ok(h) => {
                result.records.push(IndexEntry { key: h.key, offset: pos, data_len: h.data_len });
                pos += h.record_len();
                continue;
            }
            Err(why) => why,
        };
        if let Some(footer) = footer_at(w, pos)? {
            result.footer = Some(footer);
            break;
        }
        match w.find_next_record(pos + 1)? {
            Some(next) => {
                warn!(extent = id, from = pos, to = next, error = %why, "corrupt bytes inside extent; skipping them and keeping the records after");
                result.skipped.push((pos, next));
                pos = next;
            }
            None if pos >= floor => {
                result.torn_tail_at = Some(pos);
                break;
            }
            None => {
                // Below the floor, records were acknowledged: keep the bytes,
                // carry on after them.
                error!(extent = id, from = pos, to = floor, error = %why, "acknowledged records are corrupt; keeping the bytes");
                let to = floor.min(w.file_len);
                result.skipped.push((pos, to));
                pos = to;
            }
        }
    }
    result.records_end = pos.min(w.file_len);
    if let Some(at) = result.torn_tail_at {
        result.records_end = at;
    }
    Ok(result)
}

// ---------------------------------------------------------------------------
// Filesystem space
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct FsSpace {
    device: u64,
    total_bytes: u64,
    free_bytes: u64,
}

// statvfs has no safe std equivalent. Its field types differ between
// platforms, hence the casts that are no-ops on 64-bit Linux.
#[allow(unsafe_code, clippy::unnecessary_cast)]
fn fs_space(path: &Path) -> io::Result<FsSpace> {
    use std::os::unix::ffi::OsStrExt;
    let device = fs::metadata(path)?.dev();
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` points to
    // writable memory of the type statvfs fills in.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised (a valid statvfs) and filled in by a successful statvfs.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize as u64;
    Ok(FsSpace {
        device,
        total_bytes: (st.f_blocks as u64).saturating_mul(frsize),
        free_bytes: (st.f_bavail as u64).saturating_mul(frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_parses_what_it_writes() {
        let uuid = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        let text = format!("{DISK_IDENTITY_MAGIC}\nformat_version={DISK_FORMAT_VERSION}\nuuid={uuid:032x}\n");
        assert_eq!(parse_identity(&text), Ok(uuid));
        assert!(parse_identity("pocket-disk\nformat_version=2\nuuid=00000000000000000000000000000000\n").is_err());
        assert!(parse_identity("something else\n").is_err());
        assert!(parse_identity("pocket-disk\nformat_version=1\nuuid=xyz\n").is_err());
    }

    #[test]
    fn window_finds_a_record_hidden_after_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let mut bytes = vec![0xAAu8; 3 * SCAN_WINDOW_BYTES - 10];
        // Plant a fake magic with a bad header first: it must be skipped.
        bytes[100..104].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        let at = bytes.len() as u64;
        // A record whose data does not hash to its key, inside what could be
        // a blob's bytes: CRC-valid, but not a real record.
        let forged = vec![5u8; 100];
        bytes[200..200 + RECORD_HEADER_LEN].copy_from_slice(&RecordHeader::for_blob(Key([1; 32]), &forged).encode());
        bytes[200 + RECORD_HEADER_LEN..200 + RECORD_HEADER_LEN + 100].copy_from_slice(&forged);
        let data = vec![7u8; 1000];
        bytes.extend_from_slice(&RecordHeader::for_blob(Key::of(&data), &data).encode());
        bytes.extend_from_slice(&data);
        fs::write(&path, &bytes).expect("write");
        let file = File::open(&path).expect("open");
        let mut w = Window::new(&file, bytes.len() as u64);
        assert!(w.check_record(200).expect("io").is_ok(), "the forged record is CRC-valid");
        assert_eq!(w.find_next_record(1).expect("io"), Some(at), "resync skips the forged record");
        assert_eq!(w.find_next_record(at + 1).expect("io"), None);
        let h = w.check_record(at).expect("io").expect("valid record");
        assert_eq!(h.data_len, 1000);
    }
}
