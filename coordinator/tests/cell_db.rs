//! The cell database on SQLite and on MariaDB: the same assertions on both.

use pocket_coordinator::db::{CellDb, OsdRow, PlannedData, RepairedCopy, VolumeKind, VolumeState};
use pocket_sql::testing::{mysql_databases_or_skip, sqlite_file_url, MysqlDatabases};

/// A fresh database per test: a SQLite file, and a MariaDB database created
/// for the test (dropped with the third element). MariaDB unreachable:
/// skipped with a message, or a failure when CI=true.
async fn backends(tmp: &tempfile::TempDir) -> Vec<(String, CellDb, Option<MysqlDatabases>)> {
    let sqlite = sqlite_file_url(&tmp.path().join("cell.db"));
    let mut out = vec![("sqlite".to_string(), CellDb::open(&sqlite, 2).await.expect("open sqlite"), None)];
    if let Some(databases) = mysql_databases_or_skip("the cell database suite", "pocket_cell", 1).await {
        let db = CellDb::open(&databases.urls()[0], 2).await.expect("open mariadb");
        out.push(("mariadb".to_string(), db, Some(databases)));
    }
    out
}

fn osd(id: u64) -> OsdRow {
    OsdRow {
        osd_id: id,
        grpc_addr: format!("127.0.0.1:{}", 7000 + id),
        failure_domain: format!("rack-{id}"),
        capacity_bytes: 1 << 40,
        used_bytes: 0,
        last_heartbeat_unix_ms: 0,
    }
}

#[tokio::test]
async fn volume_lifecycle_is_compare_and_set_on_both_backends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (backend, db, mysql) in backends(&tmp).await {
        for id in 1..=4 {
            db.upsert_osd(&osd(id)).await.expect("register");
        }
        // Registering again updates, not duplicates.
        let mut moved = osd(2);
        moved.grpc_addr = "127.0.0.1:9999".into();
        db.upsert_osd(&moved).await.expect("re-register");
        let osds = db.list_osds().await.expect("list");
        assert_eq!(osds.len(), 4, "{backend}");
        assert_eq!(osds[1].grpc_addr, "127.0.0.1:9999", "{backend}");
        assert!(db.heartbeat(3, 10, 20, 5000).await.expect("heartbeat"), "{backend}");
        assert!(db.heartbeat(4, 10, 20, 0).await.expect("heartbeat"), "{backend}");
        assert!(!db.heartbeat(99, 10, 20, 7).await.expect("heartbeat"), "{backend}: unknown OSD");
        assert_eq!(db.live_bytes_per_sec(0).await.expect("live"), 5000, "{backend}: live traffic over the cell");
        assert_eq!(db.live_bytes_per_sec(i64::MAX).await.expect("live"), 0, "{backend}: only recent beats count");

        let a = db.create_replicated_volume(&[1, 2, 3], 1 << 20).await.expect("create a");
        let b = db.create_replicated_volume(&[2, 3, 4], 1 << 20).await.expect("create b");
        assert_ne!(a.volume_id, b.volume_id, "{backend}: ids are unique");
        assert_eq!(db.volumes_in_state(VolumeState::Creating).await.expect("list").len(), 2, "{backend}");

        assert!(db.transition(a.volume_id, VolumeState::Creating, VolumeState::Open).await.expect("open"), "{backend}");
        // A repeated or stale transition does not apply.
        assert!(!db.transition(a.volume_id, VolumeState::Creating, VolumeState::Open).await.expect("again"), "{backend}");
        assert!(db.transition(a.volume_id, VolumeState::Open, VolumeState::Closing).await.expect("close"), "{backend}");
        assert!(!db.transition(a.volume_id, VolumeState::Open, VolumeState::Closing).await.expect("again"), "{backend}");

        let located = db.volume_of_bucket(a.buckets[0]).await.expect("locate").expect("bucket exists");
        assert_eq!(located.state, VolumeState::Closing, "{backend}");
        assert_eq!(located.extents.iter().map(|e| e.osd_id).collect::<Vec<_>>(), vec![1, 2, 3], "{backend}");
        db.record_sealed_size(a.volume_id, 2, 12345).await.expect("record size");
        let located = db.volume(a.volume_id).await.expect("volume").expect("exists");
        assert_eq!(located.extents[1].sealed_size_bytes, 12345, "{backend}");
        assert!(db.volume_of_bucket(987654).await.expect("locate").is_none(), "{backend}");

        let counts = db.volume_counts().await.expect("counts");
        assert!(counts.contains(&(VolumeKind::Replicated, VolumeState::Closing, 1)), "{backend}: {counts:?}");
        assert!(counts.contains(&(VolumeKind::Replicated, VolumeState::Creating, 1)), "{backend}: {counts:?}");
        db.close().await;
        // The pool is closed: its MariaDB database can go.
        drop(mysql);
    }
}

/// Two closed replicated volumes of 3 replicas each on OSDs 1..=5.
async fn two_closed_volumes(db: &CellDb) -> Vec<(u64, Vec<u64>)> {
    for id in 1..=5 {
        db.upsert_osd(&osd(id)).await.expect("register");
    }
    let mut out = Vec::new();
    for osds in [[1u64, 2, 3], [3, 4, 5]] {
        let v = db.create_replicated_volume(&osds, 1 << 20).await.expect("create");
        for (from, to) in [
            (VolumeState::Creating, VolumeState::Open),
            (VolumeState::Open, VolumeState::Closing),
            (VolumeState::Closing, VolumeState::Closed),
        ] {
            assert!(db.transition(v.volume_id, from, to).await.expect("transition"));
        }
        for osd in osds {
            db.record_sealed_size(v.volume_id, osd, 1000 + v.volume_id).await.expect("size");
        }
        out.push((v.volume_id, osds.to_vec()));
    }
    out
}

fn plan(sources: &[(u64, Vec<u64>)], targets: [u64; 2]) -> Vec<PlannedData> {
    sources
        .iter()
        .zip(targets)
        .map(|((volume_id, replicas), target)| PlannedData {
            volume_id: *volume_id,
            bucket_id: *volume_id,
            extent_id: *volume_id,
            size_bytes: 1000 + volume_id,
            target_osd_id: target,
            // Kept in place when the target holds a replica.
            source_osd_id: if replicas.contains(&target) { target } else { replicas[0] },
        })
        .collect()
}

#[tokio::test]
async fn erasure_coding_plan_switch_and_abandon_are_atomic_on_both_backends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (backend, db, mysql) in backends(&tmp).await {
        let sources = two_closed_volumes(&db).await;
        // Data of the first volume stays on OSD 1 (a replica); the second is copied to OSD 2.
        let ec = db.plan_ec_volume(&plan(&sources, [1, 2]), &[5]).await.expect("plan").expect("planned");
        assert!(db.plan_ec_volume(&plan(&sources, [1, 2]), &[5]).await.expect("plan again").is_none(), "{backend}: claimed once");
        for (id, _) in &sources {
            assert_eq!(db.volume(*id).await.expect("read").expect("exists").state, VolumeState::Encoding, "{backend}");
        }
        let volume = db.ec_volume(ec).await.expect("read").expect("ec volume");
        assert_eq!((volume.state, volume.data_count, volume.parity_count), (VolumeState::Building, 2, 1), "{backend}");
        assert_eq!(volume.layout.len(), 3, "{backend}");
        assert_eq!(volume.layout[2].bucket_id, None, "{backend}: parity has no bucket");
        assert_eq!(volume.layout[2].size_bytes, volume.layout[0].size_bytes.max(volume.layout[1].size_bytes), "{backend}");

        // Switch: buckets move, the reused replica row moves, new rows appear, sources retire.
        let hashes = [[1u8; 32], [2; 32], [3; 32]];
        assert!(db.switch_to_ec(&volume, &hashes).await.expect("switch"), "{backend}");
        assert!(!db.switch_to_ec(&volume, &hashes).await.expect("switch again"), "{backend}: switch applies once");
        let located = db.volume_of_bucket(sources[1].0).await.expect("locate").expect("bucket");
        assert_eq!(located.volume_id, ec, "{backend}");
        assert_eq!(located.kind, VolumeKind::Ec, "{backend}");
        assert_eq!(located.buckets, vec![sources[0].0, sources[1].0], "{backend}: buckets in position order");
        let shards: Vec<(u32, u64)> = located.extents.iter().map(|e| (e.position, e.osd_id)).collect();
        assert_eq!(shards, vec![(0, 1), (1, 2), (2, 5)], "{backend}");
        let recorded: Vec<Option<[u8; 32]>> = located.extents.iter().map(|e| e.blake3).collect();
        assert_eq!(recorded, hashes.map(Some).to_vec(), "{backend}: every shard's hash is recorded at the switch");
        assert!(db.shards_without_hash(10).await.expect("backfill list").is_empty(), "{backend}");
        let first = db.volume(sources[0].0).await.expect("read").expect("exists");
        assert_eq!(first.state, VolumeState::Retiring, "{backend}");
        assert_eq!(first.extents.iter().map(|e| e.osd_id).collect::<Vec<_>>(), vec![2, 3], "{backend}: OSD 1's copy moved");
        assert!(db.extent_is_live(sources[0].0, 1).await.expect("live"), "{backend}");
        let totals = db.stored_extents(&[VolumeState::Ec]).await.expect("totals");
        assert_eq!(totals.len(), 3, "{backend}");

        // Abandon needs `building`: a switched volume cannot be abandoned.
        assert!(!db.abandon_ec(&volume).await.expect("abandon"), "{backend}");
        db.close().await;
        // The pool is closed: its MariaDB database can go.
        drop(mysql);
    }
}

#[tokio::test]
async fn an_abandoned_erasure_coded_volume_returns_its_sources_to_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (backend, db, mysql) in backends(&tmp).await {
        let sources = two_closed_volumes(&db).await;
        let ec = db.plan_ec_volume(&plan(&sources, [4, 2]), &[5]).await.expect("plan").expect("planned");
        let volume = db.ec_volume(ec).await.expect("read").expect("ec volume");
        assert!(db.abandon_ec(&volume).await.expect("abandon"), "{backend}");
        assert!(!db.switch_to_ec(&volume, &[]).await.expect("switch"), "{backend}: an abandoned volume never switches");
        for (id, _) in &sources {
            let v = db.volume(*id).await.expect("read").expect("exists");
            assert_eq!(v.state, VolumeState::Closed, "{backend}");
            assert_eq!(v.extents.len(), 3, "{backend}: replicas untouched");
        }
        let garbage = db.abandoned_layout().await.expect("garbage");
        assert_eq!(garbage.len(), 3, "{backend}");
        // OSD 4 held a replica of the second volume, not of the first: its copy of the first is garbage.
        assert!(!db.extent_is_live(sources[0].0, 4).await.expect("live"), "{backend}");
        for (volume_id, row) in garbage {
            db.delete_layout_row(volume_id, row.position).await.expect("delete row");
        }
        assert!(db.abandoned_layout().await.expect("garbage").is_empty(), "{backend}");
        db.close().await;
        // The pool is closed: its MariaDB database can go.
        drop(mysql);
    }
}

#[tokio::test]
async fn a_repair_records_its_target_and_switches_once_on_both_backends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (backend, db, mysql) in backends(&tmp).await {
        let sources = two_closed_volumes(&db).await;
        let (volume_id, extent_id) = (sources[0].0, sources[0].0);
        // OSD 1's copy is lost; OSD 4 is the target. A second claim keeps the first target.
        assert_eq!(db.claim_repair_target(volume_id, extent_id, 1, 4).await.expect("claim"), 4, "{backend}");
        assert_eq!(db.claim_repair_target(volume_id, extent_id, 1, 5).await.expect("claim again"), 4, "{backend}");
        // The copy being written is named: never garbage.
        assert!(db.copy_is_named(extent_id, 4).await.expect("named"), "{backend}");
        assert!(!db.copy_is_named(extent_id, 5).await.expect("named"), "{backend}");
        // Failures count; the second releases the target (max 2), and a new one can be claimed.
        assert_eq!(db.repair_failed(extent_id, 1, "boom", 2).await.expect("fail"), None, "{backend}");
        let rows = db.repairs().await.expect("list");
        assert_eq!((rows[0].attempts, rows[0].last_error.as_deref()), (1, Some("boom")), "{backend}");
        assert_eq!(db.repair_failed(extent_id, 1, &"x".repeat(1000), 2).await.expect("fail"), Some(4), "{backend}");
        let rows = db.repairs().await.expect("list");
        assert_eq!((rows[0].target_osd_id, rows[0].attempts), (None, 0), "{backend}");
        assert_eq!(rows[0].last_error.as_ref().map(String::len), Some(255), "{backend}: errors are bounded");
        assert_eq!(db.claim_repair_target(volume_id, extent_id, 1, 5).await.expect("claim"), 5, "{backend}");

        // The switch: OSD 1's row moves to OSD 5 with the verified size; the repair row goes.
        let repaired = RepairedCopy {
            volume_id,
            state: VolumeState::Closed,
            extent_id,
            lost_osd_id: 1,
            target_osd_id: 5,
            size_bytes: 4242,
            blake3: None,
            generation: 0,
        };
        assert!(db.switch_repaired_copy(&repaired).await.expect("switch"), "{backend}");
        assert!(!db.switch_repaired_copy(&repaired).await.expect("again"), "{backend}: once");
        let volume = db.volume(volume_id).await.expect("read").expect("exists");
        let copies: Vec<(u64, u64)> = volume.extents.iter().map(|e| (e.osd_id, e.sealed_size_bytes)).collect();
        assert_eq!(copies, vec![(2, 1000 + volume_id), (3, 1000 + volume_id), (5, 4242)], "{backend}");
        assert!(db.repairs().await.expect("list").is_empty(), "{backend}");

        // A volume claimed by erasure coding meanwhile does not switch.
        let (other, _) = &sources[1];
        db.claim_repair_target(*other, *other, 3, 1).await.expect("claim");
        assert!(db.transition(*other, VolumeState::Closed, VolumeState::Encoding).await.expect("claim for EC"), "{backend}");
        let repaired = RepairedCopy {
            volume_id: *other,
            state: VolumeState::Closed,
            extent_id: *other,
            lost_osd_id: 3,
            target_osd_id: 1,
            size_bytes: 1,
            blake3: Some([7; 32]),
            generation: 0,
        };
        assert!(!db.switch_repaired_copy(&repaired).await.expect("switch"), "{backend}");
        let volume = db.volume(*other).await.expect("read").expect("exists");
        assert_eq!(volume.extents.iter().map(|e| e.osd_id).collect::<Vec<_>>(), vec![3, 4, 5], "{backend}: unchanged");
        db.drop_repair(*other, 3).await.expect("drop");
        assert!(db.repairs().await.expect("list").is_empty(), "{backend}");
        assert!(!db.copy_is_named(*other, 1).await.expect("named"), "{backend}: garbage once dropped");

        // Operator settings replace, never duplicate.
        assert_eq!(db.meta("background_bytes_per_sec").await.expect("meta"), None, "{backend}");
        db.set_meta("background_bytes_per_sec", "100").await.expect("set");
        db.set_meta("background_bytes_per_sec", "200").await.expect("set again");
        assert_eq!(db.meta("background_bytes_per_sec").await.expect("meta").as_deref(), Some("200"), "{backend}");
        db.close().await;
        drop(mysql);
    }
}

#[tokio::test]
async fn reconciliation_sees_what_names_a_copy_on_both_backends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (backend, db, mysql) in backends(&tmp).await {
        let sources = two_closed_volumes(&db).await;
        // Extent ids are volume ids here; volume 1 is on OSDs 1, 2, 3.
        let volume_id = sources[0].0;
        let extent_id = volume_id;
        // OSD 1 holds volume 1's copies: named by their rows.
        let on_1 = db.named_copies_on(1).await.expect("named");
        assert!(on_1.contains(&extent_id), "{backend}: {on_1:?}");
        let on_4 = db.named_copies_on(4).await.expect("named");
        assert!(!on_4.contains(&extent_id), "{backend}");
        // A repair target is named on its OSD before any byte moves.
        db.claim_repair_target(volume_id, extent_id, 1, 4).await.expect("claim");
        assert!(db.named_copies_on(4).await.expect("named").contains(&extent_id), "{backend}: a repair target");
        db.drop_repair(extent_id, 1).await.expect("drop");
        // Holders of a copy with what was recorded of it.
        db.record_sealed_size(extent_id, 2, 777).await.expect("size");
        db.record_extent_hash(extent_id, 2, [9; 32]).await.expect("hash");
        let holders = db.named_holders(extent_id).await.expect("holders");
        let on_2 = holders.iter().find(|h| h.osd_id == 2).expect("OSD 2 holds it");
        assert_eq!((on_2.sealed_size_bytes, on_2.blake3), (777, Some([9; 32])), "{backend}");
        assert_eq!(holders.len(), 3, "{backend}");

        // A volume abandoned while being created loses its rows: nothing names its copies.
        let abandoned = db.create_replicated_volume(&[3, 4, 5], 1 << 20).await.expect("create");
        assert_eq!(db.forget_abandoned_replicas().await.expect("forget"), 0, "{backend}: creating is not abandoned");
        assert!(db.transition(abandoned.volume_id, VolumeState::Creating, VolumeState::Abandoned).await.expect("abandon"), "{backend}");
        assert_eq!(db.forget_abandoned_replicas().await.expect("forget"), 3, "{backend}");
        let copy = abandoned.extents[0].extent_id;
        assert!(!db.copy_is_named(copy, 3).await.expect("named"), "{backend}");
        assert!(!db.named_copies_on(3).await.expect("named").contains(&copy), "{backend}");
        // Volume 1's copies are untouched.
        assert_eq!(db.volume(volume_id).await.expect("read").expect("exists").extents.len(), 3, "{backend}");

        // A published summary longer than 255 characters round-trips.
        let long = format!("{{\"levels\":\"{}\"}}", "x".repeat(4000));
        db.set_meta(pocket_coordinator::db::REPAIR_SUMMARY, &long).await.expect("publish");
        assert_eq!(db.meta(pocket_coordinator::db::REPAIR_SUMMARY).await.expect("read").as_deref(), Some(long.as_str()), "{backend}");
        db.close().await;
        drop(mysql);
    }
}

#[tokio::test]
async fn unknown_scheme_is_refused() {
    let error = CellDb::open("postgres://localhost/x", 1).await.err().expect("must fail");
    assert!(error.to_string().contains("unsupported cell database URL"), "{error}");
}

#[tokio::test]
async fn a_mariadb_url_opens_the_cell_database() {
    let Some(databases) = mysql_databases_or_skip("the cell database suite", "pocket_cell", 1).await else {
        return;
    };
    let url = databases.urls()[0].replacen("mysql:", "mariadb:", 1);
    assert!(url.starts_with("mariadb:"), "{url}");
    let db = CellDb::open(&url, 2).await.expect("open through a mariadb: URL");
    db.upsert_osd(&osd(1)).await.expect("register");
    let osds = db.list_osds().await.expect("list");
    assert_eq!(osds.len(), 1);
    assert_eq!(osds[0].grpc_addr, osd(1).grpc_addr);
    db.close().await;
}
