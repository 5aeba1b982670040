//! The cell database on SQLite and on MariaDB: the same assertions on both.

use pocket_coordinator::db::{CellDb, OsdRow, PlannedData, VolumeKind, VolumeState};
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
        assert!(db.heartbeat(3, 10, 20).await.expect("heartbeat"), "{backend}");
        assert!(!db.heartbeat(99, 10, 20).await.expect("heartbeat"), "{backend}: unknown OSD");

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
        assert!(db.switch_to_ec(&volume).await.expect("switch"), "{backend}");
        assert!(!db.switch_to_ec(&volume).await.expect("switch again"), "{backend}: switch applies once");
        let located = db.volume_of_bucket(sources[1].0).await.expect("locate").expect("bucket");
        assert_eq!(located.volume_id, ec, "{backend}");
        assert_eq!(located.kind, VolumeKind::Ec, "{backend}");
        assert_eq!(located.buckets, vec![sources[0].0, sources[1].0], "{backend}: buckets in position order");
        let shards: Vec<(u32, u64)> = located.extents.iter().map(|e| (e.position, e.osd_id)).collect();
        assert_eq!(shards, vec![(0, 1), (1, 2), (2, 5)], "{backend}");
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
        assert!(!db.switch_to_ec(&volume).await.expect("switch"), "{backend}: an abandoned volume never switches");
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
