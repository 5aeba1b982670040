//! Registration and heartbeats as a background job (ADR 16): register with
//! the coordinator (retrying with backoff), then heartbeat every interval it
//! asks for; register again when it has forgotten this OSD.

use std::time::Duration;

use pocket_proto::pb;
use pocket_worker::{Backoff, Job, JobError, Step};
use tonic::transport::Channel;

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
    client: pb::coordinator_client::CoordinatorClient<Channel>,
    /// The coordinator's heartbeat interval, once registered.
    registered: Option<Duration>,
}

impl HeartbeatJob {
    pub fn new(config: OsdConfig, channel: Channel, advertise: String, store: Store) -> HeartbeatJob {
        let client = pb::coordinator_client::CoordinatorClient::new(channel);
        HeartbeatJob { config, advertise, store, client, registered: None }
    }

    async fn register(&mut self) -> Result<Step, JobError> {
        let request = pb::RegisterOsdRequest {
            osd_id: self.config.osd_id,
            grpc_addr: self.advertise.clone(),
            failure_domain: self.config.failure_domain(),
            capacity_bytes: self.store.capacity_bytes(),
            used_bytes: self.store.used_bytes(),
        };
        let response = self
            .client
            .register_osd(request)
            .await
            .map_err(|status| JobError::new(format!("registration failed: {status}")))?;
        let interval = Duration::from_millis(response.get_ref().heartbeat_interval_ms.clamp(100, 60_000));
        tracing::info!(osd_id = self.config.osd_id, cell_id = response.get_ref().cell_id, "registered with coordinator");
        self.registered = Some(interval);
        Ok(Step::Idle(interval))
    }

    async fn beat(&mut self, interval: Duration) -> Result<Step, JobError> {
        let request = pb::HeartbeatRequest {
            osd_id: self.config.osd_id,
            used_bytes: self.store.used_bytes(),
            capacity_bytes: self.store.capacity_bytes(),
        };
        match self.client.heartbeat(request).await {
            Ok(response) if response.get_ref().known => Ok(Step::Idle(interval)),
            Ok(_) => {
                // Forgotten (e.g. a new cell database): register again now.
                self.registered = None;
                Ok(Step::Busy)
            }
            // The beat goes on at its interval, failed or not: backing off
            // would let the coordinator declare this OSD down.
            Err(status) => Err(JobError::retry_after(format!("heartbeat failed: {status}"), interval)),
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
