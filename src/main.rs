//! `pocket`: one binary for every role (`osd`, `coordinator`, `frontend`),
//! the local cell (`up`) and the client commands (`put`, `get`, `exists`, `stat`).
//! A failure prints one line per cause and exits 1.

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use pocket::runinfo::{parse_size, RunInfo};
use pocket_client::{Client, ClientConfig};
use pocket_proto::Key;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;

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
        mode: pocket::bench::Mode,
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
    },
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
    let _ = pocket::memory::disable_transparent_huge_pages();
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
            };
            pocket::up::Up::prepare(&dir, settings)?.run(shutdown_signal()).await
        }
        Command::Osd(args) => {
            let config: pocket_osd::OsdConfig = load_config(&args.config)?;
            let (listen, http, tls) = (config.listen.clone(), config.http_listen.clone(), config.tls.clone());
            serve(args, &listen, &http, &tls, |l, ready, stop| pocket_osd::run(l, config, ready, stop)).await
        }
        Command::Coordinator(args) => {
            let config: pocket_coordinator::CoordinatorConfig = load_config(&args.config)?;
            let (listen, http, tls) = (config.listen.clone(), config.http_listen.clone(), config.tls.clone());
            serve(args, &listen, &http, &tls, |l, ready, stop| pocket_coordinator::run(l, config, ready, stop)).await
        }
        Command::Frontend(args) => {
            let config: pocket_frontend::FrontendConfig = load_config(&args.config)?;
            let (listen, http, tls) = (config.listen.clone(), config.http_listen.clone(), config.tls.clone());
            serve(args, &listen, &http, &tls, |l, ready, stop| pocket_frontend::run(l, config, ready, stop)).await
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
            let options = pocket::bench::BenchOptions {
                mode,
                count,
                size_bytes: usize::try_from(size).context("size")?,
                concurrency,
                duration: duration_secs.map(std::time::Duration::from_secs),
                progress: !json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
                seed: rand::random(),
            };
            let reports = pocket::bench::run(client(&config)?, options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                print!("{}", pocket::bench::table(&reports));
            }
            if reports.iter().any(|r| r.errors > 0) {
                bail!("some operations failed; see the errors column");
            }
            Ok(())
        }
        Command::Cell { command: CellCommand::Status { config, json } } => pocket::cell_status::run(&config, json).await,
        Command::RestartBench { dir, records, record_size, extent_size, json } => {
            let options = pocket::restart_bench::RestartBenchOptions {
                dir,
                records,
                record_bytes: usize::try_from(record_size).context("record size")?,
                extent_size_bytes: extent_size,
            };
            let report = pocket::restart_bench::run(options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", pocket::restart_bench::render(&report));
            }
            Ok(())
        }
        Command::EcBench { data, parity, extent_size, stripe, record_size, json } => {
            let options = pocket::ec_bench::EcBenchOptions {
                data_shards: data,
                parity_shards: parity,
                extent_size_bytes: extent_size,
                stripe_bytes: usize::try_from(stripe).context("stripe size")?,
                record_bytes: usize::try_from(record_size).context("record size")?,
            };
            let report = pocket::ec_bench::run(options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", pocket::ec_bench::render(&report));
            }
            Ok(())
        }
        Command::Limits { dir, disk_size, config, count, small_count, replicas, json } => {
            let options = pocket::limits::LimitsOptions {
                dir,
                disk_bytes: disk_size,
                sync_every_bytes: vec![4 << 20, 64 << 20],
                hash_bytes: 1 << 30,
                rpc_bytes: 1 << 30,
                small_rpcs: 8192,
            };
            let limits = pocket::limits::measure(&options).await?;
            let figures = match config {
                Some(config) => {
                    Some(pocket::limits::bench_pocket(client(&config)?, &options.dir, count, small_count, disk_size).await?)
                }
                None => None,
            };
            let ratios = figures.as_ref().map(|f| pocket::limits::ratios(&limits, f, replicas)).unwrap_or_default();
            if json {
                let all = serde_json::json!({ "limits": limits, "pocket": figures, "ratios": ratios });
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", pocket::limits::table(&limits));
                if let Some(figures) = &figures {
                    print!("{}", pocket::limits::pattern_table(figures));
                    print!("\n{}", pocket::bench::table(&figures.bench));
                    println!("\nphase   pocket MiB/s  bound MiB/s  ratio  bound");
                    for r in &ratios {
                        println!("{:<7} {:>12.1} {:>12.1} {:>6.2}  {}", r.what, r.pocket_mib_per_sec, r.bound_mib_per_sec, r.ratio, r.bound);
                    }
                    if figures.osd_pattern.is_some() {
                        println!("(put*: the same PUTs against the disk's best single-file figure, not the OSDs' pattern)");
                    }
                }
            }
            Ok(())
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

fn load_config<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read config {}", path.display()))?;
    // The message and position only: toml's full error quotes the offending
    // line, which may hold a database password.
    toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|span| text[..span.start.min(text.len())].lines().count()).unwrap_or(0);
        anyhow::anyhow!("parse config {} (line {at}): {}", path.display(), e.message())
    })
}

/// Binds the daemon's listeners, serves `/metrics` and `/healthz`, writes the
/// run file once the daemon is ready, and runs it until SIGTERM or Ctrl-C.
async fn serve<F, Fut>(
    args: DaemonArgs,
    listen: &str,
    http_listen: &str,
    tls: &pocket_transport::TlsConfig,
    run: F,
) -> anyhow::Result<()>
where
    F: FnOnce(TcpListener, watch::Sender<bool>, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let metrics = pocket::ops::install_metrics()?;
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
    let ops = tokio::spawn(async move { pocket::ops::serve(http, &ops_tls, metrics, ops_ready, ops_shutdown).await });
    if let Some(path) = args.run_file.clone() {
        let mut ready = ready_rx.clone();
        tokio::spawn(async move {
            if ready.wait_for(|ready| *ready).await.is_ok() {
                if let Err(e) = info.write(&path) {
                    tracing::error!(error = %e, "could not write run file");
                }
            }
        });
    }
    let result = run(grpc, ready_tx, Box::pin(stopped(stop_rx))).await;
    if let Some(path) = args.run_file {
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

async fn shutdown_signal() {
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
