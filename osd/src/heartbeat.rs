//! Registration and heartbeats as a background job (ADR 16): register with
//! the coordinator (retrying with backoff), then heartbeat every interval it
//! asks for; register again when it has forgotten this OSD.

use std::time::Duration;

use pocket_rpc_client::{CoordinatorClient, Registration};
use pocket_worker::{Backoff, Job, JobError, Step};

use crate::config::OsdConfig;
use crate::store::Store;

/// First wait after a failed registration; it doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Cap on the delay between registration attempts while the coordinator is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct HeartbeatJob {
    config: OsdConfig,
    advertise: String,
    store: Store,
    coordinator: CoordinatorClient,
    /// The coordinator's heartbeat interval, once registered.
    registered: Option<Duration>,
}

impl HeartbeatJob {
    pub fn new(config: OsdConfig, coordinator: CoordinatorClient, advertise: String, store: Store) -> HeartbeatJob {
        HeartbeatJob { config, advertise, store, coordinator, registered: None }
    }

    async fn register(&mut self) -> Result<Step, JobError> {
        let registration = Registration {
            osd_id: self.config.osd_id,
            grpc_addr: self.advertise.clone(),
            failure_domain: self.config.failure_domain(),
            capacity_bytes: self.store.capacity_bytes(),
            used_bytes: self.store.used_bytes(),
        };
        let registered = self
            .coordinator
            .rpc_register(registration)
            .await
            .map_err(|error| JobError::new(format!("registration failed: {error}")))?;
        let interval = Duration::from_millis(registered.heartbeat_interval_ms.clamp(100, 60_000));
        tracing::info!(osd_id = self.config.osd_id, cell_id = registered.cell_id, "registered with coordinator");
        self.registered = Some(interval);
        Ok(Step::Idle(interval))
    }

    async fn beat(&mut self, interval: Duration) -> Result<Step, JobError> {
        let beat = self.coordinator.rpc_heartbeat(self.config.osd_id, self.store.used_bytes(), self.store.capacity_bytes());
        match beat.await {
            Ok(true) => Ok(Step::Idle(interval)),
            Ok(false) => {
                // Forgotten (e.g. a new cell database): register again now.
                self.registered = None;
                Ok(Step::Busy)
            }
            // The beat goes on at its interval, failed or not: backing off
            // would let the coordinator declare this OSD down.
            Err(error) => Err(JobError::retry_after(format!("heartbeat failed: {error}"), interval)),
        }
    }
}

impl Job for HeartbeatJob {
    fn name(&self) -> &'static str {
        "heartbeat"
    }

    async fn step(&mut self) -> Result<Step, JobError> {
        match self.registered {
            None => self.register().await,
            Some(interval) => self.beat(interval).await,
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff { initial: INITIAL_BACKOFF, max: MAX_BACKOFF }
    }

    /// A beat dropped half-way is simply not sent.
    fn cancel_safe(&self) -> bool {
        true
    }
}
