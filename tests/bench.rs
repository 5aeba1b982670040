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
            // The machine's CPU during the phase, from /proc/stat: shares that add up to 1.
            let cpu = &report["machine_cpu"];
            let share = |what: &str| cpu[what].as_f64().unwrap_or_else(|| panic!("machine_cpu.{what} in {report}"));
            assert!((share("busy") + share("idle") + share("steal") - 1.0).abs() < 1e-9, "{report}");
            assert!(share("busy") > 0.0, "the bench itself ran: {report}");
        }
    }
    pocket.stop().await;
}

/// Runs `pocket limits --json` with `args` against the pocket in `dir`
/// (also its `--dir`); asserts it succeeded; returns its report and stderr.
fn run_limits<const N: usize>(dir: &std::path::Path, args: [&str; N]) -> (serde_json::Value, String) {
    let output = std::process::Command::new(common::POCKET)
        .arg("limits")
        .args(args)
        .arg("--json")
        .arg("--dir")
        .arg(dir)
        .arg("--config")
        .arg(dir.join("client.toml"))
        .output()
        .expect("run pocket limits");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "limits failed: {stderr}");
    (serde_json::from_slice(&output.stdout).expect("limits prints JSON"), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_measure_the_machine_and_relate_pocket_to_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, UpOptions { osds: 3, ..Default::default() }).await;
    let (report, _) = run_limits(&dir, ["--disk-size", "64MiB", "--count", "4", "--small-count", "20"]);
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
        &limits["rpc_64kib_ops_per_sec"],
        // What each costs in CPU time: the CPU bound adds these up.
        &writes[0]["cpu_ms_per_mib"],
        &writes[1]["cpu_ms_per_mib"],
        &limits["rpc_4mib_cpu_ms_per_mib"],
        &limits["rpc_64kib_cpu_ms_per_mib"],
        &limits["read_cold_cpu_ms_per_mib"],
    ] {
        assert!(figure.as_f64().expect("a number") > 0.0, "{limits}");
    }
    // Given the `pocket up` directory, limits read the OSDs' group commits
    // during the bench and measured the disk in that pattern: 4 PUTs at
    // R = 3 are at least 12 appends, on at most the cell's 3 OSDs.
    let pattern = &report["pocket"]["osd_pattern"];
    let appends = pattern["pattern"]["appends"].as_u64().expect("appends");
    let commits = pattern["pattern"]["commits"].as_u64().expect("commits");
    let osds = pattern["pattern"]["osds"].as_u64().expect("osds");
    assert!(appends >= 12 && (1..=appends).contains(&commits) && (1..=3).contains(&osds), "{pattern}");
    let mean = pattern["pattern"]["mean_commit_bytes"].as_u64().expect("mean");
    assert_eq!(mean, pattern["pattern"]["bytes"].as_u64().expect("bytes") / commits, "{pattern}");
    assert!(mean >= 4 << 20, "every append was a 4 MiB blob: {pattern}");
    assert!(pattern["mib_per_sec"].as_f64().expect("pattern figure") > 0.0, "{pattern}");
    // The writers' CPU time (the kernel counts it in nanoseconds): writing
    // and syncing megabytes is never free.
    assert!(pattern["cpu_ms_per_mib"].as_f64().expect("pattern CPU figure") > 0.0, "{pattern}");
    // The 64 KiB PUTs: 20 of them at R = 3, each append 64 KiB.
    let small = &report["pocket"]["osd_pattern_small"]["pattern"];
    assert!(small["appends"].as_u64().expect("appends") >= 60, "{small}");
    assert!(small["mean_commit_bytes"].as_u64().expect("mean") >= 64 << 10, "{small}");
    let phases: Vec<_> = report["pocket"]["bench"].as_array().expect("bench").iter().map(|r| r["phase"].clone()).collect();
    assert_eq!(phases, ["put", "get", "get-warm", "put64k"]);
    let ratios = report["ratios"].as_array().expect("ratios");
    let rows: Vec<_> = ratios.iter().map(|r| r["what"].as_str().expect("what")).collect();
    assert_eq!(rows, ["put", "put*", "get", "get-warm", "put64k"]);
    for ratio in ratios {
        let expected = ratio["pocket_mib_per_sec"].as_f64().expect("pocket") / ratio["bound_mib_per_sec"].as_f64().expect("bound");
        assert!((ratio["ratio"].as_f64().expect("ratio") - expected).abs() < 1e-6, "{ratio}");
    }
    // An OSD whose counters cannot be read (here a stale run file of an OSD
    // that is gone) costs the pattern figure, not the run.
    std::fs::write(dir.join("run").join("osd-99.run"), "grpc = \"127.0.0.1:1\"\nhttp = \"127.0.0.1:1\"\npid = 1\n")
        .expect("write stale run file");
    let (report, stderr) = run_limits(&dir, ["--disk-size", "16MiB", "--count", "2", "--small-count", "4"]);
    assert!(stderr.contains("could not read the OSDs' group-commit counters"), "{stderr}");
    assert!(report["pocket"]["osd_pattern"].is_null(), "{report}");
    let rows: Vec<_> = report["ratios"].as_array().expect("ratios").iter().map(|r| r["what"].clone()).collect();
    assert_eq!(rows, ["put", "get", "get-warm", "put64k"]);
    std::fs::remove_file(dir.join("run").join("osd-99.run")).expect("remove stale run file");
    // The measurement file and its PKI are gone.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("pocket-limits"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    pocket.stop().await;
}
