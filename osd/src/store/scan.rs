//! Bounded reads over an extent file for recovery and verification: record
//! checks, resynchronisation after corrupt bytes, footers, and the scan of
//! an extent's records.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use pocket_format::{
    self as format, FormatError, IndexEntry, RecordHeader, Structure, Trailer, EXTENT_HEADER_LEN, RECORD_HEADER_LEN,
    RECORD_MAGIC, TRAILER_LEN,
};
use pocket_proto::ExtentId;
use tracing::{error, warn};

/// Bytes read per I/O while recovery scans an extent: bounds recovery memory
/// regardless of extent size, large enough for sequential throughput.
const SCAN_WINDOW_BYTES: usize = 1024 * 1024;

/// Bounded, positioned read-ahead over an extent file, for recovery.
pub(super) struct Window<'a> {
    file: &'a File,
    file_len: u64,
    buf: Vec<u8>,
    start: u64,
}

impl<'a> Window<'a> {
    pub(super) fn new(file: &'a File, file_len: u64) -> Window<'a> {
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
pub(super) fn footer_from_end(w: &mut Window<'_>) -> io::Result<Option<(Trailer, Vec<IndexEntry>)>> {
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
    Ok(format::decode_index(&index, &trailer).ok().map(|entries| (trailer, entries)))
}

/// A valid footer whose index starts exactly at `pos` (where the records end).
pub(super) fn footer_at(w: &mut Window<'_>, pos: u64) -> io::Result<Option<(Trailer, Vec<IndexEntry>)>> {
    Ok(footer_from_end(w)?.filter(|(t, _)| t.index_offset == pos))
}

/// Whether a footer found without metadata describes this file: its records
/// tile the file from the header to the index, and each record header it
/// names is valid and agrees with it. (A blob may contain bytes that look like
/// a footer; they cannot pass this.) Reads record headers only.
pub(super) fn footer_tiles_records(w: &mut Window<'_>, t: &Trailer, entries: &[IndexEntry]) -> io::Result<bool> {
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

pub(super) struct ScanResult {
    pub(super) records: Vec<IndexEntry>,
    pub(super) records_end: u64,
    /// A footer found where the records end: the extent is sealed.
    pub(super) footer: Option<(Trailer, Vec<IndexEntry>)>,
    /// Invalid ranges skipped because valid records follow them.
    pub(super) skipped: Vec<(u64, u64)>,
    /// Where to cut a torn tail, if the file ends in invalid bytes.
    pub(super) torn_tail_at: Option<u64>,
}

/// Validates records from `start` to the end of the file. At an invalid
/// record: a footer starting there means sealed; a later valid record means
/// mid-extent corruption (skipped, later records kept); otherwise a torn tail
/// (cut, but never below `floor`).
pub(super) fn scan_records(w: &mut Window<'_>, id: ExtentId, start: u64, floor: u64) -> io::Result<ScanResult> {
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

/// The valid footer at the end of the first `file_len` bytes of `file`, if
/// there is one (see [`footer_from_end`]).
pub(super) fn read_footer(file: &File, file_len: u64) -> io::Result<Option<(Trailer, Vec<IndexEntry>)>> {
    footer_from_end(&mut Window::new(file, file_len))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use pocket_proto::Key;

    use super::*;

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
