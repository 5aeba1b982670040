//! The per-disk metadata database (`DISK/meta/`, RocksDB): its key schema,
//! value encodings and tuning. The extent files are the truth; everything here
//! can be rebuilt from them (see `store/recovery.rs`), so RocksDB's WAL is not
//! synced on write.
//!
//! | key | value |
//! |---|---|
//! | `d` `uuid` | the disk uuid (16 bytes) the database belongs to |
//! | `e` + extent_id (u64 BE) | [`ExtentMeta`], 26 bytes |
//! | `r` + extent_id (u64 BE) + key (32 bytes) | [`RecordLocation`], 16 bytes |
//!
//! Big-endian ids keep each extent's records contiguous and in id order.

use pocket_proto::{ExtentId, Key, KEY_LEN};
use rocksdb::{Direction, IteratorMode, Options, DB};

/// Prefix of extent entries.
pub const EXTENT_PREFIX: u8 = b'e';
/// Prefix of record entries.
pub const RECORD_PREFIX: u8 = b'r';
/// Key of the disk uuid entry.
pub const DISK_UUID_KEY: &[u8] = b"duuid";

/// Version byte leading every [`ExtentMeta`] value.
pub const EXTENT_META_VERSION: u8 = 1;
const EXTENT_META_LEN: usize = 26;
const RECORD_LOCATION_LEN: usize = 16;

/// Memtable size. Entries are ~60 bytes; 8 MiB holds ~100k records before a
/// flush, which keeps memory per disk small on machines with many disks.
const WRITE_BUFFER_SIZE_BYTES: usize = 8 * 1024 * 1024;
/// Background flush/compaction threads per disk database.
const MAX_BACKGROUND_JOBS: i32 = 2;
/// Open SST files per disk database: bounded so many disks don't exhaust fds.
const MAX_OPEN_FILES: i32 = 256;
/// RocksDB's own info log: a few small files, not an unbounded history.
const INFO_LOG_FILE_SIZE_BYTES: usize = 1024 * 1024;
const INFO_LOG_FILES_KEPT: usize = 3;

/// Opens (creating if missing) the metadata database at `path`, tuned for
/// many small writes and point lookups.
pub fn open_db(path: &std::path::Path) -> Result<DB, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    opts.set_write_buffer_size(WRITE_BUFFER_SIZE_BYTES);
    opts.set_max_write_buffer_number(2);
    opts.set_max_background_jobs(MAX_BACKGROUND_JOBS);
    opts.set_max_open_files(MAX_OPEN_FILES);
    opts.set_max_log_file_size(INFO_LOG_FILE_SIZE_BYTES);
    opts.set_keep_log_file_num(INFO_LOG_FILES_KEPT);
    DB::open(&opts, path)
}

/// Key of an extent's [`ExtentMeta`].
pub fn extent_key(id: ExtentId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = EXTENT_PREFIX;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Common prefix of all record entries of one extent.
pub fn record_prefix(id: ExtentId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = RECORD_PREFIX;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Key of one record's [`RecordLocation`].
pub fn record_key(id: ExtentId, key: &Key) -> [u8; 9 + KEY_LEN] {
    let mut k = [0u8; 9 + KEY_LEN];
    k[..9].copy_from_slice(&record_prefix(id));
    k[9..].copy_from_slice(key.as_bytes());
    k
}

/// Splits a record entry's key into extent id and blob key.
pub fn parse_record_key(k: &[u8]) -> Option<(ExtentId, Key)> {
    if k.len() != 9 + KEY_LEN || k[0] != RECORD_PREFIX {
        return None;
    }
    let id = ExtentId::from_be_bytes(k[1..9].try_into().ok()?);
    let key = Key::from_slice(&k[9..]).ok()?;
    Some((id, key))
}

fn parse_extent_key(k: &[u8]) -> Option<ExtentId> {
    if k.len() != 9 || k[0] != EXTENT_PREFIX {
        return None;
    }
    Some(ExtentId::from_be_bytes(k[1..9].try_into().ok()?))
}

/// Whether an extent still accepts appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentState {
    Open = 0,
    Sealed = 1,
}

/// What RocksDB remembers about one extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentMeta {
    pub state: ExtentState,
    pub max_size_bytes: u64,
    /// Every record that ends at or before this offset has its `r` entry.
    /// For a sealed extent: where the footer starts.
    pub indexed_up_to: u64,
    /// Number of `r` entries of this extent.
    pub record_count: u64,
}

impl ExtentMeta {
    pub fn encode(&self) -> [u8; EXTENT_META_LEN] {
        let mut b = [0u8; EXTENT_META_LEN];
        b[0] = EXTENT_META_VERSION;
        b[1] = self.state as u8;
        b[2..10].copy_from_slice(&self.max_size_bytes.to_le_bytes());
        b[10..18].copy_from_slice(&self.indexed_up_to.to_le_bytes());
        b[18..26].copy_from_slice(&self.record_count.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<ExtentMeta> {
        if b.len() != EXTENT_META_LEN || b[0] != EXTENT_META_VERSION {
            return None;
        }
        let state = match b[1] {
            0 => ExtentState::Open,
            1 => ExtentState::Sealed,
            _ => return None,
        };
        Some(ExtentMeta {
            state,
            max_size_bytes: u64::from_le_bytes(b[2..10].try_into().ok()?),
            indexed_up_to: u64::from_le_bytes(b[10..18].try_into().ok()?),
            record_count: u64::from_le_bytes(b[18..26].try_into().ok()?),
        })
    }
}

/// Where a record lives inside its extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLocation {
    /// Offset of the record header.
    pub offset: u64,
    pub data_len: u64,
}

impl RecordLocation {
    pub fn encode(&self) -> [u8; RECORD_LOCATION_LEN] {
        let mut b = [0u8; RECORD_LOCATION_LEN];
        b[..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..].copy_from_slice(&self.data_len.to_le_bytes());
        b
    }

    /// First byte after the record.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(pocket_format::RECORD_HEADER_LEN as u64)?.checked_add(self.data_len)
    }

    pub fn decode(b: &[u8]) -> Option<RecordLocation> {
        if b.len() != RECORD_LOCATION_LEN {
            return None;
        }
        Some(RecordLocation {
            offset: u64::from_le_bytes(b[..8].try_into().ok()?),
            data_len: u64::from_le_bytes(b[8..].try_into().ok()?),
        })
    }
}

/// What RocksDB says about one key of one extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Missing,
    Found(RecordLocation),
    /// An entry exists but its value does not decode: metadata corruption.
    Undecodable,
}

pub fn get_record(db: &DB, id: ExtentId, key: &Key) -> Result<Lookup, rocksdb::Error> {
    Ok(match db.get_pinned(record_key(id, key))? {
        None => Lookup::Missing,
        Some(v) => RecordLocation::decode(&v).map_or(Lookup::Undecodable, Lookup::Found),
    })
}

/// Every extent entry. Undecodable values come back as `None` (to rebuild).
pub fn load_extent_metas(db: &DB) -> Result<Vec<(ExtentId, Option<ExtentMeta>)>, rocksdb::Error> {
    let mut out = Vec::new();
    for item in db.iterator(IteratorMode::From(&[EXTENT_PREFIX], Direction::Forward)) {
        let (k, v) = item?;
        if k.first() != Some(&EXTENT_PREFIX) {
            break;
        }
        if let Some(id) = parse_extent_key(&k) {
            out.push((id, ExtentMeta::decode(&v)));
        }
    }
    Ok(out)
}

/// What the record entries of one extent add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordStats {
    pub count: u64,
    /// Largest end (offset + header + data) of any entry: every acknowledged
    /// record of the extent ends at or before it.
    pub max_end: u64,
}

/// [`RecordStats`] per extent, in one pass over all record entries.
pub fn record_stats(db: &DB) -> Result<std::collections::HashMap<ExtentId, RecordStats>, rocksdb::Error> {
    let mut stats: std::collections::HashMap<ExtentId, RecordStats> = std::collections::HashMap::new();
    for item in db.iterator(IteratorMode::From(&[RECORD_PREFIX], Direction::Forward)) {
        let (k, v) = item?;
        if k.first() != Some(&RECORD_PREFIX) {
            break;
        }
        if let Some((id, _)) = parse_record_key(&k) {
            let s = stats.entry(id).or_default();
            s.count += 1;
            if let Some(end) = RecordLocation::decode(&v).and_then(|l| l.end()) {
                s.max_end = s.max_end.max(end);
            }
        }
    }
    Ok(stats)
}

/// All record entries of one extent, in key order. Undecodable values are skipped
/// and counted in the second element.
pub fn load_records(db: &DB, id: ExtentId) -> Result<(Vec<(Key, RecordLocation)>, u64), rocksdb::Error> {
    let prefix = record_prefix(id);
    let mut out = Vec::new();
    let mut undecodable = 0;
    for item in db.iterator(IteratorMode::From(&prefix, Direction::Forward)) {
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        match (parse_record_key(&k), RecordLocation::decode(&v)) {
            (Some((_, key)), Some(loc)) => out.push((key, loc)),
            _ => undecodable += 1,
        }
    }
    Ok((out, undecodable))
}

/// Key prefix of parity extents: `p` + extent_id (u64 BE).
pub const PARITY_PREFIX: u8 = b'p';
const PARITY_META_VERSION: u8 = 1;
const PARITY_META_LEN: usize = 1 + 8 + 32;

pub fn parity_key(id: ExtentId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = PARITY_PREFIX;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// What RocksDB remembers about a parity extent: its length and the BLAKE3
/// of its bytes (parity has no per-record checksums of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParityMeta {
    pub size_bytes: u64,
    pub blake3: [u8; 32],
}

impl ParityMeta {
    pub fn encode(&self) -> [u8; PARITY_META_LEN] {
        let mut b = [0u8; PARITY_META_LEN];
        b[0] = PARITY_META_VERSION;
        b[1..9].copy_from_slice(&self.size_bytes.to_le_bytes());
        b[9..].copy_from_slice(&self.blake3);
        b
    }

    pub fn decode(b: &[u8]) -> Option<ParityMeta> {
        if b.len() != PARITY_META_LEN || b[0] != PARITY_META_VERSION {
            return None;
        }
        Some(ParityMeta { size_bytes: u64::from_le_bytes(b[1..9].try_into().ok()?), blake3: b[9..].try_into().ok()? })
    }
}

/// Every parity entry; undecodable values come back as `None`.
pub fn load_parity_metas(db: &DB) -> Result<Vec<(ExtentId, Option<ParityMeta>)>, rocksdb::Error> {
    let mut out = Vec::new();
    for item in db.iterator(IteratorMode::From(&[PARITY_PREFIX], Direction::Forward)) {
        let (k, v) = item?;
        if k.first() != Some(&PARITY_PREFIX) {
            break;
        }
        if k.len() == 9 {
            let id = u64::from_be_bytes(k[1..9].try_into().expect("9-byte key"));
            out.push((id, ParityMeta::decode(&v)));
        }
    }
    Ok(out)
}

/// Adds to `batch` the deletion of an extent's entry and all its record entries.
pub fn delete_extent(batch: &mut rocksdb::WriteBatch, id: ExtentId) {
    batch.delete(extent_key(id));
    let from = record_prefix(id);
    let mut to = [0u8; 9];
    to[0] = RECORD_PREFIX;
    match id.checked_add(1) {
        Some(next) => to[1..].copy_from_slice(&next.to_be_bytes()),
        None => to[0] = RECORD_PREFIX + 1,
    }
    batch.delete_range(from, to);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_meta_round_trips() {
        let m =
            ExtentMeta { state: ExtentState::Sealed, max_size_bytes: 1 << 30, indexed_up_to: 12345, record_count: 7 };
        assert_eq!(ExtentMeta::decode(&m.encode()), Some(m));
        let mut bad = m.encode();
        bad[0] = 9;
        assert_eq!(ExtentMeta::decode(&bad), None);
        assert_eq!(ExtentMeta::decode(&m.encode()[..10]), None);
    }

    #[test]
    fn parity_meta_round_trips() {
        let m = ParityMeta { size_bytes: 1 << 30, blake3: [7; 32] };
        assert_eq!(ParityMeta::decode(&m.encode()), Some(m));
        assert_eq!(ParityMeta::decode(&m.encode()[..9]), None);
    }

    #[test]
    fn record_location_round_trips() {
        let l = RecordLocation { offset: 64, data_len: 4 << 20 };
        assert_eq!(RecordLocation::decode(&l.encode()), Some(l));
        assert_eq!(RecordLocation::decode(&[0u8; 3]), None);
    }

    #[test]
    fn record_keys_sort_by_extent_then_key() {
        let a = record_key(1, &Key([0xff; KEY_LEN]));
        let b = record_key(2, &Key([0; KEY_LEN]));
        assert!(a < b);
        assert_eq!(parse_record_key(&a), Some((1, Key([0xff; KEY_LEN]))));
        assert!(a.starts_with(&record_prefix(1)));
    }

    #[test]
    fn delete_extent_removes_only_that_extent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(dir.path()).expect("open db");
        for id in [1u64, 2, u64::MAX] {
            let meta = ExtentMeta { state: ExtentState::Open, max_size_bytes: 100, indexed_up_to: 64, record_count: 1 };
            db.put(extent_key(id), meta.encode()).expect("put");
            db.put(record_key(id, &Key([3; KEY_LEN])), RecordLocation { offset: 64, data_len: 1 }.encode())
                .expect("put");
        }
        let mut batch = rocksdb::WriteBatch::default();
        delete_extent(&mut batch, 1);
        delete_extent(&mut batch, u64::MAX);
        db.write(batch).expect("write");
        let counts = record_stats(&db).expect("count");
        assert_eq!(counts.get(&1), None);
        assert_eq!(counts.get(&2), Some(&RecordStats { count: 1, max_end: 64 + 56 + 1 }));
        assert_eq!(counts.get(&u64::MAX), None);
        let metas = load_extent_metas(&db).expect("metas");
        assert_eq!(metas.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![2]);
    }
}
