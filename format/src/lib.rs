//! The on-disk format of an extent file (`DISK/extents/{extent_id:016x}.ext`),
//! as pure functions over byte slices. The full description, with byte
//! offsets, is `docs/extent-format.md`; keep the two in step.
//!
//! ```text
//! [extent header, 64 bytes]
//! [record header, 56 bytes][data, data_len bytes]      record 0
//! [record header, 56 bytes][data, data_len bytes]      record 1
//! ...                                                   (append-only)
//! --- written once, at seal ---
//! [index entry, 48 bytes] x record_count                the footer's index
//! [trailer, 32 bytes]                                   the very last bytes
//! ```
//!
//! All integers are little-endian. Every structure carries a CRC32C, and every
//! decoder takes arbitrary bytes and returns a [`FormatError`] instead of
//! panicking: these functions also read whatever a torn write or a flipped
//! bit left on disk.

use pocket_types::{ExtentId, Key, KEY_LEN};

/// Version of the extent file format. Stored in every extent header; an
/// extent with another version is refused rather than guessed at.
pub const FORMAT_VERSION: u32 = 1;

/// First 8 bytes of every extent file.
pub const EXTENT_MAGIC: [u8; 8] = *b"PKTEXT\0\x01";
/// Size of the extent header; the first record starts at this offset.
pub const EXTENT_HEADER_LEN: usize = 64;

/// First 4 bytes of every record header (`b"PKRC"` read as a little-endian u32).
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"PKRC");
/// Size of a record header; the record's data follows it immediately.
pub const RECORD_HEADER_LEN: usize = 56;

/// Size of one entry of the footer's index: key, offset, data_len.
pub const INDEX_ENTRY_LEN: usize = 48;

/// First 8 bytes of the trailer, the fixed-size structure that ends a sealed extent.
pub const TRAILER_MAGIC: [u8; 8] = *b"PKTEND\0\x01";
/// Size of the trailer.
pub const TRAILER_LEN: usize = 32;

/// Suffix of extent files.
pub const EXTENT_FILE_SUFFIX: &str = ".ext";
/// Suffix of files being written; every `*.tmp` under a disk is removed at start-up.
pub const TMP_SUFFIX: &str = ".tmp";
/// Suffix appended to an extent file whose header is unreadable (quarantine).
pub const CORRUPT_SUFFIX: &str = ".corrupt";

/// File name of an extent inside `DISK/extents/`.
pub fn extent_file_name(id: ExtentId) -> String {
    format!("{id:016x}{EXTENT_FILE_SUFFIX}")
}

/// The extent id encoded in an extent file name, if `name` is one.
pub fn parse_extent_file_name(name: &str) -> Option<ExtentId> {
    let hex = name.strip_suffix(EXTENT_FILE_SUFFIX)?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Which structure a [`FormatError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    ExtentHeader,
    RecordHeader,
    RecordData,
    Index,
    Trailer,
}

impl std::fmt::Display for Structure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Structure::ExtentHeader => "extent header",
            Structure::RecordHeader => "record header",
            Structure::RecordData => "record data",
            Structure::Index => "footer index",
            Structure::Trailer => "trailer",
        })
    }
}

/// Why bytes are not a valid extent structure.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    #[error("{what}: need {needed} bytes, have {available}")]
    Truncated { what: Structure, needed: u64, available: u64 },
    #[error("{what}: bad magic")]
    BadMagic { what: Structure },
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum { what: Structure, stored: u32, computed: u32 },
    #[error("extent header: unsupported format version {0}")]
    UnsupportedVersion(u32),
    #[error("{what}: reserved bytes are not zero")]
    NonZeroReserved { what: Structure },
    #[error("record header: unknown record kind {0}")]
    UnknownRecordKind(u8),
    #[error("record: key {found:?} where {expected:?} was expected")]
    KeyMismatch { expected: Key, found: Key },
    #[error("record: data_len {found} where {expected} was expected")]
    DataLenMismatch { expected: u64, found: u64 },
    #[error("{what}: a length or offset is out of range")]
    OutOfRange { what: Structure },
    #[error("footer index: entry {entry_index} overlaps or precedes the previous record")]
    IndexNotOrdered { entry_index: u64 },
}

fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

// Little-endian field readers over a slice whose length the caller has checked.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn read_key(bytes: &[u8], at: usize) -> Key {
    let mut k = [0u8; KEY_LEN];
    k.copy_from_slice(&bytes[at..at + KEY_LEN]);
    Key(k)
}

fn need(what: Structure, bytes: &[u8], needed: usize) -> Result<(), FormatError> {
    if bytes.len() < needed {
        return Err(FormatError::Truncated { what, needed: needed as u64, available: bytes.len() as u64 });
    }
    Ok(())
}

fn check_crc(what: Structure, covered: &[u8], stored: u32) -> Result<(), FormatError> {
    let computed = crc(covered);
    if computed != stored {
        return Err(FormatError::BadChecksum { what, stored, computed });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Extent header
// ---------------------------------------------------------------------------

// Extent header layout (64 bytes).
const EH_MAGIC: usize = 0; // [u8; 8]
const EH_VERSION: usize = 8; // u32
const EH_RESERVED_A: usize = 12; // u32, zero
const EH_EXTENT_ID: usize = 16; // u64
const EH_MAX_SIZE: usize = 24; // u64
const EH_CREATED: usize = 32; // i64
const EH_RESERVED_B: usize = 40; // [u8; 20], zero
const EH_CRC: usize = 60; // u32 over [0, 60)

/// The fixed header at offset 0 of every extent file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentHeader {
    pub extent_id: ExtentId,
    /// Header + records may not exceed this; the footer written at seal comes on top.
    pub max_size_bytes: u64,
    pub created_unix_ms: i64,
}

impl ExtentHeader {
    pub fn encode(&self) -> [u8; EXTENT_HEADER_LEN] {
        let mut b = [0u8; EXTENT_HEADER_LEN];
        b[EH_MAGIC..EH_MAGIC + 8].copy_from_slice(&EXTENT_MAGIC);
        b[EH_VERSION..EH_VERSION + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[EH_EXTENT_ID..EH_EXTENT_ID + 8].copy_from_slice(&self.extent_id.to_le_bytes());
        b[EH_MAX_SIZE..EH_MAX_SIZE + 8].copy_from_slice(&self.max_size_bytes.to_le_bytes());
        b[EH_CREATED..EH_CREATED + 8].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        let c = crc(&b[..EH_CRC]);
        b[EH_CRC..EH_CRC + 4].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes the first [`EXTENT_HEADER_LEN`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<ExtentHeader, FormatError> {
        let what = Structure::ExtentHeader;
        need(what, bytes, EXTENT_HEADER_LEN)?;
        let b = &bytes[..EXTENT_HEADER_LEN];
        if b[EH_MAGIC..EH_MAGIC + 8] != EXTENT_MAGIC {
            return Err(FormatError::BadMagic { what });
        }
        check_crc(what, &b[..EH_CRC], read_u32(b, EH_CRC))?;
        let version = read_u32(b, EH_VERSION);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        if read_u32(b, EH_RESERVED_A) != 0 || b[EH_RESERVED_B..EH_CRC].iter().any(|&x| x != 0) {
            return Err(FormatError::NonZeroReserved { what });
        }
        let max_size_bytes = read_u64(b, EH_MAX_SIZE);
        if max_size_bytes < EXTENT_HEADER_LEN as u64 {
            return Err(FormatError::OutOfRange { what });
        }
        Ok(ExtentHeader {
            extent_id: read_u64(b, EH_EXTENT_ID),
            max_size_bytes,
            created_unix_ms: read_u64(b, EH_CREATED) as i64,
        })
    }
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

// Record header layout (56 bytes).
const RH_MAGIC: usize = 0; // u32
const RH_KIND: usize = 4; // u8
const RH_RESERVED: usize = 5; // [u8; 3], zero
const RH_KEY: usize = 8; // [u8; 32]
const RH_DATA_LEN: usize = 40; // u64
const RH_DATA_CRC: usize = 48; // u32
const RH_CRC: usize = 52; // u32 over [0, 52)

/// What a record holds. Only blobs exist in format version 1; the byte leaves
/// room for tombstones and other kinds later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Blob = 1,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<RecordKind> {
        match v {
            1 => Some(RecordKind::Blob),
            _ => None,
        }
    }
}

/// The self-describing header in front of each record's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub key: Key,
    pub data_len: u64,
    pub data_crc32c: u32,
}

impl RecordHeader {
    /// The header of a blob record holding `data`.
    pub fn for_blob(key: Key, data: &[u8]) -> RecordHeader {
        RecordHeader::for_chunks(key, &[data])
    }

    /// The header of a blob record whose data is `chunks`, in order (the
    /// same header as for their concatenation).
    pub fn for_chunks<C: AsRef<[u8]>>(key: Key, chunks: &[C]) -> RecordHeader {
        let (data_len, data_crc32c) = chunks.iter().fold((0u64, 0u32), |(len, crc), chunk| {
            let chunk = chunk.as_ref();
            (len + chunk.len() as u64, crc32c::crc32c_append(crc, chunk))
        });
        RecordHeader { kind: RecordKind::Blob, key, data_len, data_crc32c }
    }

    /// Header plus data, in bytes (saturating: a decoded header may claim anything).
    pub fn record_len(&self) -> u64 {
        (RECORD_HEADER_LEN as u64).saturating_add(self.data_len)
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[RH_MAGIC..RH_MAGIC + 4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[RH_KIND] = self.kind as u8;
        b[RH_KEY..RH_KEY + KEY_LEN].copy_from_slice(self.key.as_bytes());
        b[RH_DATA_LEN..RH_DATA_LEN + 8].copy_from_slice(&self.data_len.to_le_bytes());
        b[RH_DATA_CRC..RH_DATA_CRC + 4].copy_from_slice(&self.data_crc32c.to_le_bytes());
        let c = crc(&b[..RH_CRC]);
        b[RH_CRC..RH_CRC + 4].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes and validates (magic, header checksum, kind, reserved bytes) the
    /// first [`RECORD_HEADER_LEN`] bytes of `bytes`. Does not look at the data.
    pub fn decode(bytes: &[u8]) -> Result<RecordHeader, FormatError> {
        let what = Structure::RecordHeader;
        need(what, bytes, RECORD_HEADER_LEN)?;
        let b = &bytes[..RECORD_HEADER_LEN];
        if read_u32(b, RH_MAGIC) != RECORD_MAGIC {
            return Err(FormatError::BadMagic { what });
        }
        check_crc(what, &b[..RH_CRC], read_u32(b, RH_CRC))?;
        let kind = RecordKind::from_u8(b[RH_KIND]).ok_or(FormatError::UnknownRecordKind(b[RH_KIND]))?;
        if b[RH_RESERVED..RH_KEY].iter().any(|&x| x != 0) {
            return Err(FormatError::NonZeroReserved { what });
        }
        Ok(RecordHeader {
            kind,
            key: read_key(b, RH_KEY),
            data_len: read_u64(b, RH_DATA_LEN),
            data_crc32c: read_u32(b, RH_DATA_CRC),
        })
    }

    /// Checks that `data` is exactly this record's data (length and CRC32C).
    pub fn check_data(&self, data: &[u8]) -> Result<(), FormatError> {
        if data.len() as u64 != self.data_len {
            return Err(FormatError::Truncated {
                what: Structure::RecordData,
                needed: self.data_len,
                available: data.len() as u64,
            });
        }
        self.check_data_crc(crc(data))
    }

    /// Checks a CRC32C computed (possibly incrementally) over the record's data.
    pub fn check_data_crc(&self, computed: u32) -> Result<(), FormatError> {
        if computed != self.data_crc32c {
            return Err(FormatError::BadChecksum { what: Structure::RecordData, stored: self.data_crc32c, computed });
        }
        Ok(())
    }
}

/// Decodes a whole record (header followed by data) from `bytes`, checking the
/// data checksum; returns the header and the data slice.
pub fn decode_record(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), FormatError> {
    let header = RecordHeader::decode(bytes)?;
    let available = (bytes.len() - RECORD_HEADER_LEN) as u64;
    if header.data_len > available {
        return Err(FormatError::Truncated { what: Structure::RecordData, needed: header.data_len, available });
    }
    // data_len <= available <= usize::MAX, so the cast is exact.
    let data = &bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + header.data_len as usize];
    header.check_data(data)?;
    Ok((header, data))
}

// ---------------------------------------------------------------------------
// Footer: index + trailer
// ---------------------------------------------------------------------------

/// Where one record lives: the footer's index holds one per record, in offset order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub key: Key,
    /// Offset of the record header from the start of the file.
    pub offset: u64,
    pub data_len: u64,
}

impl IndexEntry {
    /// Decodes one index entry from `INDEX_ENTRY_LEN` bytes (no checks: the
    /// index's checksum covers it; see [`decode_index`]).
    pub fn decode(chunk: &[u8; INDEX_ENTRY_LEN]) -> IndexEntry {
        IndexEntry { key: read_key(chunk, 0), offset: read_u64(chunk, 32), data_len: read_u64(chunk, 40) }
    }

    /// First byte after this record.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(RECORD_HEADER_LEN as u64)?.checked_add(self.data_len)
    }
}

// Trailer layout (32 bytes).
const TR_MAGIC: usize = 0; // [u8; 8]
const TR_RECORD_COUNT: usize = 8; // u64
const TR_INDEX_OFFSET: usize = 16; // u64
const TR_INDEX_CRC: usize = 24; // u32 over the index bytes
const TR_CRC: usize = 28; // u32 over [0, 28)

/// The fixed-size structure at the very end of a sealed extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub record_count: u64,
    /// Where the index starts, which is also the end of the last record.
    pub index_offset: u64,
    pub index_crc32c: u32,
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[TR_MAGIC..TR_MAGIC + 8].copy_from_slice(&TRAILER_MAGIC);
        b[TR_RECORD_COUNT..TR_RECORD_COUNT + 8].copy_from_slice(&self.record_count.to_le_bytes());
        b[TR_INDEX_OFFSET..TR_INDEX_OFFSET + 8].copy_from_slice(&self.index_offset.to_le_bytes());
        b[TR_INDEX_CRC..TR_INDEX_CRC + 4].copy_from_slice(&self.index_crc32c.to_le_bytes());
        let c = crc(&b[..TR_CRC]);
        b[TR_CRC..TR_CRC + 4].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes the LAST [`TRAILER_LEN`] bytes of `bytes` (pass the file's tail).
    pub fn decode(bytes: &[u8]) -> Result<Trailer, FormatError> {
        let what = Structure::Trailer;
        need(what, bytes, TRAILER_LEN)?;
        let b = &bytes[bytes.len() - TRAILER_LEN..];
        if b[TR_MAGIC..TR_MAGIC + 8] != TRAILER_MAGIC {
            return Err(FormatError::BadMagic { what });
        }
        check_crc(what, &b[..TR_CRC], read_u32(b, TR_CRC))?;
        let t = Trailer {
            record_count: read_u64(b, TR_RECORD_COUNT),
            index_offset: read_u64(b, TR_INDEX_OFFSET),
            index_crc32c: read_u32(b, TR_INDEX_CRC),
        };
        if t.index_offset < EXTENT_HEADER_LEN as u64 || t.file_len().is_none() {
            return Err(FormatError::OutOfRange { what });
        }
        Ok(t)
    }

    /// Bytes of index + trailer.
    pub fn footer_len(&self) -> Option<u64> {
        self.record_count.checked_mul(INDEX_ENTRY_LEN as u64)?.checked_add(TRAILER_LEN as u64)
    }

    /// Bytes of the index alone.
    pub fn index_len(&self) -> Option<u64> {
        self.record_count.checked_mul(INDEX_ENTRY_LEN as u64)
    }

    /// Length of the whole sealed file this trailer ends.
    pub fn file_len(&self) -> Option<u64> {
        self.footer_len()?.checked_add(self.index_offset)
    }
}

/// Bytes of the footer (index + trailer) for `record_count` records.
pub fn footer_len(record_count: u64) -> u64 {
    record_count.saturating_mul(INDEX_ENTRY_LEN as u64).saturating_add(TRAILER_LEN as u64)
}

/// Encodes the footer written at seal: the index of `entries` (in offset
/// order) followed by the trailer. `index_offset` is the end of the last record.
pub fn encode_footer(entries: &[IndexEntry], index_offset: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN + TRAILER_LEN);
    for e in entries {
        out.extend_from_slice(e.key.as_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.data_len.to_le_bytes());
    }
    let trailer = Trailer { record_count: entries.len() as u64, index_offset, index_crc32c: crc(&out) };
    out.extend_from_slice(&trailer.encode());
    out
}

/// Decodes and validates the index described by `trailer` from `index_bytes`
/// (exactly the index, without the trailer): checksum, length, and that the
/// entries are records in increasing, non-overlapping offset order that lie
/// between the extent header and `trailer.index_offset`.
pub fn decode_index(index_bytes: &[u8], trailer: &Trailer) -> Result<Vec<IndexEntry>, FormatError> {
    let what = Structure::Index;
    let expected_len = trailer.index_len().ok_or(FormatError::OutOfRange { what })?;
    if index_bytes.len() as u64 != expected_len {
        return Err(FormatError::Truncated { what, needed: expected_len, available: index_bytes.len() as u64 });
    }
    check_crc(what, index_bytes, trailer.index_crc32c)?;
    let mut entries = Vec::with_capacity(index_bytes.len() / INDEX_ENTRY_LEN);
    let mut previous_end = EXTENT_HEADER_LEN as u64;
    for (i, chunk) in index_bytes.chunks_exact(INDEX_ENTRY_LEN).enumerate() {
        let entry = IndexEntry { key: read_key(chunk, 0), offset: read_u64(chunk, 32), data_len: read_u64(chunk, 40) };
        if entry.offset < previous_end {
            return Err(FormatError::IndexNotOrdered { entry_index: i as u64 });
        }
        let end = entry.end().ok_or(FormatError::OutOfRange { what })?;
        if end > trailer.index_offset {
            return Err(FormatError::OutOfRange { what });
        }
        previous_end = end;
        entries.push(entry);
    }
    Ok(entries)
}

/// Decodes a whole footer (index followed by trailer, nothing else).
pub fn decode_footer(footer_bytes: &[u8]) -> Result<(Trailer, Vec<IndexEntry>), FormatError> {
    let trailer = Trailer::decode(footer_bytes)?;
    let footer_len = trailer.footer_len().ok_or(FormatError::OutOfRange { what: Structure::Trailer })?;
    if footer_bytes.len() as u64 != footer_len {
        return Err(FormatError::Truncated {
            what: Structure::Index,
            needed: footer_len,
            available: footer_bytes.len() as u64,
        });
    }
    let entries = decode_index(&footer_bytes[..footer_bytes.len() - TRAILER_LEN], &trailer)?;
    Ok((trailer, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> Key {
        Key([n; KEY_LEN])
    }

    fn sample_extent(records: &[(Key, Vec<u8>)]) -> (Vec<u8>, Vec<IndexEntry>) {
        let header = ExtentHeader { extent_id: 7, max_size_bytes: 1 << 20, created_unix_ms: 1_700_000_000_000 };
        let mut file = header.encode().to_vec();
        let mut entries = Vec::new();
        for (k, data) in records {
            let offset = file.len() as u64;
            file.extend_from_slice(&RecordHeader::for_blob(*k, data).encode());
            file.extend_from_slice(data);
            entries.push(IndexEntry { key: *k, offset, data_len: data.len() as u64 });
        }
        (file, entries)
    }

    #[test]
    fn layout_constants_match_the_documented_sizes() {
        assert_eq!(EH_CRC + 4, EXTENT_HEADER_LEN);
        assert_eq!(RH_CRC + 4, RECORD_HEADER_LEN);
        assert_eq!(TR_CRC + 4, TRAILER_LEN);
        assert_eq!(KEY_LEN + 16, INDEX_ENTRY_LEN);
        assert_eq!(&RECORD_MAGIC.to_le_bytes(), b"PKRC");
    }

    #[test]
    fn extent_header_round_trips() {
        let h = ExtentHeader { extent_id: 0xdead_beef, max_size_bytes: 1 << 30, created_unix_ms: -5 };
        assert_eq!(ExtentHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn extent_header_rejects_other_versions() {
        let mut b = ExtentHeader { extent_id: 1, max_size_bytes: 4096, created_unix_ms: 0 }.encode();
        b[EH_VERSION] = 2;
        let c = crc(&b[..EH_CRC]);
        b[EH_CRC..].copy_from_slice(&c.to_le_bytes());
        assert_eq!(ExtentHeader::decode(&b), Err(FormatError::UnsupportedVersion(2)));
    }

    #[test]
    fn a_header_of_chunks_is_the_header_of_their_concatenation() {
        let whole: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let chunks: Vec<&[u8]> = vec![&whole[..1], &whole[1..1], &whole[1..65_537], &whole[65_537..]];
        assert_eq!(RecordHeader::for_chunks(key(3), &chunks), RecordHeader::for_blob(key(3), &whole));
        assert_eq!(RecordHeader::for_chunks::<&[u8]>(key(3), &[]), RecordHeader::for_blob(key(3), b""));
    }

    #[test]
    fn record_header_round_trips_and_checks_data() {
        let h = RecordHeader::for_blob(key(3), b"hello");
        let bytes = h.encode();
        let decoded = RecordHeader::decode(&bytes).expect("valid header");
        assert_eq!(decoded, h);
        assert_eq!(decoded.check_data(b"hello"), Ok(()));
        assert!(matches!(decoded.check_data(b"hellO"), Err(FormatError::BadChecksum { .. })));
        assert!(matches!(decoded.check_data(b"hell"), Err(FormatError::Truncated { .. })));
    }

    #[test]
    fn unknown_record_kind_is_rejected() {
        let mut b = RecordHeader::for_blob(key(3), b"x").encode();
        b[RH_KIND] = 2;
        let c = crc(&b[..RH_CRC]);
        b[RH_CRC..].copy_from_slice(&c.to_le_bytes());
        assert_eq!(RecordHeader::decode(&b), Err(FormatError::UnknownRecordKind(2)));
    }

    #[test]
    fn empty_footer_round_trips() {
        let footer = encode_footer(&[], EXTENT_HEADER_LEN as u64);
        assert_eq!(footer.len(), TRAILER_LEN);
        let (t, entries) = decode_footer(&footer).expect("valid footer");
        assert_eq!(t.record_count, 0);
        assert_eq!(t.index_offset, EXTENT_HEADER_LEN as u64);
        assert!(entries.is_empty());
    }

    #[test]
    fn index_out_of_order_is_rejected() {
        let a = IndexEntry { key: key(1), offset: 200, data_len: 4 };
        let b = IndexEntry { key: key(2), offset: 64, data_len: 4 };
        let footer = encode_footer(&[a, b], 400);
        assert_eq!(decode_footer(&footer), Err(FormatError::IndexNotOrdered { entry_index: 1 }));
    }

    #[test]
    fn index_past_its_offset_is_rejected() {
        let a = IndexEntry { key: key(1), offset: 64, data_len: 400 };
        let footer = encode_footer(&[a], 100);
        assert_eq!(decode_footer(&footer), Err(FormatError::OutOfRange { what: Structure::Index }));
    }

    #[test]
    fn extent_file_names_round_trip() {
        assert_eq!(extent_file_name(0xab), "00000000000000ab.ext");
        assert_eq!(parse_extent_file_name("00000000000000ab.ext"), Some(0xab));
        assert_eq!(parse_extent_file_name("00000000000000ab.ext.corrupt"), None);
        assert_eq!(parse_extent_file_name("ab.ext"), None);
        assert_eq!(parse_extent_file_name("+000000000000000.ext"), None);
    }

    fn arb_key() -> impl Strategy<Value = Key> {
        any::<[u8; KEY_LEN]>().prop_map(Key)
    }

    fn arb_records() -> impl Strategy<Value = Vec<(Key, Vec<u8>)>> {
        proptest::collection::vec((arb_key(), proptest::collection::vec(any::<u8>(), 0..200)), 0..8)
    }

    proptest! {
        #[test]
        fn extent_header_round_trip_prop(id in any::<u64>(), max in (EXTENT_HEADER_LEN as u64)..u64::MAX, created in any::<i64>()) {
            let h = ExtentHeader { extent_id: id, max_size_bytes: max, created_unix_ms: created };
            prop_assert_eq!(ExtentHeader::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn record_round_trip_prop(k in arb_key(), data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let h = RecordHeader::for_blob(k, &data);
            let mut bytes = h.encode().to_vec();
            bytes.extend_from_slice(&data);
            let (decoded, decoded_data) = decode_record(&bytes).expect("valid record");
            prop_assert_eq!(decoded, h);
            prop_assert_eq!(decoded_data, &data[..]);
        }

        #[test]
        fn footer_round_trip_prop(records in arb_records()) {
            let (file, entries) = sample_extent(&records);
            let footer = encode_footer(&entries, file.len() as u64);
            let (trailer, decoded) = decode_footer(&footer).expect("valid footer");
            prop_assert_eq!(trailer.record_count, entries.len() as u64);
            prop_assert_eq!(trailer.index_offset, file.len() as u64);
            prop_assert_eq!(trailer.file_len(), Some((file.len() + footer.len()) as u64));
            prop_assert_eq!(decoded, entries);
        }

        #[test]
        fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ExtentHeader::decode(&bytes);
            let _ = RecordHeader::decode(&bytes);
            let _ = decode_record(&bytes);
            let _ = decode_footer(&bytes);
            if let Ok(t) = Trailer::decode(&bytes) {
                let _ = decode_index(&bytes[..bytes.len() - TRAILER_LEN], &t);
            }
        }

        #[test]
        fn decoders_never_panic_on_mutated_valid_bytes(
            records in arb_records(),
            mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let (file, entries) = sample_extent(&records);
            let footer = encode_footer(&entries, file.len() as u64);
            let mut whole = file.clone();
            whole.extend_from_slice(&footer);
            for (at, value) in &mutations {
                let i = at.index(whole.len());
                whole[i] = *value;
            }
            let whole = &whole[..cut.index(whole.len() + 1)];
            let _ = ExtentHeader::decode(whole);
            let mut pos = EXTENT_HEADER_LEN.min(whole.len());
            // Walk the records as recovery would, stopping at the first bad one.
            while let Ok((h, _)) = decode_record(&whole[pos..]) {
                pos += RECORD_HEADER_LEN + h.data_len as usize;
            }
            let _ = decode_footer(&whole[file.len().min(whole.len())..]);
            let _ = Trailer::decode(whole);
        }

        #[test]
        fn flipped_bit_in_a_record_is_detected(
            k in arb_key(),
            data in proptest::collection::vec(any::<u8>(), 1..500),
            bit in any::<prop::sample::Index>(),
        ) {
            let mut bytes = RecordHeader::for_blob(k, &data).encode().to_vec();
            bytes.extend_from_slice(&data);
            let i = bit.index(bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            // Either the header or the data check fails; a flipped data_len may
            // also make the record look truncated. It never decodes as valid.
            prop_assert!(decode_record(&bytes).is_err());
        }

        #[test]
        fn flipped_bit_in_header_or_footer_is_detected(
            records in arb_records(),
            bit in any::<prop::sample::Index>(),
            in_footer in any::<bool>(),
        ) {
            let (file, entries) = sample_extent(&records);
            if in_footer {
                let mut footer = encode_footer(&entries, file.len() as u64);
                let i = bit.index(footer.len() * 8);
                footer[i / 8] ^= 1 << (i % 8);
                prop_assert!(decode_footer(&footer).is_err());
            } else {
                let mut header = file[..EXTENT_HEADER_LEN].to_vec();
                let i = bit.index(EXTENT_HEADER_LEN * 8);
                header[i / 8] ^= 1 << (i % 8);
                prop_assert!(ExtentHeader::decode(&header).is_err());
            }
        }
    }
}
