//! `pocket up --dir DIR`: a whole local cell on loopback — two coordinators
//! (one leads, one stands by; ADR 19), N OSD processes and a frontend, SQLite for the index and the cell database,
//! data under DIR. It supervises its children (restarting one that dies) and
//! stops them all, in order, on Ctrl-C or SIGTERM. Run again on the same DIR,
//! it brings the same pocket back with its data.
//!
//! Layout of DIR:
//! ```text
//! up.toml             the settings of this pocket (written on first run)
//! etc/<role>.toml     generated daemon configs
//! coordinator/        cell database
//! index/              index shard(s)
//! osd-<n>/disk-<k>/   each OSD's disks (--disks-per-osd)
//! pki/                the local CA and each identity's certificate and key
//! run/<role>.run      address and pid of each running daemon (coordinator,
//!                     coordinator-2, osd-N, frontend)
//! hold/<role>         if present, a daemon that dies is not restarted (maintenance, tests)
//! logs/<role>.log     each daemon's log
//! client.toml         written once the pocket serves; removed when it stops
//! operator.toml       the same for the operator `admin` (`pocket cell status`)
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pocket_daemon::runinfo::RunInfo;
use pocket_transport::{pki, Identity, Role};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// How long a daemon may take from spawn to serving before `up` gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Most disk directories per OSD of a local pocket.
const MAX_DISKS_PER_OSD: u32 = 16;
/// Most coordinator processes a local pocket runs.
const MAX_COORDINATORS: u32 = 5;
/// Delay before restarting a daemon that died, so a crash loop does not spin.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// The settings of a local pocket, fixed on first run and stored in `up.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpSettings {
    /// OSD processes (at least the replication factor).
    pub osds: u32,
    /// Size at which extents seal.
    pub extent_size_bytes: u64,
    /// Replicas per open volume.
    pub replication_factor: u32,
    /// Largest blob accepted.
    pub max_blob_size_bytes: u64,
    /// Loopback port of the coordinator, fixed on first run so that a
    /// restarted coordinator is found where the OSDs and frontend look.
    #[serde(default)]
    pub coordinator_port: u16,
    /// Loopback port of the frontend, fixed on first run so that
    /// `client.toml` stays valid across restarts.
    #[serde(default)]
    pub frontend_port: u16,
    /// Requests per second (and burst) each client may make at the frontend.
    #[serde(default = "default_client_rate_limit")]
    pub client_rate_limit_per_sec: u32,
    /// Longest silence inside a PUT/append stream, or from a GET reader.
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    /// Erasure code of closed volumes: k data and m parity extents.
    #[serde(default = "default_ec_data_shards")]
    pub ec_data_shards: u32,
    #[serde(default = "default_ec_parity_shards")]
    pub ec_parity_shards: u32,
    /// An OSD silent this long is down (its open volumes close).
    #[serde(default = "default_osd_down_after_ms")]
    pub osd_down_after_ms: u64,
    /// An OSD silent this long is out (its copies are repaired elsewhere).
    #[serde(default = "default_osd_out_after_ms")]
    pub osd_out_after_ms: u64,
    /// Erasure-code closed volumes.
    #[serde(default = "default_true")]
    pub erasure: bool,
    /// Coordinator processes (one leads, the others stand by; ADR 19).
    #[serde(default = "default_coordinators")]
    pub coordinators: u32,
    /// Disks (directories) per OSD, fixed on first run.
    #[serde(default = "default_disks_per_osd")]
    pub disks_per_osd: u32,
    /// Test-only fault hook of the OSDs (`DISK.inject-eio`); never in production.
    #[serde(default)]
    pub fault_injection: bool,
    /// Bytes/s of background work (erasure coding, repair) through each OSD; 0: no limit.
    #[serde(default)]
    pub osd_background_bytes_per_sec: u64,
    /// How long an OSD keeps a deleted extent in its trash before purging it.
    #[serde(default = "default_trash_delay_ms")]
    pub trash_delay_ms: u64,
    /// Loopback ports of the standby coordinators, fixed on first run.
    #[serde(default)]
    pub standby_coordinator_ports: Vec<u16>,
}

fn default_trash_delay_ms() -> u64 {
    86_400_000
}

fn default_disks_per_osd() -> u32 {
    1
}

fn default_coordinators() -> u32 {
    2
}

/// `["a", "b"]`: a TOML array of strings.
fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("\"{item}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn default_osd_down_after_ms() -> u64 {
    10_000
}
fn default_osd_out_after_ms() -> u64 {
    600_000
}
fn default_true() -> bool {
    true
}

fn default_ec_data_shards() -> u32 {
    6
}
fn default_ec_parity_shards() -> u32 {
    3
}

fn default_client_rate_limit() -> u32 {
    2_000
}
fn default_stream_idle_timeout_ms() -> u64 {
    10_000
}

/// Room an extent needs beyond its largest record: the extent header and
/// one record header (osd/src/extent.rs), rounded up.
const EXTENT_OVERHEAD_BYTES: u64 = 4096;

/// Lowest port [`free_port`] picks.
const FIXED_PORT_FLOOR: u16 = 10_000;

/// A port free on loopback right now, below the kernel's ephemeral range
/// where one can be found. The port is bound only later, by a daemon started
/// after others; a port of the ephemeral range (what binding port 0 gives)
/// can meanwhile become the local port of one of their outgoing connections,
/// and the daemon then fails with "address in use". Ports below the range
/// are never handed out that way.
fn free_port() -> anyhow::Result<u16> {
    use rand::Rng;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_start > FIXED_PORT_FLOOR {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let port = rng.random_range(FIXED_PORT_FLOOR..ephemeral_start);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

struct Daemon {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
    run_file: PathBuf,
}

pub struct Up {
    /// Held for the life of `up`: one supervisor per directory.
    _lock: std::fs::File,
    dir: PathBuf,
    exe: PathBuf,
    settings: UpSettings,
    daemons: Vec<Daemon>,
}

impl Up {
    /// Prepares DIR: loads or writes `up.toml` and generates every config.
    /// `overrides` apply on first run; on later runs OSDs may only be added.
    pub fn prepare(dir: &Path, overrides: UpSettings) -> anyhow::Result<Up> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let dir = dir.canonicalize().context("resolve pocket directory")?;
        let lock = lock_dir(&dir)?;
        let settings_path = dir.join("up.toml");
        let mut settings = match std::fs::read_to_string(&settings_path) {
            Ok(text) => {
                let mut stored: UpSettings = toml::from_str(&text).context("parse up.toml")?;
                if overrides.osds > stored.osds {
                    stored.osds = overrides.osds;
                }
                // Limits are not part of the data's identity: each run may set them.
                stored.client_rate_limit_per_sec = overrides.client_rate_limit_per_sec;
                stored.stream_idle_timeout_ms = overrides.stream_idle_timeout_ms;
                // Nor are the health thresholds or whether closed volumes are encoded.
                stored.osd_down_after_ms = overrides.osd_down_after_ms;
                stored.osd_out_after_ms = overrides.osd_out_after_ms;
                stored.erasure = overrides.erasure;
                stored.coordinators = overrides.coordinators;
                stored.fault_injection = overrides.fault_injection;
                stored.trash_delay_ms = overrides.trash_delay_ms;
                stored.osd_background_bytes_per_sec = overrides.osd_background_bytes_per_sec;
                stored
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => overrides,
            Err(e) => return Err(e).context("read up.toml"),
        };
        if settings.osds < settings.replication_factor {
            bail!("{} OSDs cannot hold {} replicas", settings.osds, settings.replication_factor);
        }
        if settings.extent_size_bytes < settings.max_blob_size_bytes + EXTENT_OVERHEAD_BYTES {
            bail!(
                "extent size {} bytes cannot hold a blob of the maximum size {} bytes; raise --extent-size or lower --max-blob-size",
                settings.extent_size_bytes,
                settings.max_blob_size_bytes
            );
        }
        if settings.ec_data_shards == 0 || settings.ec_parity_shards == 0 {
            bail!("the erasure code needs at least one data and one parity shard");
        }
        if settings.osds < settings.ec_data_shards + settings.ec_parity_shards {
            tracing::warn!(
                osds = settings.osds,
                k = settings.ec_data_shards,
                m = settings.ec_parity_shards,
                "fewer OSDs than k + m: closed volumes will stay replicated"
            );
        }
        if settings.osd_out_after_ms < settings.osd_down_after_ms {
            bail!("--osd-out-after must be at least --osd-down-after");
        }
        if settings.osd_down_after_ms < 2_000 {
            bail!("--osd-down-after must be at least 2s (two heartbeats)");
        }
        if settings.coordinator_port == 0 {
            settings.coordinator_port = free_port()?;
        }
        if !(1..=MAX_DISKS_PER_OSD).contains(&settings.disks_per_osd) {
            bail!("--disks-per-osd must be between 1 and {MAX_DISKS_PER_OSD}");
        }
        if !(1..=MAX_COORDINATORS).contains(&settings.coordinators) {
            bail!("--coordinators must be between 1 and {MAX_COORDINATORS}");
        }
        while settings.standby_coordinator_ports.len() + 1 < settings.coordinators as usize {
            settings.standby_coordinator_ports.push(free_port()?);
        }
        if settings.frontend_port == 0 {
            settings.frontend_port = free_port()?;
        }
        let tmp = dir.join("up.toml.tmp");
        std::fs::write(&tmp, toml::to_string(&settings)?).context("write up.toml")?;
        std::fs::rename(&tmp, &settings_path).context("install up.toml")?;
        for sub in ["etc", "run", "logs", "coordinator", "index"] {
            std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("create {sub}/"))?;
        }
        let _ = std::fs::remove_file(dir.join("client.toml"));
        pki::ensure_local(&dir.join("pki"), &local_identities(settings.osds)).context("generate the local PKI")?;
        let exe = std::env::current_exe().context("locate the pocket binary")?;
        Ok(Up { _lock: lock, dir, exe, settings, daemons: Vec::new() })
    }

    /// The config of the coordinator `name` listening on `port`.
    fn coordinator_config(&self, name: &str, port: u16) -> String {
        let db = self.dir.join("coordinator").join("cell.db");
        format!(
            "cell_id = 1\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\ndatabase_url = \"sqlite://{}?mode=rwc\"\naudit_log = \"{}\"\nreplication_factor = {}\nextent_size_bytes = {}\nosd_down_after_ms = {}\nosd_out_after_ms = {}\n{}\n[erasure]\nenabled = {}\ndata_shards = {}\nparity_shards = {}\n\n[reconcile]\ninterval_ms = {}\ngrace_ms = {}\n",
            db.display(),
            self.dir.join("coordinator").join("audit.log").display(),
            self.settings.replication_factor,
            self.settings.extent_size_bytes,
            self.settings.osd_down_after_ms,
            self.settings.osd_out_after_ms,
            self.tls_table(&Identity::new(Role::Coordinator, "cell-1")),
            self.settings.erasure,
            self.settings.ec_data_shards,
            self.settings.ec_parity_shards,
            self.reconcile_interval_ms(),
            2 * self.reconcile_interval_ms(),
        )
    }

    /// Reconciliation looks for copies nothing names every half of
    /// `--osd-out-after`, at most every 15 s: a cell that repairs quickly
    /// also collects the duplicates of an OSD that comes back quickly.
    fn reconcile_interval_ms(&self) -> u64 {
        (self.settings.osd_out_after_ms / 2).clamp(1_000, 15_000)
    }

    /// The `[tls]` table of `identity`'s config.
    fn tls_table(&self, identity: &Identity) -> String {
        let config = pki::tls_config(&self.dir.join("pki"), identity);
        format!(
            "\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            config.ca.display(),
            config.cert.display(),
            config.key.display()
        )
    }

    fn write_config(&self, name: &str, text: String) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("etc").join(format!("{name}.toml"));
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    fn daemon(&self, name: &str, role: &str, config: &Path) -> Daemon {
        let run_file = self.dir.join("run").join(format!("{name}.run"));
        Daemon {
            name: name.to_string(),
            args: vec![
                role.to_string(),
                "--config".to_string(),
                config.display().to_string(),
                "--run-file".to_string(),
                run_file.display().to_string(),
            ],
            child: None,
            run_file,
        }
    }

    async fn wait_serving(&mut self, index: usize) -> anyhow::Result<RunInfo> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let daemon = &mut self.daemons[index];
            if let Ok(info) = RunInfo::read(&daemon.run_file) {
                return Ok(info);
            }
            if let Some(child) = daemon.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("{} exited during start-up ({status}); see logs/{}.log", daemon.name, daemon.name);
                }
            }
            if Instant::now() > deadline {
                bail!("{} did not start serving within {:?}", daemon.name, START_TIMEOUT);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts every daemon, waits until the cell accepts writes, writes
    /// `client.toml`, then supervises until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        // The cell's coordinators share the cell database; one leads (ADR 19).
        let mut coordinator_addrs = Vec::new();
        for c in 1..=self.settings.coordinators {
            let name = if c == 1 { "coordinator".to_string() } else { format!("coordinator-{c}") };
            let port = match c {
                1 => self.settings.coordinator_port,
                _ => self.settings.standby_coordinator_ports.get(c as usize - 2).copied().unwrap_or(0),
            };
            let config = self.write_config(&name, self.coordinator_config(&name, port))?;
            let daemon = self.daemon(&name, "coordinator", &config);
            self.daemons.push(daemon);
            let index = self.daemons.len() - 1;
            self.start(index).await?;
            coordinator_addrs.push(self.wait_serving(index).await?.grpc);
        }
        let coordinator_addr = coordinator_addrs[0].clone();
        let standbys = toml_list(&coordinator_addrs[1..]);

        for n in 1..=self.settings.osds {
            let disks: Vec<String> = (0..self.settings.disks_per_osd)
                .map(|d| format!("\"{}\"", self.dir.join(format!("osd-{n}")).join(format!("disk-{d}")).display()))
                .collect();
            let config = self.write_config(
                &format!("osd-{n}"),
                format!(
                    "osd_id = {n}\ndisks = [{}]\ncoordinator = \"{coordinator_addr}\"\ncoordinators = {standbys}\nfault_injection = {}\ntrash_delay_secs = {}\n{}max_blob_size_bytes = {}\nstream_idle_timeout_ms = {}\n{}",
                    disks.join(", "),
                    self.settings.fault_injection,
                    self.settings.trash_delay_ms.div_ceil(1000),
                    match self.settings.osd_background_bytes_per_sec {
                        0 => String::new(),
                        rate => format!("background_bytes_per_sec = {rate}\n"),
                    },
                    self.settings.max_blob_size_bytes,
                    self.settings.stream_idle_timeout_ms,
                    self.tls_table(&Identity::new(Role::Osd, &format!("osd-{n}"))),
                ),
            )?;
            let daemon = self.daemon(&format!("osd-{n}"), "osd", &config);
            self.daemons.push(daemon);
            let index = self.daemons.len() - 1;
            self.start(index).await?;
        }
        for index in self.settings.coordinators as usize..self.daemons.len() {
            self.wait_serving(index).await?;
        }
        let operator_tls = pocket_transport::Tls::load(&pki::tls_config(&self.dir.join("pki"), &up_identity()))?;
        wait_writable(&operator_tls, &coordinator_addr).await?;
        let operator_config = pocket_daemon::operator::OperatorConfig {
            coordinator: coordinator_addr.clone(),
            coordinators: coordinator_addrs[1..].to_vec(),
            tls: pki::tls_config(&self.dir.join("pki"), &Identity::new(Role::Operator, "admin")),
        };
        let tmp = self.dir.join("operator.toml.tmp");
        std::fs::write(&tmp, toml::to_string(&operator_config)?).context("write operator.toml")?;
        std::fs::rename(&tmp, self.dir.join("operator.toml")).context("install operator.toml")?;

        let index_db = self.dir.join("index").join("index-0.db");
        let frontend_config = self.write_config(
            "frontend",
            format!(
                "coordinator = \"{coordinator_addr}\"\ncoordinators = {standbys}\nlisten = \"127.0.0.1:{}\"\nmax_blob_size_bytes = {}\nrate_limit_per_sec = {rate}\nrate_limit_burst = {rate}\nstream_idle_timeout_ms = {}\n\n[index]\nshards = [{{ name = \"shard-0\", url = \"sqlite://{}?mode=rwc\" }}]\n{}\n{}",
                self.settings.frontend_port,
                self.settings.max_blob_size_bytes,
                self.settings.stream_idle_timeout_ms,
                index_db.display(),
                self.tls_table(&Identity::new(Role::Frontend, "frontend-1")),
                CLIENT_GRANTS,
                rate = self.settings.client_rate_limit_per_sec,
            ),
        )?;
        let frontend = self.daemon("frontend", "frontend", &frontend_config);
        self.daemons.push(frontend);
        let frontend_index = self.daemons.len() - 1;
        self.start(frontend_index).await?;
        let frontend_addr = self.wait_serving(frontend_index).await?.grpc;
        let client_config = pocket_client::ClientConfig {
            frontend: frontend_addr.clone(),
            tls: pki::tls_config(&self.dir.join("pki"), &Identity::new(Role::Client, "local")),
        };
        let client = pocket_client::Client::connect(&client_config)?;
        client.wait_ready(START_TIMEOUT).await.context("frontend did not answer")?;
        let client_path = self.dir.join("client.toml");
        let tmp = self.dir.join("client.toml.tmp");
        std::fs::write(&tmp, toml::to_string(&client_config)?).context("write client.toml")?;
        std::fs::rename(&tmp, &client_path).context("install client.toml")?;
        tracing::info!(frontend = %frontend_addr, client_config = %client_path.display(), osds = self.settings.osds, "pocket is up");
        eprintln!("pocket is up: frontend {frontend_addr}; client config {}", client_path.display());

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => self.restart_dead().await,
            }
        }
        let _ = std::fs::remove_file(&client_path);
        self.stop_all().await;
        Ok(())
    }

    /// Spawns daemon `index` with its output appended to `logs/<name>.log`.
    async fn start(&mut self, index: usize) -> anyhow::Result<()> {
        let daemon = &mut self.daemons[index];
        let _ = std::fs::remove_file(&daemon.run_file);
        let log_path = self.dir.join("logs").join(format!("{}.log", daemon.name));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).context("open daemon log")?;
        let mut command = Command::new(&self.exe);
        command
            .args(&daemon.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone log handle")?)
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        daemon.child = Some(command.spawn().with_context(|| format!("spawn {}", daemon.name))?);
        Ok(())
    }

    async fn restart_dead(&mut self) {
        for index in 0..self.daemons.len() {
            let exited = match self.daemons[index].child.as_mut().map(|child| child.try_wait()) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                if self.dir.join("hold").join(&self.daemons[index].name).exists() {
                    // On hold: stays down until the hold file goes.
                    continue;
                }
                tracing::error!(daemon = %self.daemons[index].name, %status, "daemon died; restarting");
                tokio::time::sleep(RESTART_DELAY).await;
                if let Err(e) = self.start(index).await {
                    tracing::error!(daemon = %self.daemons[index].name, error = %e, "restart failed");
                }
            }
        }
    }

    /// Stops in dependency order: the frontend (no new requests), the OSDs,
    /// then the coordinator.
    async fn stop_all(&mut self) {
        // Daemons were started coordinator, OSDs, frontend: stop in reverse.
        for index in (0..self.daemons.len()).rev() {
            let daemon = &mut self.daemons[index];
            let Some(mut child) = daemon.child.take() else { continue };
            if let Some(pid) = child.id() {
                terminate(pid);
            }
            match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
                Ok(_) => tracing::info!(daemon = %daemon.name, "stopped"),
                Err(_) => {
                    tracing::warn!(daemon = %daemon.name, "did not stop in time; killing");
                    let _ = child.kill().await;
                }
            }
            let _ = std::fs::remove_file(&daemon.run_file);
        }
    }
}

/// The identity `pocket up` itself uses to watch the cell start.
fn up_identity() -> Identity {
    Identity::new(Role::Operator, "up")
}

/// Every identity of a local pocket: its daemons, two clients (`local` may do
/// everything, `reader` only read) and an operator (`admin`).
pub fn local_identities(osds: u32) -> Vec<Identity> {
    let mut identities = vec![
        Identity::new(Role::Coordinator, "cell-1"),
        Identity::new(Role::Frontend, "frontend-1"),
        Identity::new(Role::Client, "local"),
        Identity::new(Role::Client, "reader"),
        Identity::new(Role::Operator, "admin"),
        up_identity(),
    ];
    identities.extend((1..=osds).map(|n| Identity::new(Role::Osd, &format!("osd-{n}"))));
    identities
}

/// The permission table of a local pocket's frontend.
const CLIENT_GRANTS: &str = "[[clients]]\nname = \"local\"\npermissions = [\"put\", \"get\", \"delete\", \"list\", \"admin\"]\n\n[[clients]]\nname = \"reader\"\npermissions = [\"get\"]\n";

/// Waits until the coordinator offers at least one writable bucket.
async fn wait_writable(tls: &pocket_transport::Tls, coordinator_addr: &str) -> anyhow::Result<()> {
    let client = pocket_rpc_client::CoordinatorClient::connect(tls, coordinator_addr)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok((_, buckets)) = client.rpc_writable_buckets().await {
            if !buckets.is_empty() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the cell offered no writable bucket within {START_TIMEOUT:?}; see logs/");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes an exclusive lock on `DIR/up.lock`, so that two supervisors never
/// run the same pocket.
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("up.lock"))
        .context("open up.lock")?;
    #[allow(unsafe_code)]
    // SAFETY: flock(2) on a file descriptor we own; no memory is shared.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        bail!("another `pocket up` is running on {}", dir.display());
    }
    Ok(file)
}

/// Sends SIGTERM to `pid`.
pub fn terminate(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// Makes the child receive SIGKILL if `pocket up` itself dies, so that no
/// daemon outlives its supervisor.
fn die_with_parent(command: &mut Command) {
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and calls only prctl(2),
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ports_come_from_below_the_ephemeral_range() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("Linux port range");
        let start: u16 = range.split_whitespace().next().and_then(|s| s.parse().ok()).expect("range start");
        for _ in 0..20 {
            let port = free_port().expect("a free port");
            assert!((FIXED_PORT_FLOOR..start).contains(&port), "{port} is not in {FIXED_PORT_FLOOR}..{start}");
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free to bind");
        }
    }
}
