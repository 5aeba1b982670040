//! How the OSD writes to its disks, for tools that measure a disk the way
//! the OSD uses it (`pocket limits`): appends with `O_DIRECT` where the
//! filesystem allows it (ADR 11), else through the page cache with
//! drop-behind after each sync (ADR 8).

pub use crate::store::{drop_behind, DirectAppender, DEFAULT_PAGE_CACHE_WINDOW_BYTES, DIRECT_IO_ALIGN};
