//! The outbound calls to the coordinator.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pocket_proto::{pb, BucketId, CellId, ExtentId, OsdId};
use tonic::transport::Channel;
use tonic::Code;

use crate::error::CoordinatorError;
use crate::{CELL_STATUS_TIMEOUT, COORDINATOR_CALL_TIMEOUT, HEARTBEAT_TIMEOUT};

/// One extent of a bucket's volume on one OSD: a replica (replicated
/// volume) or a shard (erasure-coded volume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub osd_id: OsdId,
    pub grpc_addr: String,
    pub extent_id: ExtentId,
    /// Erasure-coded volumes: shard position and length.
    pub position: u32,
    pub size_bytes: u64,
}

/// The erasure code of the volume holding a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcShape {
    pub data_shards: u32,
    pub parity_shards: u32,
    /// The bucket's own data shard.
    pub position: u32,
}

/// Where a bucket's records are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub bucket_id: BucketId,
    /// Replicated: the replicas of the bucket's extent. Erasure-coded: every shard of the volume.
    pub replicas: Vec<Replica>,
    /// Set when the bucket lives in an erasure-coded volume.
    pub ec: Option<EcShape>,
}

/// Why a frontend stops writing to a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketProblem {
    /// Its extent is full.
    Full,
    /// A replica failed an append.
    ReplicaFailed,
}

/// What an OSD tells the coordinator about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub osd_id: OsdId,
    pub grpc_addr: String,
    pub failure_domain: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// Every disk the OSD has now.
    pub disks: Vec<DiskState>,
}

/// One disk of an OSD as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskState {
    /// The uuid in its `POCKET_DISK`, 32 hex digits.
    pub uuid: String,
    /// Why the OSD failed it, if it did.
    pub failed: Option<String>,
}

fn disk_states(disks: &[DiskState]) -> Vec<pb::DiskState> {
    disks
        .iter()
        .map(|disk| pb::DiskState {
            uuid: disk.uuid.clone(),
            failed: disk.failed.is_some(),
            reason: disk.failed.clone().unwrap_or_default(),
        })
        .collect()
}

/// The coordinator's answer to a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub cell_id: CellId,
    pub heartbeat_interval_ms: u64,
    /// The leadership generation the OSD must refuse anything older than.
    pub generation: u64,
}

/// One OSD as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsdStatus {
    pub osd_id: OsdId,
    pub grpc_addr: String,
    pub alive: bool,
    /// `up`, `down` or `out`.
    pub health: String,
    /// Its disks that failed or were lost.
    pub failed_disks: u32,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

/// `Coordinator.CellStatus`: the cell at a glance.
#[derive(Debug, Clone, PartialEq)]
pub struct CellStatus {
    pub cell_id: CellId,
    pub osds: Vec<OsdStatus>,
    /// Volume counts by `KIND/STATE`, e.g. `replicated/open`, `ec/ec`.
    pub volumes_by_state: BTreeMap<String, u64>,
    /// Sealed data: bytes of every stored extent, and one copy of each bucket.
    pub sealed_stored_bytes: u64,
    pub sealed_logical_bytes: u64,
    pub data_shards: u32,
    pub parity_shards: u32,
    pub repair: RepairStatus,
    /// The coordinator leading the cell (empty: none yet), its address and
    /// generation, and the coordinator that answered.
    pub leader: String,
    pub leader_addr: String,
    pub generation: u64,
    pub answered_by: String,
    pub storage: StorageStatus,
}

/// Storage against what the volumes' kinds imply, from `Coordinator.CellStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStatus {
    /// What sealed volumes take at their kinds' overheads.
    pub implied_bytes: u64,
    /// From the leader's last reconciliation pass (over up OSDs): open
    /// extents' bytes, copies nothing names, and when it ended (0: none).
    pub open_bytes: u64,
    pub unnamed_bytes: u64,
    pub unnamed_copies: u64,
    pub reconciled_unix_ms: i64,
    /// Copies reconciliation moved to trash since the leader started.
    pub reconciled_copies: u64,
}

/// Redundancy and repair, from `Coordinator.CellStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairStatus {
    /// Copies or shards missing (0 = full redundancy) → (logical extents, bytes).
    pub levels: BTreeMap<u32, (u64, u64)>,
    pub queue_extents: u64,
    pub queue_bytes: u64,
    pub in_flight: u64,
    pub oldest_wait_ms: u64,
    pub bytes_per_sec: u64,
    pub repaired_bytes_total: u64,
    pub repaired_total: u64,
    /// The background byte rate in force; 0 = no limit.
    pub background_bytes_per_sec: u64,
    /// The rate in force now (0: no limit) and the cell's live traffic.
    pub background_rate_in_force: u64,
    pub live_bytes_per_sec: u64,
    /// No operator's rate: the configured ones apply, by live traffic.
    pub background_automatic: bool,
}

/// The outbound calls to the coordinator. Cloning clones a channel handle.
#[derive(Clone)]
pub struct CoordinatorClient {
    /// One client per coordinator of the cell (ADR 19): every one answers,
    /// the leader and its standbys alike.
    endpoints: Arc<Vec<pb::coordinator_client::CoordinatorClient<Channel>>>,
    /// The endpoint that answered last: tried first.
    current: Arc<AtomicUsize>,
}

fn with_deadline<T>(message: T, timeout: std::time::Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Whether another coordinator should be tried: this one is not reachable
/// (a failed connection comes back as UNKNOWN "transport error").
fn unreachable(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
}

fn error(status: tonic::Status) -> CoordinatorError {
    CoordinatorError::from_status(&status)
}

fn bucket_of(placement: pb::BucketPlacement) -> Bucket {
    let ec = (placement.data_shards > 0).then_some(EcShape {
        data_shards: placement.data_shards,
        parity_shards: placement.parity_shards,
        position: placement.bucket_position,
    });
    Bucket {
        bucket_id: placement.bucket_id,
        replicas: placement
            .replicas
            .into_iter()
            .map(|r| Replica {
                osd_id: r.osd_id,
                grpc_addr: r.grpc_addr,
                extent_id: r.extent_id,
                position: r.position,
                size_bytes: r.size_bytes,
            })
            .collect(),
        ec,
    }
}

fn repair_status(repair: pb::RepairStatus) -> RepairStatus {
    RepairStatus {
        levels: repair.levels.into_iter().map(|level| (level.missing, (level.extents, level.bytes))).collect(),
        queue_extents: repair.queue_extents,
        queue_bytes: repair.queue_bytes,
        in_flight: repair.in_flight,
        oldest_wait_ms: repair.oldest_wait_ms,
        bytes_per_sec: repair.bytes_per_sec,
        repaired_bytes_total: repair.repaired_bytes_total,
        repaired_total: repair.repaired_total,
        background_bytes_per_sec: repair.background_bytes_per_sec,
        background_rate_in_force: repair.background_rate_in_force,
        live_bytes_per_sec: repair.live_bytes_per_sec,
        background_automatic: repair.background_automatic,
    }
}

impl CoordinatorClient {
    /// A client of the coordinator at `addr`; TLS refuses any other server.
    /// The connection is made on the first call.
    pub fn connect(tls: &pocket_transport::Tls, addr: &str) -> Result<CoordinatorClient, CoordinatorError> {
        CoordinatorClient::connect_any(tls, &[addr.to_string()])
    }

    /// A client of the cell's coordinators at `addrs`: a call goes to the
    /// one that answered last, and on to the next while one is unreachable.
    pub fn connect_any(tls: &pocket_transport::Tls, addrs: &[String]) -> Result<CoordinatorClient, CoordinatorError> {
        if addrs.is_empty() {
            return Err(CoordinatorError::Address("no coordinator address".into()));
        }
        let name = pocket_transport::role_dns_name(pocket_transport::Role::Coordinator);
        let endpoints = addrs
            .iter()
            .map(|addr| {
                let channel = tls.channel(addr, &name).map_err(|e| CoordinatorError::Address(e.to_string()))?;
                Ok(pb::coordinator_client::CoordinatorClient::new(channel))
            })
            .collect::<Result<Vec<_>, CoordinatorError>>()?;
        Ok(CoordinatorClient { endpoints: Arc::new(endpoints), current: Arc::new(AtomicUsize::new(0)) })
    }

    /// Runs `call` on the endpoint that answered last, then on each other
    /// one while the answer is that the coordinator is unreachable.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(pb::coordinator_client::CoordinatorClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let index = (first + i) % n;
            match call(self.endpoints[index].clone()).await {
                Err(status) if unreachable(&status) => last = Some(status),
                result => {
                    self.current.store(index, Ordering::Relaxed);
                    return result;
                }
            }
        }
        Err(last.unwrap_or_else(|| tonic::Status::unavailable("no coordinator")))
    }

    /// `Coordinator.RegisterOsd`.
    pub async fn rpc_register(&self, osd: Registration) -> Result<Registered, CoordinatorError> {
        let request = pb::RegisterOsdRequest {
            osd_id: osd.osd_id,
            grpc_addr: osd.grpc_addr,
            failure_domain: osd.failure_domain,
            capacity_bytes: osd.capacity_bytes,
            used_bytes: osd.used_bytes,
            disks: disk_states(&osd.disks),
        };
        let response = self.call(|mut grpc| {
            let request = request.clone();
            async move { grpc.register_osd(with_deadline(request, COORDINATOR_CALL_TIMEOUT)).await }
        }).await.map_err(error)?.into_inner();
        Ok(Registered {
            cell_id: response.cell_id,
            heartbeat_interval_ms: response.heartbeat_interval_ms,
            generation: response.generation,
        })
    }

    /// `Coordinator.Heartbeat`; returns whether the coordinator knows the
    /// OSD (false: register again) and the leadership generation.
    pub async fn rpc_heartbeat(
        &self,
        osd_id: OsdId,
        used_bytes: u64,
        capacity_bytes: u64,
        disks: &[DiskState],
        live_bytes_per_sec: u64,
    ) -> Result<(bool, u64), CoordinatorError> {
        let request = pb::HeartbeatRequest { osd_id, used_bytes, capacity_bytes, disks: disk_states(disks), live_bytes_per_sec };
        let response = self.call(|mut grpc| {
            let request = request.clone();
            async move { grpc.heartbeat(with_deadline(request, HEARTBEAT_TIMEOUT)).await }
        }).await.map_err(error)?.into_inner();
        Ok((response.known, response.generation))
    }

    /// `Coordinator.WritableBuckets`: the cell's id and its open buckets.
    pub async fn rpc_writable_buckets(&self) -> Result<(CellId, Vec<Bucket>), CoordinatorError> {
        let response = self
            .call(|mut grpc| async move {
                grpc.writable_buckets(with_deadline(pb::WritableBucketsRequest {}, COORDINATOR_CALL_TIMEOUT)).await
            })
            .await
            .map_err(error)?
            .into_inner();
        Ok((response.cell_id, response.buckets.into_iter().map(bucket_of).collect()))
    }

    /// `Coordinator.ReportBucket`: writes to `bucket_id` failed (`osd_id`
    /// names the failed replica); its volume is closed.
    pub async fn rpc_report(&self, bucket_id: BucketId, problem: BucketProblem, osd_id: OsdId, detail: String) -> Result<(), CoordinatorError> {
        let problem = match problem {
            BucketProblem::Full => pb::BucketProblem::Full,
            BucketProblem::ReplicaFailed => pb::BucketProblem::ReplicaFailed,
        };
        let request = pb::ReportBucketRequest { bucket_id, problem: problem as i32, osd_id, detail };
        self.call(|mut grpc| {
            let request = request.clone();
            async move { grpc.report_bucket(with_deadline(request, COORDINATOR_CALL_TIMEOUT)).await }
        }).await.map_err(error)?;
        Ok(())
    }

    /// `Coordinator.LocateBucket`.
    pub async fn rpc_locate(&self, bucket_id: BucketId) -> Result<Bucket, CoordinatorError> {
        let call = |mut grpc: pb::coordinator_client::CoordinatorClient<Channel>| async move {
            grpc.locate_bucket(with_deadline(pb::LocateBucketRequest { bucket_id }, COORDINATOR_CALL_TIMEOUT)).await
        };
        let response = self.call(call).await.map_err(|status| match status.code() {
            Code::NotFound => CoordinatorError::UnknownBucket(bucket_id),
            _ => error(status),
        })?;
        let placement = response.into_inner().placement.ok_or(CoordinatorError::UnknownBucket(bucket_id))?;
        Ok(bucket_of(placement))
    }

    /// `Coordinator.CellStatus`, from whichever coordinator answers (a
    /// standby's repair figures are what the leader last published).
    pub async fn rpc_status(&self) -> Result<CellStatus, CoordinatorError> {
        let status = self
            .call(|mut grpc| async move { grpc.cell_status(with_deadline(pb::CellStatusRequest {}, CELL_STATUS_TIMEOUT)).await })
            .await
            .map_err(error)?
            .into_inner();
        Ok(cell_status(status))
    }

    /// `Coordinator.CellStatus` from the leader if one answers (its repair
    /// and reconciliation figures are live), else from any coordinator.
    pub async fn rpc_leader_status(&self) -> Result<CellStatus, CoordinatorError> {
        let first = self.rpc_status().await?;
        if first.leader.is_empty() || first.answered_by == first.leader {
            return Ok(first);
        }
        for endpoint in self.endpoints.iter() {
            let mut grpc = endpoint.clone();
            if let Ok(status) = grpc.cell_status(with_deadline(pb::CellStatusRequest {}, CELL_STATUS_TIMEOUT)).await {
                let status = status.into_inner();
                if status.answered_by == status.leader {
                    return Ok(cell_status(status));
                }
            }
        }
        Ok(first)
    }
}

/// The client's view of a `CellStatusResponse`.
fn cell_status(status: pb::CellStatusResponse) -> CellStatus {
    {
        CellStatus {
            cell_id: status.cell_id,
            osds: status
                .osds
                .into_iter()
                .map(|osd| OsdStatus {
                    osd_id: osd.osd_id,
                    grpc_addr: osd.grpc_addr,
                    alive: osd.alive,
                    health: osd.health,
                    failed_disks: osd.failed_disks,
                    used_bytes: osd.used_bytes,
                    capacity_bytes: osd.capacity_bytes,
                })
                .collect(),
            volumes_by_state: status.volumes_by_state.into_iter().collect(),
            sealed_stored_bytes: status.sealed_stored_bytes,
            sealed_logical_bytes: status.sealed_logical_bytes,
            data_shards: status.data_shards,
            parity_shards: status.parity_shards,
            repair: status.repair.map(repair_status).unwrap_or_default(),
            leader: status.leader,
            leader_addr: status.leader_addr,
            generation: status.generation,
            answered_by: status.answered_by,
            storage: status
                .storage
                .map(|storage| StorageStatus {
                    implied_bytes: storage.implied_bytes,
                    open_bytes: storage.open_bytes,
                    unnamed_bytes: storage.unnamed_bytes,
                    unnamed_copies: storage.unnamed_copies,
                    reconciled_unix_ms: storage.reconciled_unix_ms,
                    reconciled_copies: storage.reconciled_copies,
                })
                .unwrap_or_default(),
        }
    }
}

impl CoordinatorClient {
    /// `Coordinator.SetBackgroundRate` (operators): the byte rate repair and
    /// erasure coding share; 0 = no limit.
    pub async fn rpc_set_background_rate(&self, bytes_per_sec: u64) -> Result<u64, CoordinatorError> {
        self.set_background_rate(bytes_per_sec, false).await
    }

    /// `Coordinator.SetBackgroundRate` back to the configured rates (paced
    /// under live traffic only).
    pub async fn rpc_set_background_automatic(&self) -> Result<u64, CoordinatorError> {
        self.set_background_rate(0, true).await
    }

    async fn set_background_rate(&self, bytes_per_sec: u64, automatic: bool) -> Result<u64, CoordinatorError> {
        let call = |mut grpc: pb::coordinator_client::CoordinatorClient<Channel>| async move {
            let request = pb::SetBackgroundRateRequest { bytes_per_sec, automatic };
            grpc.set_background_rate(with_deadline(request, COORDINATOR_CALL_TIMEOUT)).await
        };
        Ok(self.call(call).await.map_err(error)?.into_inner().bytes_per_sec)
    }
}
