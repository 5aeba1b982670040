//! What the SQLite batchers (`insert`, `lookup`) share: the queue, the task
//! that serves it in batches, and the connection each keeps for itself.
//!
//! Why not the pool: sqlx tests every connection handed back to a pool with
//! a ping, and a SQLite connection's ping is one more round trip to its
//! worker thread (two thread switches). A batcher that borrowed from the
//! pool for every batch paid that per batch; with a connection of its own it
//! pays one round trip per statement and nothing more (ADR 13).

use std::sync::Mutex;

use sqlx::AnyConnection;
use sqlx::Connection;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::IndexError;
use crate::shard::Shard;

/// A connection of one shard, taken out of its pool (`detach`: the pool may
/// open another in its place) and opened again after a failure.
pub(crate) struct OwnConnection {
    shard: Shard,
    conn: Option<AnyConnection>,
}

impl OwnConnection {
    pub(crate) fn new(shard: Shard) -> OwnConnection {
        OwnConnection { shard, conn: None }
    }

    /// The connection, taken from the pool first if there is none. Fails once
    /// the pool is closed: a closed index stays closed.
    pub(crate) async fn get(&mut self) -> Result<&mut AnyConnection, IndexError> {
        if self.conn.is_none() {
            let pooled = self
                .shard
                .pool
                .acquire()
                .await
                .map_err(self.shard.db_err("connect"))?;
            self.conn = Some(pooled.detach());
        }
        Ok(self.conn.as_mut().expect("connection was just set"))
    }

    /// Closes the connection; the next [`OwnConnection::get`] opens another.
    /// Called after a database error, whose connection may be in any state.
    pub(crate) async fn reset(&mut self) {
        if let Some(conn) = self.conn.take() {
            if let Err(e) = conn.close().await {
                tracing::warn!(shard = %self.shard.name, error = %e, "closing a batcher's connection");
            }
        }
    }
}

/// One request waiting in a batcher's queue, and where its answer goes.
pub(crate) struct Pending<Req, Resp> {
    pub(crate) request: Req,
    pub(crate) resp: oneshot::Sender<Result<Resp, IndexError>>,
}

/// What a batcher does with a batch.
pub(crate) trait Serve: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// Named in [`IndexError::Cancelled`].
    const OP: &'static str;
    /// Counters of batches served and of requests in them.
    const BATCHES_METRIC: &'static str;
    const REQUESTS_METRIC: &'static str;

    /// Answers every request of `batch` (at most `max_batch`).
    fn serve(
        &self,
        conn: &mut OwnConnection,
        batch: Vec<Pending<Self::Request, Self::Response>>,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// A queue served by a task of its own: the task takes every request
/// waiting (up to a batch's maximum) and hands them to [`Serve::serve`] on
/// its connection; requests arriving meanwhile make the next batch. No timer.
pub(crate) struct Batcher<S: Serve> {
    queue: mpsc::Sender<Pending<S::Request, S::Response>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<S: Serve> std::fmt::Debug for Batcher<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("op", &S::OP).finish_non_exhaustive()
    }
}

impl<S: Serve> Batcher<S> {
    /// Starts the task on the current runtime.
    pub(crate) fn start(shard: Shard, server: S, max_batch: usize, queue_capacity: usize) -> Batcher<S> {
        let (queue, rx) = mpsc::channel(queue_capacity);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(shard, server, max_batch, rx, stopped));
        Batcher {
            queue,
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
        }
    }

    /// Queues `request`; returns its answer, given after its batch is served.
    pub(crate) async fn call(&self, request: S::Request) -> Result<S::Response, IndexError> {
        let (resp, answer) = oneshot::channel();
        let cancelled = || IndexError::Cancelled { op: S::OP };
        self.queue
            .send(Pending { request, resp })
            .await
            .map_err(|_| cancelled())?;
        answer.await.map_err(|_| cancelled())?
    }

    /// Ends the task: what is queued is dropped (those callers get
    /// `Cancelled`) and its connection closed. Waits for it. Idempotent.
    pub(crate) async fn stop(&self) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                if let Ok(panic) = e.try_into_panic() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

/// The task; ends on the stop signal, also when the [`Batcher`] is dropped.
async fn run<S: Serve>(
    shard: Shard,
    server: S,
    max_batch: usize,
    mut rx: mpsc::Receiver<Pending<S::Request, S::Response>>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut conn = OwnConnection::new(shard);
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let received = tokio::select! {
            biased;
            _ = &mut stop => 0,
            received = rx.recv_many(&mut batch, max_batch) => received,
        };
        if received == 0 {
            break;
        }
        metrics::counter!(S::BATCHES_METRIC).increment(1);
        metrics::counter!(S::REQUESTS_METRIC).increment(batch.len() as u64);
        server.serve(&mut conn, std::mem::take(&mut batch)).await;
    }
    conn.reset().await;
}
