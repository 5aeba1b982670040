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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_measure_the_machine_and_relate_pocket_to_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, UpOptions { osds: 3, ..Default::default() }).await;
    let output = std::process::Command::new(common::POCKET)
        .args(["limits", "--disk-size", "64MiB", "--count", "4", "--json", "--dir"])
        .arg(tmp.path())
        .arg("--config")
        .arg(dir.join("client.toml"))
        .output()
        .expect("run pocket limits");
    assert!(output.status.success(), "limits failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("limits prints JSON");
    let limits = &report["limits"];
    let writes = limits["write_with_fdatasync"].as_array().expect("write figures");
    assert_eq!(writes.len(), 2);
    for figure in [
        &writes[0]["mib_per_sec"],
        &writes[1]["mib_per_sec"],
        &limits["read_cold_mib_per_sec"],
        &limits["read_warm_mib_per_sec"],
        &limits["blake3_mib_per_sec_per_core"],
        &limits["rpc_4mib_mib_per_sec"],
    ] {
        assert!(figure.as_f64().expect("a number") > 0.0, "{limits}");
    }
    let ratios = report["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.iter().map(|r| r["what"].as_str().expect("what")).collect::<Vec<_>>(), ["put", "get"]);
    for ratio in ratios {
        let expected = ratio["pocket_mib_per_sec"].as_f64().expect("pocket") / ratio["bound_mib_per_sec"].as_f64().expect("bound");
        assert!((ratio["ratio"].as_f64().expect("ratio") - expected).abs() < 1e-6, "{ratio}");
    }
    // The measurement file and its PKI are gone.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("pocket-limits"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    pocket.stop().await;
}
