//! One disk failing inside a live OSD, and a disk wiped while its OSD was
//! down, against real processes (issue 19): the disk's copies are repaired
//! on other OSDs while the OSD's other disk keeps serving, until the cell is
//! back at full redundancy with every blob intact.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{assert_all_readable, signal, try_report, wait_for, LocalPocket, UpOptions};
use pocket::cell_status::CellReport;
use pocket_proto::Key;
use rand::{Rng, SeedableRng};

/// Four OSDs of two disks each, three replicas, no erasure coding, the
/// test-only EIO hook on.
fn cell() -> UpOptions {
    UpOptions {
        osds: 4,
        extent_size: "2MiB",
        extra: ["--max-blob-size", "512KiB", "--no-erasure", "--disks-per-osd", "2", "--fault-injection"]
            .map(String::from)
            .to_vec(),
    }
}

fn failed_disks(report: &CellReport, osd_id: u64) -> u32 {
    report.osds.iter().find(|o| o.osd_id == osd_id).map_or(0, |o| o.failed_disks)
}

fn up(report: &CellReport, osd_id: u64) -> bool {
    report.osds.iter().any(|o| o.osd_id == osd_id && o.health == "up")
}

async fn put_blobs(pocket: &LocalPocket, count: usize, rng: &mut impl Rng) -> Vec<(Key, Bytes)> {
    let mut stored = Vec::with_capacity(count);
    for _ in 0..count {
        let mut data = vec![0u8; rng.random_range(50_000..300_000)];
        rng.fill_bytes(&mut data);
        let data = Bytes::from(data);
        let (key, _) = pocket.client.put(data.clone()).await.expect("put");
        stored.push((key, data));
    }
    stored
}

/// Waits for full redundancy with more copies repaired than `before`.
async fn healed(pocket: &LocalPocket, what: &str, before: u64) -> CellReport {
    let report = wait_for(pocket, what, Duration::from_secs(120), |r| r.redundancy.full() && r.redundancy.repaired_total > before).await;
    eprintln!("{what}: {} copies repaired in all; {:?}", report.redundancy.repaired_total, report.redundancy.extents_by_missing);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_disk_inside_a_live_osd_and_a_wiped_disk_are_repaired_elsewhere() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, cell()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let mut stored = put_blobs(&pocket, 60, &mut rng).await;
    wait_for(&pocket, "volumes closed", Duration::from_secs(60), |r| {
        r.volumes.get("replicated/closed").copied().unwrap_or(0) >= 4
    })
    .await;

    // 1. A disk's directory is removed behind its live OSD's back.
    std::fs::remove_dir_all(dir.join("osd-1").join("disk-1")).expect("remove disk");
    let report = wait_for(&pocket, "disk failed", Duration::from_secs(30), |r| failed_disks(r, 1) == 1).await;
    assert!(up(&report, 1), "the OSD stays up with its other disk");
    let report = healed(&pocket, "removed disk repaired", 0).await;
    assert!(up(&report, 1));
    assert_all_readable(&pocket.client, &stored, 4, "after a removed disk").await;

    // 2. A disk returns I/O errors (test-only hook); reads find it out.
    let before = report.redundancy.repaired_total;
    std::fs::write(dir.join("osd-2").join("disk-0.inject-eio"), b"").expect("inject");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // GETs try replicas in turn: some land on the faulty disk.
        assert_all_readable(&pocket.client, &stored, 4, "while a disk returns EIO").await;
        if try_report(&pocket).await.is_some_and(|r| failed_disks(&r, 2) == 1) {
            break;
        }
        // Writes land there too.
        stored.extend(put_blobs(&pocket, 5, &mut rng).await);
        assert!(Instant::now() < deadline, "the disk returning EIO was not failed");
    }
    let report = healed(&pocket, "disk with I/O errors repaired", before).await;
    assert_all_readable(&pocket.client, &stored, 4, "after a disk with I/O errors").await;

    // 3. A disk wiped while its OSD is down: the OSD comes back with a new,
    //    empty disk under the old path; the old disk's copies are lost.
    let before = report.redundancy.repaired_total;
    std::fs::create_dir_all(dir.join("hold")).expect("hold dir");
    std::fs::write(dir.join("hold").join("osd-3"), b"").expect("hold");
    signal(pocket.run_info("osd-3").pid, libc::SIGKILL);
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::remove_dir_all(dir.join("osd-3").join("disk-0")).expect("wipe");
    std::fs::remove_file(dir.join("hold").join("osd-3")).expect("release");
    let report = wait_for(&pocket, "wiped disk lost", Duration::from_secs(60), |r| failed_disks(r, 3) == 1 && up(r, 3)).await;
    assert!(up(&report, 3));
    healed(&pocket, "wiped disk repaired", before).await;
    assert_all_readable(&pocket.client, &stored, 4, "after a wiped disk").await;
    drop(pocket);
}
