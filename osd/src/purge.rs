//! Purging the trash as a background job (ADR 16): every deleted extent
//! waits in its disk's `trash/` for the trash delay, so that an operator can
//! still restore it, then this job removes it (`store/trash.rs`).

use std::time::Duration;

use pocket_worker::{Backoff, Job, JobError, Step};

use crate::store::Store;

/// Longest pause between two looks at the trash.
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest pause: a zero delay still purges at most once a second.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

pub struct PurgeJob {
    store: Store,
    delay: Duration,
}

impl PurgeJob {
    pub fn new(store: Store, delay: Duration) -> PurgeJob {
        PurgeJob { store, delay }
    }

    /// A quarter of the delay, between one second and a minute: a file is
    /// purged at most that long after its delay has passed.
    fn interval(&self) -> Duration {
        (self.delay / 4).clamp(MIN_INTERVAL, MAX_INTERVAL)
    }
}

impl Job for PurgeJob {
    fn name(&self) -> &'static str {
        "trash-purge"
    }

    async fn step(&mut self) -> Result<Step, JobError> {
        let (store, delay) = (self.store.clone(), self.delay);
        let report = tokio::task::spawn_blocking(move || store.purge_trash(delay, pocket_proto::now_unix_ms()))
            .await
            .map_err(|error| JobError::new(format!("trash purge task failed: {error}")))?;
        metrics::counter!("pocket_osd_trash_purged_bytes_total").increment(report.purged_bytes);
        metrics::counter!("pocket_osd_trash_purged_files_total").increment(report.purged_files);
        metrics::gauge!("pocket_osd_trash_bytes").set(report.kept_bytes as f64);
        metrics::gauge!("pocket_osd_trash_files").set(report.kept_files as f64);
        Ok(Step::Idle(self.interval()))
    }

    fn backoff(&self) -> Backoff {
        Backoff { initial: self.interval(), max: MAX_INTERVAL }
    }

    /// A purge stopped half-way leaves files for the next one.
    fn cancel_safe(&self) -> bool {
        true
    }
}
