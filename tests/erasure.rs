//! Erasure coding end to end, against real `pocket` processes: closed
//! volumes become RS(6,3), old replicas go, overhead drops to about 1.5×;
//! any 3 of a volume's 9 OSDs can be lost and every blob still reads back
//! byte-identical; SIGKILLs of the coordinator and OSDs during encoding lose
//! nothing and leave no volume half-switched.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{assert_all_readable, signal, try_report, LocalPocket, UpOptions};
use pocket::cell_status::CellReport;
use pocket_proto::{pb, Key};
use pocket_transport::Role;
use rand::{Rng, SeedableRng};

const K: usize = 6;
const M: usize = 3;

fn small_cell() -> UpOptions {
    UpOptions {
        osds: 9,
        extent_size: "1MiB",
        extra: vec!["--max-blob-size".into(), "256KiB".into(), "--ec-data".into(), "6".into(), "--ec-parity".into(), "3".into()],
    }
}

/// The cell's state; retried for a while (the coordinator may be restarting).
async fn report(pocket: &LocalPocket) -> CellReport {
    for _ in 0..120 {
        if let Some(r) = try_report(pocket).await {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the coordinator did not answer CellStatus for a minute");
}

fn count(report: &CellReport, key: &str) -> u64 {
    report.volumes.get(key).copied().unwrap_or(0)
}

/// Volumes that were ever sealed (closing or later), replicated.
fn sealed_ever(report: &CellReport) -> u64 {
    ["closing", "closed", "encoding", "retiring", "retired"].iter().map(|s| count(report, &format!("replicated/{s}"))).sum()
}

/// Nothing in flight: every closed volume that can be encoded was.
fn settled(report: &CellReport) -> bool {
    count(report, "replicated/creating") == 0
        && count(report, "replicated/closing") == 0
        && count(report, "replicated/encoding") == 0
        && count(report, "replicated/retiring") == 0
        && count(report, "ec/building") == 0
        && (count(report, "replicated/closed") as usize) < K
}

async fn wait_settled(pocket: &LocalPocket, within: Duration) -> CellReport {
    let deadline = Instant::now() + within;
    loop {
        let r = report(pocket).await;
        if settled(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "cell did not settle: {:?}", r.volumes);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn blob(rng: &mut impl Rng) -> Bytes {
    let mut data = vec![0u8; rng.random_range(1_000..64_000)];
    rng.fill_bytes(&mut data);
    Bytes::from(data)
}

/// PUTs one blob at a time until exactly `target` volumes (a multiple of k)
/// were ever sealed, so that every one of them can be encoded.
async fn fill_until_sealed(pocket: &LocalPocket, target: u64, stored: &mut Vec<(Key, Bytes)>, rng: &mut impl Rng) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let r = report(pocket).await;
        let sealed = sealed_ever(&r);
        if sealed >= target && sealed.is_multiple_of(K as u64) {
            return;
        }
        assert!(Instant::now() < deadline, "volumes did not fill: {:?}", r.volumes);
        for _ in 0..4 {
            let data = blob(rng);
            let (key, _) = pocket.client.put(data.clone()).await.expect("put");
            stored.push((key, data));
        }
    }
}

/// Position → (OSD id, extent id) of an erasure-coded volume's shards.
type Shards = BTreeMap<u32, (u64, u64)>;

/// The shards of the erasure-coded volume holding `key`.
async fn shards_of(pocket: &LocalPocket, key: &Key) -> (u64, Shards) {
    let stat = pocket.client.stat(key).await.expect("stat");
    let placement = pocket
        .coordinator_as_operator()
        .locate_bucket(pb::LocateBucketRequest { bucket_id: stat.bucket_id })
        .await
        .expect("locate")
        .into_inner()
        .placement
        .expect("placement");
    assert_eq!(placement.data_shards as usize, K, "bucket {} is not erasure-coded", stat.bucket_id);
    let shards = placement.replicas.iter().map(|r| (r.position, (r.osd_id, r.extent_id))).collect();
    (placement.volume_id, shards)
}

/// Whether OSD `osd_id` still holds `extent_id` (asked as the coordinator would).
async fn osd_holds(pocket: &LocalPocket, osd_id: u64, extent_id: u64) -> bool {
    let run = pocket.run_info(&format!("osd-{osd_id}"));
    let tls = pocket.tls(Role::Coordinator, "cell-1");
    let name = pocket_transport::Identity::new(Role::Osd, &format!("osd-{osd_id}")).dns_name();
    let mut client = pb::osd_client::OsdClient::new(tls.channel(&run.grpc, &name).expect("channel"));
    let response = client
        .extent_status(pb::ExtentStatusRequest { extent_ids: vec![extent_id], osd_id })
        .await
        .expect("extent status")
        .into_inner();
    response.extents.first().is_some_and(|e| e.found)
}

fn hold(pocket: &LocalPocket, daemon: &str) {
    std::fs::create_dir_all(pocket.dir.join("hold")).expect("hold dir");
    std::fs::write(pocket.dir.join("hold").join(daemon), b"").expect("hold file");
}

fn release(pocket: &LocalPocket, daemon: &str) {
    let _ = std::fs::remove_file(pocket.dir.join("hold").join(daemon));
}

async fn wait_serving_again(pocket: &LocalPocket, daemon: &str, old_pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(info) = pocket_daemon::runinfo::RunInfo::read(&pocket.dir.join("run").join(format!("{daemon}.run"))) {
            if info.pid != old_pid && common::process_alive(info.pid) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{daemon} did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_volumes_are_erasure_coded_and_survive_the_loss_of_any_m_shards() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pocket = LocalPocket::start(&tmp.path().join("pocket"), small_cell()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let mut stored = Vec::new();

    // Fill until 12 volumes (two erasure-coded volumes' worth) have closed.
    fill_until_sealed(&pocket, 2 * K as u64, &mut stored, &mut rng).await;
    let r = wait_settled(&pocket, Duration::from_secs(120)).await;
    let ec_volumes = count(&r, "ec/ec");
    assert!(ec_volumes >= 2, "expected at least two erasure-coded volumes: {:?}", r.volumes);
    assert_eq!(count(&r, "replicated/closed"), 0, "{:?}", r.volumes);
    assert_eq!(count(&r, "replicated/retired"), ec_volumes * K as u64, "{:?}", r.volumes);
    let expected = (K + M) as f64 / K as f64;
    assert!(
        (r.overhead - expected).abs() <= 0.05 * expected,
        "overhead {:.3} is not within 5% of {expected:.3} (stored {}, logical {})",
        r.overhead,
        r.sealed_stored_bytes,
        r.sealed_logical_bytes
    );
    eprintln!("{} blobs; {:?}; overhead {:.3}", stored.len(), r.volumes, r.overhead);

    // The same figures for operators: `pocket cell status` (table and JSON) and /metrics.
    let status = |json: bool| {
        let mut command = std::process::Command::new(common::POCKET);
        command.args(["cell", "status", "--config"]).arg(pocket.dir.join("operator.toml"));
        if json {
            command.arg("--json");
        }
        let output = command.output().expect("run pocket cell status");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let table = status(false);
    assert!(table.contains("erasure code 6+3") && table.contains("retired"), "{table}");
    assert!(table.contains(&format!("overhead {:.3}x", r.overhead)), "{table}");
    let json: CellReport = serde_json::from_str(&status(true)).expect("status JSON");
    assert_eq!(json.volumes.get("ec/ec"), r.volumes.get("ec/ec"));
    let metrics = common::metrics(&pocket.tls(Role::Operator, "admin"), &pocket.run_info("coordinator").http).await;
    assert!(metrics.contains(&format!("pocket_coordinator_volumes{{kind=\"ec\",state=\"ec\"}} {ec_volumes}")), "{metrics}");
    assert!(metrics.contains("pocket_coordinator_storage_overhead_ratio"), "{metrics}");

    // The background jobs of every daemon (ADR 16): `pocket workers` and /workers.
    let output = std::process::Command::new(common::POCKET)
        .args(["workers", "--json", "--config"])
        .arg(pocket.dir.join("operator.toml"))
        .output()
        .expect("run pocket workers");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let daemons: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("workers JSON");
    let workers_of = |daemon: &str| -> Vec<serde_json::Value> {
        let entry = daemons.iter().find(|d| d["daemon"] == daemon).unwrap_or_else(|| panic!("{daemon} missing: {daemons:?}"));
        entry["report"]["workers"].as_array().unwrap_or_else(|| panic!("{daemon}: {entry}")).clone()
    };
    let coordinator = workers_of("coordinator");
    for name in ["maintenance", "erasure-coding"] {
        let worker = coordinator.iter().find(|w| w["name"] == name).unwrap_or_else(|| panic!("no {name}: {coordinator:?}"));
        assert!(worker["iterations"].as_u64().expect("iterations") > 0, "{worker}");
        assert_ne!(worker["state"], "error", "{worker}");
        assert!(worker["last_success_unix_ms"].as_i64().is_some(), "{worker}");
    }
    // Erasure coding ran under the coordinator's budget: a slot per build, its source bytes counted.
    let report = &daemons.iter().find(|d| d["daemon"] == "coordinator").expect("coordinator")["report"];
    let ec = report["budget"]["granted"].as_array().expect("granted").iter().find(|g| g["class"] == "erasure_coding").cloned().expect("ec class");
    assert!(ec["ops"].as_u64().expect("ops") >= ec_volumes, "{ec}");
    assert!(ec["bytes"].as_u64().expect("bytes") > 0, "{ec}");
    for osd in 1..=9 {
        let workers = workers_of(&format!("osd-{osd}"));
        assert!(workers.iter().any(|w| w["name"] == "heartbeat" && w["iterations"].as_u64() > Some(0)), "osd-{osd}: {workers:?}");
    }
    assert_eq!(workers_of("frontend"), Vec::<serde_json::Value>::new(), "the frontend runs no background job yet");
    let table = std::process::Command::new(common::POCKET)
        .args(["workers", "--config"])
        .arg(pocket.dir.join("operator.toml"))
        .output()
        .expect("run pocket workers");
    let table = String::from_utf8(table.stdout).expect("utf-8");
    assert!(table.lines().any(|l| l.starts_with("coordinator") && l.contains("erasure-coding")), "{table}");

    // Every stored blob, erasure-coded or still in an open volume, reads back.
    assert_all_readable(&pocket.client, &stored, 1, "after encoding").await;

    // The old replicas are gone from every OSD; each shard is where the layout says.
    let mut by_volume: HashMap<u64, (Shards, Vec<(Key, Bytes)>)> = HashMap::new();
    for (key, data) in &stored {
        let stat = pocket.client.stat(key).await.expect("stat");
        let locate = pocket
            .coordinator_as_operator()
            .locate_bucket(pb::LocateBucketRequest { bucket_id: stat.bucket_id })
            .await
            .expect("locate")
            .into_inner();
        if locate.volume_state != "ec" {
            continue;
        }
        let (volume_id, shards) = shards_of(&pocket, key).await;
        by_volume.entry(volume_id).or_insert_with(|| (shards, Vec::new())).1.push((*key, data.clone()));
    }
    assert_eq!(by_volume.len() as u64, ec_volumes);
    for (shards, _) in by_volume.values() {
        let ec_osds: HashSet<u64> = shards.values().map(|(osd, _)| *osd).collect();
        assert_eq!(ec_osds.len(), K + M, "shards share an OSD: {shards:?}");
        for (position, (osd, extent)) in shards {
            assert!(osd_holds(&pocket, *osd, *extent).await, "shard {position} missing on OSD {osd}");
            if (*position as usize) < K {
                // The bucket's extent lives only on its shard's OSD now.
                for other in (1..=9u64).filter(|o| o != osd) {
                    assert!(!osd_holds(&pocket, other, *extent).await, "old replica of extent {extent} left on OSD {other}");
                }
            }
        }
    }

    // Lose m shards of one volume in several ways; every blob of it reads back.
    let (shards, blobs) = by_volume.values().next().expect("an erasure-coded volume");
    let osd_at = |p: u32| shards[&p].0;
    let choices: Vec<(&str, Vec<u64>)> = vec![
        ("all parity", vec![osd_at(6), osd_at(7), osd_at(8)]),
        ("three data", vec![osd_at(0), osd_at(1), osd_at(2)]),
        ("last data and two parity", vec![osd_at(5), osd_at(6), osd_at(8)]),
        ("two data and one parity", vec![osd_at(3), osd_at(4), osd_at(7)]),
    ];
    for (what, osds) in choices {
        let mut pids = Vec::new();
        for osd in &osds {
            let daemon = format!("osd-{osd}");
            hold(&pocket, &daemon);
            let info = pocket.run_info(&daemon);
            signal(info.pid, libc::SIGKILL);
            pids.push((daemon, info.pid));
        }
        for (_, pid) in &pids {
            let deadline = Instant::now() + Duration::from_secs(10);
            while common::process_alive(*pid) {
                assert!(Instant::now() < deadline, "OSD did not die");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert_all_readable(&pocket.client, blobs, 1, what).await;
        eprintln!("{what} ({osds:?}) lost: {} blobs read back", blobs.len());
        for (daemon, pid) in &pids {
            release(&pocket, daemon);
            wait_serving_again(&pocket, daemon, *pid).await;
        }
    }
    assert_all_readable(&pocket.client, &stored, 1, "after the OSDs came back").await;
    pocket.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkills_during_encoding_lose_nothing_and_leave_no_volume_half_switched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pocket = LocalPocket::start(&tmp.path().join("pocket"), small_cell()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(47);
    let mut stored: Vec<(Key, Bytes)> = Vec::new();
    let mut failed_puts = 0;
    let mut kills = Vec::new();
    // Each round writes until a volume is being encoded, then SIGKILLs the
    // coordinator or an OSD a random 0–200 ms later.
    let mut struck_during_encoding = 0;
    for round in 0..8 {
        let mut during = None;
        for put in 0..600 {
            let data = blob(&mut rng);
            match pocket.client.put(data.clone()).await {
                Ok((key, _)) => stored.push((key, data)),
                Err(_) => failed_puts += 1,
            }
            if put % 3 == 0 {
                if let Some(r) = try_report(&pocket).await {
                    if count(&r, "ec/building") > 0 {
                        during = Some(format!("{:?}", r.volumes));
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        let victim = if round % 2 == 0 { "coordinator".to_string() } else { format!("osd-{}", rng.random_range(1..=9)) };
        pocket.kill_and_wait_restart(&victim).await;
        if during.is_some() {
            struck_during_encoding += 1;
        }
        kills.push(format!("{victim} during {}", during.unwrap_or_else(|| "no encoding seen".into())));
    }
    assert!(struck_during_encoding >= 4, "only {struck_during_encoding} of 8 kills came during encoding: {kills:?}");
    eprintln!("kills: {kills:?}; {} acked PUTs, {failed_puts} failed", stored.len());
    // Top up to a multiple of k sealed volumes, then let everything settle.
    fill_until_sealed(&pocket, 2 * K as u64, &mut stored, &mut rng).await;
    let r = wait_settled(&pocket, Duration::from_secs(240)).await;
    eprintln!("settled: {:?}, overhead {:.3}", r.volumes, r.overhead);
    for key in r.volumes.keys() {
        let state = key.as_str();
        assert!(
            ["replicated/open", "replicated/closed", "replicated/retired", "replicated/abandoned", "ec/ec", "ec/abandoned"]
                .contains(&state),
            "volume left in {state}: {:?}",
            r.volumes
        );
    }
    assert!(count(&r, "ec/ec") >= 2, "{:?}", r.volumes);
    assert_all_readable(&pocket.client, &stored, 1, "after the kills").await;
    pocket.stop().await;
}

