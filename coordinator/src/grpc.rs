//! The coordinator's gRPC edge: wire messages to [`Cell`] calls.

use std::collections::HashMap;

use pocket_proto::pb;
use tonic::{Request, Response, Status};

use pocket_transport::{authorize, peer_identity, Identity, Role, RoleGate};

use crate::audit::AuditLog;
use crate::cell::{Cell, CellError, Placement};
use crate::db::{DiskReport, OsdRow};
use crate::health::OsdHealth;

/// Live traffic an OSD may report: more than any disk or NIC moves (1 TiB/s).
const MAX_LIVE_BYTES_PER_SEC: u64 = 1 << 40;
/// Largest request the coordinator decodes: its requests are ids and names.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Longest OSD address or failure-domain name accepted at registration.
const MAX_NAME_LEN: usize = 255;
/// Lowest background byte rate an operator may set (other than 0, no
/// limit): below a chunk per second, a repair or an encoding would stall.
const MIN_BACKGROUND_BYTES_PER_SEC: u64 = 1024 * 1024;

pub struct CoordinatorService {
    cell: Cell,
    audit: AuditLog,
}

impl CoordinatorService {
    pub fn new(cell: Cell, audit: AuditLog) -> CoordinatorService {
        CoordinatorService { cell, audit }
    }

    /// `authorize`, and an operator refused is audited too: the log shows
    /// attempts, not only what succeeded.
    fn authorize<T>(&self, request: &Request<T>, allowed: &[Role], action: &str) -> Result<Identity, Status> {
        authorize(request, allowed).inspect_err(|status| {
            if let Ok(who) = peer_identity(request) {
                if who.role == Role::Operator {
                    // The call is refused either way; a failed audit write is logged by `record`.
                    let _ = self.audit.record(&who, action, Err(status));
                }
            }
        })
    }

    /// Records `result` in the audit log if the caller is an operator.
    fn audited<T>(&self, who: &Identity, action: &str, result: Result<T, Status>) -> Result<T, Status> {
        if who.role == Role::Operator {
            if let Err(e) = self.audit.record(who, action, result.as_ref().map(|_| ())) {
                return Err(Status::unavailable(format!("the audit log cannot be written: {e}")));
            }
        }
        result
    }

    /// The service behind a gate that refuses clients before their request
    /// is decoded; its messages are small, so so is its decode limit.
    pub fn into_server(
        self,
    ) -> tonic::service::interceptor::InterceptedService<pb::coordinator_server::CoordinatorServer<CoordinatorService>, RoleGate>
    {
        let server = pb::coordinator_server::CoordinatorServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES);
        tonic::service::interceptor::InterceptedService::new(server, RoleGate::new(&[Role::Osd, Role::Frontend, Role::Operator]))
    }
}

fn status_of(error: CellError) -> Status {
    match error {
        CellError::UnknownBucket(_) => Status::not_found(error.to_string()),
        CellError::DiskConflict(_) => Status::failed_precondition(error.to_string()),
        CellError::Db(e) => {
            tracing::error!(error = %e, "cell database failure");
            Status::unavailable(e.to_string())
        }
    }
}

fn to_pb(placement: Placement) -> pb::BucketPlacement {
    let ec = placement.volume.kind == crate::db::VolumeKind::Ec;
    pb::BucketPlacement {
        bucket_id: placement.bucket_id,
        volume_id: placement.volume.volume_id,
        replicas: placement
            .extents
            .into_iter()
            .map(|extent| pb::Replica {
                osd_id: extent.osd_id,
                grpc_addr: extent.grpc_addr,
                extent_id: extent.extent_id,
                position: extent.position,
                size_bytes: extent.size_bytes,
            })
            .collect(),
        data_shards: if ec { placement.volume.data_count } else { 0 },
        parity_shards: if ec { placement.volume.parity_count } else { 0 },
        bucket_position: placement.bucket_position,
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn register_osd(
        &self,
        request: Request<pb::RegisterOsdRequest>,
    ) -> Result<Response<pb::RegisterOsdResponse>, Status> {
        let who = self.authorize(&request, &[Role::Osd], "RegisterOsd")?;
        let request = request.into_inner();
        check_osd_identity(&who, request.osd_id)?;
        if request.grpc_addr.is_empty() || request.grpc_addr.len() > MAX_NAME_LEN {
            return Err(Status::invalid_argument("grpc_addr must be 1 to 255 bytes"));
        }
        if request.failure_domain.is_empty() || request.failure_domain.len() > MAX_NAME_LEN {
            return Err(Status::invalid_argument("failure_domain must be 1 to 255 bytes"));
        }
        let disks = disk_reports(&request.disks)?;
        check_space(request.used_bytes, request.capacity_bytes)?;
        self.cell
            .register(OsdRow {
                osd_id: request.osd_id,
                grpc_addr: request.grpc_addr,
                failure_domain: request.failure_domain,
                capacity_bytes: request.capacity_bytes,
                used_bytes: request.used_bytes,
                last_heartbeat_unix_ms: 0,
            }, &disks)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::RegisterOsdResponse {
            cell_id: self.cell.config().cell_id,
            heartbeat_interval_ms: self.cell.config().heartbeat_interval_ms,
            generation: self.newest_generation(),
        }))
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let who = self.authorize(&request, &[Role::Osd], "Heartbeat")?;
        let request = request.into_inner();
        check_osd_identity(&who, request.osd_id)?;
        let disks = disk_reports(&request.disks)?;
        check_space(request.used_bytes, request.capacity_bytes)?;
        if request.live_bytes_per_sec > MAX_LIVE_BYTES_PER_SEC {
            return Err(Status::invalid_argument(format!(
                "live traffic of {} bytes/s is impossible (at most {MAX_LIVE_BYTES_PER_SEC})",
                request.live_bytes_per_sec
            )));
        }
        let known = self
            .cell
            .heartbeat(request.osd_id, request.used_bytes, request.capacity_bytes, request.live_bytes_per_sec, &disks)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::HeartbeatResponse { known, generation: self.newest_generation() }))
    }

    async fn writable_buckets(
        &self,
        request: Request<pb::WritableBucketsRequest>,
    ) -> Result<Response<pb::WritableBucketsResponse>, Status> {
        let who = self.authorize(&request, &[Role::Frontend, Role::Operator], "WritableBuckets")?;
        let result = self.cell.writable_buckets().await.map_err(status_of).map(|buckets| pb::WritableBucketsResponse {
            cell_id: self.cell.config().cell_id,
            buckets: buckets.into_iter().map(to_pb).collect(),
        });
        self.audited(&who, "WritableBuckets", result).map(Response::new)
    }

    async fn report_bucket(
        &self,
        request: Request<pb::ReportBucketRequest>,
    ) -> Result<Response<pb::ReportBucketResponse>, Status> {
        self.authorize(&request, &[Role::Frontend], "ReportBucket")?;
        let request = request.into_inner();
        let problem = match pb::BucketProblem::try_from(request.problem) {
            Ok(pb::BucketProblem::Full) => "full",
            Ok(pb::BucketProblem::ReplicaFailed) => "replica_failed",
            _ => return Err(Status::invalid_argument("problem must be FULL or REPLICA_FAILED")),
        };
        self.cell.report_bucket(request.bucket_id, problem).await.map_err(status_of)?;
        Ok(Response::new(pb::ReportBucketResponse {}))
    }

    async fn locate_bucket(
        &self,
        request: Request<pb::LocateBucketRequest>,
    ) -> Result<Response<pb::LocateBucketResponse>, Status> {
        let who = self.authorize(&request, &[Role::Frontend, Role::Osd, Role::Operator], "LocateBucket")?;
        let bucket_id = request.into_inner().bucket_id;
        let result = self.cell.locate(bucket_id).await.map_err(status_of).map(|placement| {
            let volume_state = placement.volume.state.as_str().to_string();
            pb::LocateBucketResponse { placement: Some(to_pb(placement)), volume_state }
        });
        self.audited(&who, &format!("LocateBucket bucket_id={bucket_id}"), result).map(Response::new)
    }

    async fn set_background_rate(
        &self,
        request: Request<pb::SetBackgroundRateRequest>,
    ) -> Result<Response<pb::SetBackgroundRateResponse>, Status> {
        let who = self.authorize(&request, &[Role::Operator], "SetBackgroundRate")?;
        let request = request.into_inner();
        let bytes_per_sec = request.bytes_per_sec;
        if request.automatic {
            let result = self.cell.set_background_automatic().await.map_err(status_of);
            let in_force = self.cell.busy_background_rate().unwrap_or(0);
            return self
                .audited(&who, "SetBackgroundRate automatic", result)
                .map(|()| Response::new(pb::SetBackgroundRateResponse { bytes_per_sec: in_force }));
        }
        let action = format!("SetBackgroundRate bytes_per_sec={bytes_per_sec}");
        let result = if bytes_per_sec != 0 && bytes_per_sec < MIN_BACKGROUND_BYTES_PER_SEC {
            Err(Status::invalid_argument(format!(
                "bytes_per_sec must be 0 (no limit) or at least {MIN_BACKGROUND_BYTES_PER_SEC}"
            )))
        } else {
            self.cell.set_background_rate(bytes_per_sec).await.map_err(status_of)
        };
        self.audited(&who, &action, result).map(|()| Response::new(pb::SetBackgroundRateResponse { bytes_per_sec }))
    }

    async fn cell_status(&self, request: Request<pb::CellStatusRequest>) -> Result<Response<pb::CellStatusResponse>, Status> {
        let who = self.authorize(&request, &[Role::Operator], "CellStatus")?;
        let result = self.cell_status_inner().await;
        self.audited(&who, "CellStatus", result).map(Response::new)
    }
}

impl CoordinatorService {
    /// The newest leadership generation this coordinator knows: OSDs learn
    /// it from registrations and heartbeats and refuse anything older.
    fn newest_generation(&self) -> u64 {
        let leadership = self.cell.leadership();
        let known = leadership.known_lease().map_or(0, |lease| lease.generation);
        known.max(leadership.leading().unwrap_or(0))
    }

    async fn cell_status_inner(&self) -> Result<pb::CellStatusResponse, Status> {
        let osds = self.cell.osd_health().await.map_err(status_of)?;
        let repair = self.cell.repair_summary().await;
        let reconcile = self.cell.reconcile_summary().await;
        let failed_disks: HashMap<u64, u64> =
            self.cell.db().failed_disk_counts().await.map_err(|e| status_of(e.into()))?.into_iter().collect();
        // Expired leases name no leader.
        let lease = self
            .cell
            .leadership()
            .known_lease()
            .filter(|lease| !lease.holder.is_empty() && lease.expires_unix_ms >= pocket_proto::now_unix_ms());
        let counts = self.cell.db().volume_counts().await.map_err(|e| status_of(e.into()))?;
        let volumes_by_state: HashMap<String, u64> = counts
            .into_iter()
            .map(|(kind, state, count)| (format!("{}/{}", kind.as_str(), state.as_str()), count))
            .collect();
        let totals = self.cell.storage_totals().await.map_err(status_of)?;
        let erasure = &self.cell.config().erasure;
        Ok(pb::CellStatusResponse {
            cell_id: self.cell.config().cell_id,
            osds: osds
                .into_iter()
                .map(|(osd, health)| pb::OsdStatus {
                    osd_id: osd.osd_id,
                    grpc_addr: osd.grpc_addr,
                    alive: health == OsdHealth::Up,
                    failed_disks: u32::try_from(failed_disks.get(&osd.osd_id).copied().unwrap_or(0)).unwrap_or(u32::MAX),
                    health: health.as_str().to_string(),
                    used_bytes: osd.used_bytes,
                    capacity_bytes: osd.capacity_bytes,
                })
                .collect(),
            volumes_by_state,
            sealed_stored_bytes: totals.stored_bytes,
            sealed_logical_bytes: totals.logical_bytes,
            storage: Some(pb::StorageStatus {
                implied_bytes: totals.implied_bytes,
                open_bytes: reconcile.open_bytes,
                unnamed_bytes: reconcile.unnamed_bytes,
                unnamed_copies: reconcile.unnamed_copies,
                reconciled_unix_ms: reconcile.reconciled_unix_ms,
                reconciled_copies: reconcile.deleted_copies,
            }),
            data_shards: erasure.data_shards,
            parity_shards: erasure.parity_shards,
            repair: Some(pb::RepairStatus {
                levels: repair
                    .levels
                    .iter()
                    .map(|(missing, level)| pb::RedundancyLevel { missing: *missing, extents: level.extents, bytes: level.bytes })
                    .collect(),
                queue_extents: repair.queue_extents,
                queue_bytes: repair.queue_bytes,
                in_flight: repair.in_flight,
                oldest_wait_ms: repair.oldest_wait_ms,
                bytes_per_sec: repair.bytes_per_sec,
                repaired_bytes_total: repair.repaired_bytes_total,
                repaired_total: repair.repaired_total,
                background_bytes_per_sec: self.cell.busy_background_rate().unwrap_or(0),
                background_rate_in_force: self.cell.budget().bytes_per_sec().unwrap_or(0),
                live_bytes_per_sec: self.cell.live_bytes_per_sec().unwrap_or(0),
                background_automatic: self.cell.background_automatic(),
            }),
            leader: lease.as_ref().map(|l| l.holder.clone()).unwrap_or_default(),
            leader_addr: lease.as_ref().map(|l| l.holder_addr.clone()).unwrap_or_default(),
            generation: self.newest_generation(),
            answered_by: self.cell.leadership().holder().to_string(),
        })
    }
}

/// Largest capacity one OSD may claim: 1 EiB.
const MAX_OSD_CAPACITY_BYTES: u64 = 1 << 60;

/// Refuses impossible space figures: more than [`MAX_OSD_CAPACITY_BYTES`],
/// or more used than there is.
fn check_space(used_bytes: u64, capacity_bytes: u64) -> Result<(), Status> {
    if capacity_bytes > MAX_OSD_CAPACITY_BYTES {
        return Err(Status::invalid_argument(format!("capacity_bytes above {MAX_OSD_CAPACITY_BYTES} is not a disk this cell can have")));
    }
    if used_bytes > capacity_bytes {
        return Err(Status::invalid_argument("used_bytes exceeds capacity_bytes"));
    }
    Ok(())
}

/// Most disks one OSD may report.
const MAX_DISKS_PER_OSD: usize = 256;

/// The disks an OSD reports, checked: at most [`MAX_DISKS_PER_OSD`], each
/// uuid 32 hex digits, none twice.
fn disk_reports(disks: &[pb::DiskState]) -> Result<Vec<DiskReport>, Status> {
    if disks.len() > MAX_DISKS_PER_OSD {
        return Err(Status::invalid_argument(format!("at most {MAX_DISKS_PER_OSD} disks per OSD")));
    }
    let mut out: Vec<DiskReport> = Vec::with_capacity(disks.len());
    for disk in disks {
        if disk.uuid.len() != 32 || !disk.uuid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument("a disk uuid is 32 hex digits"));
        }
        let uuid = disk.uuid.to_ascii_lowercase();
        if out.iter().any(|seen| seen.uuid == uuid) {
            return Err(Status::invalid_argument(format!("disk {uuid} reported twice")));
        }
        let failed = disk.failed.then(|| disk.reason.chars().take(255).collect::<String>());
        out.push(DiskReport { uuid, failed });
    }
    Ok(out)
}

/// An OSD certificate speaks only for its own id: `osd:osd-<id>`.
fn check_osd_identity(who: &Identity, osd_id: u64) -> Result<(), Status> {
    if who.name != format!("osd-{osd_id}") {
        return Err(Status::permission_denied(format!("{who} may not speak for OSD {osd_id}")));
    }
    Ok(())
}
