//! Jobs and the runner that drives them (ADR 16).
//!
//! A [`Job`] does its work one [`Step`] at a time; the [`Runner`] calls the
//! steps on a task of the job's own, waits between them as the step asks,
//! backs off after errors, records the job's state and metrics, and stops
//! the jobs in the reverse order of their start when the daemon stops.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{watch, Notify};

/// What a step asks the runner to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// There is more to do: step again at once.
    Busy,
    /// Nothing to do now: step again after this long, or when woken.
    Idle(Duration),
    /// Held back by the budget or by load: step again after this long.
    Throttled(Duration),
    /// The job is finished for good.
    Done,
}

/// A step that failed. The message is for operators (`/workers`, the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub message: String,
    /// Step again after this long instead of after the job's backoff (a
    /// heartbeat keeps its beat whether or not the last one failed).
    pub retry_after: Option<Duration>,
}

impl JobError {
    /// An error whose retry follows the job's [`Backoff`].
    pub fn new(error: impl std::fmt::Display) -> JobError {
        JobError { message: error.to_string(), retry_after: None }
    }

    /// An error after which the job steps again in `after`.
    pub fn retry_after(error: impl std::fmt::Display, after: Duration) -> JobError {
        JobError { message: error.to_string(), retry_after: Some(after) }
    }
}

/// The wait after consecutive errors: `initial`, doubling, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    fn after(&self, consecutive_errors: u32) -> Duration {
        let doublings = consecutive_errors.saturating_sub(1).min(16);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }
}

/// A background job.
pub trait Job: Send + 'static {
    /// Its name, unique in its daemon (`maintenance`, `erasure-coding`, `heartbeat`).
    fn name(&self) -> &'static str;

    /// One step of work.
    fn step(&mut self) -> impl Future<Output = Result<Step, JobError>> + Send;

    /// The wait after consecutive errors.
    fn backoff(&self) -> Backoff {
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60) }
    }

    /// Whether a step may be dropped half-way when the daemon stops (every
    /// effect it has is recorded and resumable). If not, the runner lets
    /// the step finish, for up to the stop's drain time.
    fn cancel_safe(&self) -> bool {
        false
    }

    /// Wakes an idle job before its wait is over (e.g. new work queued).
    fn wake(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// What a job is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Busy,
    Idle,
    Throttled,
    /// The last step failed; it is waiting to retry.
    Error,
    Done,
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Busy => "busy",
            State::Idle => "idle",
            State::Throttled => "throttled",
            State::Error => "error",
            State::Done => "done",
            State::Stopped => "stopped",
        }
    }
}

/// A job as `/workers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub name: &'static str,
    pub state: State,
    /// Steps taken, and of them failed.
    pub iterations: u64,
    pub errors: u64,
    pub consecutive_errors: u32,
    pub last_error: Option<String>,
    /// When a step last succeeded (Unix ms).
    pub last_success_unix_ms: Option<i64>,
}

/// The jobs of one daemon, by name. A process has one ([`Registry::global`]).
#[derive(Clone, Default)]
pub struct Registry {
    jobs: Arc<Mutex<BTreeMap<&'static str, WorkerInfo>>>,
    budget: Arc<Mutex<Option<crate::Budget>>>,
}

/// What `/workers` answers: every job and the daemon's budget.
#[derive(Debug, Clone, Serialize)]
pub struct WorkersReport {
    pub workers: Vec<WorkerInfo>,
    pub budget: Option<crate::BudgetStatus>,
}

impl Registry {
    /// This process's registry: one daemon per process, as `pocket` runs them.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(Registry::default)
    }

    /// Every job and its state, by name.
    pub fn list(&self) -> Vec<WorkerInfo> {
        self.lock().values().cloned().collect()
    }

    /// Records the daemon's background budget, for [`Registry::report`].
    pub fn set_budget(&self, budget: crate::Budget) {
        *self.budget.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(budget);
    }

    /// Every job and the budget's state.
    pub fn report(&self) -> WorkersReport {
        let budget = self.budget.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref().map(crate::Budget::status);
        WorkersReport { workers: self.list(), budget }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, WorkerInfo>> {
        // Entries are replaced whole: valid after a panic.
        self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, name: &'static str, change: impl FnOnce(&mut WorkerInfo)) {
        let mut jobs = self.lock();
        let info = jobs.entry(name).or_insert_with(|| WorkerInfo {
            name,
            state: State::Idle,
            iterations: 0,
            errors: 0,
            consecutive_errors: 0,
            last_error: None,
            last_success_unix_ms: None,
        });
        change(info);
        metrics::gauge!("pocket_worker_busy", "worker" => name).set(if info.state == State::Busy { 1.0 } else { 0.0 });
        metrics::gauge!("pocket_worker_error", "worker" => name).set(if info.state == State::Error { 1.0 } else { 0.0 });
    }
}

/// Runs a daemon's jobs, each on a task of its own.
pub struct Runner {
    registry: Registry,
    stop: watch::Sender<bool>,
    /// Started jobs in order, with how long each may take to stop.
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

/// How long a stopping job may take to finish its step.
pub const STOP_DRAIN: Duration = Duration::from_secs(10);

impl Runner {
    /// A runner recording into `registry` ([`Registry::global`] in daemons).
    pub fn new(registry: Registry) -> Runner {
        Runner { registry, stop: watch::channel(false).0, tasks: Vec::new() }
    }

    /// Starts `job` on a task of its own.
    pub fn start<J: Job>(&mut self, job: J) {
        let name = job.name();
        self.registry.update(name, |_| {});
        let task = tokio::spawn(drive(job, self.registry.clone(), self.stop.subscribe()));
        self.tasks.push((name, task));
    }

    /// Stops every job, the last started first; each gets [`STOP_DRAIN`]
    /// to finish a step that is not cancel-safe, then is aborted.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        while let Some((name, mut task)) = self.tasks.pop() {
            let started = std::time::Instant::now();
            if tokio::time::timeout(STOP_DRAIN, &mut task).await.is_err() {
                tracing::warn!(worker = name, "worker did not stop within the drain time; aborting it");
                task.abort();
                let _ = task.await;
            } else if started.elapsed() > Duration::from_secs(1) {
                tracing::info!(worker = name, took_ms = started.elapsed().as_millis() as u64, "worker stopped slowly");
            }
            self.registry.update(name, |info| info.state = State::Stopped);
        }
    }
}

async fn drive<J: Job>(mut job: J, registry: Registry, mut stop: watch::Receiver<bool>) {
    let name = job.name();
    let backoff = job.backoff();
    let wake = job.wake();
    let mut consecutive_errors = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        registry.update(name, |info| info.state = State::Busy);
        let outcome = if job.cancel_safe() {
            tokio::select! {
                outcome = job.step() => outcome,
                _ = stop.wait_for(|stop| *stop) => return,
            }
        } else {
            job.step().await
        };
        metrics::counter!("pocket_worker_iterations_total", "worker" => name).increment(1);
        let (wait, state) = match outcome {
            Ok(step) => {
                consecutive_errors = 0;
                let now = now_unix_ms();
                metrics::gauge!("pocket_worker_last_success_unix_ms", "worker" => name).set(now as f64);
                let (wait, state) = match step {
                    Step::Busy => (None, State::Busy),
                    Step::Idle(wait) => (Some(wait), State::Idle),
                    Step::Throttled(wait) => (Some(wait), State::Throttled),
                    Step::Done => (None, State::Done),
                };
                registry.update(name, |info| {
                    info.iterations += 1;
                    info.consecutive_errors = 0;
                    info.state = state;
                    info.last_success_unix_ms = Some(now);
                });
                if step == Step::Done {
                    return;
                }
                (wait, state)
            }
            Err(error) => {
                consecutive_errors = consecutive_errors.saturating_add(1);
                metrics::counter!("pocket_worker_errors_total", "worker" => name).increment(1);
                let wait = error.retry_after.unwrap_or_else(|| backoff.after(consecutive_errors));
                tracing::warn!(worker = name, error = %error, consecutive_errors, retry_in_ms = wait.as_millis() as u64, "worker step failed");
                registry.update(name, |info| {
                    info.iterations += 1;
                    info.errors += 1;
                    info.consecutive_errors = consecutive_errors;
                    info.state = State::Error;
                    info.last_error = Some(error.message.clone());
                });
                (Some(wait), State::Error)
            }
        };
        let Some(wait) = wait else {
            tokio::task::yield_now().await;
            continue;
        };
        // An idle job may be woken early; a throttled or failing one waits.
        let woken = async {
            match (&wake, state) {
                (Some(wake), State::Idle) => wake.notified().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = woken => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails `failures` times, then is busy twice, then idle; notes when each step began.
    struct Flaky {
        failures: u32,
        busy: u32,
        steps: Arc<Mutex<Vec<std::time::Instant>>>,
    }

    impl Job for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn step(&mut self) -> Result<Step, JobError> {
            self.steps.lock().expect("lock").push(std::time::Instant::now());
            if self.failures > 0 {
                self.failures -= 1;
                return Err(JobError::new("disk on fire"));
            }
            if self.busy > 0 {
                self.busy -= 1;
                return Ok(Step::Busy);
            }
            Ok(Step::Idle(Duration::from_secs(3600)))
        }
        fn backoff(&self) -> Backoff {
            Backoff { initial: Duration::from_millis(40), max: Duration::from_millis(100) }
        }
    }

    #[tokio::test]
    async fn errors_back_off_and_are_recorded_then_success_resets_them() {
        let registry = Registry::default();
        let mut runner = Runner::new(registry.clone());
        let steps = Arc::new(Mutex::new(Vec::new()));
        runner.start(Flaky { failures: 3, busy: 2, steps: steps.clone() });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while steps.lock().expect("lock").len() < 6 {
            assert!(std::time::Instant::now() < deadline, "the job did not get through its steps");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let at = steps.lock().expect("lock").clone();
        assert_eq!(at.len(), 6, "three failures, two busy steps, one idle step, then it waits");
        // Waits after the three failures: 40, 80 and 100 ms (capped) at least.
        for (gap, least) in at.windows(2).zip([40, 80, 100]) {
            let waited = gap[1].duration_since(gap[0]);
            assert!(waited >= Duration::from_millis(least), "waited {waited:?} after a failure, expected {least} ms");
        }
        let info = registry.list().pop().expect("listed");
        assert_eq!(info.state, State::Idle);
        assert_eq!((info.iterations, info.errors, info.consecutive_errors), (6, 3, 0));
        assert_eq!(info.last_error.as_deref(), Some("disk on fire"));
        assert!(info.last_success_unix_ms.is_some());
        runner.stop().await;
        assert_eq!(registry.list().pop().expect("listed").state, State::Stopped);
    }

    /// Sleeps in its step; counts steps finished.
    struct Slow {
        name: &'static str,
        cancel_safe: bool,
        finished: Arc<AtomicU32>,
        order: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Job for Slow {
        fn name(&self) -> &'static str {
            self.name
        }
        async fn step(&mut self) -> Result<Step, JobError> {
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.finished.fetch_add(1, Ordering::SeqCst);
            self.order.lock().expect("lock").push(self.name);
            Ok(Step::Idle(Duration::from_secs(3600)))
        }
        fn cancel_safe(&self) -> bool {
            self.cancel_safe
        }
    }

    #[tokio::test]
    async fn stop_finishes_steps_that_are_not_cancel_safe_and_drops_those_that_are() {
        let registry = Registry::default();
        let mut runner = Runner::new(registry.clone());
        let finished = Arc::new(AtomicU32::new(0));
        let order = Arc::new(Mutex::new(Vec::new()));
        runner.start(Slow { name: "careful", cancel_safe: false, finished: finished.clone(), order: order.clone() });
        runner.start(Slow { name: "resumable", cancel_safe: true, finished: finished.clone(), order: order.clone() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        runner.stop().await;
        assert_eq!(finished.load(Ordering::SeqCst), 1, "only the step that is not cancel-safe finished");
        assert_eq!(*order.lock().expect("lock"), ["careful"]);
        assert!(registry.list().iter().all(|info| info.state == State::Stopped));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1) };
        let waits: Vec<u128> = (1..=6).map(|n| backoff.after(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }
}
