//! The chaos suite's short run (issue 19): `pocket chaos` against a real
//! pocket — OSDs killed, held down, wiped disks, failed disks, leader kills
//! under a PUT/GET load — ends with every acknowledged PUT intact, the
//! cell at full redundancy, and, once the held OSDs are back, converged.

mod common;

use std::process::Command;

use common::{LocalPocket, UpOptions, POCKET};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_chaos_run_loses_no_acknowledged_put() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let options = UpOptions {
        osds: 6,
        extent_size: "1MiB",
        extra: [
            "--max-blob-size",
            "256KiB",
            "--replicas",
            "2",
            "--ec-data",
            "2",
            "--ec-parity",
            "1",
            "--disks-per-osd",
            "2",
            "--osd-down-after",
            "2s",
            "--osd-out-after",
            "4s",
        ]
        .map(String::from)
        .to_vec(),
    };
    let pocket = LocalPocket::start(&dir, options).await;
    let dir_for_chaos = dir.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(POCKET)
            .args(["chaos", "--dir"])
            .arg(&dir_for_chaos)
            .args(["--faults", "12", "--seconds", "24", "--max-down", "2", "--blob-size", "32KiB"])
            .args(["--heal-timeout-secs", "180", "--seed", "19"])
            .output()
            .expect("run pocket chaos")
    })
    .await
    .expect("chaos task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(output.status.success(), "pocket chaos failed: {stdout}{stderr}");
    assert!(stdout.contains("acked PUTs lost 0"), "{stdout}");
    assert!(stdout.contains("after the last fault"), "full redundancy reached: {stdout}");
    // The held OSDs came back; their duplicates were reconciled, nothing
    // is transitional, storage is within 5% of what the volumes imply.
    assert!(stdout.contains("after the held OSDs came back"), "converged: {stdout}");
    assert!(stdout.contains("acked PUTs lost after it 0"), "nothing lost to reconciliation: {stdout}");
    drop(pocket);
}
