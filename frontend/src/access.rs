//! Who may call the frontend, what each client may do, and how much: the
//! permission table from the config, a token bucket and an in-flight cap
//! per client identity. Checked first in every handler, before any work.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pocket_proto::ByteBudget;
use pocket_transport::{authorize, Identity, Role};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Status};

use crate::config::{FrontendConfig, Permission};

/// Most distinct client identities tracked for rate limiting; past it the
/// table is cleared (identities are certificate-bound, so this only bounds
/// memory against a CA that issued very many client certificates).
const MAX_TRACKED_CLIENTS: usize = 100_000;

struct Bucket {
    tokens: f64,
    refilled: Instant,
    in_flight: Arc<Semaphore>,
    /// This client's share of the frontend's in-flight byte budget.
    bytes: ByteBudget,
}

pub struct Access {
    grants: HashMap<String, HashSet<Permission>>,
    rate_per_sec: f64,
    burst: f64,
    max_in_flight: usize,
    max_inflight_bytes_per_client: u64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Held for the duration of a request: releases the client's in-flight slot.
pub struct Admission {
    pub identity: Identity,
    bytes: ByteBudget,
    _slot: OwnedSemaphorePermit,
}

impl Admission {
    /// Reserves `bytes` of this client's byte share (waiting, bounded, while
    /// its own other requests hold it): one client cannot take the whole
    /// frontend budget from the others.
    pub async fn reserve(&self, bytes: u64) -> Result<OwnedSemaphorePermit, Status> {
        self.bytes.reserve(bytes).await
    }
}

impl Access {
    pub fn new(config: &FrontendConfig) -> Access {
        Access {
            grants: config
                .clients
                .iter()
                .map(|grant| (grant.name.clone(), grant.permissions.iter().copied().collect()))
                .collect(),
            rate_per_sec: f64::from(config.rate_limit_per_sec),
            burst: f64::from(config.rate_limit_burst),
            max_in_flight: config.max_concurrent_requests_per_client,
            max_inflight_bytes_per_client: config.max_inflight_bytes_per_client,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a request needing `permission`: the caller must be a client
    /// within its rate (`RESOURCE_EXHAUSTED`; denied requests count too, so
    /// a flood of them is throttled like any other) holding the permission
    /// (`PERMISSION_DENIED`) and within its in-flight cap.
    pub fn admit<T>(&self, request: &Request<T>, permission: Permission) -> Result<Admission, Status> {
        let identity = authorize(request, &[Role::Client])?;
        let mut buckets = self.buckets.lock().expect("rate limit lock poisoned");
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(&identity.name) {
            buckets.clear();
        }
        let now = Instant::now();
        let bucket = buckets.entry(identity.name.clone()).or_insert_with(|| Bucket {
            tokens: self.burst,
            refilled: now,
            in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
            bytes: ByteBudget::new(self.max_inflight_bytes_per_client),
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_sec).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            metrics::counter!("pocket_frontend_rate_limited_total").increment(1);
            return Err(Status::resource_exhausted(format!("{identity} is over its rate limit; retry later")));
        }
        bucket.tokens -= 1.0;
        let allowed = self.grants.get(&identity.name).is_some_and(|perms| perms.contains(&permission));
        if !allowed {
            metrics::counter!("pocket_frontend_denied_total").increment(1);
            return Err(Status::permission_denied(format!("{identity} lacks the {permission:?} permission")));
        }
        let slot = bucket.in_flight.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("{identity} has too many requests in flight"))
        })?;
        Ok(Admission { identity, bytes: bucket.bytes.clone(), _slot: slot })
    }
}
