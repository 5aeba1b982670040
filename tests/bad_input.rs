//! Bad input against a real frontend: each gets a clear status, nothing is
//! stored, and the daemon keeps serving.

mod common;

use bytes::Bytes;
use common::{LocalPocket, UpOptions};
use pocket_proto::{pb, Key};
use tonic::Code;

fn header(key: &[u8], length_bytes: u64) -> pb::PutRequest {
    pb::PutRequest {
        part: Some(pb::put_request::Part::Header(pb::PutHeader { key: Bytes::copy_from_slice(key), length_bytes })),
    }
}

fn chunk(data: &[u8]) -> pb::PutRequest {
    pb::PutRequest { part: Some(pb::put_request::Part::Chunk(Bytes::copy_from_slice(data))) }
}

async fn raw_put(
    client: &mut pb::blob_store_client::BlobStoreClient<tonic::transport::Channel>,
    messages: Vec<pb::PutRequest>,
) -> Result<pb::PutResponse, tonic::Status> {
    client.put(futures::stream::iter(messages)).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, UpOptions { osds: 3, extent_size: "40MiB", ..Default::default() }).await;
    let mut raw = pocket.blob_store_as("local");
    let data = b"some bytes that are stored nowhere";
    let key = Key::of(data);

    // A key that is not 32 bytes, on every call that takes one.
    let status = raw_put(&mut raw, vec![header(&[1; 31], 3), chunk(b"abc")]).await.expect_err("short key");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = raw.stat(pb::StatRequest { key: Bytes::from_static(&[1; 33]) }).await.expect_err("long key");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = raw
        .get(pb::GetRequest { key: Bytes::new(), offset: 0, length: 0 })
        .await
        .expect_err("empty key");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = raw.exists(pb::ExistsRequest { keys: vec![Bytes::from_static(b"short")] }).await.expect_err("exists");
    assert_eq!(status.code(), Code::InvalidArgument);

    // Content whose hash is not the key.
    let status = raw_put(&mut raw, vec![header(key.as_bytes(), 5), chunk(b"other")]).await.expect_err("mismatch");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("hashes to"), "{}", status.message());

    // A blob over the maximum (default 32 MiB), refused from its header.
    let status = raw_put(&mut raw, vec![header(key.as_bytes(), (32 << 20) + 1)]).await.expect_err("oversized");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("exceeds"), "{}", status.message());

    // A stream that ends early, and one that carries more than announced.
    let status = raw_put(&mut raw, vec![header(key.as_bytes(), data.len() as u64), chunk(&data[..10])])
        .await
        .expect_err("truncated");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("ended after 10"), "{}", status.message());
    let status = raw_put(&mut raw, vec![header(key.as_bytes(), 4), chunk(data)]).await.expect_err("overlong");
    assert_eq!(status.code(), Code::InvalidArgument);

    // No header, or an empty stream.
    let status = raw_put(&mut raw, vec![chunk(data)]).await.expect_err("no header");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = raw_put(&mut raw, vec![]).await.expect_err("empty");
    assert_eq!(status.code(), Code::InvalidArgument);

    // An unknown key.
    let status = pocket.client.stat(&key).await.expect_err("unknown key");
    assert!(matches!(status, pocket_client::ClientError::Rpc(ref s) if s.code() == Code::NotFound), "{status:?}");
    let status = raw
        .get(pb::GetRequest { key: Bytes::copy_from_slice(key.as_bytes()), offset: 0, length: 0 })
        .await
        .expect_err("get unknown");
    assert_eq!(status.code(), Code::NotFound);

    // Nothing of the above was stored...
    assert_eq!(pocket.client.exists(&[key]).await.expect("exists"), vec![false]);
    // ...and the daemon still serves: the same blob, sent properly, is stored.
    let (stored, created) = pocket.client.put(Bytes::from_static(data)).await.expect("good put");
    assert_eq!(stored, key);
    assert!(created);
    assert_eq!(pocket.client.get(&key).await.expect("get"), Bytes::from_static(data));

    // A range read, and a range past the end.
    let mut out = Vec::new();
    pocket.client.get_range_into(&key, 5, 5, &mut out).await.expect("range");
    assert_eq!(out, data[5..10]);
    let status = raw
        .get(pb::GetRequest { key: Bytes::copy_from_slice(key.as_bytes()), offset: 1000, length: 0 })
        .await
        .expect_err("offset past end");
    assert_eq!(status.code(), Code::OutOfRange);
    pocket.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_put_get_exists_stat_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, UpOptions { osds: 3, extent_size: "40MiB", ..Default::default() }).await;
    let config = dir.join("client.toml");
    let input = tmp.path().join("input.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&input, &data).expect("write input");

    let run = |args: &[&str]| {
        std::process::Command::new(common::POCKET)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run pocket")
    };
    let put = run(&["put", input.to_str().expect("utf-8 path")]);
    assert!(put.status.success(), "put failed: {}", String::from_utf8_lossy(&put.stderr));
    let key = String::from_utf8(put.stdout).expect("utf-8").trim().to_string();
    assert_eq!(key.len(), 64);
    assert_eq!(key, Key::of(&data).to_hex());

    let output = tmp.path().join("output.bin");
    let get = run(&["get", &key, "-o", output.to_str().expect("utf-8 path")]);
    assert!(get.status.success(), "get failed: {}", String::from_utf8_lossy(&get.stderr));
    assert!(std::fs::read(&output).expect("read output") == data);

    let missing = Key::of(b"missing").to_hex();
    let exists = run(&["exists", &key, &missing]);
    assert_eq!(exists.status.code(), Some(1), "a missing key makes exists exit 1");
    let text = String::from_utf8(exists.stdout).expect("utf-8");
    assert!(text.contains(&format!("{key} present")) && text.contains(&format!("{missing} missing")), "{text}");

    let stat = run(&["stat", &key]);
    assert!(stat.status.success());
    let info: serde_json::Value = serde_json::from_slice(&stat.stdout).expect("stat prints JSON");
    assert_eq!(info["length_bytes"], 3_000_000);

    let bad = run(&["get", "not-a-key"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a key"));
    pocket.stop().await;
}
