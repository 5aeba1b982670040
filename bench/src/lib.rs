//! pocket's measurement tools, kept out of the product: the commands that
//! measure a pocket or the machine under it, never run by a daemon.
//!
//! - `bench`: `pocket bench`, load phases through the client, HDR latency
//!   histograms, the machine's CPU per phase (`machine`: busy, idle and
//!   steal from `/proc/stat`), a table or JSON.
//! - `limits`: `pocket limits`, the machine's ceilings (disk, BLAKE3, the
//!   RPC layer through the servers' own `pocket_transport::serve` with the
//!   `Loopback` service below), the disk in the OSDs' group-commit pattern
//!   (scraped from their `/metrics`), and pocket's figures as ratios to the
//!   bound that applies.
//! - `ec_bench`: `pocket ec-bench`, the erasure-coding path beside the
//!   coding library.
//! - `restart_bench`: `pocket restart-bench`, an OSD store's reopening
//!   after many records.
//! - `chaos`, `failover_bench`, `background_bench`: `pocket chaos`,
//!   `pocket failover-bench`, `pocket background-bench`, over a running
//!   `pocket up` (faults and convergence; leader failover; what erasure
//!   coding and repair cost live traffic).
//!
//! Each command's `command` function measures and prints what `pocket`
//! prints (a table, or JSON with `--json`).

pub mod background_bench;
pub mod bench;
pub mod chaos;
pub mod ec_bench;
pub mod failover_bench;
pub mod limits;
pub mod machine;
pub mod restart_bench;

/// Prints a command's report as `pocket` does: pretty JSON with `--json`,
/// else the table `render` draws.
fn print_report<R: serde::Serialize + ?Sized>(report: &R, json: bool, render: impl FnOnce(&R) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", render(report));
    }
    Ok(())
}

/// Generated code for package `pocket.bench.v1` (`proto/loopback.proto`):
/// the sink `pocket limits` measures the RPC layer with. Not part of
/// pocket's production schema.
#[allow(clippy::all, missing_docs)]
mod loopback {
    tonic::include_proto!("pocket.bench.v1");
}
