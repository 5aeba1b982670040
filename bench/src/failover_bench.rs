//! `pocket failover-bench --dir DIR`: how long a cell is without a working
//! leader when its leading coordinator is SIGKILLed (issue 19, ADR 19). Over
//! a running `pocket up --dir DIR` (two or more coordinators), while a PUT
//! load keeps volumes filling and closing, it kills the leader `--kills`
//! times and measures for each kill:
//!
//! - *elected*: until another coordinator reports a newer generation;
//! - *first mutation*: until the new leader's first successful mutating
//!   call to an OSD (a create or a seal, from its
//!   `pocket_coordinator_osd_mutations_total`).
//!
//! The new leader is whichever coordinator takes the lease first: the
//! standby, or the killed one restarted by `pocket up` under its old name.
//! Kills are `--interval` apart (default 15 s) so that the anti-flap term
//! (`min_term_ms`, 10 s) does not add to a failover; `pocket up` restarts
//! each killed coordinator, which then stands by. PUTs that fail are counted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use pocket_daemon::operator::OperatorConfig;
use pocket_daemon::runinfo::RunInfo;
use rand::RngCore;
use serde::Serialize;

pub struct FailoverBenchOptions {
    pub dir: PathBuf,
    pub kills: u32,
    pub interval: Duration,
    /// Bytes of each PUT of the background load.
    pub blob_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct Failover {
    pub killed: String,
    pub new_leader: String,
    pub generation: u64,
    pub elected_ms: u64,
    pub first_mutation_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct FailoverBenchReport {
    pub failovers: Vec<Failover>,
    pub elected_ms: Summary,
    pub first_mutation_ms: Summary,
    pub puts_acked: u64,
    pub puts_failed: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub count: usize,
    pub min: u64,
    pub median: u64,
    pub max: u64,
}

fn summary(mut values: Vec<u64>) -> Summary {
    values.sort_unstable();
    if values.is_empty() {
        return Summary::default();
    }
    Summary { count: values.len(), min: values[0], median: values[values.len() / 2], max: values[values.len() - 1] }
}

/// Longest wait for a new leader or its first mutation.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// The coordinators' run files under `DIR/run`: (daemon name, run info).
fn coordinators(dir: &Path) -> Vec<(String, RunInfo)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("run")) else { return out };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().trim_end_matches(".run").to_string();
        if name.starts_with("coordinator") {
            if let Ok(info) = RunInfo::read(&entry.path()) {
                out.push((name, info));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// (leader, generation) as the coordinators report it: the newest generation wins.
async fn leader(dir: &Path, tls: &pocket_transport::Tls) -> Option<(String, u64)> {
    let mut best: Option<(String, u64)> = None;
    for (_, info) in coordinators(dir) {
        let Ok(client) = pocket_rpc_client::CoordinatorClient::connect(tls, &info.grpc) else { continue };
        let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), client.rpc_status()).await else { continue };
        if !status.leader.is_empty() && best.as_ref().is_none_or(|(_, g)| status.generation > *g) {
            best = Some((status.leader, status.generation));
        }
    }
    best
}

/// The successful mutating calls coordinator `name` has made to OSDs.
async fn mutations(dir: &Path, tls: &pocket_transport::Tls, name: &str) -> Option<u64> {
    let info = RunInfo::read(&dir.join("run").join(format!("{name}.run"))).ok()?;
    let page = tokio::time::timeout(Duration::from_secs(2), pocket_daemon::ops::https_get(tls, &info.http, "/metrics")).await.ok()?.ok()?;
    Some(
        page.lines()
            .filter(|line| line.starts_with("pocket_coordinator_osd_mutations_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

pub async fn run(options: FailoverBenchOptions) -> anyhow::Result<FailoverBenchReport> {
    let text = std::fs::read_to_string(options.dir.join("operator.toml")).context("read DIR/operator.toml (is `pocket up --dir DIR` running?)")?;
    let operator: OperatorConfig = toml::from_str(&text).context("parse operator.toml")?;
    let tls = pocket_transport::Tls::load(&operator.tls).context("load operator TLS material")?;
    if coordinators(&options.dir).len() < 2 {
        bail!("failover needs two coordinators or more (`pocket up --coordinators 2`)");
    }
    let client_config = pocket_client::ClientConfig::load(&options.dir.join("client.toml")).context("load DIR/client.toml")?;
    let client = pocket_client::Client::connect(&client_config)?;

    // The load: PUTs one after another, so that volumes fill and close.
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = tokio::spawn({
        let (stop, acked, failed, size) = (stop.clone(), acked.clone(), failed.clone(), options.blob_bytes);
        async move {
            while !stop.load(Ordering::Relaxed) {
                let mut data = vec![0u8; size];
                rand::rng().fill_bytes(&mut data);
                match client.put(Bytes::from(data)).await {
                    Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });

    let progress = indicatif::ProgressBar::new(u64::from(options.kills));
    let mut failovers = Vec::new();
    for _ in 0..options.kills {
        tokio::time::sleep(options.interval).await;
        let (killed, generation) = leader(&options.dir, &tls).await.context("no coordinator names a leader")?;
        let info = RunInfo::read(&options.dir.join("run").join(format!("{killed}.run")))?;
        #[allow(unsafe_code)]
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(info.pid as libc::pid_t, libc::SIGKILL);
        }
        let killed_at = Instant::now();
        let (new_leader, new_generation) = loop {
            if let Some((name, g)) = leader(&options.dir, &tls).await {
                // The standby, or the killed one restarted by `pocket up`
                // (a new process under the same name): whichever took the lease.
                if g > generation {
                    break (name, g);
                }
            }
            if killed_at.elapsed() > FAILOVER_TIMEOUT {
                bail!("no new leader within {FAILOVER_TIMEOUT:?} of killing {killed}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let elected_ms = killed_at.elapsed().as_millis() as u64;
        // Its mutations so far (a standby has made none since it last led).
        let base = mutations(&options.dir, &tls, &new_leader).await.unwrap_or(0);
        let mut first_mutation_ms = None;
        while killed_at.elapsed() < FAILOVER_TIMEOUT {
            if mutations(&options.dir, &tls, &new_leader).await.is_some_and(|n| n > base) {
                first_mutation_ms = Some(killed_at.elapsed().as_millis() as u64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        failovers.push(Failover { killed, new_leader, generation: new_generation, elected_ms, first_mutation_ms });
        progress.inc(1);
    }
    progress.finish_and_clear();
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    Ok(FailoverBenchReport {
        elected_ms: summary(failovers.iter().map(|f| f.elected_ms).collect()),
        first_mutation_ms: summary(failovers.iter().filter_map(|f| f.first_mutation_ms).collect()),
        failovers,
        puts_acked: acked.load(Ordering::Relaxed),
        puts_failed: failed.load(Ordering::Relaxed),
    })
}

pub async fn command(options: FailoverBenchOptions, json: bool) -> anyhow::Result<()> {
    let report = run(options).await?;
    crate::print_report(&report, json, render)
}

pub fn render(r: &FailoverBenchReport) -> String {
    let mut out = String::from("KILLED         NEW LEADER     GEN  ELECTED ms  FIRST MUTATION ms\n");
    for f in &r.failovers {
        out.push_str(&format!(
            "{:<14} {:<14} {:>3}  {:>10}  {:>17}\n",
            f.killed,
            f.new_leader,
            f.generation,
            f.elected_ms,
            f.first_mutation_ms.map_or("none".to_string(), |ms| ms.to_string())
        ));
    }
    out.push_str(&format!(
        "\nelected after a kill: min {} / median {} / max {} ms ({} kills)\nfirst mutating call: min {} / median {} / max {} ms ({} seen)\nPUTs meanwhile: {} acknowledged, {} failed\n",
        r.elected_ms.min,
        r.elected_ms.median,
        r.elected_ms.max,
        r.elected_ms.count,
        r.first_mutation_ms.min,
        r.first_mutation_ms.median,
        r.first_mutation_ms.max,
        r.first_mutation_ms.count,
        r.puts_acked,
        r.puts_failed
    ));
    out
}
