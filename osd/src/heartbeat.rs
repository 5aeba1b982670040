//! Registration and heartbeats as a background job (ADR 16): register with
//! the coordinator (retrying with backoff), then heartbeat every interval it
//! asks for; register again when it has forgotten this OSD.

use std::time::Duration;

use pocket_rpc_client::{CoordinatorClient, DiskState, Registration};
use pocket_worker::{Backoff, Job, JobError, Step};

use crate::config::OsdConfig;
use crate::fence::Fence;
use crate::store::Store;

/// First wait after a failed registration; it doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Cap on the delay between registration attempts while the coordinator is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct HeartbeatJob {
    config: OsdConfig,
    advertise: String,
    store: Store,
    /// Learns the leadership generation from every answer (ADR 19).
    fence: Fence,
    coordinator: CoordinatorClient,
    /// The coordinator's heartbeat interval, once registered.
    registered: Option<Duration>,
    /// Frontends' traffic through this OSD, reported as a rate each beat.
    live: crate::live::LiveTraffic,
    live_rate: crate::live::LiveRate,
}

impl HeartbeatJob {
    pub fn new(
        config: OsdConfig,
        coordinator: CoordinatorClient,
        advertise: String,
        store: Store,
        fence: Fence,
        live: crate::live::LiveTraffic,
    ) -> HeartbeatJob {
        HeartbeatJob { config, advertise, store, fence, coordinator, registered: None, live, live_rate: crate::live::LiveRate::new() }
    }

    async fn learn(&self, generation: u64) -> Result<(), JobError> {
        self.fence.learn(generation).await.map_err(|error| JobError::new(error.to_string()))
    }

    /// Checks every disk by path (and the test-only fault hook), then
    /// reports each one's state.
    async fn disks(&self) -> Vec<DiskState> {
        let store = self.store.clone();
        let fault_injection = self.config.fault_injection;
        tokio::task::spawn_blocking(move || {
            store.check_disks(fault_injection);
            store
                .disks()
                .into_iter()
                .map(|disk| DiskState { uuid: format!("{:032x}", disk.uuid), failed: disk.failed })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    async fn register(&mut self) -> Result<Step, JobError> {
        let disks = self.disks().await;
        let registration = Registration {
            osd_id: self.config.osd_id,
            grpc_addr: self.advertise.clone(),
            failure_domain: self.config.failure_domain(),
            capacity_bytes: self.store.capacity_bytes(),
            used_bytes: self.store.used_bytes(),
            disks,
        };
        let registered = self
            .coordinator
            .rpc_register(registration)
            .await
            .map_err(|error| JobError::new(format!("registration failed: {error}")))?;
        self.learn(registered.generation).await?;
        let interval = Duration::from_millis(registered.heartbeat_interval_ms.clamp(100, 60_000));
        tracing::info!(osd_id = self.config.osd_id, cell_id = registered.cell_id, "registered with coordinator");
        self.registered = Some(interval);
        Ok(Step::Idle(interval))
    }

    async fn beat(&mut self, interval: Duration) -> Result<Step, JobError> {
        let disks = self.disks().await;
        let live = self.live_rate.sample(&self.live);
        let beat = self.coordinator.rpc_heartbeat(self.config.osd_id, self.store.used_bytes(), self.store.capacity_bytes(), &disks, live);
        match beat.await {
            Ok((true, generation)) => {
                self.learn(generation).await?;
                Ok(Step::Idle(interval))
            }
            Ok((false, _)) => {
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
