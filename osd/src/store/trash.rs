//! The trash: a deleted extent is not unlinked but moved to `DISK/trash/`,
//! named `{extent file name}.{unix_ms of the delete}`, and removed only once
//! the trash delay has passed ([`Store::purge_trash`]). Until then an
//! operator can still put it back (issue 19, and the trash inspector of
//! issue 20 builds on it).
//!
//! Invariants: a file in the trash is served by nothing and counted in no
//! extent map; the move is a rename on the same filesystem, followed by a
//! sync of both directories, so a crash leaves the file in one place or the
//! other (recovery ignores `trash/`).

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use super::api::Store;
use super::error::{io_err, StoreError};
use super::layout::sync_dir;

/// Directory of deleted extents on each disk.
pub const TRASH_DIR: &str = "trash";

/// What a purge found: files and bytes removed, and what is left in the trash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrashReport {
    pub purged_files: u64,
    pub purged_bytes: u64,
    pub kept_files: u64,
    pub kept_bytes: u64,
}

/// Moves `path` (an extent or parity file of the disk at `disk_dir`) into
/// the disk's trash. A file already gone is not an error. Blocking.
pub(super) fn move_to_trash(disk_dir: &Path, path: &Path, now_unix_ms: i64) -> Result<(), StoreError> {
    let trash = disk_dir.join(TRASH_DIR);
    fs::create_dir_all(&trash).map_err(io_err("create trash directory"))?;
    let Some(name) = path.file_name() else { return Ok(()) };
    let mut dest = trash.join(format!("{}.{now_unix_ms}", name.to_string_lossy()));
    let mut n = 1;
    while dest.exists() {
        dest = trash.join(format!("{}.{now_unix_ms}-{n}", name.to_string_lossy()));
        n += 1;
    }
    match fs::rename(path, &dest) {
        Ok(()) => sync_dir(&trash),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io { context: "move extent file to trash", source: e }),
    }
}

/// The unix ms a trash file name ends with (`NAME.{ms}` or `NAME.{ms}-{n}`).
fn deleted_at(name: &str) -> Option<i64> {
    let (_, suffix) = name.rsplit_once('.')?;
    suffix.split('-').next()?.parse().ok()
}

impl Store {
    /// Removes trash files deleted more than `delay` before `now_unix_ms`, on
    /// every disk that is not failed; reports what it removed and what it
    /// kept. A file whose name carries no time is kept (and warned about).
    /// Blocking.
    pub fn purge_trash(&self, delay: Duration, now_unix_ms: i64) -> TrashReport {
        let mut report = TrashReport::default();
        let cutoff = now_unix_ms.saturating_sub(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        for (index, dir) in self.disk_dirs().into_iter().enumerate() {
            if self.disk_failure(index).is_some() {
                continue;
            }
            let trash = dir.join(TRASH_DIR);
            let Ok(entries) = fs::read_dir(&trash) else { continue };
            let mut removed = false;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                match deleted_at(&name) {
                    Some(at) if at <= cutoff => match fs::remove_file(entry.path()) {
                        Ok(()) => {
                            removed = true;
                            report.purged_files += 1;
                            report.purged_bytes += bytes;
                        }
                        Err(error) => {
                            warn!(file = %entry.path().display(), %error, "trash file not removed");
                            report.kept_files += 1;
                            report.kept_bytes += bytes;
                        }
                    },
                    found => {
                        if found.is_none() {
                            warn!(file = %entry.path().display(), "trash file without a deletion time; kept");
                        }
                        report.kept_files += 1;
                        report.kept_bytes += bytes;
                    }
                }
            }
            if removed {
                if let Err(error) = sync_dir(&trash) {
                    warn!(dir = %trash.display(), %error, "trash directory not synced after a purge");
                }
            }
        }
        if report.purged_files > 0 {
            info!(files = report.purged_files, bytes = report.purged_bytes, "purged trash past its delay");
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_time_is_read_from_the_name() {
        assert_eq!(deleted_at("0000000000000007.ext.1700000000000"), Some(1_700_000_000_000));
        assert_eq!(deleted_at("0000000000000007.par.1700000000000-2"), Some(1_700_000_000_000));
        assert_eq!(deleted_at("stray"), None);
        assert_eq!(deleted_at("x.notanumber"), None);
    }
}
