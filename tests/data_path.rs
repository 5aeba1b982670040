//! End-to-end tests of the data path against real `pocket` processes.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{assert_all_readable, counter, random_blob, LocalPocket, UpOptions};
use pocket_proto::{pb, Key};
use pocket_transport::Role;
use rand::SeedableRng;
use tokio::sync::Semaphore;

/// PUTs in flight at once in the bulk tests.
const CONCURRENCY: usize = 8;

async fn put_all(client: &pocket_client::Client, blobs: &[Bytes]) -> Vec<Key> {
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for data in blobs {
        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
        let client = client.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let (key, _) = client.put(data).await.expect("put");
            key
        }));
    }
    let mut keys = Vec::new();
    for task in tasks {
        keys.push(task.await.expect("put task"));
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_blobs_round_trip_and_survive_a_full_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, UpOptions::default()).await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut blobs: Vec<Bytes> = (0..998).map(|_| random_blob(&mut rng, 8 << 20)).collect();
    // The extremes of the range, explicitly.
    blobs.push(Bytes::from_static(b"x"));
    blobs.push(Bytes::from(vec![7u8; 8 << 20]));
    let keys = put_all(&pocket.client, &blobs).await;
    for (key, data) in keys.iter().zip(&blobs) {
        assert_eq!(*key, Key::of(data));
    }
    let stored: Vec<(Key, Bytes)> = keys.iter().copied().zip(blobs.iter().cloned()).collect();
    assert_all_readable(&pocket.client, &stored, CONCURRENCY, "after the PUTs").await;

    // Exists and Stat agree with what was stored.
    let absent = Key::of(b"never stored");
    let exists = pocket.client.exists(&[keys[0], absent, keys[999]]).await.expect("exists");
    assert_eq!(exists, vec![true, false, true]);
    let stat = pocket.client.stat(&keys[999]).await.expect("stat");
    assert_eq!(stat.length_bytes, 8 << 20);
    // PUT of a stored key is idempotent: no new write.
    let (_, created) = pocket.client.put(blobs[3].clone()).await.expect("second put");
    assert!(!created, "a second PUT of the same blob must not write again");

    // Volumes filled up and closed while we wrote (64 MiB extents, ~1.6 GB written over R=3).
    let mut cell = pocket.coordinator_as_operator();
    let status = cell.cell_status(pb::CellStatusRequest {}).await.expect("cell status").into_inner();
    let sealed: u64 = ["replicated/closing", "replicated/closed", "replicated/encoding", "replicated/retiring", "replicated/retired"]
        .iter()
        .map(|state| status.volumes_by_state.get(*state).copied().unwrap_or(0))
        .sum();
    assert!(sealed > 0, "no volume closed: {:?}", status.volumes_by_state);
    assert_eq!(status.osds.iter().filter(|osd| osd.alive).count(), 9);

    // Most blobs here are small (log-uniform lengths: 78 % are 256 KiB or
    // less), so their appends went in Osd.AppendBatch calls (ADR 12), and
    // with 8 PUTs in flight some call carried several records.
    let (mut calls, mut records) = (0u64, 0u64);
    for osd in 1..=9 {
        let http = pocket.run_info(&format!("osd-{osd}")).http;
        let metrics = common::metrics(&pocket.tls(Role::Operator, "admin"), &http).await;
        calls += counter(&metrics, "pocket_osd_append_batches_total");
        records += counter(&metrics, "pocket_osd_append_batch_records_total");
    }
    // Distinct ones: a blob equal to one stored before is not written again
    // (short random blobs repeat).
    let small = blobs.iter().filter(|b| b.len() <= 256 << 10).map(|b| Key::of(b)).collect::<std::collections::HashSet<_>>().len() as u64;
    assert!(records >= 3 * small, "{records} batched records for {small} distinct small blobs at R = 3");
    assert!(calls < records, "{calls} AppendBatch calls carried {records} records: none carried two");

    // Every process stopped and started again on the same directory.
    pocket.stop().await;
    let pocket = LocalPocket::start(&dir, UpOptions::default()).await;
    assert_all_readable(&pocket.client, &stored, CONCURRENCY, "after a full restart").await;
    pocket.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn osd_killed_during_puts_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    // Few OSDs, so the victim holds a replica of most open buckets.
    let pocket = LocalPocket::start(&dir, UpOptions { osds: 4, extent_size: "64MiB", ..Default::default() }).await;
    let mut cell = pocket.coordinator_as_operator();

    let acked: Arc<std::sync::Mutex<Vec<(Key, Bytes)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..CONCURRENCY as u64 {
        let (client, acked, stop) = (pocket.client.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + writer);
            let mut failures = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let data = random_blob(&mut rng, 1 << 20);
                match client.put(data.clone()).await {
                    Ok((key, _)) => acked.lock().expect("lock").push((key, data)),
                    // A PUT in flight when the OSD dies may fail; it was not acknowledged.
                    Err(_) => failures += 1,
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The victim: an OSD holding a replica of a bucket being written right now.
    let writable = cell.writable_buckets(pb::WritableBucketsRequest {}).await.expect("writable").into_inner();
    let victim_id = writable.buckets[0].replicas[0].osd_id;
    let before_kill = acked.lock().expect("lock").len();
    pocket.kill_and_wait_restart(&format!("osd-{victim_id}")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failures = 0;
    for writer in writers {
        failures += writer.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(before_kill > 0, "no PUT was acknowledged before the kill");
    assert!(acked.len() > before_kill, "no PUT was acknowledged after the kill ({failures} failures)");

    // Every acknowledged key reads back through the frontend...
    assert_all_readable(&pocket.client, &acked, CONCURRENCY, "after the OSD kill").await;

    // ...and the restarted OSD itself still holds every acknowledged record
    // of the buckets it is a replica of.
    let victim_addr = pocket.run_info(&format!("osd-{victim_id}")).grpc;
    // Reading an OSD directly takes a daemon's identity: act as the frontend.
    let osd_name = pocket_transport::Identity::new(Role::Osd, &format!("osd-{victim_id}")).dns_name();
    let osd_channel = pocket.tls(Role::Frontend, "frontend-1").channel(&victim_addr, &osd_name).expect("channel");
    let mut osd = pb::osd_client::OsdClient::new(osd_channel);
    let mut placements = HashMap::new();
    let mut checked = 0;
    for (key, data) in &acked {
        let stat = pocket.client.stat(key).await.expect("stat");
        if let std::collections::hash_map::Entry::Vacant(slot) = placements.entry(stat.bucket_id) {
            let located = cell
                .locate_bucket(pb::LocateBucketRequest { bucket_id: stat.bucket_id })
                .await
                .expect("locate")
                .into_inner();
            slot.insert(located.placement.expect("placement"));
        }
        let placement = &placements[&stat.bucket_id];
        let Some(replica) = placement.replicas.iter().find(|r| r.osd_id == victim_id) else { continue };
        let mut stream = osd
            .read(pb::ReadRequest {
                extent_id: replica.extent_id,
                key: Bytes::copy_from_slice(key.as_bytes()),
                osd_id: victim_id,
            })
            .await
            .unwrap_or_else(|status| panic!("restarted OSD lost {key}: {status}"))
            .into_inner();
        let mut got = Vec::new();
        while let Some(message) = stream.message().await.expect("read stream") {
            got.extend_from_slice(&message.chunk);
        }
        assert!(got == data[..], "restarted OSD returned different bytes for {key}");
        checked += 1;
    }
    assert!(checked > 0, "the victim OSD held no acknowledged record; the test proved nothing");
    eprintln!("acked {} PUTs ({failures} failed in flight); {checked} checked on the restarted OSD", acked.len());
    pocket.stop().await;
}
