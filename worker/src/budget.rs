//! One background budget per daemon (ADR 16): at most `max_concurrent_ops`
//! background operations at once and at most `bytes_per_sec` of background
//! bytes, shared by the classes of work by weight.
//!
//! When the budget is contended, waiting requests are granted in
//! weighted-fair order (start-time fair queueing): each class has a virtual
//! time that a grant advances by `cost / weight`, and the waiter with the
//! smallest tag goes first. A class that was idle starts at the current
//! virtual time, so it cannot claim credit for the time it did not use.
//! Uncontended, a request is granted at once. Every wait is cancel-safe: a
//! waiter dropped before or after its grant gives back what it held.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a piece of background work is for; each class has a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Repair,
    ErasureCoding,
    Verification,
    Replication,
    Migration,
}

impl Class {
    pub const ALL: [Class; 5] = [Class::Repair, Class::ErasureCoding, Class::Verification, Class::Replication, Class::Migration];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Repair => "repair",
            Class::ErasureCoding => "erasure_coding",
            Class::Verification => "verification",
            Class::Replication => "replication",
            Class::Migration => "migration",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The limits of a daemon's background budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetConfig {
    /// Background operations at once, over all classes.
    pub max_concurrent_ops: usize,
    /// Background bytes per second over all classes; `None`: no byte limit.
    pub bytes_per_sec: Option<u64>,
    /// Each class's weight, in [`Class::ALL`] order; at least 1.
    pub weights: [u32; 5],
}

impl Default for BudgetConfig {
    /// Today's behaviour: one erasure-coding pass at a time and no byte
    /// limit; repair weighs most, so that once there is one it goes first.
    fn default() -> BudgetConfig {
        BudgetConfig { max_concurrent_ops: 4, bytes_per_sec: None, weights: [8, 4, 2, 2, 1] }
    }
}

/// How much of a byte rate may be taken ahead of time (a burst): a second's worth.
const BURST: Duration = Duration::from_secs(1);

/// A daemon's background budget. Cheap to clone.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    config: BudgetConfig,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// The byte rate in force: the configured one until an operator sets another.
    bytes_per_sec: Option<u64>,
    ops_in_use: usize,
    /// Waiting requests by (tag, sequence number).
    op_waiters: BTreeMap<(u64, u64), Class>,
    byte_waiters: BTreeMap<(u64, u64), Class>,
    /// Virtual time of each class and of the system, in cost units × 2^16 / weight.
    op_clock: Clocks,
    byte_clock: Clocks,
    next_seq: u64,
    tokens: f64,
    refilled: Option<Instant>,
    /// Granted so far, per class: operations and bytes.
    ops_granted: [u64; 5],
    bytes_granted: [u64; 5],
}

#[derive(Default)]
struct Clocks {
    class: [u64; 5],
    system: u64,
}

impl Clocks {
    /// The tag of a request of `cost` by `class`, advancing its clock.
    fn tag(&mut self, class: Class, cost: u64, weight: u32) -> u64 {
        let start = self.class[class.index()].max(self.system);
        let finish = start.saturating_add(cost.saturating_mul(1 << 16) / u64::from(weight.max(1)));
        self.class[class.index()] = finish;
        start
    }
}

/// One operation slot, held until dropped.
pub struct OpPermit {
    budget: Budget,
}

impl Drop for OpPermit {
    fn drop(&mut self) {
        self.budget.inner.lock().ops_in_use -= 1;
        self.budget.inner.changed.notify_waiters();
    }
}

/// A waiter's place in a queue, removed when dropped.
struct Place<'a> {
    budget: &'a Budget,
    key: (u64, u64),
    bytes: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut state = self.budget.inner.lock();
        let queue = if self.bytes { &mut state.byte_waiters } else { &mut state.op_waiters };
        queue.remove(&self.key);
        drop(state);
        self.budget.inner.changed.notify_waiters();
    }
}

/// What a budget has granted and holds, for `/workers` and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetStatus {
    pub config: BudgetConfig,
    pub ops_in_use: usize,
    pub ops_waiting: usize,
    pub bytes_waiting: usize,
    /// Per class: operations and bytes granted since start.
    pub granted: Vec<ClassGranted>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassGranted {
    pub class: Class,
    pub weight: u32,
    pub ops: u64,
    pub bytes: u64,
}

impl Budget {
    pub fn new(config: BudgetConfig) -> Budget {
        let state = State { bytes_per_sec: config.bytes_per_sec, ..State::default() };
        Budget { inner: Arc::new(Inner { config, state: Mutex::new(state), changed: Notify::new() }) }
    }

    /// Changes the byte rate from now on (None or 0: no limit). Requests
    /// waiting are re-examined at once.
    pub fn set_bytes_per_sec(&self, bytes_per_sec: Option<u64>) {
        let rate = bytes_per_sec.filter(|rate| *rate > 0);
        {
            let mut state = self.inner.lock();
            state.bytes_per_sec = rate;
            if let Some(rate) = rate {
                state.tokens = state.tokens.min(rate as f64 * BURST.as_secs_f64());
            }
        }
        self.inner.changed.notify_waiters();
    }

    /// The byte rate in force (None: no limit).
    pub fn bytes_per_sec(&self) -> Option<u64> {
        self.inner.lock().bytes_per_sec
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.inner.config
    }

    fn weight(&self, class: Class) -> u32 {
        self.inner.config.weights[class.index()].max(1)
    }

    /// Waits for one operation slot for `class`, in weighted-fair order
    /// among the classes waiting; the slot is held until the permit drops.
    pub async fn operation(&self, class: Class) -> OpPermit {
        let weight = self.weight(class);
        let key = {
            let mut state = self.inner.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            let tag = state.op_clock.tag(class, 1, weight);
            state.op_waiters.insert((tag, seq), class);
            (tag, seq)
        };
        let place = Place { budget: self, key, bytes: false };
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.inner.lock();
                let first = state.op_waiters.keys().next().copied();
                if first == Some(key) && state.ops_in_use < self.inner.config.max_concurrent_ops.max(1) {
                    state.op_waiters.remove(&key);
                    state.ops_in_use += 1;
                    state.op_clock.system = key.0;
                    state.ops_granted[class.index()] += 1;
                    drop(state);
                    std::mem::forget(place);
                    // The next waiter may go too if slots remain.
                    self.inner.changed.notify_waiters();
                    return OpPermit { budget: self.clone() };
                }
            }
            changed.await;
        }
    }

    /// Waits until `class` may move `bytes` under the byte rate, in
    /// weighted-fair order among the classes waiting. Without a byte limit
    /// it returns at once. A request larger than a second's worth waits
    /// until the bucket is full and then takes it into debt.
    pub async fn bytes(&self, class: Class, bytes: u64) {
        if self.bytes_per_sec().is_none() {
            self.inner.lock().bytes_granted[class.index()] += bytes;
            return;
        }
        let weight = self.weight(class);
        let key = {
            let mut state = self.inner.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            let tag = state.byte_clock.tag(class, bytes.max(1), weight);
            state.byte_waiters.insert((tag, seq), class);
            (tag, seq)
        };
        let place = Place { budget: self, key, bytes: true };
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut state = self.inner.lock();
                let Some(rate) = state.bytes_per_sec else {
                    // The limit was lifted while this request waited.
                    self.grant_bytes(state, place, class, bytes);
                    return;
                };
                let rate = rate as f64;
                let burst = rate * BURST.as_secs_f64();
                let need = (bytes as f64).min(burst);
                let now = Instant::now();
                let elapsed = state.refilled.map_or(BURST.as_secs_f64(), |at| now.duration_since(at).as_secs_f64());
                state.tokens = (state.tokens + elapsed * rate).min(burst);
                state.refilled = Some(now);
                if state.byte_waiters.keys().next().copied() != Some(key) {
                    None
                } else if state.tokens >= need {
                    state.tokens -= bytes as f64;
                    self.grant_bytes(state, place, class, bytes);
                    return;
                } else {
                    Some(Duration::from_secs_f64((need - state.tokens) / rate))
                }
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Grants a waiting byte request: out of the queue, the system's
    /// virtual time advanced to its tag, counted; the next waiter may go.
    fn grant_bytes(&self, mut state: MutexGuard<'_, State>, place: Place<'_>, class: Class, bytes: u64) {
        state.byte_waiters.remove(&place.key);
        state.byte_clock.system = place.key.0;
        state.bytes_granted[class.index()] += bytes;
        drop(state);
        std::mem::forget(place);
        self.inner.changed.notify_waiters();
    }

    pub fn status(&self) -> BudgetStatus {
        let state = self.inner.lock();
        BudgetStatus {
            config: BudgetConfig { bytes_per_sec: state.bytes_per_sec, ..self.inner.config.clone() },
            ops_in_use: state.ops_in_use,
            ops_waiting: state.op_waiters.len(),
            bytes_waiting: state.byte_waiters.len(),
            granted: Class::ALL
                .iter()
                .map(|&class| ClassGranted {
                    class,
                    weight: self.weight(class),
                    ops: state.ops_granted[class.index()],
                    bytes: state.bytes_granted[class.index()],
                })
                .collect(),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a few assignments under the lock: valid after a panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_concurrent_ops: usize, bytes_per_sec: Option<u64>, weights: [u32; 5]) -> BudgetConfig {
        BudgetConfig { max_concurrent_ops, bytes_per_sec, weights }
    }

    #[tokio::test]
    async fn operations_beyond_the_limit_wait_until_a_slot_is_returned() {
        let budget = Budget::new(config(2, None, [1; 5]));
        let a = budget.operation(Class::Repair).await;
        let _b = budget.operation(Class::Repair).await;
        let third = tokio::spawn({
            let budget = budget.clone();
            async move { budget.operation(Class::ErasureCoding).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "a third operation must wait for a slot");
        assert_eq!(budget.status().ops_in_use, 2);
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(5), third).await.expect("granted once a slot is free").expect("task");
        assert_eq!(budget.status().ops_in_use, 2);
    }

    /// Two classes that both always wait get slots in the ratio of their weights.
    #[tokio::test]
    async fn contended_slots_go_to_classes_by_weight() {
        let budget = Budget::new(config(1, None, [3, 1, 1, 1, 1]));
        let order = Arc::new(Mutex::new(Vec::new()));
        let blocker = budget.operation(Class::Migration).await;
        let mut tasks = Vec::new();
        for class in [Class::Repair, Class::ErasureCoding] {
            for _ in 0..40 {
                let (budget, order) = (budget.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    let permit = budget.operation(class).await;
                    order.lock().expect("lock").push(class);
                    tokio::task::yield_now().await;
                    drop(permit);
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(blocker);
        for task in tasks {
            task.await.expect("task");
        }
        let order = order.lock().expect("lock");
        let first: Vec<_> = order.iter().take(40).collect();
        let repair = first.iter().filter(|c| ***c == Class::Repair).count();
        assert!((27..=33).contains(&repair), "repair got {repair} of the first 40 slots at weight 3:1");
    }

    #[tokio::test]
    async fn a_dropped_waiter_takes_nothing_and_blocks_no_one() {
        let budget = Budget::new(config(1, None, [1; 5]));
        let held = budget.operation(Class::Repair).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.operation(Class::Repair).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(budget.status().ops_waiting, 0);
        drop(held);
        let _again = tokio::time::timeout(Duration::from_secs(5), budget.operation(Class::Verification)).await.expect("free");
    }

    #[tokio::test]
    async fn bytes_are_paced_to_the_rate() {
        let budget = Budget::new(config(4, Some(1_000_000), [1; 5]));
        let started = Instant::now();
        // The first second's worth is the burst; 400 kB more take 0.4 s.
        for _ in 0..14 {
            budget.bytes(Class::ErasureCoding, 100_000).await;
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(380), "1.4 MB at 1 MB/s with a 1 MB burst took only {took:?}");
        let granted = budget.status().granted;
        assert_eq!(granted.iter().map(|g| g.bytes).sum::<u64>(), 1_400_000);
    }

    #[tokio::test]
    async fn a_rate_changed_at_runtime_applies_to_requests_already_waiting() {
        let budget = Budget::new(config(4, Some(1_000), [1; 5]));
        budget.bytes(Class::Repair, 1_000).await;
        // 10 MB at 1 kB/s would wait hours.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.bytes(Class::Repair, 10_000_000).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        budget.set_bytes_per_sec(Some(1_000_000_000));
        assert_eq!(budget.status().config.bytes_per_sec, Some(1_000_000_000));
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("granted at the new rate").expect("task");
        // Lifting the limit altogether lets the next request through at once.
        budget.set_bytes_per_sec(Some(1));
        // Takes what the bucket holds and more, into debt.
        budget.bytes(Class::Repair, 1_000).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.bytes(Class::Repair, 1 << 30).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        budget.set_bytes_per_sec(None);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("no limit").expect("task");
        assert_eq!(budget.bytes_per_sec(), None);
    }

    #[tokio::test]
    async fn without_a_byte_limit_bytes_are_granted_at_once() {
        let budget = Budget::new(BudgetConfig::default());
        tokio::time::timeout(Duration::from_millis(100), budget.bytes(Class::Repair, 10 << 30)).await.expect("no limit");
    }
}
