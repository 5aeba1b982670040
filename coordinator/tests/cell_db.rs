//! The cell database on SQLite and on MariaDB: the same assertions on both.

use pocket_coordinator::db::{CellDb, OsdRow, VolumeState};

/// A fresh database per test: a SQLite file, and a MariaDB database created
/// for the test (dropped afterwards). MariaDB unreachable: skipped with a
/// message, or a failure when CI=true.
async fn backends(tmp: &tempfile::TempDir) -> Vec<(String, CellDb, Option<String>)> {
    let sqlite = format!("sqlite://{}?mode=rwc", tmp.path().join("cell.db").display());
    let mut out = vec![("sqlite".to_string(), CellDb::open(&sqlite, 2).await.expect("open sqlite"), None)];
    let base = std::env::var("POCKET_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let name = format!("pocket_cell_{:016x}", rand::random::<u64>());
    match create_mysql_database(&base, &name).await {
        Ok(url) => out.push(("mariadb".to_string(), CellDb::open(&url, 2).await.expect("open mariadb"), Some(name))),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("MariaDB unreachable at {base} with CI=true: {e}"),
        Err(e) => eprintln!("SKIPPING MariaDB half: {e}"),
    }
    out
}

async fn create_mysql_database(base: &str, name: &str) -> Result<String, sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::MySqlConnection::connect(base).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let root = base.rsplit_once('/').map(|(root, _)| root).unwrap_or(base);
    Ok(format!("{root}/{name}"))
}

async fn drop_mysql_database(name: &str) {
    use sqlx::Connection;
    let base = std::env::var("POCKET_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    if let Ok(mut conn) = sqlx::MySqlConnection::connect(&base).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut conn).await;
    }
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
    for (backend, db, mysql_name) in backends(&tmp).await {
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
        assert!(counts.contains(&(VolumeState::Closing, 1)), "{backend}: {counts:?}");
        assert!(counts.contains(&(VolumeState::Creating, 1)), "{backend}: {counts:?}");
        db.close().await;
        if let Some(name) = mysql_name {
            drop_mysql_database(&name).await;
        }
    }
}

#[tokio::test]
async fn unknown_scheme_is_refused() {
    let error = CellDb::open("postgres://localhost/x", 1).await.err().expect("must fail");
    assert!(error.to_string().contains("unsupported cell database URL"), "{error}");
}
