//! Response streams against a real `pocket up` (issue 17, ADR 15): a client
//! that opens thousands of GETs and reads none of them holds no more of the
//! frontend's memory than its byte share, its streams end non-OK at the
//! idle timeout, and other clients are served all the while; a reader that
//! stalls past the idle timeout gets a non-OK status, seen by a raw gRPC
//! client that counts no bytes itself.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{LocalPocket, UpOptions};
use pocket_proto::{pb, Key};
use pocket_transport::{role_dns_name, Role};
use tonic::transport::Channel;
use tonic::Code;

/// The frontend's idle timeout in these tests (`--stream-idle-timeout-ms`).
const IDLE_MS: u64 = 2_000;
/// GETs the hostile client opens.
const HOSTILE_GETS: usize = 2_000;
/// Connections it spreads them over: under the frontend's 64 streams per
/// connection, so the server, not HTTP/2, decides who is refused.
const HOSTILE_CONNECTIONS: usize = 40;
/// The frontend's defaults (`FrontendConfig`): a client's in-flight cap and byte share.
const IN_FLIGHT_CAP: usize = 256;
const CLIENT_SHARE_BYTES: u64 = 128 << 20;
/// What the frontend's RSS may grow by beyond the hostile client's byte
/// share: its 40 connections (TLS state, 64 KiB read-ahead each), HTTP/2
/// state of 2,000 streams, the requests refused along the way, each GET's
/// blob as read from an OSD until it is encoded for the client, and what
/// the allocator keeps of the first wave of streams while the second wave
/// (those that waited for the share) allocates. Measured: 43 to 56 MiB in
/// five runs (59 to 77 MiB in four runs with 256 KiB send pieces).
const FIXED_OVERHEAD_BYTES: u64 = 96 << 20;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).expect("value").parse().expect("KiB");
    kib * 1024
}

/// A BlobStore client as `client:NAME` on a connection of its own whose
/// HTTP/2 receive windows are the protocol's default 64 KiB: its library
/// takes in no more than that of what its application does not read.
fn small_window_client(pocket: &LocalPocket, name: &str) -> pb::blob_store_client::BlobStoreClient<Channel> {
    let endpoint = pocket
        .tls(Role::Client, name)
        .endpoint(&pocket.client_config.frontend, &role_dns_name(Role::Frontend))
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535);
    let channel = endpoint.connect_with_connector_lazy(pocket_transport::net::Connector);
    pb::blob_store_client::BlobStoreClient::new(channel).max_decoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES)
}

fn get_request(key: &Key) -> pb::GetRequest {
    pb::GetRequest { key: Bytes::copy_from_slice(key.as_bytes()), offset: 0, length: 0 }
}

/// Reads `stream` to its end: the bytes it carried and how it ended.
async fn read_to_end(stream: &mut tonic::Streaming<pb::GetResponse>) -> (u64, Result<(), tonic::Status>) {
    let mut bytes = 0u64;
    loop {
        match stream.message().await {
            Ok(Some(message)) => bytes += message.chunk.len() as u64,
            Ok(None) => return (bytes, Ok(())),
            Err(status) => return (bytes, Err(status)),
        }
    }
}

/// Stores and fetches blobs as `client:local` until `stop`, each operation
/// within a bound; returns how many rounds it completed.
fn bystander(pocket: &LocalPocket, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let client = pocket.client.clone();
    tokio::spawn(async move {
        let mut rounds = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let data = Bytes::from(format!("bystander round {rounds} ").repeat(8_000));
            let round = async {
                let (key, _) = client.put(data.clone()).await.expect("bystander put");
                assert_eq!(client.get(&key).await.expect("bystander get"), data);
            };
            tokio::time::timeout(Duration::from_secs(10), round).await.expect("a bystander round took over 10 s");
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rounds
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unread_gets_hold_at_most_the_clients_share_and_end_non_ok() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let options = UpOptions {
        osds: 3,
        extent_size: "40MiB",
        extra: vec![
            "--stream-idle-timeout-ms".into(),
            IDLE_MS.to_string(),
            // The flood must meet the in-flight cap, not the rate limit.
            "--client-rate-limit".into(),
            "20000".into(),
        ],
    };
    let pocket = LocalPocket::start(&dir, options).await;
    let frontend_pid = pocket.run_info("frontend").pid;

    let blob: Bytes = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (key, _) = pocket.client.put(blob.clone()).await.expect("put");
    // Warm the frontend's caches and pools with a few whole GETs first.
    for _ in 0..4 {
        assert_eq!(pocket.client.get(&key).await.expect("warm-up get"), blob);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(frontend_pid);

    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (stop, max_rss) = (stop.clone(), max_rss.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                max_rss.fetch_max(rss_bytes(frontend_pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let bystander = bystander(&pocket, stop.clone());

    // The hostile client `reader` opens every GET at once and reads none.
    let clients: Vec<_> = (0..HOSTILE_CONNECTIONS).map(|_| small_window_client(&pocket, "reader")).collect();
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for index in 0..HOSTILE_GETS {
        let mut client = clients[index % HOSTILE_CONNECTIONS].clone();
        calls.spawn(async move {
            let response = client.get(get_request(&key)).await;
            (response.map(tonic::Response::into_inner), Instant::now())
        });
    }
    let mut streams = Vec::new();
    let mut refused = Vec::new();
    while let Some(joined) = calls.join_next().await {
        match joined.expect("GET task") {
            (Ok(stream), at) => streams.push((stream, at)),
            (Err(status), _) => refused.push(status),
        }
    }
    let opened_in = started.elapsed();

    // Those past the in-flight cap are refused with a clear status.
    assert!(refused.len() >= HOSTILE_GETS - IN_FLIGHT_CAP, "only {} of {HOSTILE_GETS} GETs were refused", refused.len());
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("in flight") || status.message().contains("byte budget"),
            "an unclear refusal: {status:?}"
        );
    }
    assert!(!streams.is_empty(), "no GET was admitted");

    // Every unread stream ends non-OK once the idle timeout has passed since it was opened.
    let last_opened = streams.iter().map(|(_, at)| *at).max().expect("streams");
    tokio::time::sleep_until((last_opened + Duration::from_millis(IDLE_MS + 1_500)).into()).await;
    let mut ended_ok = 0;
    let mut codes = std::collections::BTreeMap::new();
    for (stream, _) in &mut streams {
        let (bytes, end) =
            tokio::time::timeout(Duration::from_secs(5), read_to_end(stream)).await.expect("an unread stream never ended");
        match end {
            Ok(()) => ended_ok += 1,
            Err(status) => *codes.entry(format!("{:?}", status.code())).or_insert(0) += 1,
        }
        assert!(bytes < blob.len() as u64, "a stream whose client read nothing delivered the whole blob");
    }
    assert_eq!(ended_ok, 0, "unread streams ended with OK; the others: {codes:?}");

    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let rounds = bystander.await.expect("the other client was refused or failed");
    let growth = max_rss.load(Ordering::Relaxed).saturating_sub(rss_before);
    eprintln!(
        "unread GETs: {} admitted, {} refused in {opened_in:?}; ends {codes:?}; frontend RSS {} MiB before, +{} MiB at most; bystander rounds {rounds}",
        streams.len(),
        refused.len(),
        rss_before >> 20,
        growth >> 20,
    );
    assert!(
        growth <= CLIENT_SHARE_BYTES + FIXED_OVERHEAD_BYTES,
        "the frontend's RSS grew by {} MiB, more than the client's share ({} MiB) plus {} MiB",
        growth >> 20,
        CLIENT_SHARE_BYTES >> 20,
        FIXED_OVERHEAD_BYTES >> 20
    );
    assert!(rounds >= 3, "the other client completed only {rounds} rounds meanwhile");

    // What the streams held is free again: the same client is served whole.
    drop(streams);
    let mut reader = pocket.blob_store_as("reader").max_decoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES);
    let mut stream = reader.get(get_request(&key)).await.expect("GET after the flood").into_inner();
    let (bytes, end) = read_to_end(&mut stream).await;
    end.expect("a whole GET after the flood ends OK");
    assert_eq!(bytes, blob.len() as u64);
    pocket.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_that_stalls_past_the_idle_timeout_gets_a_non_ok_status() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pocket");
    let options = UpOptions {
        osds: 3,
        extent_size: "40MiB",
        extra: vec!["--stream-idle-timeout-ms".into(), IDLE_MS.to_string()],
    };
    let pocket = LocalPocket::start(&dir, options).await;
    let blob: Bytes = (0..(8u32 << 20)).map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8).collect();
    let (key, _) = pocket.client.put(blob.clone()).await.expect("put");

    // Raw generated clients: they count no bytes, so only the status tells
    // a whole blob from a cut one. One with tonic's default windows (2 MiB
    // per stream), one with the protocol's 64 KiB.
    let default_windows = pocket.blob_store_as("local").max_decoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES);
    let small_windows = small_window_client(&pocket, "local");
    for (name, client) in [("default windows", default_windows), ("64 KiB windows", small_windows)] {
        // A reader that keeps reading gets the whole blob and OK.
        let mut stream = client.clone().get(get_request(&key)).await.expect("get").into_inner();
        let (bytes, end) = read_to_end(&mut stream).await;
        end.unwrap_or_else(|status| panic!("{name}: a whole read ended with {status:?}"));
        assert_eq!(bytes, blob.len() as u64, "{name}");

        // A reader that takes the first chunk, then stalls past the idle timeout.
        let mut stream = client.clone().get(get_request(&key)).await.expect("get").into_inner();
        let first = stream.message().await.expect("first message").expect("a first chunk");
        assert_eq!(first.blob_length_bytes, blob.len() as u64);
        tokio::time::sleep(Duration::from_millis(IDLE_MS + 1_500)).await;
        let (bytes, end) = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{name}: the stalled stream never ended"));
        let status = end.expect_err(&format!("{name}: a stream cut after {bytes} more bytes ended with OK"));
        assert_eq!(status.code(), Code::Cancelled, "{name}: {status:?}");
        assert!((first.chunk.len() as u64 + bytes) < blob.len() as u64, "{name}: the cut stream carried the whole blob");
    }

    // The frontend counted the resets.
    let metrics = common::metrics(&pocket.tls(Role::Operator, "admin"), &pocket.run_info("frontend").http).await;
    let resets = metrics
        .lines()
        .find(|l| l.starts_with("pocket_response_streams_reset_total") && l.contains("stalled_reader"))
        .unwrap_or_else(|| panic!("no reset counter in the frontend's metrics"));
    let count: f64 = resets.rsplit(' ').next().expect("value").trim().parse().expect("number");
    assert!(count >= 2.0, "{resets}");
    pocket.stop().await;
}

/// A BlobStore that answers every GET wrongly, as a server (or a proxy) that
/// cuts streams and still says OK would: `EMPTY` with no message at all,
/// `SHORT` with fewer bytes than the length it announces.
struct CuttingServer;

const EMPTY: [u8; 32] = [1; 32];
const SHORT: [u8; 32] = [2; 32];

#[tonic::async_trait]
impl pb::blob_store_server::BlobStore for CuttingServer {
    async fn put(
        &self,
        _: tonic::Request<tonic::Streaming<pb::PutRequest>>,
    ) -> Result<tonic::Response<pb::PutResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("reads only"))
    }

    type GetStream = futures::stream::Iter<std::vec::IntoIter<Result<pb::GetResponse, tonic::Status>>>;

    async fn get(&self, request: tonic::Request<pb::GetRequest>) -> Result<tonic::Response<Self::GetStream>, tonic::Status> {
        let messages = if request.get_ref().key.as_ref() == EMPTY {
            Vec::new()
        } else {
            vec![Ok(pb::GetResponse { blob_length_bytes: 100, chunk: Bytes::from_static(&[7; 10]) })]
        };
        Ok(tonic::Response::new(futures::stream::iter(messages)))
    }

    async fn exists(&self, _: tonic::Request<pb::ExistsRequest>) -> Result<tonic::Response<pb::ExistsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("reads only"))
    }

    async fn stat(&self, _: tonic::Request<pb::StatRequest>) -> Result<tonic::Response<pb::StatResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("reads only"))
    }
}

/// The Rust client never takes a cut stream that ends OK for a blob: not an
/// empty stream (no length announced), not one shorter than it announced;
/// and a download to a file leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_streams_that_end_ok_but_cut() {
    use pocket_transport::{pki, Identity};
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki_dir = tmp.path().join("pki");
    let (server_id, client_id) = (Identity::new(Role::Frontend, "cutting"), Identity::new(Role::Client, "local"));
    pki::ensure_local(&pki_dir, &[server_id.clone(), client_id.clone()]).expect("pki");
    let server_tls = pocket_transport::Tls::load(&pki::tls_config(&pki_dir, &server_id)).expect("server tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let settings = pocket_transport::ServerSettings {
        caps: pocket_transport::ConnectionCaps::default(),
        max_concurrent_streams: 16,
        request_timeout: Duration::from_secs(10),
        send_stall_timeout: Duration::from_secs(10),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let routes = tonic::service::Routes::new(pb::blob_store_server::BlobStoreServer::new(CuttingServer));
        pocket_transport::serve(listener, &server_tls, settings, routes, async {
            let _ = stopped.await;
        })
        .await
    });
    let config = pocket_client::ClientConfig { frontend: addr, tls: pki::tls_config(&pki_dir, &client_id) };
    let client = pocket_client::Client::connect(&config).expect("client");

    for (key, what) in [(Key(EMPTY), "an empty stream"), (Key(SHORT), "a stream short of its announced length")] {
        let mut out = Vec::new();
        let error = client.get_range_into(&key, 0, 0, &mut out).await.expect_err(what);
        match (key.0, &error) {
            (EMPTY, pocket_client::ClientError::EmptyResponse) => {}
            (SHORT, pocket_client::ClientError::Truncated { got: 10, expected: 100 }) => {}
            _ => panic!("{what}: {error:?}"),
        }
        client.get(&key).await.expect_err(what);
        let target = tmp.path().join("out.bin");
        client.get_to_file(&key, &target).await.expect_err(what);
        let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("list").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from("pki")], "{what} left files behind");
    }
    let _ = stop.send(());
    server.await.expect("server task").expect("server");
}
