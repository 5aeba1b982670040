//! `pocket workers --config DIR/operator.toml [--json]`: the background jobs
//! of every daemon of a local pocket and their state (ADR 16), read from
//! each daemon's `/workers` on its ops endpoint. The daemons are those with
//! a run file in `DIR/run/` (what `pocket up` writes).

use std::path::{Path, PathBuf};

use anyhow::Context;
use pocket_daemon::operator::OperatorConfig;
use pocket_daemon::runinfo::RunInfo;
use pocket_transport::Tls;
use serde::Serialize;

/// One daemon's answer, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct DaemonWorkers {
    pub daemon: String,
    /// `/workers`' JSON, or null if the daemon did not answer.
    pub report: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// The run files of the pocket whose operator config is `config`.
fn run_files(config: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = config.parent().unwrap_or(Path::new(".")).join("run");
    let entries = std::fs::read_dir(&dir)
        .with_context(|| format!("list {} (pocket workers reads the run files `pocket up` writes beside the operator config)", dir.display()))?;
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "run"))
        .filter_map(|path| Some((path.file_stem()?.to_str()?.to_owned(), path)))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no daemon run files in {}", dir.display());
    Ok(files)
}

pub async fn fetch(config_path: &Path) -> anyhow::Result<Vec<DaemonWorkers>> {
    let config: OperatorConfig = pocket_daemon::load_config(config_path)?;
    let tls = Tls::load(&config.tls).context("load operator TLS material")?;
    let mut daemons = Vec::new();
    for (daemon, path) in run_files(config_path)? {
        let answer = async {
            let info = RunInfo::read(&path)?;
            let body = pocket_daemon::ops::https_get(&tls, &info.http, "/workers").await?;
            serde_json::from_str::<serde_json::Value>(&body).context("parse /workers")
        }
        .await;
        let (report, error) = match answer {
            Ok(report) => (Some(report), None),
            Err(error) => (None, Some(format!("{error:#}"))),
        };
        daemons.push(DaemonWorkers { daemon, report, error });
    }
    Ok(daemons)
}

/// Prints the workers of every daemon: a table, or JSON.
pub async fn run(config: &Path, json: bool) -> anyhow::Result<()> {
    let daemons = fetch(config).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&daemons)?);
        return Ok(());
    }
    let now_ms = pocket_proto::now_unix_ms();
    println!("{:<14} {:<16} {:<10} {:>10} {:>7}  {:<12} last error", "daemon", "worker", "state", "iterations", "errors", "last success");
    for daemon in &daemons {
        let workers = daemon.report.as_ref().and_then(|r| r["workers"].as_array());
        match (workers, &daemon.error) {
            (_, Some(error)) => println!("{:<14} (no answer: {error})", daemon.daemon),
            (Some(workers), None) if workers.is_empty() => println!("{:<14} (no background jobs)", daemon.daemon),
            (Some(workers), None) => {
                for worker in workers {
                    let last_success = match worker["last_success_unix_ms"].as_i64() {
                        Some(at) => format!("{:.1} s ago", (now_ms - at).max(0) as f64 / 1000.0),
                        None => "never".into(),
                    };
                    println!(
                        "{:<14} {:<16} {:<10} {:>10} {:>7}  {:<12} {}",
                        daemon.daemon,
                        worker["name"].as_str().unwrap_or("?"),
                        worker["state"].as_str().unwrap_or("?"),
                        worker["iterations"].as_u64().unwrap_or(0),
                        worker["errors"].as_u64().unwrap_or(0),
                        last_success,
                        worker["last_error"].as_str().unwrap_or("")
                    );
                }
            }
            (None, None) => println!("{:<14} (an answer without workers)", daemon.daemon),
        }
    }
    Ok(())
}
