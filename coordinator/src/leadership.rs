//! Leadership among a cell's coordinators (ADR 19). Every coordinator
//! answers every call (the cell database is their shared state); only the
//! leader runs the background jobs that change OSDs — maintenance, erasure
//! coding, repair ([`Led`]).
//!
//! The leader holds a lease row in the cell database and renews it every
//! `renew_interval_ms`; if it cannot renew for `renew_deadline_ms` (shorter
//! than the lease) it steps down before its lease can expire, so two
//! leaders never act at once within the lease's terms. A standby tries to
//! take the lease each interval; taking it (a conditional update) adds one
//! to the generation. That generation rides on every mutating call to an
//! OSD (`OsdClients::with_generation`), and OSDs learn it from heartbeats:
//! a deposed leader's calls are refused even if it does not know yet that
//! it is deposed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::config::LeadershipConfig;
use crate::db::{CellDb, Lease};

#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    holder: String,
    addr: String,
    /// Some(generation) while leading.
    state: watch::Sender<Option<u64>>,
    /// The generation mutating OSD calls carry: ours while leading, else 0.
    generation: Arc<AtomicU64>,
    /// The lease as last read (who leads, at which generation).
    known: Mutex<Option<Lease>>,
}

impl Leadership {
    pub fn new(holder: String, addr: String) -> Leadership {
        Leadership {
            inner: Arc::new(Inner {
                holder,
                addr,
                state: watch::Sender::new(None),
                generation: Arc::new(AtomicU64::new(0)),
                known: Mutex::new(None),
            }),
        }
    }

    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// The generation this coordinator's OSD clients put on mutating calls.
    pub fn generation_handle(&self) -> Arc<AtomicU64> {
        self.inner.generation.clone()
    }

    /// Our generation while we lead.
    pub fn leading(&self) -> Option<u64> {
        *self.inner.state.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.inner.state.subscribe()
    }

    /// The lease as last read: the leader and the newest generation.
    pub fn known_lease(&self) -> Option<Lease> {
        self.inner.known.lock().expect("lease lock poisoned").clone()
    }

    fn set(&self, leading: Option<u64>) {
        self.inner.generation.store(leading.unwrap_or(0), Ordering::Release);
        self.inner.state.send_replace(leading);
        metrics::gauge!("pocket_coordinator_leader").set(if leading.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!("pocket_coordinator_generation").set(leading.unwrap_or(0) as f64);
    }

    /// Gives the lease up on a clean stop, so a standby takes over at once.
    pub async fn release(&self, db: &CellDb) {
        if let Some(generation) = self.leading() {
            self.set(None);
            match db.release_lease(&self.inner.holder, generation).await {
                Ok(()) => tracing::info!(generation, "leadership given up"),
                Err(error) => tracing::warn!(%error, "could not give the lease up; it expires on its own"),
            }
        }
    }
}

/// Takes, renews and gives up the lease, as a background job that runs on
/// every coordinator.
pub struct LeadershipJob {
    db: CellDb,
    leadership: Leadership,
    config: LeadershipConfig,
    /// When the lease was last taken or renewed.
    renewed: Option<Instant>,
}

impl LeadershipJob {
    pub fn new(db: CellDb, leadership: Leadership, config: LeadershipConfig) -> LeadershipJob {
        LeadershipJob { db, leadership, config, renewed: None }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.config.renew_interval_ms)
    }

    async fn tick(&mut self) -> Result<(), crate::db::DbError> {
        let holder = self.leadership.inner.holder.clone();
        match self.leadership.leading() {
            Some(generation) => {
                let deadline = Duration::from_millis(self.config.renew_deadline_ms);
                if self.renewed.is_none_or(|at| at.elapsed() > deadline) {
                    tracing::error!(generation, "could not renew the lease in time; stepping down");
                    metrics::counter!("pocket_coordinator_step_downs_total", "reason" => "renew_deadline").increment(1);
                    self.leadership.set(None);
                    return Ok(());
                }
                match self.db.renew_lease(&holder, generation, self.config.lease_ttl_ms).await {
                    Ok(true) => self.renewed = Some(Instant::now()),
                    Ok(false) => {
                        tracing::error!(generation, "the lease is another's; stepping down");
                        metrics::counter!("pocket_coordinator_step_downs_total", "reason" => "lease_lost").increment(1);
                        self.leadership.set(None);
                    }
                    // Tried again next interval, until the deadline.
                    Err(error) => tracing::warn!(generation, %error, "lease renewal failed"),
                }
            }
            None => {
                let addr = self.leadership.inner.addr.clone();
                if let Some(generation) =
                    self.db.try_acquire_lease(&holder, &addr, self.config.lease_ttl_ms, self.config.min_term_ms).await?
                {
                    self.renewed = Some(Instant::now());
                    self.leadership.set(Some(generation));
                    metrics::counter!("pocket_coordinator_leaderships_taken_total").increment(1);
                    tracing::info!(generation, holder, "leading the cell");
                }
            }
        }
        let lease = self.db.lease().await?;
        *self.leadership.inner.known.lock().expect("lease lock poisoned") = Some(lease);
        Ok(())
    }
}

impl pocket_worker::Job for LeadershipJob {
    fn name(&self) -> &'static str {
        "leadership"
    }

    async fn step(&mut self) -> Result<pocket_worker::Step, pocket_worker::JobError> {
        let interval = self.interval();
        self.tick().await.map_err(|error| pocket_worker::JobError::retry_after(error, interval))?;
        Ok(pocket_worker::Step::Idle(interval))
    }

    fn cancel_safe(&self) -> bool {
        true
    }
}

/// A job that runs only while this coordinator leads: a step in progress
/// is dropped the moment leadership is lost (the led jobs are cancel-safe
/// by design: every step they take is recorded and resumable).
pub struct Led<J> {
    job: J,
    leadership: Leadership,
}

impl<J> Led<J> {
    pub fn new(job: J, leadership: Leadership) -> Led<J> {
        Led { job, leadership }
    }
}

/// How long a standby's led job waits before looking again.
const STANDBY_WAIT: Duration = Duration::from_secs(1);

impl<J: pocket_worker::Job> pocket_worker::Job for Led<J> {
    fn name(&self) -> &'static str {
        self.job.name()
    }

    async fn step(&mut self) -> Result<pocket_worker::Step, pocket_worker::JobError> {
        let mut state = self.leadership.subscribe();
        let leading = *state.borrow_and_update();
        let Some(generation) = leading else {
            let _ = tokio::time::timeout(STANDBY_WAIT, state.changed()).await;
            return Ok(pocket_worker::Step::Idle(Duration::ZERO));
        };
        let name = self.job.name();
        tokio::select! {
            result = self.job.step() => result,
            _ = state.wait_for(|now| *now != Some(generation)) => {
                tracing::warn!(job = name, generation, "leadership lost: step abandoned");
                Ok(pocket_worker::Step::Idle(Duration::ZERO))
            }
        }
    }

    fn backoff(&self) -> pocket_worker::Backoff {
        self.job.backoff()
    }

    fn cancel_safe(&self) -> bool {
        self.job.cancel_safe()
    }

    fn wake(&self) -> Option<Arc<Notify>> {
        self.job.wake()
    }
}
