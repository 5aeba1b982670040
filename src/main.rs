//! `pocket`: one binary for every role (`osd`, `coordinator`, `frontend`),
//! the local cell (`up`), the client commands (`put`, `get`, `exists`,
//! `stat`), the operator's `cell status` and the measurement commands
//! (`bench`, `limits`, `ec-bench`, `restart-bench`). This file is the flags
//! and the dispatch: daemons run through `pocket_daemon::serve`, the
//! measurement commands are `pocket_bench`'s, the rest this crate's library.
//! A failure prints one line per cause and exits 1.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use pocket_client::{Client, ClientConfig};
use pocket_daemon::runinfo::{parse_duration, parse_size};
use pocket_proto::Key;

/// Every role of the binary allocates through mimalloc (ADR 7).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "pocket", version, about = "An immutable, content-addressed blob store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole local cell (coordinator, OSDs, frontend) with data under --dir.
    Up {
        /// Directory holding the pocket's data, configs and logs.
        #[arg(long, default_value = "pocket-data")]
        dir: PathBuf,
        /// Number of OSD processes (first run; later runs may only add).
        #[arg(long, default_value_t = 9)]
        osds: u32,
        /// Extent size at which volumes close, e.g. 64MiB (first run only).
        #[arg(long, default_value = "256MiB", value_parser = parse_size)]
        extent_size: u64,
        /// Replicas per open volume (first run only).
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// Largest blob accepted (first run only).
        #[arg(long, default_value = "32MiB", value_parser = parse_size)]
        max_blob_size: u64,
        /// Requests per second (and burst) each client may make.
        #[arg(long, default_value_t = 2000)]
        client_rate_limit: u32,
        /// Longest silence tolerated inside a PUT stream or from a GET reader, in ms.
        #[arg(long, default_value_t = 10_000)]
        stream_idle_timeout_ms: u64,
        /// Data extents (k) per erasure-coded volume (first run only).
        #[arg(long, default_value_t = 6)]
        ec_data: u32,
        /// Parity extents (m) per erasure-coded volume (first run only).
        #[arg(long, default_value_t = 3)]
        ec_parity: u32,
        /// An OSD silent this long is down: its open volumes close (e.g. 10s).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        osd_down_after: std::time::Duration,
        /// An OSD silent this long is out: its copies are repaired elsewhere
        /// (minutes in production, seconds in tests).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        osd_out_after: std::time::Duration,
        /// Keep closed volumes replicated (no erasure coding).
        #[arg(long)]
        no_erasure: bool,
        /// Coordinator processes: one leads, the others stand by and take
        /// over within seconds if it dies.
        #[arg(long, default_value_t = 2)]
        coordinators: u32,
        /// Disk directories per OSD (first run only).
        #[arg(long, default_value_t = 1)]
        disks_per_osd: u32,
        /// Tests only: a file DIR/osd-N/disk-K.inject-eio makes that disk's
        /// reads and appends fail with EIO.
        #[arg(long, hide = true)]
        fault_injection: bool,
        /// How long an OSD keeps a deleted extent in its trash, where an
        /// operator can still restore it, before purging it (e.g. 1d, 0s).
        #[arg(long, default_value = "1d", value_parser = parse_duration)]
        trash_delay: std::time::Duration,
        /// Bytes per second of background work (erasure coding, repair)
        /// each OSD serves, beside the coordinator's own rate (e.g. 64MiB;
        /// 0: no limit). Live traffic is never paced.
        #[arg(long, default_value = "0", value_parser = parse_size)]
        osd_background_rate: u64,
    },
    /// Run an OSD daemon.
    Osd(DaemonArgs),
    /// Run a cell coordinator.
    Coordinator(DaemonArgs),
    /// Run a frontend (the public BlobStore service).
    Frontend(DaemonArgs),
    /// Store files (or standard input); prints each one's key.
    ///
    /// One file, or `-`, prints the bare key (64 hex characters); several,
    /// or a directory with --recursive, print `KEY  PATH` lines (as b3sum
    /// and sha256sum do) and a summary on standard error. Files the pocket
    /// already holds are not sent again. A file that fails is reported and
    /// the others carry on; the exit status is 1 if any failed.
    Put {
        /// Files to store; `-` reads standard input (held in memory, at
        /// most 32 MiB).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Store the regular files under each directory given. Symbolic
        /// links and special files found there are skipped (with a note),
        /// never followed; a symbolic link given as an argument is followed.
        #[arg(short, long)]
        recursive: bool,
        /// Files hashed, and files uploaded, at once.
        #[arg(long, default_value_t = pocket::transfer::DEFAULT_PUT_CONCURRENCY,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=pocket::transfer::MAX_PUT_CONCURRENCY as u64))]
        concurrency: usize,
        /// No progress bar, notes or summary (errors are still printed).
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, env = "POCKET_CONFIG", default_value = "pocket-data/client.toml")]
        config: PathBuf,
    },
    /// Fetch a blob to a file (-o) or standard output, checked against its key.
    ///
    /// A file is written under a temporary name beside it and renamed into
    /// place only once complete and checked: on failure nothing is left
    /// behind. Standard output gets the blob only once it has been checked
    /// whole.
    Get {
        /// The blob's key (64 hex characters).
        key: String,
        /// The file to write (`-`: standard output, as without -o).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// No progress bar (errors are still printed).
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, env = "POCKET_CONFIG", default_value = "pocket-data/client.toml")]
        config: PathBuf,
    },
    /// Print, for each key, whether it is stored. Exits 1 if any is missing.
    Exists {
        #[arg(required = true)]
        keys: Vec<String>,
        #[arg(long, env = "POCKET_CONFIG", default_value = "pocket-data/client.toml")]
        config: PathBuf,
    },
    /// Load a running pocket: PUT, GET (every byte verified) or mixed; prints
    /// MiB/s, ops/s and latency percentiles per phase.
    Bench {
        #[arg(long, value_enum, default_value = "all")]
        mode: pocket_bench::bench::Mode,
        /// Operations per phase (ignored with --duration-secs).
        #[arg(long, default_value_t = 256)]
        count: usize,
        /// Blob size, e.g. 4MiB or 64KiB.
        #[arg(long, default_value = "4MiB", value_parser = parse_size)]
        size: u64,
        /// Operations in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Run each measured phase for this many seconds instead of --count operations.
        #[arg(long)]
        duration_secs: Option<u64>,
        /// Print JSON instead of a table (and no progress bar).
        #[arg(long)]
        json: bool,
        #[arg(long, env = "POCKET_CONFIG", default_value = "pocket-data/client.toml")]
        config: PathBuf,
    },
    /// Measure the machine's own ceilings on --dir's disk (write with
    /// fdatasync, read, BLAKE3 per core, the RPC layer); with --config, also
    /// bench the running pocket (4 MiB, 8 in flight) and print its ratios.
    Limits {
        /// A directory on the disk the OSDs use (files are written and
        /// removed there). With a `pocket up` directory, the OSDs' group
        /// commits during the bench are read from their /metrics and the
        /// disk is measured in that same pattern.
        #[arg(long, default_value = "pocket-data")]
        dir: PathBuf,
        /// Bytes written and read back by the disk measurements.
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        disk_size: u64,
        /// A running pocket's client config: bench it and report ratios.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Blobs per phase of that bench.
        #[arg(long, default_value_t = 128)]
        count: usize,
        /// 64 KiB PUTs of that bench.
        #[arg(long, default_value_t = 3000)]
        small_count: usize,
        /// The pocket's replication factor (PUT is bounded by write bandwidth / R).
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        #[arg(long)]
        json: bool,
    },
    /// The background jobs of every daemon of a local pocket and their
    /// state (busy, idle, throttled, error), from each daemon's /workers.
    Workers {
        /// Operator config; the daemons are those with run files in the
        /// `run/` directory beside it (as `pocket up` writes them).
        #[arg(long, default_value = "pocket-data/operator.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Operator commands against a cell's coordinator.
    Cell {
        #[command(subcommand)]
        command: CellCommand,
    },
    /// Measure erasure-coding throughput: the encode and reconstruct paths
    /// beside the coding library on the same data (in memory).
    EcBench {
        #[arg(long, default_value_t = 6)]
        data: usize,
        #[arg(long, default_value_t = 3)]
        parity: usize,
        /// Size of each data extent.
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        extent_size: u64,
        /// Bytes of each shard per encoding step (the coordinator's stripe_bytes).
        #[arg(long, default_value = "1MiB", value_parser = parse_size)]
        stripe: u64,
        /// Size of each record in the extents.
        #[arg(long, default_value = "4MiB", value_parser = parse_size)]
        record_size: u64,
        #[arg(long)]
        json: bool,
    },
    /// Measure an OSD store's restart: fill --dir with many records through
    /// the append path, then time reopening it.
    RestartBench {
        /// An empty directory on the disk to measure.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value = "64", value_parser = parse_size)]
        record_size: u64,
        #[arg(long, default_value = "256MiB", value_parser = parse_size)]
        extent_size: u64,
        #[arg(long)]
        json: bool,
    },
    /// Inject faults into a running `pocket up --dir DIR` under a PUT/GET
    /// load (OSD kills, OSDs held down, wiped and failed disks, leader
    /// kills), then check that every acknowledged PUT reads back and the
    /// cell returns to full redundancy. One summary line.
    Chaos {
        #[arg(long, default_value = "pocket-data")]
        dir: PathBuf,
        #[arg(long, default_value_t = 20)]
        faults: u32,
        /// Seconds the faults are spread over.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// OSDs held down at once at most (default: OSDs beyond k + m); held
        /// OSDs come back (osd_return) once their copies are repaired.
        #[arg(long)]
        max_down: Option<u32>,
        #[arg(long, default_value = "64KiB", value_parser = parse_size)]
        blob_size: u64,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Seconds to wait for full redundancy after the last fault.
        #[arg(long, default_value_t = 300)]
        heal_timeout_secs: u64,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Measure coordinator failover over a running `pocket up --dir DIR`:
    /// SIGKILL the leader --kills times under a PUT load; time until a new
    /// leader is elected and until its first mutating call to an OSD.
    FailoverBench {
        #[arg(long, default_value = "pocket-data")]
        dir: PathBuf,
        #[arg(long, default_value_t = 10)]
        kills: u32,
        /// Seconds between kills (more than the anti-flap term, 10 s).
        #[arg(long, default_value_t = 15)]
        interval_secs: u64,
        /// Size of each PUT of the background load.
        #[arg(long, default_value = "256KiB", value_parser = parse_size)]
        blob_size: u64,
        #[arg(long)]
        json: bool,
    },
    /// Measure what background work costs live traffic over a running
    /// `pocket up --dir DIR`: 4 MiB GETs while closed volumes are
    /// erasure-coded against the same with none, and (--repair) PUTs while
    /// a killed OSD's copies are repaired against the same with none.
    BackgroundBench {
        #[arg(long, default_value = "pocket-data")]
        dir: PathBuf,
        /// Longest measured phase, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value = "4MiB", value_parser = parse_size)]
        blob_size: u64,
        /// The coordinator's background rate while encoding and repairing
        /// (e.g. 64MiB, unlimited); auto: the configured rate under live
        /// traffic, none while idle.
        #[arg(long, default_value = "auto", value_parser = parse_rate)]
        rate: RateArg,
        /// Also measure PUTs during a repair (kills and holds the last OSD;
        /// run the pocket with a short --osd-out-after).
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a stored blob's length, cell, bucket and creation time (JSON).
    Stat {
        key: String,
        #[arg(long, env = "POCKET_CONFIG", default_value = "pocket-data/client.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum CellCommand {
    /// Volumes by kind and state, storage overhead, OSDs.
    Status {
        /// Operator config: coordinator address and an operator certificate.
        #[arg(long, default_value = "pocket-data/operator.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// Refresh until interrupted, with a bar of the repair to full redundancy.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
        interval: f64,
        /// With --watch: exit once every extent is at full redundancy.
        #[arg(long, requires = "watch")]
        until_full: bool,
    },
    /// Set the byte rate repair and erasure coding share, now and across
    /// restarts: a size per second (e.g. 200MiB) or `unlimited`, which holds
    /// whatever the traffic; or `auto`, the configured rates: paced while
    /// the cell has live traffic (32 MiB/s by default), not while it is idle.
    BackgroundRate {
        #[arg(long, default_value = "pocket-data/operator.toml")]
        config: PathBuf,
        #[arg(value_parser = parse_rate)]
        rate: RateArg,
    },
}

/// Seconds between refreshes: 0.1 to 3600.
fn parse_interval(text: &str) -> Result<f64, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("not a number of seconds: {text:?}"))?;
    if !(0.1..=3600.0).contains(&seconds) {
        return Err("the interval must be between 0.1 and 3600 seconds".into());
    }
    Ok(seconds)
}

/// A byte rate: a size (per second) or `unlimited` (0).
/// A background rate: `auto`, or bytes per second (`unlimited`: 0).
#[derive(Debug, Clone, Copy)]
struct RateArg(Option<u64>);

fn parse_rate(text: &str) -> Result<RateArg, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(RateArg(None));
    }
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(RateArg(Some(0)));
    }
    parse_size(text).map(|rate| RateArg(Some(rate)))
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// The daemon's TOML configuration.
    #[arg(long)]
    config: PathBuf,
    /// Where to write the bound addresses and pid once serving.
    #[arg(long)]
    run_file: Option<PathBuf>,
}

/// Exit status after an interrupt (SIGINT or SIGTERM), as shells report a
/// process that SIGINT ended: 128 + 2.
const EXIT_INTERRUPTED: i32 = 130;

/// Runs the command; on failure prints the error, one line per cause
/// (`error: ...`, then `  caused by: ...`), and exits 1 (130 if interrupted).
fn main() {
    // Before the runtime and the daemons allocate (ADR 9).
    let _ = pocket_daemon::memory::disable_transparent_huge_pages();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new().context("start tokio runtime") {
        Ok(runtime) => runtime,
        Err(error) => fail(error),
    };
    if let Err(error) = runtime.block_on(dispatch(cli.command)) {
        // Exits with the runtime still up: dropping it would wait for a
        // blocking read of standard input that an interrupt left behind.
        fail(error);
    }
}

/// Prints `error` one line per cause and exits 1 (130 if interrupted).
fn fail(error: anyhow::Error) -> ! {
    eprint!("{}", pocket::transfer::render_error(&error));
    let interrupted = error.downcast_ref::<pocket::transfer::Interrupted>().is_some();
    std::process::exit(if interrupted { EXIT_INTERRUPTED } else { 1 })
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            dir,
            osds,
            extent_size,
            replicas,
            max_blob_size,
            client_rate_limit,
            stream_idle_timeout_ms,
            ec_data,
            ec_parity,
            osd_down_after,
            osd_out_after,
            no_erasure,
            coordinators,
            disks_per_osd,
            fault_injection,
            trash_delay,
            osd_background_rate,
        } => {
            let settings = pocket::up::UpSettings {
                osds,
                extent_size_bytes: extent_size,
                replication_factor: replicas,
                max_blob_size_bytes: max_blob_size,
                coordinator_port: 0,
                frontend_port: 0,
                client_rate_limit_per_sec: client_rate_limit,
                stream_idle_timeout_ms,
                ec_data_shards: ec_data,
                ec_parity_shards: ec_parity,
                osd_down_after_ms: osd_down_after.as_millis() as u64,
                osd_out_after_ms: osd_out_after.as_millis() as u64,
                erasure: !no_erasure,
                coordinators,
                disks_per_osd,
                fault_injection,
                trash_delay_ms: trash_delay.as_millis() as u64,
                osd_background_bytes_per_sec: osd_background_rate,
                standby_coordinator_ports: Vec::new(),
            };
            pocket::up::Up::prepare(&dir, settings)?.run(pocket_daemon::shutdown_signal()).await
        }
        Command::Osd(args) => {
            let config: pocket_osd::OsdConfig = pocket_daemon::load_config(&args.config)?;
            let (listen, http, tls) = (config.listen.clone(), config.http_listen.clone(), config.tls.clone());
            pocket_daemon::serve(args.run_file, &listen, &http, &tls, |l, ready, stop| pocket_osd::run(l, config, ready, stop)).await
        }
        Command::Coordinator(args) => {
            let config: pocket_coordinator::CoordinatorConfig = pocket_daemon::load_config(&args.config)?;
            let (listen, http, tls) = (config.listen.clone(), config.http_listen.clone(), config.tls.clone());
            pocket_daemon::serve(args.run_file, &listen, &http, &tls, |l, ready, stop| pocket_coordinator::run(l, config, ready, stop)).await
        }
        Command::Frontend(args) => {
            let config: pocket_frontend::FrontendConfig = pocket_daemon::load_config(&args.config)?;
            let (listen, http, tls) = (config.listen.clone(), config.http_listen.clone(), config.tls.clone());
            pocket_daemon::serve(args.run_file, &listen, &http, &tls, |l, ready, stop| pocket_frontend::run(l, config, ready, stop)).await
        }
        Command::Put { paths, recursive, concurrency, quiet, config } => {
            let client = client(&config)?;
            let options = pocket::transfer::PutOptions { recursive, concurrency, quiet };
            let summary = pocket::transfer::interruptible(pocket::transfer::put(&client, &paths, &options)).await?;
            if summary.failed > 0 {
                // Each failure was printed where it happened.
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Get { key, output, quiet, config } => {
            let key = parse_key(&key)?;
            let client = client(&config)?;
            let get = pocket::transfer::get(&client, &key, output.as_deref(), quiet);
            pocket::transfer::interruptible(async { get.await.with_context(|| format!("get {key}")) }).await
        }
        Command::Exists { keys, config } => {
            let keys = keys.iter().map(|k| parse_key(k)).collect::<anyhow::Result<Vec<_>>>()?;
            let found = client(&config)?.exists(&keys).await.context("exists")?;
            for (key, present) in keys.iter().zip(&found) {
                println!("{key} {}", if *present { "present" } else { "missing" });
            }
            if found.iter().all(|present| *present) {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Bench { mode, count, size, concurrency, duration_secs, json, config } => {
            let options = pocket_bench::bench::BenchOptions {
                mode,
                count,
                size_bytes: usize::try_from(size).context("size")?,
                concurrency,
                duration: duration_secs.map(std::time::Duration::from_secs),
                progress: !json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
                seed: rand::random(),
            };
            pocket_bench::bench::command(client(&config)?, options, json).await
        }
        Command::Cell { command: CellCommand::Status { config, json, watch, interval, until_full } } => {
            let options = pocket::cell_status::StatusOptions {
                json,
                watch,
                interval: std::time::Duration::from_secs_f64(interval),
                until_full,
            };
            pocket::cell_status::run(&config, options).await
        }
        Command::Cell { command: CellCommand::BackgroundRate { config, rate } } => {
            pocket::cell_status::set_background_rate(&config, rate.0).await
        }
        Command::Workers { config, json } => pocket::workers::run(&config, json).await,
        Command::Chaos { dir, faults, seconds, max_down, blob_size, concurrency, heal_timeout_secs, seed, json } => {
            let options = pocket_bench::chaos::ChaosOptions {
                dir,
                faults,
                seconds,
                max_down,
                blob_bytes: usize::try_from(blob_size).context("blob size")?,
                concurrency,
                heal_timeout: std::time::Duration::from_secs(heal_timeout_secs),
                seed,
            };
            pocket_bench::chaos::command(options, json).await
        }
        Command::BackgroundBench { dir, seconds, concurrency, blob_size, rate, repair, json } => {
            let options = pocket_bench::background_bench::BackgroundBenchOptions {
                dir,
                seconds,
                concurrency,
                blob_bytes: blob_size as usize,
                rate_bytes_per_sec: rate.0,
                repair,
            };
            pocket_bench::background_bench::command(options, json).await
        }
        Command::FailoverBench { dir, kills, interval_secs, blob_size, json } => {
            let options = pocket_bench::failover_bench::FailoverBenchOptions {
                dir,
                kills,
                interval: std::time::Duration::from_secs(interval_secs),
                blob_bytes: usize::try_from(blob_size).context("blob size")?,
            };
            pocket_bench::failover_bench::command(options, json).await
        }
        Command::RestartBench { dir, records, record_size, extent_size, json } => {
            let options = pocket_bench::restart_bench::RestartBenchOptions {
                dir,
                records,
                record_bytes: usize::try_from(record_size).context("record size")?,
                extent_size_bytes: extent_size,
            };
            pocket_bench::restart_bench::command(options, json).await
        }
        Command::EcBench { data, parity, extent_size, stripe, record_size, json } => {
            let options = pocket_bench::ec_bench::EcBenchOptions {
                data_shards: data,
                parity_shards: parity,
                extent_size_bytes: extent_size,
                stripe_bytes: usize::try_from(stripe).context("stripe size")?,
                record_bytes: usize::try_from(record_size).context("record size")?,
            };
            pocket_bench::ec_bench::command(options, json).await
        }
        Command::Limits { dir, disk_size, config, count, small_count, replicas, json } => {
            let options = pocket_bench::limits::LimitsOptions::new(dir, disk_size);
            let pocket = config.map(|config| pocket_bench::limits::PocketBench { config, count, small_count, replicas });
            pocket_bench::limits::command(&options, pocket, json).await
        }
        Command::Stat { key, config } => {
            let key = parse_key(&key)?;
            let info = client(&config)?.stat(&key).await.with_context(|| format!("stat {key}"))?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
    }
}

fn parse_key(text: &str) -> anyhow::Result<Key> {
    text.parse().map_err(|e| anyhow::anyhow!("{text:?} is not a key: {e}"))
}

fn client(config: &Path) -> anyhow::Result<Client> {
    let config = ClientConfig::load(config)?;
    Ok(Client::connect(&config)?)
}
