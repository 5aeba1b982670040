//! Appending to an extent with `O_DIRECT` (ADR 11): the bytes go from a
//! block-aligned buffer to the disk without a copy into the page cache.
//!
//! `O_DIRECT` needs every write aligned to the block size in its file
//! offset, its length and its buffer's address. Records are not: an
//! [`DirectAppender`] keeps the bytes of the extent's last partial block in
//! memory, and each write starts at that block, copies the new bytes behind
//! it in an aligned buffer and is padded with zeros to a whole block. The
//! next write rewrites that block with the same leading bytes and more.
//! Acknowledged bytes are therefore rewritten, never changed, exactly as the
//! page cache rewrites a partly filled page on writeback. The zeros after the
//! last record are cut by recovery (they do not decode as a record) or by
//! the seal, which truncates the file to its footer's end.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment of `O_DIRECT` offsets, lengths and buffers: the largest
/// logical block size of common disks.
pub const DIRECT_IO_ALIGN: usize = 4096;
/// Most bytes one write carries; a longer record is written in several.
/// Bounds the aligned buffer each writer thread keeps.
const SEGMENT_BYTES: usize = 4 * 1024 * 1024;

thread_local! {
    /// The writer thread's buffer: `SEGMENT_BYTES` plus room to align it
    /// and to pad its last block.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Appends to one file through an `O_DIRECT` descriptor. Used only by the
/// thread that writes the file.
#[derive(Debug)]
pub struct DirectAppender {
    file: File,
    /// Offset of the last partial block (a multiple of the alignment).
    tail_start: u64,
    /// That block's bytes up to the end of what was written.
    tail: Vec<u8>,
}

impl DirectAppender {
    /// Opens `path` for direct appends at `end`, reading the partial block
    /// before `end` from `file` (the same file, opened normally). `None` if
    /// the filesystem refuses `O_DIRECT` (e.g. tmpfs): the caller writes
    /// through the page cache instead.
    pub fn open(path: &Path, file: &File, end: u64) -> io::Result<Option<DirectAppender>> {
        let direct = match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(direct) => direct,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e),
        };
        let tail_start = end - end % DIRECT_IO_ALIGN as u64;
        let mut tail = vec![0u8; (end - tail_start) as usize];
        file.read_exact_at(&mut tail, tail_start)?;
        Ok(Some(DirectAppender { file: direct, tail_start, tail }))
    }

    /// Where the next append goes.
    pub fn end(&self) -> u64 {
        self.tail_start + self.tail.len() as u64
    }

    /// Writes `parts`, in order, at `offset`, which must be [`Self::end`].
    /// Not durable until the file is fdatasync'd. On an error the appender
    /// is unchanged and the file's bytes after `end` are unknown.
    pub fn append(&mut self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        if offset != self.end() {
            return Err(io::Error::other(format!("direct append at {offset}, but the file ends at {}", self.end())));
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let need = SEGMENT_BYTES + 2 * DIRECT_IO_ALIGN;
            if scratch.len() < need {
                *scratch = vec![0u8; need];
            }
            let skew = scratch.as_ptr().align_offset(DIRECT_IO_ALIGN);
            if skew > DIRECT_IO_ALIGN {
                return Err(io::Error::other("cannot align the direct-write buffer"));
            }
            let buf = &mut scratch[skew..skew + SEGMENT_BYTES + DIRECT_IO_ALIGN];
            let mut len = self.tail.len();
            buf[..len].copy_from_slice(&self.tail);
            let mut pos = self.tail_start;
            for part in parts {
                let mut rest: &[u8] = part;
                while !rest.is_empty() {
                    let n = rest.len().min(SEGMENT_BYTES - len);
                    buf[len..len + n].copy_from_slice(&rest[..n]);
                    len += n;
                    rest = &rest[n..];
                    if len == SEGMENT_BYTES {
                        self.file.write_all_at(&buf[..SEGMENT_BYTES], pos)?;
                        pos += SEGMENT_BYTES as u64;
                        len = 0;
                    }
                }
            }
            let whole_blocks = len - len % DIRECT_IO_ALIGN;
            if len > 0 {
                let padded = len.div_ceil(DIRECT_IO_ALIGN) * DIRECT_IO_ALIGN;
                buf[len..padded].fill(0);
                self.file.write_all_at(&buf[..padded], pos)?;
            }
            self.tail_start = pos + whole_blocks as u64;
            self.tail.clear();
            self.tail.extend_from_slice(&buf[whole_blocks..len]);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends of every awkward length (empty, one byte, across blocks and
    /// across segments) leave the file holding exactly the bytes appended,
    /// in order, then zeros up to a whole block; a reopened appender goes on
    /// where the last one stopped.
    #[test]
    fn direct_appends_of_any_length_read_back_in_order() {
        // Not tmpfs: O_DIRECT must really be used for this test to mean anything.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("temp dir");
        let path = dir.path().join("extent");
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("create");
        file.write_all_at(b"header", 0).expect("header");
        let mut appender = DirectAppender::open(&path, &file, 6).expect("open").expect("this filesystem takes O_DIRECT");
        let mut expected = b"header".to_vec();
        let lengths = [0usize, 1, 4089, 4096, 1, SEGMENT_BYTES + 3, 7, 2 * DIRECT_IO_ALIGN, 65_536];
        for (i, len) in lengths.iter().enumerate() {
            let data: Vec<u8> = (0..*len).map(|j| (j * 7 + i * 13) as u8 | 1).collect();
            let (a, b) = data.split_at(len / 3);
            appender.append(&[a, b], expected.len() as u64).expect("append");
            expected.extend_from_slice(&data);
            assert_eq!(appender.end(), expected.len() as u64);
            if i == 4 {
                // As after a restart: a new appender picks up the tail.
                appender = DirectAppender::open(&path, &file, expected.len() as u64).expect("reopen").expect("O_DIRECT");
            }
        }
        let on_disk = std::fs::read(&path).expect("read back");
        assert_eq!(on_disk.len(), expected.len().div_ceil(DIRECT_IO_ALIGN) * DIRECT_IO_ALIGN);
        assert_eq!(&on_disk[..expected.len()], &expected[..]);
        assert!(on_disk[expected.len()..].iter().all(|b| *b == 0), "padding is zeros");

        let wrong = appender.append(&[b"x"], 5).expect_err("not at the end");
        assert!(wrong.to_string().contains("direct append at 5"));
    }
}
