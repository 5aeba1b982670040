//! [`Store`]: opening the disks, the operations on extents, and the few
//! accessors through which the other modules of the store (the writer,
//! recovery, whole extents) reach its state.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;
use pocket_format::{
    self as format, ExtentHeader, FormatError, RecordHeader, Structure, EXTENT_HEADER_LEN, RECORD_HEADER_LEN,
};
use pocket_proto::{Body, ExtentId, Key};
use rocksdb::DB;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{error, info, warn};

use super::error::{io_err, StoreError};
use super::extent::{open_direct, Extent, ExtentMut};
use super::layout::{fs_space, open_disk, read_identity, sync_dir, tmp_path, EXTENTS_DIR};
use super::lock;
use super::recovery::recover_disk;
use super::types::{AppendOutcome, DiskInfo, ExtentInfo, ListedExtent, SealInfo, StoreOptions};
use super::whole::{self, ParityExtent, WholeExtents};
use super::writer::{run_writer, Request};
use crate::meta::{self, ExtentMeta, ExtentState, Lookup, RecordLocation};

/// Bytes of record buffers that concurrent reads may hold at once; reads
/// beyond it wait. 256 MiB = 8 max-size blobs.
const READ_BUFFER_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// The storage engine of one OSD: all its disks. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    opts: StoreOptions,
    disks: Vec<Disk>,
    extents: RwLock<HashMap<ExtentId, Arc<Extent>>>,
    /// Parity extents and whole extents being received (erasure coding; `whole.rs`).
    whole: WholeExtents,
    /// Serialises `create_extent`, whole-extent loading and deletion (blocking, rare).
    create_lock: Mutex<()>,
    read_budget: Arc<Semaphore>,
}

/// One disk directory of the store, its database and its writer thread.
pub(super) struct Disk {
    dir: PathBuf,
    uuid: u128,
    db: Arc<DB>,
    /// Taken (closing the queue) at shutdown.
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Why the disk was failed (never cleared while the process runs): its
    /// extents are no longer served and it takes no new ones.
    failed: Mutex<Option<String>>,
    /// Test-only fault hook: every read and append on this disk fails with
    /// EIO (set by [`Store::check_disks`] when fault injection is enabled).
    inject_io_errors: std::sync::atomic::AtomicBool,
}

impl Disk {
    fn sender(&self) -> Result<mpsc::Sender<Request>, StoreError> {
        lock(&self.tx).clone().ok_or(StoreError::ShuttingDown)
    }

    /// The disk's directory.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The disk's metadata database.
    pub(super) fn db(&self) -> &DB {
        &self.db
    }
}

/// A record found in the metadata and not yet read: from [`Store::locate`],
/// for [`Store::read_located`]. Lets a reader budget the record's bytes
/// between the lookup and the read without a second lookup.
pub struct LocatedRecord {
    extent: Arc<Extent>,
    key: Key,
    location: RecordLocation,
}

impl LocatedRecord {
    /// The record's data length as the metadata gives it, not yet checked
    /// against the record itself: what a reader budgets before the read.
    pub fn data_len(&self) -> u64 {
        self.location.data_len
    }
}

/// A disk after `open_disk` and recovery: its uuid, database, extents and parity extents.
type OpenedDisk = (u128, DB, Vec<Extent>, Vec<(ExtentId, ParityExtent)>);

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
        let mut parity_extents: HashMap<ExtentId, Arc<ParityExtent>> = HashMap::new();
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
                failed: Mutex::new(None),
                inject_io_errors: std::sync::atomic::AtomicBool::new(false),
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
                whole: WholeExtents::new(parity_extents),
                create_lock: Mutex::new(()),
                read_budget: Arc::new(Semaphore::new(READ_BUFFER_BUDGET_BYTES)),
            }),
        })
    }

    /// Creates an empty open extent on the disk holding the fewest extents.
    /// Idempotent: Ok if `id` already exists with the same `max_size_bytes`.
    /// The header is durable (file and directory synced) before Ok. Blocking.
    pub fn create_extent(&self, id: ExtentId, max_size_bytes: u64) -> Result<(), StoreError> {
        if max_size_bytes < (EXTENT_HEADER_LEN + RECORD_HEADER_LEN) as u64 {
            return Err(StoreError::BadMaxSize { extent: id, max_size_bytes });
        }
        let _creating = self.creation_lock();
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
        let disk_index = self.pick_disk()?;
        let disk = &self.inner.disks[disk_index];
        let extents_dir = disk.dir.join(EXTENTS_DIR);
        let path = extents_dir.join(format::extent_file_name(id));
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
        let state = ExtentMut { sealed: false, poisoned: false, records_end, size_bytes: records_end, record_count: 0 };
        // The file is durable: from here the extent exists (recovery would
        // find it), so it is served even if the metadata write fails.
        self.serve_extent(Extent::new(id, disk_index, file, max_size_bytes, state, direct));
        let meta = ExtentMeta { state: ExtentState::Open, max_size_bytes, indexed_up_to: records_end, record_count: 0 };
        disk.db.put(meta::extent_key(id), meta.encode())?;
        info!(extent = id, disk = %disk.dir.display(), max_size_bytes, "created extent");
        Ok(())
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
        let disk = ext.disk;
        self.injected_fault(disk)?;
        let (resp, rx) = oneshot::channel();
        let tx = self.inner.disks[ext.disk].sender()?;
        tx.send(Request::Append { extent: ext, key, data, resp }).await.map_err(|_| StoreError::ShuttingDown)?;
        // Hold no sender while waiting: shutdown waits for every sender to go.
        drop(tx);
        let result = rx.await.map_err(|_| StoreError::ShuttingDown)?;
        self.note_io_error(disk, &result);
        result
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

    /// Reads the data of `key` in extent `id`: one metadata lookup, then
    /// [`Store::read_located`].
    pub async fn read(&self, id: ExtentId, key: &Key) -> Result<Bytes, StoreError> {
        let store = self.clone();
        let key = *key;
        let located = tokio::task::spawn_blocking(move || store.locate(id, &key))
            .await
            .map_err(|_| StoreError::ShuttingDown)??;
        match located {
            Some(record) => self.read_located(record).await,
            None => Err(StoreError::NotFound { extent: id, key }),
        }
    }

    /// Finds `key`'s record in extent `id` from metadata only (one RocksDB
    /// lookup, no extent I/O); None if the extent does not hold the key.
    /// Blocking.
    pub fn locate(&self, id: ExtentId, key: &Key) -> Result<Option<LocatedRecord>, StoreError> {
        let ext = self.extent(id)?;
        match meta::get_record(&self.inner.disks[ext.disk].db, id, key)? {
            Lookup::Found(location) => Ok(Some(LocatedRecord { extent: ext, key: *key, location })),
            Lookup::Missing => Ok(None),
            Lookup::Undecodable => Err(StoreError::CorruptMeta { extent: id, detail: "undecodable record entry" }),
        }
    }

    /// Reads a record found by [`Store::locate`]: one positioned read of
    /// that record, whose header checksum, key, length and data checksum
    /// are verified.
    pub async fn read_located(&self, record: LocatedRecord) -> Result<Bytes, StoreError> {
        let LocatedRecord { extent: ext, key, location: loc } = record;
        let id = ext.id;
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
        let disk = ext.disk;
        self.injected_fault(disk)?;
        let result = tokio::task::spawn_blocking(move || {
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
        .map_err(|_| StoreError::ShuttingDown)?;
        self.note_io_error(disk, &result);
        result
    }

    /// The test-only fault hook: EIO (and the disk failed) if injected.
    fn injected_fault(&self, disk: usize) -> Result<(), StoreError> {
        if self.inner.disks[disk].inject_io_errors.load(std::sync::atomic::Ordering::Relaxed) {
            let error = StoreError::Io { context: "injected fault", source: io::Error::from_raw_os_error(libc::EIO) };
            self.fail_disk(disk, &error.to_string());
            return Err(error);
        }
        Ok(())
    }

    /// A disk that returned an I/O error is failed: its data is repaired
    /// elsewhere rather than trusted.
    fn note_io_error<T>(&self, disk: usize, result: &Result<T, StoreError>) {
        if let Err(error @ StoreError::Io { .. }) = result {
            self.fail_disk(disk, &error.to_string());
        }
    }

    /// Fails disk `index` for `reason` (the first reason stays): its
    /// extents are no longer served, and no new extent goes to it.
    pub fn fail_disk(&self, index: usize, reason: &str) {
        let disk = &self.inner.disks[index];
        let mut failed = lock(&disk.failed);
        if failed.is_none() {
            error!(disk = %disk.dir.display(), reason, "disk failed: its extents are no longer served");
            metrics::counter!("pocket_osd_disks_failed_total").increment(1);
            *failed = Some(reason.to_string());
        }
    }

    /// The uuid of the disk holding extent or parity extent `id`, whether
    /// or not that disk failed; None if this OSD never had it (or lost it
    /// with a disk that was replaced).
    pub fn extent_disk(&self, id: ExtentId) -> Option<u128> {
        let index = {
            let map = self.inner.extents.read().unwrap_or_else(|p| p.into_inner());
            map.get(&id).map(|ext| ext.disk)
        };
        let index = index.or_else(|| self.whole_extents().parity().get(&id).map(|parity| parity.disk))?;
        Some(self.inner.disks[index].uuid)
    }

    /// Each disk's directory, in the order given to [`Store::open`].
    pub fn disk_dirs(&self) -> Vec<std::path::PathBuf> {
        self.inner.disks.iter().map(|disk| disk.dir.clone()).collect()
    }

    /// Why disk `index` failed, if it did.
    pub fn disk_failure(&self, index: usize) -> Option<String> {
        lock(&self.inner.disks[index].failed).clone()
    }

    /// Checks every disk by path: its directory and identity file must still
    /// be there and name the disk that was opened (open descriptors keep
    /// working after a directory is removed, so they prove nothing). With
    /// `fault_injection`, a file `DISK.inject-eio` beside a disk makes its
    /// reads and appends fail with EIO (tests only). Blocking.
    pub fn check_disks(&self, fault_injection: bool) {
        for (index, disk) in self.inner.disks.iter().enumerate() {
            if lock(&disk.failed).is_some() {
                continue;
            }
            match read_identity(&disk.dir) {
                Ok(uuid) if uuid == disk.uuid => {}
                Ok(uuid) => self.fail_disk(index, &format!("identity changed to {uuid:032x} behind the OSD's back")),
                Err(reason) => self.fail_disk(index, &format!("identity unreadable: {reason}")),
            }
            if fault_injection {
                let mut trigger = disk.dir.clone().into_os_string();
                trigger.push(".inject-eio");
                let inject = std::path::Path::new(&trigger).exists();
                disk.inject_io_errors.store(inject, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let failed = self.inner.disks.iter().filter(|disk| lock(&disk.failed).is_some()).count();
        metrics::gauge!("pocket_osd_disks_failed").set(failed as f64);
    }

    /// Whether extent `id` holds `key`, from metadata only (no extent I/O).
    pub fn has(&self, id: ExtentId, key: &Key) -> Result<bool, StoreError> {
        Ok(self.locate(id, key)?.is_some())
    }

    /// An extent's state; a parity extent shows as sealed, with no records.
    pub fn extent_info(&self, id: ExtentId) -> Result<Option<ExtentInfo>, StoreError> {
        if let Some(parity) = self.parity_extent(id) {
            return Ok(Some(ExtentInfo {
                id,
                sealed: true,
                size_bytes: parity.size_bytes(),
                record_count: 0,
                max_size_bytes: parity.size_bytes(),
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

    /// One page of the extents this store serves (data and parity, on disks
    /// that have not failed), in id order after `after`: at most `limit`,
    /// and whether more follow.
    pub fn list_page(&self, after: ExtentId, limit: usize) -> (Vec<ListedExtent>, bool) {
        let mut out: Vec<ListedExtent> = {
            let map = self.inner.extents.read().unwrap_or_else(|p| p.into_inner());
            map.values()
                .filter(|ext| ext.id > after && self.check_disk_ok(ext.disk).is_ok())
                .map(|ext| {
                    let s = ext.snapshot();
                    ListedExtent { id: ext.id, sealed: s.sealed, parity: false, size_bytes: s.size_bytes }
                })
                .collect()
        };
        out.extend(
            self.whole_extents()
                .parity()
                .iter()
                .filter(|(id, parity)| **id > after && self.check_disk_ok(parity.disk).is_ok())
                .map(|(id, parity)| ListedExtent { id: *id, sealed: true, parity: true, size_bytes: parity.size_bytes() }),
        );
        out.sort_by_key(|listed| listed.id);
        let more = out.len() > limit;
        out.truncate(limit);
        (out, more)
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
                    failed: lock(&d.failed).clone(),
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


/// What the other modules of the store reach through: nothing else of a
/// [`Store`]'s state is visible outside this module.
impl Store {
    pub(super) fn extent(&self, id: ExtentId) -> Result<Arc<Extent>, StoreError> {
        let map = self.inner.extents.read().unwrap_or_else(|p| p.into_inner());
        let ext = map.get(&id).cloned().ok_or(StoreError::UnknownExtent(id))?;
        drop(map);
        self.check_disk_ok(ext.disk)?;
        Ok(ext)
    }

    /// An error if disk `index` failed.
    pub(super) fn check_disk_ok(&self, index: usize) -> Result<(), StoreError> {
        match lock(&self.inner.disks[index].failed).as_ref() {
            None => Ok(()),
            Some(reason) => Err(StoreError::DiskFailed { disk: self.inner.disks[index].dir.clone(), reason: reason.clone() }),
        }
    }

    /// Starts serving a loaded extent.
    pub(super) fn serve_extent(&self, ext: Extent) {
        self.inner.extents.write().unwrap_or_else(|p| p.into_inner()).insert(ext.id, Arc::new(ext));
    }

    /// Stops serving extent `id`; reads already holding it finish.
    pub(super) fn forget_extent(&self, id: ExtentId) {
        self.inner.extents.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// The disk a new extent goes to: the one holding the fewest extents,
    /// then the one with the most free space.
    pub(super) fn pick_disk(&self) -> Result<usize, StoreError> {
        let mut counts = vec![0u64; self.inner.disks.len()];
        for ext in self.inner.extents.read().unwrap_or_else(|p| p.into_inner()).values() {
            counts[ext.disk] += 1;
        }
        let free: Vec<u64> =
            self.inner.disks.iter().map(|d| fs_space(&d.dir).map(|s| s.free_bytes).unwrap_or(0)).collect();
        (0..self.inner.disks.len())
            .filter(|&i| lock(&self.inner.disks[i].failed).is_none())
            .min_by_key(|&i| (counts[i], std::cmp::Reverse(free[i])))
            .ok_or(StoreError::NoHealthyDisk)
    }

    /// Disk number `index`, in the order the disks were given to [`Store::open`].
    pub(super) fn disk(&self, index: usize) -> &Disk {
        &self.inner.disks[index]
    }

    pub(super) fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    /// Held while an extent is created, loaded whole or deleted: no other
    /// of these can interleave with the check that an id is free.
    pub(super) fn creation_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.inner.create_lock)
    }

    pub(super) fn whole_extents(&self) -> &WholeExtents {
        &self.inner.whole
    }
}
