//! Test harness: runs the real `pocket` binary (`pocket up`) in a temporary
//! directory and talks gRPC to it on loopback.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pocket_client::{Client, ClientConfig};
use pocket_daemon::runinfo::RunInfo;
use pocket_proto::{pb, Key};
use pocket_transport::{pki, Identity, Role, Tls};

pub const POCKET: &str = env!("CARGO_BIN_EXE_pocket");
/// Start-up of a whole cell in a debug build on a loaded 2-core machine.
const UP_TIMEOUT: Duration = Duration::from_secs(180);

pub struct LocalPocket {
    pub dir: PathBuf,
    up: Option<Child>,
    pub client: Client,
    pub client_config: ClientConfig,
}

pub struct UpOptions {
    pub osds: u32,
    pub extent_size: &'static str,
    /// Extra `pocket up` flags (limits).
    pub extra: Vec<String>,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions { osds: 9, extent_size: "64MiB", extra: Vec::new() }
    }
}

impl LocalPocket {
    pub async fn start(dir: &Path, options: UpOptions) -> LocalPocket {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("up.log"))
            .expect("open up log");
        let child = Command::new(POCKET)
            .args(["up", "--dir"])
            .arg(dir)
            .args(["--osds", &options.osds.to_string(), "--extent-size", options.extent_size])
            .args(&options.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn pocket up");
        let client_path = dir.join("client.toml");
        let deadline = Instant::now() + UP_TIMEOUT;
        let mut child = child;
        while !client_path.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("pocket up exited early with {status}; see {}", dir.with_extension("up.log").display());
            }
            assert!(Instant::now() < deadline, "pocket up did not serve within {UP_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let client_config = ClientConfig::load(&client_path).expect("load client.toml");
        let client = Client::connect(&client_config).expect("connect client");
        LocalPocket { dir: dir.to_path_buf(), up: Some(child), client, client_config }
    }

    /// The TLS material of `ROLE:NAME` from the pocket's local PKI.
    pub fn tls(&self, role: Role, name: &str) -> Tls {
        Tls::load(&pki::tls_config(&self.dir.join("pki"), &Identity::new(role, name))).expect("load TLS material")
    }

    /// A coordinator client acting as the operator `admin`.
    pub fn coordinator_as_operator(&self) -> pb::coordinator_client::CoordinatorClient<tonic::transport::Channel> {
        let channel = self
            .tls(Role::Operator, "admin")
            .channel(&self.run_info("coordinator").grpc, &pocket_transport::role_dns_name(Role::Coordinator))
            .expect("channel");
        pb::coordinator_client::CoordinatorClient::new(channel)
    }

    /// A client of the public API with the identity `client:NAME`.
    pub fn blob_store_as(&self, name: &str) -> pb::blob_store_client::BlobStoreClient<tonic::transport::Channel> {
        let channel = self
            .tls(Role::Client, name)
            .channel(&self.client_config.frontend, &pocket_transport::role_dns_name(Role::Frontend))
            .expect("channel");
        pb::blob_store_client::BlobStoreClient::new(channel)
    }

    pub fn run_info(&self, daemon: &str) -> RunInfo {
        RunInfo::read(&self.dir.join("run").join(format!("{daemon}.run"))).expect("read run file")
    }

    /// SIGKILLs a daemon and waits until `pocket up` has restarted it and it serves again.
    pub async fn kill_and_wait_restart(&self, daemon: &str) -> RunInfo {
        let before = self.run_info(daemon);
        signal(before.pid, libc::SIGKILL);
        let deadline = Instant::now() + UP_TIMEOUT;
        loop {
            if let Ok(info) = RunInfo::read(&self.dir.join("run").join(format!("{daemon}.run"))) {
                if info.pid != before.pid {
                    return info;
                }
            }
            assert!(Instant::now() < deadline, "{daemon} was not restarted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM to `pocket up`; asserts it exits cleanly and leaves no daemon running.
    pub async fn stop(mut self) {
        let mut child = self.up.take().expect("running");
        let pids: Vec<u32> = std::fs::read_dir(self.dir.join("run"))
            .expect("list run dir")
            .filter_map(|entry| RunInfo::read(&entry.ok()?.path()).ok())
            .map(|info| info.pid)
            .collect();
        assert!(pids.len() >= 3, "expected running daemons, found {}", pids.len());
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait pocket up") {
                break status;
            }
            assert!(Instant::now() < deadline, "pocket up did not stop after SIGTERM");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(status.success(), "pocket up exited with {status}");
        for pid in pids {
            assert!(!process_alive(pid), "daemon {pid} outlived pocket up");
        }
        assert!(!self.dir.join("client.toml").exists(), "client.toml left behind");
    }
}

impl Drop for LocalPocket {
    fn drop(&mut self) {
        if let Some(mut child) = self.up.take() {
            // Children die with their supervisor (PR_SET_PDEATHSIG).
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: u32, signal: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

pub fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; count it as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Random bytes of a log-uniform length in [1, max]: many small blobs, some large.
pub fn random_blob(rng: &mut impl rand::Rng, max_bytes: usize) -> bytes::Bytes {
    let log_max = (max_bytes as f64).ln();
    let length = (rng.random_range(0.0..=log_max).exp() as usize).clamp(1, max_bytes);
    let mut data = vec![0u8; length];
    rng.fill_bytes(&mut data);
    bytes::Bytes::from(data)
}

/// The body of `/metrics` on the ops endpoint at `addr`, read as `tls` (it
/// must be answered 200).
pub async fn metrics(tls: &Tls, addr: &str) -> String {
    pocket_daemon::ops::https_get(tls, addr, "/metrics").await.unwrap_or_else(|e| panic!("read {addr}/metrics: {e:#}"))
}

/// The value of an unlabelled counter in a Prometheus text page (0 if absent).
pub fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0, |value| value.trim().parse().unwrap_or_else(|e| panic!("{name} = {value:?}: {e}")))
}

/// Every `(key, blob)` of `stored` reads back byte-identical through
/// `client`, with at most `in_flight` GETs at once (1: one after another).
/// A failure names `context`.
pub async fn assert_all_readable(client: &Client, stored: &[(Key, Bytes)], in_flight: usize, context: &str) {
    let limit = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut tasks = Vec::new();
    for (key, data) in stored {
        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
        let (client, key, data, context) = (client.clone(), *key, data.clone(), context.to_string());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let got = client.get(&key).await.unwrap_or_else(|e| panic!("{context}: get {key}: {e}"));
            assert!(got == data, "{context}: blob {key} differs");
        }));
    }
    for task in tasks {
        task.await.expect("get task");
    }
}

/// The header message of a hand-built `BlobStore.Put` stream; `key` is raw
/// bytes, so that a test can send one of the wrong length.
pub fn put_header(key: &[u8], length_bytes: u64) -> pb::PutRequest {
    pb::PutRequest {
        part: Some(pb::put_request::Part::Header(pb::PutHeader { key: Bytes::copy_from_slice(key), length_bytes })),
    }
}

/// A data message of a hand-built `BlobStore.Put` stream.
pub fn put_chunk(data: &[u8]) -> pb::PutRequest {
    pb::PutRequest { part: Some(pb::put_request::Part::Chunk(Bytes::copy_from_slice(data))) }
}

/// The cell's state as `pocket cell status --json` reports it, or None
/// while no coordinator answers within 5 s (one may be restarting).
pub async fn try_report(pocket: &LocalPocket) -> Option<pocket::cell_status::CellReport> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let text = std::fs::read_to_string(pocket.dir.join("operator.toml")).ok()?;
        let config: pocket_daemon::operator::OperatorConfig = toml::from_str(&text).ok()?;
        pocket::cell_status::fetch(&config).await.ok()
    })
    .await
    .ok()
    .flatten()
}

/// Waits until `done` holds of the cell's report; fails naming `what` and
/// the last report after `within`.
pub async fn wait_for(pocket: &LocalPocket, what: &str, within: Duration, done: impl Fn(&pocket::cell_status::CellReport) -> bool) -> pocket::cell_status::CellReport {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        if let Some(report) = try_report(pocket).await {
            if done(&report) {
                return report;
            }
            last = Some(report);
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}; last report: {last:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
