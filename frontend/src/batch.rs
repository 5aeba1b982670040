//! Batching of small appends (ADR 12). Concurrent PUTs of small blobs to
//! the same replica share one `Osd.AppendBatch` call: while calls to a
//! replica are in flight, the records that arrive for it wait, and the next
//! call carries them all. A lone PUT goes at once (no timer, no added
//! latency when the cell is idle); under load a call carries as many
//! records as arrived during the previous one's round trip, so the RPCs
//! per PUT fall as the load rises.
//!
//! Batching changes nothing in durability: the OSD appends every record of
//! a call as it would have appended it alone (they share a group commit),
//! and each PUT is answered only with its own record's result.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Most records one batched call carries.
pub const BATCH_MAX_RECORDS: usize = pocket_proto::APPEND_BATCH_MAX_RECORDS;
/// Most record bytes one batched call carries.
pub const BATCH_MAX_BYTES: u64 = pocket_proto::APPEND_BATCH_MAX_BYTES;

/// Whether a record of `len_bytes` is batched under the frontend's
/// `batch_record_max_bytes` (0: none is).
pub fn is_batched(len_bytes: u64, batch_record_max_bytes: u64) -> bool {
    batch_record_max_bytes > 0 && len_bytes <= batch_record_max_bytes
}

/// What a batched call did with one record: `Err` when the record was not
/// made durable (the call failed, or the OSD refused that record).
pub type Outcome<E> = Result<(), E>;

struct Waiting<T, E> {
    item: T,
    bytes: u64,
    answer: oneshot::Sender<Outcome<E>>,
}

/// One destination's waiting items and the tasks sending them.
struct Queue<T, E> {
    waiting: Vec<Waiting<T, E>>,
    /// Tasks taking items from `waiting`, each with at most one call in flight.
    drains: usize,
}

/// A destination is in the map exactly while a task drains it.
type Queues<D, T, E> = Arc<Mutex<HashMap<D, Queue<T, E>>>>;

/// Combines concurrent submissions to the same destination `D` into calls
/// of `send`, at most `max_in_flight` in flight per destination.
pub struct Batcher<D, T, E> {
    queues: Queues<D, T, E>,
    max_in_flight: usize,
}

impl<D, T, E> Batcher<D, T, E>
where
    D: Hash + Eq + Clone + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    pub fn new(max_in_flight: usize) -> Self {
        Batcher { queues: Arc::new(Mutex::new(HashMap::new())), max_in_flight: max_in_flight.max(1) }
    }

    /// Sends `item` (of `bytes` record bytes) to `destination` in the next
    /// call there, and returns its outcome. If fewer than `max_in_flight`
    /// calls to `destination` are in flight, a task is started that calls
    /// `send` with the waiting items until none is left; `send` must return
    /// one outcome per item, in order. `gone` makes the outcome of an item
    /// whose call was lost (its task panicked, or the runtime is stopping).
    pub async fn submit<F, Fut>(&self, destination: D, item: T, bytes: u64, send: F, gone: impl FnOnce() -> E) -> Outcome<E>
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Outcome<E>>> + Send + 'static,
    {
        let (answer, outcome) = oneshot::channel();
        let start = {
            let mut queues = lock(&self.queues);
            let queue = queues.entry(destination.clone()).or_insert_with(|| Queue { waiting: Vec::new(), drains: 0 });
            queue.waiting.push(Waiting { item, bytes, answer });
            let start = queue.drains < self.max_in_flight;
            if start {
                queue.drains += 1;
            }
            start
        };
        if start {
            tokio::spawn(drain(self.queues.clone(), destination, send));
        }
        outcome.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn lock<D, T, E>(queues: &Queues<D, T, E>) -> MutexGuard<'_, HashMap<D, Queue<T, E>>> {
    // Every change to the map is complete before the lock is released (no
    // code that can panic runs under it), so a poisoned lock is consistent.
    queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts a drain out of its destination, and removes the destination when
/// no drain is left. Called with the lock held.
fn end_drain<D: Hash + Eq, T, E>(queues: &mut HashMap<D, Queue<T, E>>, destination: &D) {
    if let Some(queue) = queues.get_mut(destination) {
        queue.drains -= 1;
        if queue.drains == 0 {
            queues.remove(destination);
        }
    }
}

/// Ends a drain that stopped abnormally (a panic in `send`). If it was the
/// last, the items still waiting are dropped with the queue: their callers
/// get `gone` instead of waiting for ever.
struct AbnormalEnd<D: Hash + Eq, T, E> {
    queues: Queues<D, T, E>,
    destination: D,
    armed: bool,
}

impl<D: Hash + Eq, T, E> Drop for AbnormalEnd<D, T, E> {
    fn drop(&mut self) {
        if self.armed {
            end_drain(&mut lock(&self.queues), &self.destination);
        }
    }
}

async fn drain<D, T, E, F, Fut>(queues: Queues<D, T, E>, destination: D, send: F)
where
    D: Hash + Eq + Clone,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<Outcome<E>>>,
{
    let mut abnormal = AbnormalEnd { queues: queues.clone(), destination: destination.clone(), armed: true };
    loop {
        let batch = {
            let mut map = lock(&queues);
            match map.get_mut(&destination) {
                Some(queue) if !queue.waiting.is_empty() => take_batch(&mut queue.waiting),
                _ => {
                    // Under the same lock as the check: an item submitted
                    // after it sees this drain gone and starts another.
                    end_drain(&mut map, &destination);
                    abnormal.armed = false;
                    return;
                }
            }
        };
        let (items, answers): (Vec<T>, Vec<_>) = batch.into_iter().map(|w| (w.item, w.answer)).unzip();
        let outcomes = send(items).await;
        // `send` returns one outcome per item; an item without one is
        // answered `gone` when its sender drops here.
        for (answer, outcome) in answers.into_iter().zip(outcomes) {
            // The caller may have gone; its record is then an orphan, as an
            // unbatched append cancelled in flight would be.
            let _ = answer.send(outcome);
        }
    }
}

/// The oldest waiting items, at most [`BATCH_MAX_RECORDS`] of them and at
/// most [`BATCH_MAX_BYTES`] (the first item always goes, whatever its size).
fn take_batch<T, E>(waiting: &mut Vec<Waiting<T, E>>) -> Vec<Waiting<T, E>> {
    let mut bytes = 0u64;
    let mut count = 0;
    for item in waiting.iter() {
        if count == BATCH_MAX_RECORDS || (count > 0 && bytes + item.bytes > BATCH_MAX_BYTES) {
            break;
        }
        bytes += item.bytes;
        count += 1;
    }
    waiting.drain(..count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Calls made to one destination, in order, each as its list of items.
    type Calls = Arc<Mutex<Vec<Vec<u32>>>>;

    type Call = std::pin::Pin<Box<dyn Future<Output = Vec<Outcome<String>>> + Send>>;

    /// A `send` that records each call, waits for `gate` to open before the
    /// first call returns, and fails item 13 alone.
    fn recording_send(calls: Calls, gate: Arc<tokio::sync::Notify>) -> impl Fn(Vec<u32>) -> Call + Send + 'static {
        move |items: Vec<u32>| {
            let (calls, gate) = (calls.clone(), gate.clone());
            Box::pin(async move {
                let first = {
                    let mut calls = calls.lock().expect("calls lock");
                    calls.push(items.clone());
                    calls.len() == 1
                };
                if first {
                    gate.notified().await;
                }
                items.iter().map(|&i| if i == 13 { Err(format!("item {i} refused")) } else { Ok(()) }).collect()
            })
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn items_that_arrive_during_a_call_share_the_next_and_each_gets_its_own_outcome() {
        let batcher: Arc<Batcher<&'static str, u32, String>> = Arc::new(Batcher::new(1));
        let calls: Calls = Arc::default();
        let gate = Arc::new(tokio::sync::Notify::new());
        let submit = |item: u32| {
            let (batcher, send) = (batcher.clone(), recording_send(calls.clone(), gate.clone()));
            tokio::spawn(async move { batcher.submit("osd-1", item, 100, send, || "gone".to_string()).await })
        };
        // The first item goes alone, at once, and its call is held open.
        let first = submit(1);
        wait_for("the first call", || calls.lock().expect("calls lock").len() == 1).await;
        // Items for the same destination wait meanwhile: no second call.
        let waiting: Vec<_> = [11, 12, 13, 14].into_iter().map(submit).collect();
        wait_for("the items to queue", || {
            lock(&batcher.queues).get("osd-1").is_some_and(|queue| queue.waiting.len() == 4)
        })
        .await;
        assert_eq!(calls.lock().expect("calls lock").len(), 1, "a second call started while one was in flight");
        gate.notify_one();
        assert_eq!(first.await.expect("first task"), Ok(()));
        let outcomes: Vec<Outcome<String>> = futures::future::join_all(waiting).await.into_iter().map(|task| task.expect("task")).collect();
        assert_eq!(outcomes, vec![Ok(()), Ok(()), Err("item 13 refused".to_string()), Ok(())]);
        // One more call carried all four.
        let mut second = calls.lock().expect("calls lock")[1].clone();
        assert_eq!(calls.lock().expect("calls lock").len(), 2);
        second.sort_unstable();
        assert_eq!(second, vec![11, 12, 13, 14]);
        // The destination is forgotten once drained; the next item starts anew.
        wait_for("the drain to end", || lock(&batcher.queues).is_empty()).await;
        assert_eq!(submit(2).await.expect("task"), Ok(()));
        assert_eq!(calls.lock().expect("calls lock").len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn destinations_do_not_wait_for_each_other() {
        let batcher: Batcher<&'static str, u32, String> = Batcher::new(1);
        let calls: Calls = Arc::default();
        let gate = Arc::new(tokio::sync::Notify::new());
        // osd-1's first call is held; osd-2's item is sent and answered meanwhile.
        let held = batcher.submit("osd-1", 1, 1, recording_send(calls.clone(), gate.clone()), || "gone".to_string());
        let mut held = Box::pin(held);
        assert!(futures::poll!(held.as_mut()).is_pending());
        wait_for("osd-1's call", || calls.lock().expect("calls lock").len() == 1).await;
        let other: Calls = Arc::default();
        let open = Arc::new(tokio::sync::Notify::new());
        open.notify_one();
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            batcher.submit("osd-2", 2, 1, recording_send(other, open), || "gone".to_string()),
        )
        .await;
        assert_eq!(answered.expect("osd-2 waited for osd-1"), Ok(()));
        gate.notify_one();
        assert_eq!(held.await, Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_panics_answers_its_items_gone_and_later_items_still_go() {
        let batcher: Batcher<&'static str, u32, String> = Batcher::new(1);
        let attempts = Arc::new(AtomicUsize::new(0));
        let send = {
            let attempts = attempts.clone();
            move |items: Vec<u32>| {
                let attempt = attempts.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert!(attempt > 0, "the first call fails");
                    items.iter().map(|_| Ok(())).collect::<Vec<Outcome<String>>>()
                }
            }
        };
        let outcome = batcher.submit("osd-1", 1, 1, send.clone(), || "gone".to_string()).await;
        assert_eq!(outcome, Err("gone".to_string()));
        wait_for("the failed drain to be counted out", || lock(&batcher.queues).is_empty()).await;
        assert_eq!(batcher.submit("osd-1", 2, 1, send, || "gone".to_string()).await, Ok(()));
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_batch_stops_at_its_record_and_byte_limits_but_always_takes_one() {
        let waiting = |sizes: &[u64]| -> Vec<Waiting<usize, String>> {
            sizes.iter().enumerate().map(|(item, &bytes)| Waiting { item, bytes, answer: oneshot::channel().0 }).collect()
        };
        let mut many = waiting(&vec![1; BATCH_MAX_RECORDS + 5]);
        assert_eq!(take_batch(&mut many).len(), BATCH_MAX_RECORDS);
        assert_eq!(many.len(), 5);
        let quarter = BATCH_MAX_BYTES / 4;
        let mut large = waiting(&[quarter, quarter, quarter, quarter, 1]);
        let taken: Vec<usize> = take_batch(&mut large).into_iter().map(|w| w.item).collect();
        assert_eq!(taken, vec![0, 1, 2, 3], "exactly the byte limit fits; one byte more does not");
        let mut oversized = waiting(&[BATCH_MAX_BYTES * 2, 1]);
        assert_eq!(take_batch(&mut oversized).len(), 1, "an item over the limit still goes, alone");
        assert!(is_batched(0, 1) && is_batched(1, 1) && !is_batched(2, 1));
        assert!(!is_batched(0, 0), "0 turns batching off, even for empty records");
    }
}
