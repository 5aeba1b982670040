//! Self-healing against real `pocket` processes (issue 19): an OSD killed
//! for good goes down, then out, and every copy it held is rebuilt on the
//! others, verified, until the cell is back at full redundancy with every
//! blob intact; the background byte rate is an operator's to set. OSDs
//! that come back after their copies were repaired are reconciled: their
//! duplicates go to trash.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{assert_all_readable, signal, try_report, wait_for, LocalPocket, UpOptions};
use pocket::cell_status::CellReport;
use pocket_proto::{pb, Key};
use pocket_transport::Role;
use rand::{Rng, RngCore, SeedableRng};

/// Five OSDs, three replicas, no erasure coding; down after 2 s of
/// silence, out after 5 s.
fn healing_cell() -> UpOptions {
    UpOptions {
        osds: 5,
        extent_size: "2MiB",
        extra: [
            "--max-blob-size",
            "512KiB",
            "--no-erasure",
            "--osd-down-after",
            "2s",
            "--osd-out-after",
            "5s",
        ]
        .map(String::from)
        .to_vec(),
    }
}


fn closed(report: &CellReport) -> u64 {
    report.volumes.get("replicated/closed").copied().unwrap_or(0)
}

async fn put_blobs(pocket: &LocalPocket, count: usize, rng: &mut impl Rng) -> Vec<(Key, Bytes)> {
    let mut stored = Vec::with_capacity(count);
    for _ in 0..count {
        let mut data = vec![0u8; rng.random_range(100_000..400_000)];
        rng.fill_bytes(&mut data);
        let data = Bytes::from(data);
        let (key, _) = pocket.client.put(data.clone()).await.expect("put");
        assert_eq!(key, Key::of(&data));
        stored.push((key, data));
    }
    stored
}

/// Copies of `kind` ("replica", "shard") repaired, from the coordinators'
/// `/metrics` (the leader's counts; a standby's are 0).
async fn repaired(pocket: &LocalPocket, kind: &str) -> u64 {
    let mut total = 0;
    for daemon in ["coordinator", "coordinator-2"] {
        let page = common::metrics(&pocket.tls(Role::Operator, "admin"), &pocket.run_info(daemon).http).await;
        total += page
            .lines()
            .filter(|line| line.starts_with("pocket_coordinator_repairs_total{"))
            .filter(|line| line.contains(&format!("kind=\"{kind}\"")) && line.contains("outcome=\"repaired\""))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_osd_killed_for_good_is_repaired_to_full_redundancy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, healing_cell()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    // About 15 MiB: several closed volumes, and two open ones.
    let mut stored = put_blobs(&pocket, 60, &mut rng).await;
    let before = wait_for(&pocket, "volumes closed", Duration::from_secs(60), |r| closed(r) >= 4).await;
    assert!(before.redundancy.full(), "a healthy cell is at full redundancy: {:#?}", before.redundancy);

    // OSD 1 dies and stays dead.
    std::fs::create_dir_all(dir.join("hold")).expect("hold dir");
    std::fs::write(dir.join("hold").join("osd-1"), b"").expect("hold osd-1");
    signal(pocket.run_info("osd-1").pid, libc::SIGKILL);
    let killed = Instant::now();
    let down = wait_for(&pocket, "OSD 1 down", Duration::from_secs(30), |r| {
        r.osds.iter().any(|o| o.osd_id == 1 && o.health != "up")
    })
    .await;
    eprintln!("OSD 1 {} after {:?}", down.osds[0].health, killed.elapsed());

    // Writes go on meanwhile, to the four OSDs left.
    stored.extend(put_blobs(&pocket, 10, &mut rng).await);

    let healed = wait_for(&pocket, "full redundancy", Duration::from_secs(180), |r| {
        r.osds.iter().any(|o| o.osd_id == 1 && o.health == "out") && r.redundancy.full() && r.redundancy.repaired_total > 0
    })
    .await;
    assert!(repaired(&pocket, "replica").await > 0, "replicas were repaired");
    eprintln!(
        "full redundancy {:?} after the kill: {} copies repaired ({} bytes); {:?}",
        killed.elapsed(),
        healed.redundancy.repaired_total,
        healed.redundancy.repaired_bytes_total,
        healed.redundancy.extents_by_missing
    );
    // No volume waits in a transitional state, and no copy is left on OSD 1
    // (a copy there would count as missing).
    assert_eq!(healed.volumes.get("replicated/closing").copied().unwrap_or(0), 0, "{:?}", healed.volumes);
    assert!(healed.redundancy.extents_by_missing.keys().all(|missing| *missing == 0), "{:?}", healed.redundancy);
    let status = pocket.coordinator_as_operator().cell_status(pb::CellStatusRequest {}).await.expect("status").into_inner();
    assert!(status.osds.iter().any(|o| o.osd_id == 1 && o.health == "out" && !o.alive));

    // Every blob reads back, from the copies left and the repaired ones.
    assert_all_readable(&pocket.client, &stored, 4, "after repair").await;
    // A second OSD lost now: the repaired copies carry the data.
    let repaired_first = healed.redundancy.repaired_total;
    std::fs::write(dir.join("hold").join("osd-2"), b"").expect("hold osd-2");
    signal(pocket.run_info("osd-2").pid, libc::SIGKILL);
    let healed = wait_for(&pocket, "full redundancy after a second loss", Duration::from_secs(180), |r| {
        r.osds.iter().any(|o| o.osd_id == 2 && o.health == "out") && r.redundancy.full()
    })
    .await;
    assert!(healed.redundancy.repaired_total > repaired_first, "the second loss was repaired too");
    assert_all_readable(&pocket.client, &stored, 4, "after a second repair").await;

    // Both come back with their data intact: every copy they hold was
    // repaired elsewhere, so nothing names them. Reconciliation moves them
    // to their OSDs' trash (after the repaired copies verify), and storage
    // returns to what three replicas imply.
    let extent_files = |n: u32| std::fs::read_dir(dir.join(format!("osd-{n}/disk-0/extents"))).map(|d| d.count()).unwrap_or(0);
    let trash_files = |n: u32| std::fs::read_dir(dir.join(format!("osd-{n}/disk-0/trash"))).map(|d| d.count()).unwrap_or(0);
    let held_copies = extent_files(1) + extent_files(2);
    assert!(held_copies > 0, "the OSDs that were out still hold their copies");
    std::fs::remove_file(dir.join("hold").join("osd-1")).expect("release osd-1");
    std::fs::remove_file(dir.join("hold").join("osd-2")).expect("release osd-2");
    let back = Instant::now();
    // Their duplicates are in their trash (the delay is a day here: moved,
    // not unlinked), and nothing unnamed is left.
    let reconciled = wait_for(&pocket, "duplicates reconciled", Duration::from_secs(120), |r| {
        r.osds.iter().all(|o| o.health == "up")
            && trash_files(1) > 0
            && trash_files(2) > 0
            && r.unnamed_copies == 0
            && r.redundancy.full()
    })
    .await;
    eprintln!(
        "{} copies reconciled {:?} after the OSDs came back; overhead {:.3}x, implied {:.3}x",
        reconciled.reconciled_copies,
        back.elapsed(),
        reconciled.overhead,
        reconciled.implied_overhead
    );
    assert!(
        reconciled.overhead <= reconciled.implied_overhead * 1.05 && reconciled.overhead >= reconciled.implied_overhead * 0.95,
        "storage back to what the volumes imply: {:.3}x against {:.3}x",
        reconciled.overhead,
        reconciled.implied_overhead
    );
    assert!(reconciled.reconciled_copies >= (trash_files(1) + trash_files(2)) as u64, "reconciliation moved them");
    assert!(extent_files(1) + extent_files(2) < held_copies, "their duplicates left the OSDs' extents");
    assert_all_readable(&pocket.client, &stored, 4, "after reconciliation").await;
    drop(pocket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_background_rate_is_an_operators_to_set_and_survives_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, healing_cell()).await;
    let mut coordinator = pocket.coordinator_as_operator();
    // Below the floor: refused, nothing changes.
    let err = coordinator
        .set_background_rate(pb::SetBackgroundRateRequest { bytes_per_sec: 5, automatic: false })
        .await
        .expect_err("5 bytes/s is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let report = try_report(&pocket).await.expect("report");
    assert_eq!(report.redundancy.background_bytes_per_sec, 32 << 20, "the default until set");
    // A frontend may not set it.
    let channel = pocket
        .tls(Role::Frontend, "frontend-1")
        .channel(&pocket.run_info("coordinator").grpc, &pocket_transport::role_dns_name(Role::Coordinator))
        .expect("channel");
    let err = pb::coordinator_client::CoordinatorClient::new(channel)
        .set_background_rate(pb::SetBackgroundRateRequest { bytes_per_sec: 64 << 20, automatic: false })
        .await
        .expect_err("frontends are refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

    // Through the CLI, as an operator would.
    let output = std::process::Command::new(common::POCKET)
        .args(["cell", "background-rate", "--config"])
        .arg(dir.join("operator.toml"))
        .arg("40MiB")
        .output()
        .expect("run pocket cell background-rate");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("41943040 bytes/s"), "{}", String::from_utf8_lossy(&output.stdout));
    let report = try_report(&pocket).await.expect("report");
    assert_eq!(report.redundancy.background_bytes_per_sec, 40 << 20);

    // Kept in the cell database: a restarted coordinator applies it.
    pocket.kill_and_wait_restart("coordinator").await;
    let report = wait_for(&pocket, "coordinator back", Duration::from_secs(60), |_| true).await;
    assert_eq!(report.redundancy.background_bytes_per_sec, 40 << 20);
    let audit = std::fs::read_to_string(dir.join("coordinator").join("audit.log")).expect("audit log");
    assert!(audit.contains("SetBackgroundRate bytes_per_sec=41943040"), "the change is audited");

    // `unlimited` lifts it.
    let output = std::process::Command::new(common::POCKET)
        .args(["cell", "background-rate", "--config"])
        .arg(dir.join("operator.toml"))
        .arg("unlimited")
        .output()
        .expect("run pocket cell background-rate");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(try_report(&pocket).await.expect("report").redundancy.background_bytes_per_sec, 0);
    // `auto` returns to the configured rates: paced under live traffic only.
    let output = std::process::Command::new(common::POCKET)
        .args(["cell", "background-rate", "--config"])
        .arg(dir.join("operator.toml"))
        .arg("auto")
        .output()
        .expect("run pocket cell background-rate");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = try_report(&pocket).await.expect("report");
    assert!(report.redundancy.background_automatic, "{:?}", report.redundancy);
    assert_eq!(report.redundancy.background_bytes_per_sec, 32 << 20);
    // The cell is idle: nothing paces background work now.
    let idle = wait_for(&pocket, "the idle rate in force", Duration::from_secs(30), |r| {
        r.redundancy.background_automatic && r.redundancy.background_rate_in_force == 0
    })
    .await;
    assert_eq!(idle.redundancy.live_bytes_per_sec, 0, "{:?}", idle.redundancy);
    pocket.stop().await;
}

/// Erasure-coded volumes: a lost shard, data or parity, is rebuilt from k
/// others, checked against its recorded BLAKE3, and switched in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_shards_of_erasure_coded_volumes_are_rebuilt_from_the_others() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let options = UpOptions {
        osds: 5,
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
            "--osd-down-after",
            "2s",
            "--osd-out-after",
            "5s",
        ]
        .map(String::from)
        .to_vec(),
    };
    let pocket = LocalPocket::start(&dir, options).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut stored = Vec::new();
    for _ in 0..80 {
        let mut data = vec![0u8; rng.random_range(20_000..120_000)];
        rng.fill_bytes(&mut data);
        let data = Bytes::from(data);
        let (key, _) = pocket.client.put(data.clone()).await.expect("put");
        stored.push((key, data));
    }
    let before = wait_for(&pocket, "volumes erasure-coded", Duration::from_secs(120), |r| {
        r.volumes.get("ec/ec").copied().unwrap_or(0) >= 2
            && r.volumes.get("replicated/closed").copied().unwrap_or(0) < 2
            && r.redundancy.full()
    })
    .await;
    eprintln!("before: {:?}", before.volumes);

    std::fs::create_dir_all(dir.join("hold")).expect("hold dir");
    std::fs::write(dir.join("hold").join("osd-2"), b"").expect("hold osd-2");
    signal(pocket.run_info("osd-2").pid, libc::SIGKILL);
    let killed = Instant::now();
    let healed = wait_for(&pocket, "full redundancy", Duration::from_secs(180), |r| {
        r.osds.iter().any(|o| o.osd_id == 2 && o.health == "out") && r.redundancy.full()
    })
    .await;
    eprintln!(
        "full redundancy {:?} after the kill: {} copies repaired ({} bytes); {:?}",
        killed.elapsed(),
        healed.redundancy.repaired_total,
        healed.redundancy.repaired_bytes_total,
        healed.volumes
    );
    let status = pocket.coordinator_as_operator().cell_status(pb::CellStatusRequest {}).await.expect("status").into_inner();
    let levels = status.repair.expect("repair status").levels;
    assert!(repaired(&pocket, "shard").await > 0, "shards were rebuilt");
    assert!(levels.iter().all(|level| level.missing == 0 || level.extents == 0), "{levels:?}");
    assert_all_readable(&pocket.client, &stored, 4, "after shards were rebuilt").await;
    drop(pocket);
}

/// An operator's client of every coordinator of the pocket.
fn operator_client(pocket: &LocalPocket) -> pocket_rpc_client::CoordinatorClient {
    let text = std::fs::read_to_string(pocket.dir.join("operator.toml")).expect("operator.toml");
    let config: pocket_daemon::operator::OperatorConfig = toml::from_str(&text).expect("parse operator.toml");
    let tls = pocket_transport::Tls::load(&config.tls).expect("TLS");
    pocket_rpc_client::CoordinatorClient::connect_any(&tls, &config.coordinator_addrs()).expect("client")
}

/// The leading coordinator dies in the middle of a repair: the new leader
/// resumes it (from the `repairs` rows) and the cell reaches full redundancy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_goes_on_when_the_leader_dies_in_the_middle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, healing_cell()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let stored = put_blobs(&pocket, 60, &mut rng).await;
    wait_for(&pocket, "volumes closed", Duration::from_secs(60), |r| closed(r) >= 4).await;
    // Repair at the floor rate, 1 MiB/s, so that it is still running when the leader dies.
    let mut coordinator = pocket.coordinator_as_operator();
    coordinator
        .set_background_rate(pb::SetBackgroundRateRequest { bytes_per_sec: 1 << 20, automatic: false })
        .await
        .expect("slow the background down");

    std::fs::create_dir_all(dir.join("hold")).expect("hold dir");
    std::fs::write(dir.join("hold").join("osd-1"), b"").expect("hold osd-1");
    signal(pocket.run_info("osd-1").pid, libc::SIGKILL);
    let repairing = wait_for(&pocket, "repair under way", Duration::from_secs(60), |r| {
        r.redundancy.repairs_in_flight > 0 && r.redundancy.repaired_bytes_total > 0
    })
    .await;
    eprintln!("repairing: {:?}", repairing.redundancy);

    // The leader dies for good.
    let leader = operator_client(&pocket).rpc_status().await.expect("status").leader;
    assert!(["coordinator", "coordinator-2"].contains(&leader.as_str()), "{leader}");
    let leader = leader.as_str();
    std::fs::write(dir.join("hold").join(leader), b"").expect("hold the leader");
    signal(pocket.run_info(leader).pid, libc::SIGKILL);
    let killed = Instant::now();
    // The new leader finishes the repair (the rate, kept in the database, is
    // lifted now to keep the test short).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lifted = operator_client(&pocket).rpc_set_background_rate(0).await;
        if lifted.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no coordinator took the rate change");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let healed = wait_for(&pocket, "full redundancy under the new leader", Duration::from_secs(120), |r| {
        r.osds.iter().any(|o| o.osd_id == 1 && o.health == "out") && r.redundancy.full() && r.redundancy.repaired_total > 0
    })
    .await;
    eprintln!("full redundancy {:?} after the leader died: {:?}", killed.elapsed(), healed.redundancy);
    assert_all_readable(&pocket.client, &stored, 4, "after the leader died mid-repair").await;
    drop(pocket);
}
