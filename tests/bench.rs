//! `pocket bench` against a real pocket: it runs every phase, verifies what
//! it reads, and reports figures in its JSON. (No timing is asserted: the
//! figures are the command's output, not a test's.)

mod common;

use common::{LocalPocket, UpOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_every_phase_in_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, UpOptions { osds: 3, ..Default::default() }).await;
    let config = dir.join("client.toml");
    for mode in ["all", "mixed"] {
        let output = std::process::Command::new(common::POCKET)
            .args(["bench", "--mode", mode, "--count", "24", "--size", "64KiB", "--concurrency", "4", "--json", "--config"])
            .arg(&config)
            .output()
            .expect("run pocket bench");
        assert!(output.status.success(), "bench {mode} failed: {}", String::from_utf8_lossy(&output.stderr));
        let reports: serde_json::Value = serde_json::from_slice(&output.stdout).expect("bench prints JSON");
        let phases: Vec<&str> = reports.as_array().expect("array").iter().map(|r| r["phase"].as_str().expect("phase")).collect();
        let expected: &[&str] = if mode == "all" { &["put", "get"] } else { &["mixed"] };
        assert_eq!(phases, expected);
        for report in reports.as_array().expect("array") {
            assert_eq!(report["ops"], 24, "{report}");
            assert_eq!(report["errors"], 0, "{report}");
            assert_eq!(report["bytes"], 24 * 64 * 1024, "{report}");
            assert!(report["latency"]["p99_ms"].as_f64().expect("p99") >= report["latency"]["p50_ms"].as_f64().expect("p50"));
        }
    }
    pocket.stop().await;
}
