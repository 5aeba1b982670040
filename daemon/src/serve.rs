//! A daemon's life around its service: listeners, the ops endpoint, the run
//! file, and shutdown on SIGTERM or Ctrl-C.

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::runinfo::RunInfo;

/// Reads a daemon's TOML configuration.
pub fn load_config<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read config {}", path.display()))?;
    // The message and position only: toml's full error quotes the offending
    // line, which may hold a database password.
    toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|span| text[..span.start.min(text.len())].lines().count()).unwrap_or(0);
        anyhow::anyhow!("parse config {} (line {at}): {}", path.display(), e.message())
    })
}

/// Binds the daemon's listeners, serves `/metrics` and `/healthz`, writes the
/// run file (if `run_file` is given) once the daemon is ready, and runs it
/// until SIGTERM or Ctrl-C.
pub async fn serve<F, Fut, E>(
    run_file: Option<PathBuf>,
    listen: &str,
    http_listen: &str,
    tls: &pocket_transport::TlsConfig,
    run: F,
) -> anyhow::Result<()>
where
    F: FnOnce(TcpListener, watch::Sender<bool>, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let metrics = crate::ops::install_metrics()?;
    let ops_tls = pocket_transport::Tls::load(tls).context("load TLS material for the ops endpoint")?;
    let grpc = TcpListener::bind(listen).await.with_context(|| format!("bind gRPC listener {listen}"))?;
    let http = TcpListener::bind(http_listen).await.with_context(|| format!("bind HTTP listener {http_listen}"))?;
    let info = RunInfo {
        grpc: grpc.local_addr()?.to_string(),
        http: http.local_addr()?.to_string(),
        pid: std::process::id(),
    };
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let ops_shutdown = stopped(stop_rx.clone());
    let ops_ready = ready_rx.clone();
    let ops = tokio::spawn(async move { crate::ops::serve(http, &ops_tls, metrics, ops_ready, ops_shutdown).await });
    if let Some(path) = run_file.clone() {
        let mut ready = ready_rx.clone();
        tokio::spawn(async move {
            if ready.wait_for(|ready| *ready).await.is_ok() {
                if let Err(e) = info.write(&path) {
                    tracing::error!(error = %e, "could not write run file");
                }
            }
        });
    }
    let result = run(grpc, ready_tx, Box::pin(stopped(stop_rx))).await.map_err(Into::into);
    if let Some(path) = run_file {
        let _ = std::fs::remove_file(path);
    }
    // The health endpoint goes last: it reported "not serving" since the
    // daemon flipped `ready` to false on its way out.
    ops.abort();
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "daemon failed");
        bail!("{e:#}");
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C (on Ctrl-C alone where SIGTERM cannot be
/// watched).
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
}
