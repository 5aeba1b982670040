//! Helpers shared by the OSD store's integration tests.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use pocket_format as extent;
use pocket_osd::io::DIRECT_IO_ALIGN;
use pocket_osd::{AppendOutcome, ExtentInfo, Store, StoreOptions};
use pocket_proto::{ExtentId, Key};

pub const MIB: u64 = 1024 * 1024;

pub fn opts() -> StoreOptions {
    StoreOptions {
        max_record_bytes: MIB,
        group_commit_max_bytes: 4 * MIB,
        append_queue_depth: 16,
        page_cache_window_bytes: None,
        direct_io: true,
    }
}

/// Deterministic pseudo-random blob number `seed`, `len` bytes, and its key.
pub fn blob(seed: u64, len: usize) -> (Key, Bytes) {
    let mut data = vec![0u8; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut data);
    (Key::of(&data), Bytes::from(data))
}

pub struct Disks {
    _tmp: tempfile::TempDir,
    pub dirs: Vec<PathBuf>,
}

pub fn disks(n: usize) -> Result<Disks> {
    let tmp = tempfile::tempdir()?;
    let dirs = (0..n).map(|i| tmp.path().join(format!("disk{i}"))).collect();
    Ok(Disks { _tmp: tmp, dirs })
}

impl Disks {
    pub fn open(&self) -> Result<Store> {
        Ok(Store::open(&self.dirs, opts())?)
    }

    /// Path of extent `id`'s file, on whichever disk holds it.
    pub fn extent_path(&self, id: ExtentId) -> Result<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join("extents").join(extent::extent_file_name(id)))
            .find(|p| p.exists())
            .with_context(|| format!("no file for extent {id}"))
    }

    pub fn disk_of(&self, id: ExtentId) -> Result<PathBuf> {
        let path = self.extent_path(id)?;
        Ok(path.parent().and_then(Path::parent).context("disk dir")?.to_path_buf())
    }

    pub fn delete_meta(&self) -> Result<()> {
        for d in &self.dirs {
            fs::remove_dir_all(d.join("meta"))?;
        }
        Ok(())
    }
}

pub fn file_len(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)?.len())
}

/// An open extent's file holds its records up to `end`, then (direct
/// appends, ADR 11) zeros up to a whole block.
pub fn assert_open_file_ends_at(path: &Path, end: u64) -> Result<()> {
    let bytes = fs::read(path)?;
    assert_eq!(bytes.len() as u64, end.next_multiple_of(DIRECT_IO_ALIGN as u64), "records, then zeros to a whole block");
    assert!(bytes[end as usize..].iter().all(|b| *b == 0), "the padding is zeros");
    Ok(())
}

/// Appends `count` blobs of `len` bytes (seeds from `first_seed`) and returns (key, data, offset).
pub async fn fill(store: &Store, id: ExtentId, first_seed: u64, count: u64, len: usize) -> Result<Vec<(Key, Bytes, u64)>> {
    let mut out = Vec::new();
    for seed in first_seed..first_seed + count {
        let (key, data) = blob(seed, len);
        match store.append(id, key, data.clone()).await? {
            AppendOutcome::Appended { offset } => out.push((key, data, offset)),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    Ok(out)
}

pub async fn assert_readable(store: &Store, id: ExtentId, records: &[(Key, Bytes, u64)]) -> Result<()> {
    for (key, data, _) in records {
        let got = store.read(id, key).await.with_context(|| format!("read {key:?} from extent {id}"))?;
        ensure!(got == *data, "extent {id}: data of {key:?} differs");
        ensure!(store.has(id, key)?, "extent {id}: has({key:?}) is false");
    }
    Ok(())
}

pub fn info(store: &Store, id: ExtentId) -> Result<ExtentInfo> {
    store.extent_info(id)?.with_context(|| format!("extent {id} missing"))
}
