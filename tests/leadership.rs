//! Coordinator high availability against real processes (issue 19, ADR 19):
//! `pocket up` runs two coordinators; one leads. A leader paused past its
//! lease is replaced, steps down when it wakes, and its generation is
//! refused by the OSDs; a leader killed is replaced within seconds; PUTs
//! never fail meanwhile.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{assert_all_readable, signal, LocalPocket, UpOptions};
use pocket_proto::{pb, Key};
use pocket_transport::Role;
use rand::{Rng, RngCore, SeedableRng};

/// Extents large enough that the open buckets do not fill while no leader
/// creates new ones (a takeover waits for the lease, and for `min_term_ms`
/// after the last one).
fn cell() -> UpOptions {
    UpOptions {
        osds: 4,
        extent_size: "64MiB",
        extra: ["--max-blob-size", "256KiB", "--no-erasure"].map(String::from).to_vec(),
    }
}

/// (leader name, generation): the newest generation any coordinator that
/// answers within 3 s reports, and the leader it names.
async fn leader(pocket: &LocalPocket) -> Option<(String, u64)> {
    let tls = pocket.tls(Role::Operator, "admin");
    let mut best: Option<(String, u64)> = None;
    for daemon in ["coordinator", "coordinator-2"] {
        let Ok(info) = pocket_daemon::runinfo::RunInfo::read(&pocket.dir.join("run").join(format!("{daemon}.run"))) else {
            continue;
        };
        let Ok(client) = pocket_rpc_client::CoordinatorClient::connect(&tls, &info.grpc) else { continue };
        let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(3), client.rpc_status()).await else { continue };
        if !status.leader.is_empty() && best.as_ref().is_none_or(|(_, g)| status.generation > *g) {
            best = Some((status.leader, status.generation));
        }
    }
    best
}

async fn wait_leader(pocket: &LocalPocket, what: &str, within: Duration, done: impl Fn(&str, u64) -> bool) -> (String, u64, Duration) {
    let started = Instant::now();
    loop {
        if let Some((name, generation)) = leader(pocket).await {
            if done(&name, generation) {
                return (name, generation, started.elapsed());
            }
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PUTs one small blob after another until stopped; counts failures.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<(Key, Bytes)>>,
}

fn start_load(pocket: &LocalPocket) -> Load {
    let (stop, failures) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let client = pocket.client.clone();
    let task = tokio::spawn({
        let (stop, failures) = (stop.clone(), failures.clone());
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut stored = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let mut data = vec![0u8; rng.random_range(1_000..60_000)];
                rng.fill_bytes(&mut data);
                let data = Bytes::from(data);
                match client.put(data.clone()).await {
                    Ok((key, _)) => stored.push((key, data)),
                    Err(error) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("PUT failed: {error}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stored
        }
    });
    Load { stop, failures, task }
}

/// A coordinator's `/metrics` gauge (None while it does not answer).
async fn gauge(pocket: &LocalPocket, daemon: &str, name: &str) -> Option<f64> {
    let addr = pocket.run_info(daemon).http;
    let page = tokio::time::timeout(
        Duration::from_secs(3),
        pocket_daemon::ops::https_get(&pocket.tls(Role::Operator, "admin"), &addr, "/metrics"),
    )
    .await
    .ok()?
    .ok()?;
    page.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `Osd.Seal` of an extent no OSD holds, as a coordinator with `generation`:
/// NOT_FOUND if the generation is admitted, FAILED_PRECONDITION if fenced.
async fn seal_as_coordinator(pocket: &LocalPocket, osd: &str, osd_id: u64, generation: u64) -> tonic::Code {
    let channel = pocket
        .tls(Role::Coordinator, "cell-1")
        .channel(&pocket.run_info(osd).grpc, &pocket_transport::role_dns_name(Role::Osd))
        .expect("channel");
    let request = pb::SealRequest { extent_id: u64::MAX - 1, osd_id, generation };
    match pb::osd_client::OsdClient::new(channel).seal(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_lost_is_replaced_its_generation_is_fenced_and_puts_never_fail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, cell()).await;
    let (first, g1, _) = wait_leader(&pocket, "a leader", Duration::from_secs(30), |_, _| true).await;
    assert!(["coordinator", "coordinator-2"].contains(&first.as_str()), "{first}");
    let standby = if first == "coordinator" { "coordinator-2" } else { "coordinator" };
    eprintln!("{first} leads at generation {g1}");
    let load = start_load(&pocket);

    // The leader freezes (SIGSTOP): the standby takes over once its lease expired.
    let frozen = pocket.run_info(&first).pid;
    signal(frozen, libc::SIGSTOP);
    let (second, g2, took) = wait_leader(&pocket, "takeover from a frozen leader", Duration::from_secs(60), |name, g| {
        name == standby && g > g1
    })
    .await;
    eprintln!("{second} leads at generation {g2}, {took:?} after the freeze");

    // The OSDs learn the new generation from heartbeats and refuse the old one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while seal_as_coordinator(&pocket, "osd-1", 1, g1).await != tonic::Code::FailedPrecondition {
        assert!(Instant::now() < deadline, "OSD 1 still admits generation {g1}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seal_as_coordinator(&pocket, "osd-1", 1, g2).await, tonic::Code::NotFound, "the current generation is admitted");

    // Woken, the old leader finds its lease gone and steps down.
    signal(frozen, libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leading = gauge(&pocket, &first, "pocket_coordinator_leader").await;
        let step_downs = gauge(&pocket, &first, "pocket_coordinator_step_downs_total{reason=\"renew_deadline\"}").await;
        if leading == Some(0.0) && step_downs.unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the woken leader did not step down: leading {leading:?}, step-downs {step_downs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(leader(&pocket).await.map(|(name, _)| name), Some(second.clone()), "one leader");

    // The new leader is killed for good: the first takes over again.
    std::fs::create_dir_all(dir.join("hold")).expect("hold dir");
    std::fs::write(dir.join("hold").join(&second), b"").expect("hold");
    signal(pocket.run_info(&second).pid, libc::SIGKILL);
    let (third, g3, took) =
        wait_leader(&pocket, "takeover from a killed leader", Duration::from_secs(60), |name, g| name == first && g > g2).await;
    eprintln!("{third} leads at generation {g3}, {took:?} after the kill");

    // Writes went on through all of it, and new volumes are placed by the new leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop.store(true, Ordering::Relaxed);
    let stored = load.task.await.expect("load task");
    let failures = load.failures.load(Ordering::Relaxed);
    eprintln!("{} PUTs acknowledged, {failures} failed", stored.len());
    assert_eq!(failures, 0, "no PUT fails while the leader changes");
    assert!(stored.len() > 50, "the load ran: {} PUTs", stored.len());
    assert_all_readable(&pocket.client, &stored, 4, "after two leader changes").await;
    drop(pocket);
}
