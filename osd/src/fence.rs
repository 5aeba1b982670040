//! The coordinator generation this OSD obeys (ADR 19): every mutating call
//! a coordinator makes (create, seal, write a whole extent, delete) carries
//! the generation of its leadership; a call with a lower generation than the
//! highest this OSD has seen is refused, so a deposed leader can change
//! nothing here. The highest generation is learned from those calls and
//! from every registration and heartbeat answer, and kept in
//! `DISK/coordinator-generation` on every disk (synced before it counts),
//! so that a restart does not forget it and one wiped disk does not either.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// File holding the highest generation seen, on each disk.
pub const GENERATION_FILE: &str = "coordinator-generation";

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("stale coordinator generation {got}: this OSD obeys generation {highest} or later (a newer leader exists)")]
    Stale { got: u64, highest: u64 },
    #[error("cannot keep the coordinator generation on any disk: {0}")]
    Persist(#[source] io::Error),
}

#[derive(Clone)]
pub struct Fence {
    inner: Arc<Inner>,
}

struct Inner {
    highest: AtomicU64,
    files: Vec<PathBuf>,
    /// Serialises raises, so the files only ever grow.
    persist: tokio::sync::Mutex<()>,
}

impl Fence {
    /// The highest generation any of `disks` recorded (0 if none did).
    pub fn open(disks: &[PathBuf]) -> Fence {
        let files: Vec<PathBuf> = disks.iter().map(|disk| disk.join(GENERATION_FILE)).collect();
        let highest = files
            .iter()
            .filter_map(|file| std::fs::read_to_string(file).ok())
            .filter_map(|text| text.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Fence { inner: Arc::new(Inner { highest: AtomicU64::new(highest), files, persist: tokio::sync::Mutex::new(()) }) }
    }

    pub fn highest(&self) -> u64 {
        self.inner.highest.load(Ordering::Acquire)
    }

    /// Admits a mutating call of `generation`: refused if lower than the
    /// highest seen; a higher one is made durable first.
    pub async fn admit(&self, generation: u64) -> Result<(), FenceError> {
        let highest = self.highest();
        if generation < highest {
            metrics::counter!("pocket_osd_stale_generation_refused_total").increment(1);
            return Err(FenceError::Stale { got: generation, highest });
        }
        self.learn(generation).await
    }

    /// Raises the highest generation to `generation` (no-op if not higher).
    pub async fn learn(&self, generation: u64) -> Result<(), FenceError> {
        if generation <= self.highest() {
            return Ok(());
        }
        let _guard = self.inner.persist.lock().await;
        if generation <= self.highest() {
            return Ok(());
        }
        let files = self.inner.files.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut last_error = None;
            let mut written = 0;
            for file in &files {
                match write_synced(file, generation) {
                    Ok(()) => written += 1,
                    Err(error) => {
                        tracing::warn!(file = %file.display(), %error, "coordinator generation not written to this disk");
                        last_error = Some(error);
                    }
                }
            }
            match last_error {
                Some(error) if written == 0 => Err(error),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| FenceError::Persist(io::Error::other(e)))?;
        written.map_err(FenceError::Persist)?;
        self.inner.highest.store(generation, Ordering::Release);
        tracing::info!(generation, "obeying a new coordinator generation");
        Ok(())
    }
}

/// Writes `generation` to `file` through a synced temporary file and a rename.
fn write_synced(file: &Path, generation: u64) -> io::Result<()> {
    let tmp = file.with_extension("tmp");
    {
        let mut out = std::fs::File::create(&tmp)?;
        out.write_all(format!("{generation}\n").as_bytes())?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lower_generations_are_refused_and_the_highest_survives_a_restart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let disks = vec![tmp.path().join("a"), tmp.path().join("b")];
        for disk in &disks {
            std::fs::create_dir_all(disk).expect("disk");
        }
        let fence = Fence::open(&disks);
        assert_eq!(fence.highest(), 0);
        fence.admit(0).await.expect("a fresh OSD admits generation 0");
        fence.admit(3).await.expect("higher");
        fence.admit(3).await.expect("equal");
        let err = fence.admit(2).await.expect_err("lower is refused");
        assert!(matches!(err, FenceError::Stale { got: 2, highest: 3 }), "{err}");
        fence.learn(5).await.expect("learned from a heartbeat");
        assert!(fence.admit(4).await.is_err());

        // A restart reads it back; a wiped disk is covered by the other.
        std::fs::remove_dir_all(&disks[0]).expect("wipe");
        std::fs::create_dir_all(&disks[0]).expect("new disk");
        let fence = Fence::open(&disks);
        assert_eq!(fence.highest(), 5);
        assert!(fence.admit(4).await.is_err());
        fence.admit(6).await.expect("higher");
        assert_eq!(std::fs::read_to_string(disks[0].join(GENERATION_FILE)).expect("written").trim(), "6");
    }
}
