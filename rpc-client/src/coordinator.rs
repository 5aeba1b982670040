//! The outbound calls to the coordinator.

use std::collections::BTreeMap;

use pocket_proto::{pb, BucketId, CellId, ExtentId, OsdId};
use tonic::transport::Channel;
use tonic::Code;

use crate::error::CoordinatorError;
use crate::{CELL_STATUS_TIMEOUT, COORDINATOR_CALL_TIMEOUT};

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
}

/// The coordinator's answer to a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub cell_id: CellId,
    pub heartbeat_interval_ms: u64,
}

/// One OSD as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsdStatus {
    pub osd_id: OsdId,
    pub grpc_addr: String,
    pub alive: bool,
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
}

/// The outbound calls to the coordinator. Cloning clones a channel handle.
#[derive(Clone)]
pub struct CoordinatorClient {
    grpc: pb::coordinator_client::CoordinatorClient<Channel>,
}

fn with_deadline<T>(message: T, timeout: std::time::Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
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

impl CoordinatorClient {
    /// A client of the coordinator at `addr`; TLS refuses any other server.
    /// The connection is made on the first call.
    pub fn connect(tls: &pocket_transport::Tls, addr: &str) -> Result<CoordinatorClient, CoordinatorError> {
        let name = pocket_transport::role_dns_name(pocket_transport::Role::Coordinator);
        let channel = tls.channel(addr, &name).map_err(|e| CoordinatorError::Address(e.to_string()))?;
        Ok(CoordinatorClient { grpc: pb::coordinator_client::CoordinatorClient::new(channel) })
    }

    /// `Coordinator.RegisterOsd`.
    pub async fn rpc_register(&self, osd: Registration) -> Result<Registered, CoordinatorError> {
        let request = pb::RegisterOsdRequest {
            osd_id: osd.osd_id,
            grpc_addr: osd.grpc_addr,
            failure_domain: osd.failure_domain,
            capacity_bytes: osd.capacity_bytes,
            used_bytes: osd.used_bytes,
        };
        let response = self.grpc.clone().register_osd(request).await.map_err(error)?.into_inner();
        Ok(Registered { cell_id: response.cell_id, heartbeat_interval_ms: response.heartbeat_interval_ms })
    }

    /// `Coordinator.Heartbeat`; returns whether the coordinator knows the
    /// OSD (false: register again).
    pub async fn rpc_heartbeat(&self, osd_id: OsdId, used_bytes: u64, capacity_bytes: u64) -> Result<bool, CoordinatorError> {
        let request = pb::HeartbeatRequest { osd_id, used_bytes, capacity_bytes };
        Ok(self.grpc.clone().heartbeat(request).await.map_err(error)?.into_inner().known)
    }

    /// `Coordinator.WritableBuckets`: the cell's id and its open buckets.
    pub async fn rpc_writable_buckets(&self) -> Result<(CellId, Vec<Bucket>), CoordinatorError> {
        let request = with_deadline(pb::WritableBucketsRequest {}, COORDINATOR_CALL_TIMEOUT);
        let response = self.grpc.clone().writable_buckets(request).await.map_err(error)?.into_inner();
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
        self.grpc.clone().report_bucket(request).await.map_err(error)?;
        Ok(())
    }

    /// `Coordinator.LocateBucket`.
    pub async fn rpc_locate(&self, bucket_id: BucketId) -> Result<Bucket, CoordinatorError> {
        let request = with_deadline(pb::LocateBucketRequest { bucket_id }, COORDINATOR_CALL_TIMEOUT);
        let response = self.grpc.clone().locate_bucket(request).await.map_err(|status| match status.code() {
            Code::NotFound => CoordinatorError::UnknownBucket(bucket_id),
            _ => error(status),
        })?;
        let placement = response.into_inner().placement.ok_or(CoordinatorError::UnknownBucket(bucket_id))?;
        Ok(bucket_of(placement))
    }

    /// `Coordinator.CellStatus`.
    pub async fn rpc_status(&self) -> Result<CellStatus, CoordinatorError> {
        let request = with_deadline(pb::CellStatusRequest {}, CELL_STATUS_TIMEOUT);
        let status = self.grpc.clone().cell_status(request).await.map_err(error)?.into_inner();
        Ok(CellStatus {
            cell_id: status.cell_id,
            osds: status
                .osds
                .into_iter()
                .map(|osd| OsdStatus {
                    osd_id: osd.osd_id,
                    grpc_addr: osd.grpc_addr,
                    alive: osd.alive,
                    used_bytes: osd.used_bytes,
                    capacity_bytes: osd.capacity_bytes,
                })
                .collect(),
            volumes_by_state: status.volumes_by_state.into_iter().collect(),
            sealed_stored_bytes: status.sealed_stored_bytes,
            sealed_logical_bytes: status.sealed_logical_bytes,
            data_shards: status.data_shards,
            parity_shards: status.parity_shards,
        })
    }
}
