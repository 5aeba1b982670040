//! The security bad-input suite against real processes: transport (mTLS),
//! identity and permissions, limits, malformed bytes. Each case gets the
//! expected status, nothing is stored, and other clients keep being served.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use common::{put_chunk, put_header, LocalPocket, UpOptions};
use pocket_proto::{pb, Key};
use pocket_transport::pki::Ca;
use pocket_transport::{role_dns_name, Identity, Role, Tls, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// Rate limit of the pocket under test: low enough to flood in a test.
const RATE_LIMIT_PER_SEC: u32 = 100;
/// Stream idle timeout of the pocket under test.
const IDLE_TIMEOUT_MS: u64 = 1_000;

/// Writes `cert`/`key` PEMs beside the pocket's real CA and loads them.
fn foreign_tls(dir: &std::path::Path, name: &str, pki_dir: &std::path::Path, cert: &str, key: &str) -> Tls {
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert).expect("write cert");
    std::fs::write(&key_path, key).expect("write key");
    Tls::load(&TlsConfig { ca: pki_dir.join("ca.pem"), cert: cert_path, key: key_path }).expect("load")
}

async fn exists_as(tls: &Tls, addr: &str, key: Key) -> Result<Vec<bool>, tonic::Status> {
    let channel = tls.channel(addr, &role_dns_name(Role::Frontend)).expect("channel");
    let mut client = pb::blob_store_client::BlobStoreClient::new(channel);
    client
        .exists(pb::ExistsRequest { keys: vec![Bytes::copy_from_slice(key.as_bytes())] })
        .await
        .map(|r| r.into_inner().exists)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn security_bad_input_suite() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let options = UpOptions {
        osds: 3,
        extent_size: "40MiB",
        extra: vec![
            "--client-rate-limit".into(),
            RATE_LIMIT_PER_SEC.to_string(),
            "--stream-idle-timeout-ms".into(),
            IDLE_TIMEOUT_MS.to_string(),
        ],
    };
    let pocket = LocalPocket::start(&dir, options).await;
    let frontend = pocket.client_config.frontend.clone();
    let pki_dir = dir.join("pki");
    let probe = Key::of(b"security probe");

    // A client that behaves keeps being served while the others misbehave.
    let good = pocket.client.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bystander = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut served = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let data = Bytes::from(format!("bystander {served}"));
                let (key, _) = good.put(data.clone()).await.expect("bystander put during the suite");
                assert_eq!(good.get(&key).await.expect("bystander get during the suite"), data);
                served += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            served
        })
    };

    // 1. Plaintext gRPC is refused.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{frontend}")).expect("uri").connect_lazy();
    let status = pb::blob_store_client::BlobStoreClient::new(plain)
        .exists(pb::ExistsRequest { keys: vec![] })
        .await
        .expect_err("plaintext must be refused");
    assert_ne!(status.code(), Code::Ok);
    // ...and so is plaintext HTTP on the ops endpoint.
    let http = pocket.run_info("frontend").http;
    let mut tcp = tokio::net::TcpStream::connect(&http).await.expect("connect");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "plaintext HTTP was served");

    // The probe helper works with a valid certificate (so its failures below mean something).
    assert_eq!(exists_as(&pocket.tls(Role::Client, "local"), &frontend, probe).await.expect("valid certificate"), vec![false]);

    // 2. A certificate from an unknown CA is refused.
    let rogue = Ca::generate().expect("rogue CA");
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = rogue
        .issue(&Identity::new(Role::Client, "local"), &["127.0.0.1"], now - time::Duration::hours(1), now + time::Duration::days(1))
        .expect("issue");
    let rogue_tls = foreign_tls(tmp.path(), "rogue", &pki_dir, &cert, &key);
    let status = exists_as(&rogue_tls, &frontend, probe).await.expect_err("unknown CA accepted");
    assert_transport_refused(&status);

    // 3. An expired certificate from the right CA is refused.
    let ca = Ca::load(&pki_dir).expect("load CA");
    let (cert, key) = ca
        .issue(&Identity::new(Role::Client, "local"), &["127.0.0.1"], now - time::Duration::days(10), now - time::Duration::days(1))
        .expect("issue");
    let expired = foreign_tls(tmp.path(), "expired", &pki_dir, &cert, &key);
    let status = exists_as(&expired, &frontend, probe).await.expect_err("expired certificate accepted");
    assert_transport_refused(&status);

    // 4. A client certificate cannot talk to an OSD or act as the coordinator's operator.
    let client_tls = pocket.tls(Role::Client, "local");
    let osd_addr = pocket.run_info("osd-1").grpc;
    let osd1_name = Identity::new(Role::Osd, "osd-1").dns_name();
    let mut osd = pb::osd_client::OsdClient::new(client_tls.channel(&osd_addr, &osd1_name).expect("channel"));
    let status = osd
        .extent_status(pb::ExtentStatusRequest { extent_ids: vec![1], osd_id: 1 })
        .await
        .expect_err("client on OSD");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let mut cell = pb::coordinator_client::CoordinatorClient::new(
        client_tls.channel(&pocket.run_info("coordinator").grpc, &role_dns_name(Role::Coordinator)).expect("channel"),
    );
    let status = cell.cell_status(pb::CellStatusRequest {}).await.expect_err("client on admin");
    assert_eq!(status.code(), Code::PermissionDenied);
    // An OSD certificate speaks only for its own OSD id.
    let osd1 = pocket.tls(Role::Osd, "osd-1");
    let mut as_osd1 = pb::coordinator_client::CoordinatorClient::new(
        osd1.channel(&pocket.run_info("coordinator").grpc, &role_dns_name(Role::Coordinator)).expect("channel"),
    );
    let status = as_osd1
        .heartbeat(pb::HeartbeatRequest { osd_id: 2, used_bytes: 0, capacity_bytes: 0, disks: Vec::new(), live_bytes_per_sec: 0 })
        .await
        .expect_err("impersonation");
    assert_eq!(status.code(), Code::PermissionDenied);
    // Impossible live traffic is refused.
    let status = as_osd1
        .heartbeat(pb::HeartbeatRequest { osd_id: 1, used_bytes: 0, capacity_bytes: 1 << 30, disks: Vec::new(), live_bytes_per_sec: u64::MAX })
        .await
        .expect_err("impossible live traffic");
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");

    // A client dialling an OSD's address while expecting the frontend (a
    // daemon of another role on a reused address) refuses the connection;
    // so does the frontend expecting OSD 2 at OSD 1's address.
    let wrong_role = pocket.tls(Role::Client, "local").channel(&osd_addr, &role_dns_name(Role::Frontend)).expect("channel");
    let status = pb::blob_store_client::BlobStoreClient::new(wrong_role)
        .exists(pb::ExistsRequest { keys: vec![] })
        .await
        .expect_err("an OSD posing as the frontend");
    assert_transport_refused(&status);
    let osd2_name = Identity::new(Role::Osd, "osd-2").dns_name();
    let wrong_osd = pocket.tls(Role::Frontend, "frontend-1").channel(&osd_addr, &osd2_name).expect("channel");
    let status = pb::osd_client::OsdClient::new(wrong_osd)
        .extent_status(pb::ExtentStatusRequest { extent_ids: vec![], osd_id: 2 })
        .await
        .expect_err("OSD 1 posing as OSD 2");
    assert_transport_refused(&status);

    // 5. A missing permission: `reader` may get but not put.
    let mut reader = pocket.blob_store_as("reader");
    let data = b"the reader may not store this";
    let status = reader
        .put(futures::stream::iter(vec![put_header(Key::of(data).as_bytes(), data.len() as u64), put_chunk(data)]))
        .await
        .expect_err("reader put");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(pocket.client.exists(&[Key::of(data)]).await.expect("exists"), vec![false]);

    // 6. An oversized batch.
    let keys = vec![Bytes::copy_from_slice(probe.as_bytes()); 10_001];
    let status = pocket.blob_store_as("local").exists(pb::ExistsRequest { keys }).await.expect_err("batch");
    assert_eq!(status.code(), Code::InvalidArgument);

    // 7. A stalled PUT stream is cut after the idle timeout, and stores nothing.
    let stalled_data = vec![9u8; 3 << 20];
    let stalled_key = Key::of(&stalled_data);
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender.send(put_header(stalled_key.as_bytes(), stalled_data.len() as u64)).await.expect("send");
    sender.send(put_chunk(&stalled_data[..1 << 20])).await.expect("send");
    let started = std::time::Instant::now();
    let status = pocket
        .blob_store_as("local")
        .put(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect_err("stalled stream");
    drop(sender);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(IDLE_TIMEOUT_MS * 10), "stall held for {:?}", started.elapsed());
    assert_eq!(pocket.client.exists(&[stalled_key]).await.expect("exists"), vec![false]);

    // 8. Malformed protobuf bytes.
    let channel = client_tls.channel(&frontend, &role_dns_name(Role::Frontend)).expect("channel");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let status = grpc
        .unary::<Bytes, Bytes, RawCodec>(
            tonic::Request::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x99])),
            http::uri::PathAndQuery::from_static("/pocket.v1.BlobStore/Stat"),
            RawCodec,
        )
        .await
        .expect_err("garbage protobuf");
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    // 9. A flood past the rate limit: `reader` fires three seconds' worth of
    // requests at once and is throttled...
    // (In waves below the per-connection stream limit, which would refuse
    // the excess streams outright.)
    let reader = pocket.blob_store_as("reader");
    let mut throttled = 0;
    for _wave in 0..6 {
        let flood = (0..(RATE_LIMIT_PER_SEC / 2)).map(|_| {
            let mut reader = reader.clone();
            async move { reader.exists(pb::ExistsRequest { keys: vec![Bytes::copy_from_slice(probe.as_bytes())] }).await }
        });
        for result in futures::future::join_all(flood).await {
            match result {
                Ok(_) => {}
                Err(status) if status.code() == Code::ResourceExhausted => throttled += 1,
                Err(status) => panic!("unexpected status in flood: {status:?}"),
            }
        }
    }
    assert!(throttled > 0, "no request of the flood was throttled");
    // ...while `local`, another identity, is not.
    assert_eq!(pocket.client.exists(&[probe]).await.expect("local during flood"), vec![false]);

    // 10. The ops endpoint serves metrics over mutual TLS to a pocket certificate.
    let body = common::metrics(&pocket.tls(Role::Operator, "admin"), &http).await;
    assert!(body.contains("pocket_frontend_rate_limited_total"), "metrics lack the rate-limit counter");
    // ...but not to a client certificate.
    let refused = pocket_daemon::ops::https_get(&pocket.tls(Role::Client, "local"), &http, "/metrics").await;
    assert!(refused.is_err(), "a client certificate read the ops endpoint: {refused:?}");

    // 11. Operator calls are audited: who, what, when, outcome.
    let status = pocket.coordinator_as_operator().cell_status(pb::CellStatusRequest {}).await.expect("operator");
    assert_eq!(status.into_inner().cell_id, 1);
    let audit = std::fs::read_to_string(dir.join("coordinator").join("audit.log")).expect("audit log");
    let line = audit.lines().rev().find(|l| l.contains("CellStatus")).expect("CellStatus audited");
    let record: serde_json::Value = serde_json::from_str(line).expect("JSON line");
    assert_eq!(record["who"], "operator:admin");
    assert_eq!(record["outcome"], "ok");
    assert!(record["unix_ms"].as_i64().expect("time") > 0);
    // A refused operator call is audited as well.
    let status = pocket
        .coordinator_as_operator()
        .report_bucket(pb::ReportBucketRequest { bucket_id: 1, problem: 1, osd_id: 1, detail: String::new() })
        .await
        .expect_err("operators may not report buckets");
    assert_eq!(status.code(), Code::PermissionDenied);
    let audit = std::fs::read_to_string(dir.join("coordinator").join("audit.log")).expect("audit log");
    let line = audit.lines().rev().find(|l| l.contains("ReportBucket")).expect("the refusal is audited");
    let record: serde_json::Value = serde_json::from_str(line).expect("JSON line");
    assert_eq!(record["who"], "operator:admin");
    assert!(record["outcome"].as_str().expect("outcome").starts_with("PermissionDenied"), "{record}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = bystander.await.expect("bystander");
    assert!(served > 5, "the well-behaved client was served only {served} times");
    pocket.stop().await;
}

/// The connection itself was refused (TLS handshake or connection closed by
/// the server), not a call answered by the service: a service-level status
/// such as PERMISSION_DENIED would mean the handshake had succeeded.
fn assert_transport_refused(status: &tonic::Status) {
    assert!(
        matches!(status.code(), Code::Unknown | Code::Unavailable | Code::Cancelled),
        "the server must refuse the connection: {status:?}"
    );
    let detail = format!("{status:?}");
    assert!(
        ["alert", "connection closed", "transport error", "invalid peer certificate"].iter().any(|m| detail.contains(m)),
        "not a transport failure: {detail}"
    );
}

/// GET `path` over mutual TLS; returns the raw response.
/// Sends and receives raw bytes as gRPC messages: malformed protobuf on the wire.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
