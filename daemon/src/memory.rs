//! How the `pocket` binary's processes use memory pages.

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`).
///
/// mimalloc (ADR 7) asks for huge pages on the memory it maps, so the first
/// touch of every new 2 MiB region had the kernel zero all of it
/// (`clear_page_erms`): a measurable share of the machine under large PUTs,
/// most of it in the OSDs, whose buffers come and go with every blob. With
/// 4 KiB pages only what is touched is zeroed (ADR 9 has the figures).
/// Returns whether the kernel took the setting; pocket runs the same either
/// way.
pub fn disable_transparent_huge_pages() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: prctl(2) with PR_SET_THP_DISABLE takes integer arguments only
    // and changes nothing but this process's huge-page policy.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    rc == 0
}

/// Whether transparent huge pages are off for this process.
pub fn transparent_huge_pages_disabled() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: as above; PR_GET_THP_DISABLE only reads the setting.
    let rc = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
    rc == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_once_disabled() {
        assert!(disable_transparent_huge_pages(), "the kernel refused PR_SET_THP_DISABLE");
        assert!(transparent_huge_pages_disabled());
    }
}
