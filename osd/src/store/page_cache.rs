//! Drop-behind (ADR 8): an extent written through the page cache keeps only
//! its recent tail cached.

use std::fs::File;

/// Pages are dropped in steps of at least this much (fewer syscalls).
const DROP_BEHIND_STEP_BYTES: u64 = 4 * 1024 * 1024;

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
