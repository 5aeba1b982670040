//! What the SQLite batchers (`insert`, `lookup`) share: a connection each
//! keeps for itself, and the handle that stops them.
//!
//! Why not the pool: sqlx tests every connection handed back to a pool with
//! a ping, and a SQLite connection's ping is one more round trip to its
//! worker thread (two thread switches). A batcher that borrowed from the
//! pool for every batch paid that per batch; with a connection of its own it
//! pays one round trip per statement and nothing more (ADR 13).

use std::sync::Mutex;

use sqlx::AnyConnection;
use sqlx::Connection;
use tokio::sync::oneshot;
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

/// Stops a batcher task: [`BatcherTask::stop`] makes it drop what is queued
/// (those callers get `Cancelled`), close its connection and end.
#[derive(Debug)]
pub(crate) struct BatcherTask {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl BatcherTask {
    /// Spawns `run`, which must end soon after its stop signal resolves
    /// (also when this handle is dropped without `stop`).
    pub(crate) fn spawn<F, Fut>(run: F) -> BatcherTask
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(stopped));
        BatcherTask {
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
        }
    }

    /// Signals the task and waits for it to end. Idempotent.
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
