//! `pocket restart-bench`: how long an OSD's store takes to open again
//! after it holds many records — the restart cost that issue 5 bounds
//! (1 million records, ≤ 5 s). It fills a store in `--dir` through the real
//! append path (group commit, fdatasync, RocksDB), shuts it down cleanly and
//! times opening it again (metadata intact: no extent is scanned).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use pocket_osd::{Store, StoreOptions};
use pocket_proto::Key;
use serde::Serialize;
use tokio::sync::Semaphore;

pub struct RestartBenchOptions {
    pub dir: PathBuf,
    pub records: u64,
    pub record_bytes: usize,
    pub extent_size_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct RestartBenchReport {
    pub records: u64,
    pub record_bytes: usize,
    pub extents: u64,
    pub fill_seconds: f64,
    pub appends_per_sec: f64,
    pub reopen_seconds: f64,
    pub records_readable_after_reopen: u64,
}

/// Appends in flight while filling: enough for group commit to batch.
const FILL_CONCURRENCY: usize = 256;

pub async fn run(options: RestartBenchOptions) -> anyhow::Result<RestartBenchReport> {
    std::fs::create_dir_all(&options.dir).context("create --dir")?;
    let disk = options.dir.join("disk-0");
    if disk.exists() {
        anyhow::bail!("{} exists: point --dir at an empty directory", disk.display());
    }
    let disks = vec![disk];
    let store_options = StoreOptions::default();
    let store = {
        let disks = disks.clone();
        let store_options = store_options.clone();
        tokio::task::spawn_blocking(move || Store::open(&disks, store_options)).await??
    };
    let per_record = (options.record_bytes + pocket_format::RECORD_HEADER_LEN) as u64;
    let per_extent = ((options.extent_size_bytes - 64) / per_record).max(1);
    let extents = options.records.div_ceil(per_extent);
    for id in 1..=extents {
        store.create_extent(id, options.extent_size_bytes)?;
    }
    let progress = indicatif::ProgressBar::new(options.records);
    let limit = Arc::new(Semaphore::new(FILL_CONCURRENCY));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..options.records {
        let permit = limit.clone().acquire_owned().await?;
        let store = store.clone();
        let progress = progress.clone();
        let record_bytes = options.record_bytes;
        tasks.spawn(async move {
            let _permit = permit;
            let mut data = vec![0u8; record_bytes];
            data[..8.min(record_bytes)].copy_from_slice(&n.to_le_bytes()[..8.min(record_bytes)]);
            let data = Bytes::from(data);
            let result = store.append(1 + n / per_extent, Key::of(&data), data).await;
            progress.inc(1);
            result
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    store.shutdown();
    drop(store);

    let started = Instant::now();
    let store = tokio::task::spawn_blocking(move || Store::open(&disks, store_options)).await??;
    let reopen_seconds = started.elapsed().as_secs_f64();
    let readable = store.list_extents().iter().map(|e| e.record_count).sum();
    Ok(RestartBenchReport {
        records: options.records,
        record_bytes: options.record_bytes,
        extents,
        fill_seconds,
        appends_per_sec: options.records as f64 / fill_seconds.max(1e-9),
        reopen_seconds,
        records_readable_after_reopen: readable,
    })
}

/// `pocket restart-bench`: measures and prints the report, as a table or
/// (`json`) JSON.
pub async fn command(options: RestartBenchOptions, json: bool) -> anyhow::Result<()> {
    let report = run(options).await?;
    crate::print_report(&report, json, render)
}

pub fn render(r: &RestartBenchReport) -> String {
    format!(
        "{} records of {} B in {} extents: filled in {:.1} s ({:.0} appends/s, each durable before its ack)\n\
         store reopened in {:.2} s with {} records indexed\n",
        r.records, r.record_bytes, r.extents, r.fill_seconds, r.appends_per_sec, r.reopen_seconds, r.records_readable_after_reopen
    )
}
