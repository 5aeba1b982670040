//! Disk identity and layout: the directories and identity files of a disk
//! (see the module docs of `store`), opening a disk's metadata database,
//! temporary files, and the space of the filesystem under a disk.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pocket_format::TMP_SUFFIX;
use rocksdb::DB;
use tracing::{error, info, warn};

use super::error::{io_err, StoreError};
use crate::meta;

/// Name of the file in each disk directory that records the owning OSD.
const OSD_ID_FILE: &str = "OSD_ID";
/// Name of the identity file at the root of every disk.
pub(super) const DISK_IDENTITY_FILE: &str = "POCKET_DISK";
/// First line of the identity file.
pub(super) const DISK_IDENTITY_MAGIC: &str = "pocket-disk";
/// Version of the disk layout described in the module docs of `store`.
pub(super) const DISK_FORMAT_VERSION: u32 = 1;
/// Directory of extent files inside a disk.
pub const EXTENTS_DIR: &str = "extents";
/// Directory of the metadata database inside a disk.
pub const META_DIR: &str = "meta";
/// Prefix of a metadata directory set aside because it would not open.
pub(super) const META_CORRUPT_PREFIX: &str = "meta.corrupt-";

/// Why [`claim_disk`] could not record or confirm a disk's owner.
#[derive(Debug, thiserror::Error)]
pub enum ClaimDiskError {
    #[error("create disk directory {}", disk.display())]
    CreateDir { disk: PathBuf, source: io::Error },
    #[error("read {}", path.display())]
    ReadIdFile { path: PathBuf, source: io::Error },
    #[error("parse {}", path.display())]
    ParseIdFile { path: PathBuf, source: std::num::ParseIntError },
    #[error("disk {} belongs to OSD {owner}, not {osd_id}", disk.display())]
    OwnedByOther { disk: PathBuf, owner: u64, osd_id: u64 },
    /// Installing the id file on a fresh disk failed at `step`
    /// ("write OSD id file", "sync disk directory", ...).
    #[error("{step}")]
    Install { step: &'static str, source: io::Error },
}

/// Records `osd_id` as the owner of `disk` (creating the directory), or
/// checks that it already is.
pub fn claim_disk(disk: &Path, osd_id: u64) -> Result<(), ClaimDiskError> {
    let install = |step: &'static str| move |source| ClaimDiskError::Install { step, source };
    fs::create_dir_all(disk).map_err(|source| ClaimDiskError::CreateDir { disk: disk.to_path_buf(), source })?;
    let path = disk.join(OSD_ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let owner: u64 = text.trim().parse().map_err(|source| ClaimDiskError::ParseIdFile { path, source })?;
            if owner != osd_id {
                return Err(ClaimDiskError::OwnedByOther { disk: disk.to_path_buf(), owner, osd_id });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tmp = disk.join(format!("{OSD_ID_FILE}.tmp"));
            fs::write(&tmp, format!("{osd_id}\n")).map_err(install("write OSD id file"))?;
            File::open(&tmp).and_then(|f| f.sync_all()).map_err(install("sync OSD id file"))?;
            fs::rename(&tmp, &path).map_err(install("install OSD id file"))?;
            File::open(disk).and_then(|d| d.sync_all()).map_err(install("sync disk directory"))?;
            Ok(())
        }
        Err(source) => Err(ClaimDiskError::ReadIdFile { path, source }),
    }
}

/// Where a file is written before it is renamed to `path`.
pub(super) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync directory"))
}

fn random_u128() -> io::Result<u128> {
    let mut b = [0u8; 16];
    io::Read::read_exact(&mut File::open("/dev/urandom")?, &mut b)?;
    Ok(u128::from_le_bytes(b))
}

/// Reads the disk's identity file, creating it on a fresh disk.
fn load_or_create_identity(dir: &Path) -> Result<u128, StoreError> {
    let path = dir.join(DISK_IDENTITY_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => parse_identity(&text).map_err(|reason| StoreError::DiskIdentity { path, reason }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let uuid = random_u128().map_err(io_err("generate disk uuid"))?;
            let text = format!("{DISK_IDENTITY_MAGIC}\nformat_version={DISK_FORMAT_VERSION}\nuuid={uuid:032x}\n");
            let tmp = tmp_path(&path);
            {
                let mut f = File::create(&tmp).map_err(io_err("create disk identity file"))?;
                f.write_all(text.as_bytes()).map_err(io_err("write disk identity file"))?;
                f.sync_all().map_err(io_err("sync disk identity file"))?;
            }
            fs::rename(&tmp, &path).map_err(io_err("rename disk identity file"))?;
            sync_dir(dir)?;
            info!(disk = %dir.display(), uuid = %format!("{uuid:032x}"), "initialised new disk");
            Ok(uuid)
        }
        Err(e) => Err(StoreError::Io { context: "read disk identity file", source: e }),
    }
}

/// Reads the uuid of the disk at `dir` by path (not through any open
/// descriptor): what a disk health check compares with the uuid the disk
/// was opened with. An error if the file is gone, unreadable or malformed.
pub(super) fn read_identity(dir: &Path) -> Result<u128, String> {
    let path = dir.join(DISK_IDENTITY_FILE);
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_identity(&text).map_err(|reason| format!("{}: {reason}", path.display()))
}

fn parse_identity(text: &str) -> Result<u128, &'static str> {
    let mut lines = text.lines();
    if lines.next() != Some(DISK_IDENTITY_MAGIC) {
        return Err("identity file has a bad magic");
    }
    let version =
        lines.next().and_then(|l| l.strip_prefix("format_version=")).ok_or("identity file lacks format_version")?;
    if version.parse::<u32>() != Ok(DISK_FORMAT_VERSION) {
        return Err("unsupported disk format version");
    }
    let uuid = lines.next().and_then(|l| l.strip_prefix("uuid=")).ok_or("identity file lacks uuid")?;
    if uuid.len() != 32 {
        return Err("identity file has a malformed uuid");
    }
    u128::from_str_radix(uuid, 16).map_err(|_| "identity file has a malformed uuid")
}

/// Creates the disk layout if needed and opens its metadata database
/// (setting aside one that will not open or belongs to another disk).
/// Returns the disk's uuid and database.
pub(super) fn open_disk(dir: &Path) -> Result<(u128, DB), StoreError> {
    fs::create_dir_all(dir.join(EXTENTS_DIR)).map_err(io_err("create disk directories"))?;
    sync_dir(dir)?;
    let uuid = load_or_create_identity(dir)?;
    let meta_dir = dir.join(META_DIR);
    let db = match meta::open_db(&meta_dir) {
        Ok(db) => db,
        Err(e) if is_lock_error(&e) => {
            // Another Store (or process) has this disk open: touching it would be wrong.
            return Err(StoreError::Meta(e));
        }
        Err(e) => {
            error!(disk = %dir.display(), error = %e, "metadata database will not open; setting it aside and rebuilding from the extent files");
            set_meta_aside(dir)?;
            meta::open_db(&meta_dir)?
        }
    };
    let db = match db.get(meta::DISK_UUID_KEY)? {
        None => {
            db.put(meta::DISK_UUID_KEY, uuid.to_le_bytes())?;
            db
        }
        Some(stored) if stored.as_slice() == uuid.to_le_bytes() => db,
        Some(_) => {
            error!(disk = %dir.display(), "metadata database belongs to another disk; setting it aside and rebuilding from the extent files");
            drop(db);
            set_meta_aside(dir)?;
            let db = meta::open_db(&meta_dir)?;
            db.put(meta::DISK_UUID_KEY, uuid.to_le_bytes())?;
            db
        }
    };
    // RocksDB's LOCK is held from here: the disk is ours.
    let removed = remove_tmp_files(dir)?;
    if removed > 0 {
        info!(disk = %dir.display(), removed, "removed temporary files");
    }
    Ok((uuid, db))
}

/// RocksDB's words for "another process (or this one) holds the database's LOCK".
fn is_lock_error(e: &rocksdb::Error) -> bool {
    let message = e.to_string();
    message.contains("While lock file") || message.contains("lock hold by current process")
}

fn set_meta_aside(dir: &Path) -> Result<(), StoreError> {
    let aside = dir.join(format!("{META_CORRUPT_PREFIX}{}", pocket_proto::now_unix_ms()));
    fs::rename(dir.join(META_DIR), &aside).map_err(io_err("set aside metadata database"))?;
    sync_dir(dir)?;
    warn!(disk = %dir.display(), to = %aside.display(), "metadata database set aside");
    Ok(())
}

/// Removes every `*.tmp` file under `dir`, except inside metadata databases
/// (RocksDB owns their file names).
fn remove_tmp_files(dir: &Path) -> Result<u64, StoreError> {
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err("list disk directory"))? {
            let entry = entry.map_err(io_err("list disk directory"))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let file_type = entry.file_type().map_err(io_err("stat disk entry"))?;
            if file_type.is_dir() {
                if d == dir && (name == META_DIR || name.starts_with(META_CORRUPT_PREFIX)) {
                    continue;
                }
                stack.push(entry.path());
            } else if name.ends_with(TMP_SUFFIX) {
                fs::remove_file(entry.path()).map_err(io_err("remove temporary file"))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The size of a filesystem and its room left.
#[derive(Debug, Clone, Copy)]
pub(super) struct FsSpace {
    /// The device holding the filesystem: disks sharing one count once.
    pub(super) device: u64,
    pub(super) total_bytes: u64,
    pub(super) free_bytes: u64,
}

/// The space of the filesystem holding `path`.
// statvfs has no safe std equivalent. Its field types differ between
// platforms, hence the casts that are no-ops on 64-bit Linux.
#[allow(unsafe_code, clippy::unnecessary_cast)]
pub(super) fn fs_space(path: &Path) -> io::Result<FsSpace> {
    use std::os::unix::ffi::OsStrExt;
    let device = fs::metadata(path)?.dev();
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` points to
    // writable memory of the type statvfs fills in.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised (a valid statvfs) and filled in by a successful statvfs.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize as u64;
    Ok(FsSpace {
        device,
        total_bytes: (st.f_blocks as u64).saturating_mul(frsize),
        free_bytes: (st.f_bavail as u64).saturating_mul(frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_parses_what_it_writes() {
        let uuid = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        let text = format!("{DISK_IDENTITY_MAGIC}\nformat_version={DISK_FORMAT_VERSION}\nuuid={uuid:032x}\n");
        assert_eq!(parse_identity(&text), Ok(uuid));
        assert!(parse_identity("pocket-disk\nformat_version=2\nuuid=00000000000000000000000000000000\n").is_err());
        assert!(parse_identity("something else\n").is_err());
        assert!(parse_identity("pocket-disk\nformat_version=1\nuuid=xyz\n").is_err());
    }
}
