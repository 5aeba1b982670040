//! The OSDs' own write pattern: their group commits during a bench, read
//! from their `/metrics`, and the disk measured writing in that pattern.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use pocket_transport::Tls;
use rand::RngCore;
use serde::Serialize;

use super::{cpu_ms, cpu_ms_per_mib, mib_per_sec, Measured, OsdLikeWriter, PocketFigures, IO_BUFFER_BYTES};

/// What the OSDs of a local pocket wrote during a bench: how many took
/// appends, and how many bytes one group commit (one fdatasync) held on
/// average — read from their `pocket_osd_group_commit*` counters.
#[derive(Debug, Clone, Serialize)]
pub struct CommitPattern {
    pub osds: usize,
    pub commits: u64,
    pub appends: u64,
    pub bytes: u64,
    pub mean_commit_bytes: u64,
}

/// The disk measured in the OSDs' own pattern: `writers` files written at
/// once, each fdatasync'd every `sync_every_bytes`.
#[derive(Debug, Clone, Serialize)]
pub struct PatternFigure {
    pub pattern: CommitPattern,
    pub mib_per_sec: f64,
    /// CPU time of the writing threads (user + system) per MiB written.
    pub cpu_ms_per_mib: f64,
}

/// Per-OSD (commits, appends, bytes) counters of a pocket started by
/// `pocket up --dir cell_dir`, scraped with its operator identity. None if
/// `cell_dir` is not such a directory.
pub async fn scrape_group_commits(cell_dir: &Path) -> anyhow::Result<Option<Vec<[u64; 3]>>> {
    let operator = cell_dir.join("operator.toml");
    let Ok(text) = std::fs::read_to_string(&operator) else { return Ok(None) };
    let config: pocket_daemon::operator::OperatorConfig =
        toml::from_str(&text).with_context(|| format!("parse {}", operator.display()))?;
    let tls = Tls::load(&config.tls)?;
    let mut runs: Vec<PathBuf> = std::fs::read_dir(cell_dir.join("run"))
        .with_context(|| format!("list {}", cell_dir.join("run").display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("osd-") && name.ends_with(".run")
        })
        .collect();
    runs.sort();
    let mut counters = Vec::new();
    for run in runs {
        let info = pocket_daemon::runinfo::RunInfo::read(&run)?;
        let text = pocket_daemon::ops::https_get(&tls, &info.http, "/metrics").await?;
        let value = |name: &str| pocket_daemon::ops::metric_value(&text, name).unwrap_or(0.0) as u64;
        counters.push([
            value("pocket_osd_group_commits_total"),
            value("pocket_osd_group_commit_appends_total"),
            value("pocket_osd_group_commit_bytes_total"),
        ]);
    }
    Ok(Some(counters))
}

/// The group commits made between two scrapes of the same OSDs.
pub fn commit_pattern(before: &[[u64; 3]], after: &[[u64; 3]]) -> Option<CommitPattern> {
    if before.len() != after.len() {
        return None;
    }
    let deltas: Vec<[u64; 3]> = before
        .iter()
        .zip(after)
        .map(|(b, a)| [a[0].saturating_sub(b[0]), a[1].saturating_sub(b[1]), a[2].saturating_sub(b[2])])
        .filter(|d| d[0] > 0)
        .collect();
    let commits: u64 = deltas.iter().map(|d| d[0]).sum();
    if commits == 0 {
        return None;
    }
    let bytes: u64 = deltas.iter().map(|d| d[2]).sum();
    Some(CommitPattern {
        osds: deltas.len(),
        commits,
        appends: deltas.iter().map(|d| d[1]).sum(),
        bytes,
        mean_commit_bytes: (bytes / commits).max(4096),
    })
}

/// Writes `total_bytes` in `pattern.osds` files at once (one thread each),
/// each fdatasync'd every `pattern.mean_commit_bytes`, written as the OSDs
/// write ([`OsdLikeWriter`]): the disk's ceiling
/// for the write pattern the OSDs produced (MiB/s), and the writing threads'
/// CPU time per MiB.
pub(super) fn measure_pattern(dir: &Path, pattern: &CommitPattern, total_bytes: u64) -> anyhow::Result<Measured> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let writers = pattern.osds.max(1);
    let per_writer = (total_bytes / writers as u64).max(pattern.mean_commit_bytes);
    let commit = pattern.mean_commit_bytes as usize;
    let mut buffer = vec![0u8; commit.min(IO_BUFFER_BYTES)];
    rand::rng().fill_bytes(&mut buffer);
    let paths: Vec<PathBuf> =
        (0..writers).map(|i| dir.join(format!("pocket-limits-{}-{i}.tmp", std::process::id()))).collect();
    let barrier = std::sync::Barrier::new(writers + 1);
    let result = std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .iter()
            .map(|path| {
                let (buffer, barrier) = (&buffer, &barrier);
                scope.spawn(move || -> anyhow::Result<(u64, f64)> {
                    let file = OsdLikeWriter::create(path);
                    barrier.wait();
                    let mut file = file?;
                    let cpu_started = cpu_ms(libc::RUSAGE_THREAD);
                    let mut written = 0u64;
                    while written < per_writer {
                        let mut in_commit = 0usize;
                        while in_commit < commit {
                            let n = buffer.len().min(commit - in_commit);
                            file.write(&buffer[..n])?;
                            in_commit += n;
                        }
                        file.sync()?;
                        written += in_commit as u64;
                    }
                    Ok((written, cpu_ms(libc::RUSAGE_THREAD) - cpu_started))
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let (mut written, mut cpu) = (0u64, 0.0);
        let mut failure = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok((n, ms))) => {
                    written += n;
                    cpu += ms;
                }
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(anyhow::anyhow!("a measurement thread panicked")),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(Measured { per_sec: mib_per_sec(written, started.elapsed()), cpu_ms_per_mib: cpu_ms_per_mib(cpu, written) }),
        }
    });
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// The OSD write patterns measured during the bench, as table lines.
pub fn pattern_table(figures: &PocketFigures) -> String {
    let mut out = String::new();
    for (what, pattern) in [("4 MiB PUTs", &figures.osd_pattern), ("64 KiB PUTs", &figures.osd_pattern_small)] {
        if let Some(p) = pattern {
            out.push_str(&format!(
                "write, OSD pattern of the {what}: {} files, fdatasync every {:.0} KiB  {:>9.1}  {:>10.2}\n  ({} group commits of {:.2} appends on average)\n",
                p.pattern.osds,
                p.pattern.mean_commit_bytes as f64 / 1024.0,
                p.mib_per_sec,
                p.cpu_ms_per_mib,
                p.pattern.commits,
                p.pattern.appends as f64 / p.pattern.commits as f64
            ));
        }
    }
    out
}
