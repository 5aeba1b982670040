//! How the `pocket` binary's allocator (mimalloc, ADR 7) is set up.

use std::os::raw::c_long;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (mimalloc.h); the
/// Rust bindings name only the v2 options. A unit test checks that this
/// number is the purge delay (its documented default, 1000 ms).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps memory that mimalloc has once taken from the OS: it is not purged
/// (`MADV_DONTNEED`) after being free for a while. Every blob crosses each
/// process in freshly allocated buffers; with purging, the next blob
/// page-faulted them in again, and the kernel zeroed every page anew
/// (`clear_page_erms`, 5–17 % of the machine under 4 MiB PUTs). How much is
/// kept is bounded by the process's peak, which its byte budgets bound.
pub fn keep_freed_memory() {
    #[allow(unsafe_code)]
    // SAFETY: mi_option_set only stores an integer in mimalloc's option
    // table; it is safe to call at any time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1 as c_long) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: as above; mi_option_get only reads the option table.
        #[allow(unsafe_code)]
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000, "mimalloc v3's default purge delay is 1000 ms");
        keep_freed_memory();
        #[allow(unsafe_code)]
        let set = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(set, -1);
    }
}
