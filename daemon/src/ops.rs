//! The operations endpoint every daemon serves on its HTTP port:
//! `/metrics` (Prometheus text format), `/healthz` (200 once serving) and
//! `/workers` (JSON: the daemon's background jobs and budget, ADR 16).

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

/// Connections the operations endpoint serves at once.
const MAX_OPS_CONNECTIONS: usize = 32;
/// Longest an ops connection may stay open: a scrape takes milliseconds.
const MAX_OPS_CONNECTION_DURATION: std::time::Duration = std::time::Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves the operations endpoint over mutual TLS to operator and daemon
/// certificates of the pocket's CA (client certificates are dropped) until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: &pocket_transport::Tls,
    metrics: PrometheusHandle,
    ready: watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(health))
        .route("/workers", get(workers))
        .with_state(OpsState { metrics, ready });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.rustls_server_config()?);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_OPS_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "ops endpoint accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // Over the connection limit: drop it.
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let handshake = tokio::time::timeout(pocket_transport::tls::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            let Ok(Ok(stream)) = handshake else { return };
            // Operators and daemons may read the ops endpoint; clients may not.
            let role = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| pocket_transport::Identity::from_certificate(leaf.as_ref()).ok())
                .map(|identity| identity.role);
            if !matches!(role, Some(role) if role == pocket_transport::Role::Operator || role.is_daemon()) {
                return;
            }
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(MAX_OPS_CONNECTION_DURATION, connection).await;
        });
    }
}

async fn render_metrics(State(state): State<OpsState>) -> String {
    state.metrics.render()
}

async fn workers() -> axum::Json<pocket_worker::WorkersReport> {
    axum::Json(pocket_worker::Registry::global().report())
}

async fn health(State(state): State<OpsState>) -> (StatusCode, &'static str) {
    if *state.ready.borrow() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}

/// Longest a scrape of another daemon's operations endpoint may take.
const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest response body a scrape accepts.
const SCRAPE_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// GETs `path` from the operations endpoint at `addr` over mutual TLS with
/// `tls` (an operator or daemon identity) and returns the response body.
pub async fn https_get(tls: &pocket_transport::Tls, addr: &str, path: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let connector = tokio_rustls::TlsConnector::from(tls.rustls_client_config()?);
        let tcp = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        let host = addr.rsplit_once(':').map(|(host, _)| host).unwrap_or(addr).to_owned();
        let name = rustls::pki_types::ServerName::try_from(host.clone()).with_context(|| format!("server name {host}"))?;
        let mut stream = connector.connect(name, tcp).await.context("TLS handshake")?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // A close without close_notify still ends a Connection: close reply.
        let _ = (&mut stream).take(SCRAPE_MAX_BYTES).read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP response")?;
        if !head.starts_with("HTTP/1.1 200") {
            anyhow::bail!("{addr}{path}: {}", head.lines().next().unwrap_or(""));
        }
        Ok::<String, anyhow::Error>(body.to_owned())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch).await.with_context(|| format!("scrape {addr}{path}: timed out"))?
}

/// The value of the unlabelled counter or gauge `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}
