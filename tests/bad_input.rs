//! Bad input against a real frontend: each gets a clear status, nothing is
//! stored, and the daemon keeps serving.

mod common;

use bytes::Bytes;
use common::{put_chunk, put_header, LocalPocket, UpOptions};
use pocket_proto::{pb, Key};
use tonic::Code;

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
    let status = raw_put(&mut raw, vec![put_header(&[1; 31], 3), put_chunk(b"abc")]).await.expect_err("short key");
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
    let status = raw_put(&mut raw, vec![put_header(key.as_bytes(), 5), put_chunk(b"other")]).await.expect_err("mismatch");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("hashes to"), "{}", status.message());

    // A blob over the maximum (default 32 MiB), refused from its header.
    let status = raw_put(&mut raw, vec![put_header(key.as_bytes(), (32 << 20) + 1)]).await.expect_err("oversized");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("exceeds"), "{}", status.message());

    // A stream that ends early, and one that carries more than announced.
    let status = raw_put(&mut raw, vec![put_header(key.as_bytes(), data.len() as u64), put_chunk(&data[..10])])
        .await
        .expect_err("truncated");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("ended after 10"), "{}", status.message());
    let status = raw_put(&mut raw, vec![put_header(key.as_bytes(), 4), put_chunk(data)]).await.expect_err("overlong");
    assert_eq!(status.code(), Code::InvalidArgument);

    // No header, or an empty stream.
    let status = raw_put(&mut raw, vec![put_chunk(data)]).await.expect_err("no header");
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

/// One record of an `Osd.AppendBatch` stream: its header, then its bytes.
fn record(extent_id: u64, osd_id: u64, key: &Key, data: &[u8]) -> Vec<pb::AppendRequest> {
    let header = pb::AppendHeader { extent_id, key: Bytes::copy_from_slice(key.as_bytes()), length_bytes: data.len() as u64, osd_id };
    let mut messages = vec![pb::AppendRequest { part: Some(pb::append_request::Part::Header(header)) }];
    for piece in data.chunks(pocket_proto::CHUNK_SIZE_BYTES) {
        messages.push(pb::AppendRequest { part: Some(pb::append_request::Part::Chunk(Bytes::copy_from_slice(piece))) });
    }
    messages
}

/// `Osd.AppendBatch` as the frontend calls it, straight to an OSD: every
/// record is checked before any is written, the limits hold, and a good
/// batch answers each record on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osd_append_batch_checks_every_record_before_writing_any() {
    use pocket_transport::{role_dns_name, Identity, Role};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let pocket = LocalPocket::start(&dir, UpOptions { osds: 3, extent_size: "40MiB", ..Default::default() }).await;
    let frontend_tls = pocket.tls(Role::Frontend, "frontend-1");
    let coordinator_addr = pocket.run_info("coordinator").grpc;
    let mut cell = pb::coordinator_client::CoordinatorClient::new(
        frontend_tls.channel(&coordinator_addr, &role_dns_name(Role::Coordinator)).expect("channel"),
    );
    let writable = cell.writable_buckets(pb::WritableBucketsRequest {}).await.expect("writable").into_inner();
    let replica = writable.buckets[0].replicas[0].clone();
    let (extent, osd_id) = (replica.extent_id, replica.osd_id);
    let osd_name = Identity::new(Role::Osd, &format!("osd-{osd_id}")).dns_name();
    let mut osd = pb::osd_client::OsdClient::new(frontend_tls.channel(&replica.grpc_addr, &osd_name).expect("channel"))
        .max_decoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES)
        .max_encoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES);
    let (a, b) = (b"first record of the batch".to_vec(), b"second record of the batch".to_vec());
    let (key_a, key_b) = (Key::of(&a), Key::of(&b));
    let stored = |keys: Vec<Key>| {
        let mut osd = osd.clone();
        async move {
            let keys = keys.iter().map(|k| Bytes::copy_from_slice(k.as_bytes())).collect();
            osd.has(pb::HasRequest { extent_id: extent, keys, osd_id }).await.expect("has").into_inner().present
        }
    };
    let batch = |messages: Vec<pb::AppendRequest>| {
        let mut osd = osd.clone();
        async move { osd.append_batch(futures::stream::iter(messages)).await.map(|r| r.into_inner()) }
    };

    // The second record's bytes do not hash to its key: the whole call fails
    // and the first, good record is not written either.
    let mut messages = record(extent, osd_id, &key_a, &a);
    messages.extend(record(extent, osd_id, &key_b, b"not the second record"));
    let status = batch(messages).await.expect_err("a record that does not hash to its key");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("do not hash"), "{}", status.message());
    // A record meant for another OSD, a chunk before any header, an empty
    // stream, one record too many, and more bytes than a batch may carry.
    let mut messages = record(extent, osd_id, &key_a, &a);
    messages.extend(record(extent, osd_id + 100, &key_b, &b));
    assert_eq!(batch(messages).await.expect_err("wrong OSD").code(), Code::FailedPrecondition);
    let status = batch(record(extent, osd_id, &key_a, &a).split_off(1)).await.expect_err("chunk first");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(batch(vec![]).await.expect_err("empty").code(), Code::InvalidArgument);
    let tiny: Vec<Vec<u8>> = (0..=pocket_proto::APPEND_BATCH_MAX_RECORDS as u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let messages = tiny.iter().flat_map(|data| record(extent, osd_id, &Key::of(data), data)).collect();
    let status = batch(messages).await.expect_err("too many records");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most"), "{}", status.message());
    let large = vec![5u8; (pocket_proto::APPEND_BATCH_MAX_BYTES / 2) as usize + 1];
    let mut messages = record(extent, osd_id, &Key::of(&large), &large);
    let larger = [large.clone(), vec![6]].concat();
    messages.extend(record(extent, osd_id, &Key::of(&larger), &larger));
    let status = batch(messages).await.expect_err("too many bytes");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Nothing of the above was written.
    let mut checked = vec![key_a, key_b, Key::of(&large), Key::of(&larger)];
    checked.extend(tiny.iter().map(|data| Key::of(data)));
    assert!(stored(checked).await.iter().all(|present| !present), "a refused batch wrote a record");
    // A client may not call it at all.
    let client_channel = pocket.tls(Role::Client, "local").channel(&replica.grpc_addr, &osd_name).expect("channel");
    let status = pb::osd_client::OsdClient::new(client_channel)
        .append_batch(futures::stream::iter(record(extent, osd_id, &key_a, &a)))
        .await
        .expect_err("a client appending");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A good batch: each record answered on its own, in order. A record for
    // an extent this OSD lacks fails alone; a repeated key is already present.
    let mut messages = record(extent, osd_id, &key_a, &a);
    messages.extend(record(u64::MAX, osd_id, &key_b, &b));
    messages.extend(record(extent, osd_id, &key_b, &b));
    messages.extend(record(extent, osd_id, &key_a, &a));
    let results = batch(messages).await.expect("good batch").results;
    let codes: Vec<Code> = results.iter().map(|r| Code::from_i32(r.code)).collect();
    assert_eq!(codes, vec![Code::Ok, Code::NotFound, Code::Ok, Code::Ok], "{results:?}");
    assert!(!results[0].already_present && !results[2].already_present && results[3].already_present, "{results:?}");
    assert_eq!(results[3].offset, results[0].offset, "the repeat points at the first copy");
    assert_ne!(results[2].offset, results[0].offset);
    for (key, data) in [(key_a, &a), (key_b, &b)] {
        let mut stream = osd
            .read(pb::ReadRequest { extent_id: extent, key: Bytes::copy_from_slice(key.as_bytes()), osd_id })
            .await
            .expect("read")
            .into_inner();
        let mut got = Vec::new();
        while let Some(message) = stream.message().await.expect("read stream") {
            got.extend_from_slice(&message.chunk);
        }
        assert_eq!(&got, data);
    }
    pocket.stop().await;
}
