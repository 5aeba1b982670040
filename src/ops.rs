//! The operations endpoint every daemon serves on its HTTP port:
//! `/metrics` (Prometheus text format) and `/healthz` (200 once serving).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    ready: watch::Receiver<bool>,
}

/// Installs the process-wide metrics recorder.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    Ok(metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?)
}

/// Serves the operations endpoint until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    ready: watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(health))
        .with_state(OpsState { metrics, ready });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

async fn render_metrics(State(state): State<OpsState>) -> String {
    state.metrics.render()
}

async fn health(State(state): State<OpsState>) -> (StatusCode, &'static str) {
    if *state.ready.borrow() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}
