//! Property tests: every parser of bytes that come from outside — configs,
//! wire messages, keys, identities, sizes — takes random and mutated input
//! without panicking. (The extent format's decoders have their own property
//! tests in osd/src/extent.rs.)

use pocket_proto::{pb, Key};
use proptest::prelude::*;
use prost::Message;

const VALID_FRONTEND: &str = r#"
coordinator = "127.0.0.1:7100"
listen = "127.0.0.1:0"
[index]
shards = [{ name = "shard-0", url = "sqlite:///tmp/x.db?mode=rwc" }]
[tls]
ca = "/p/ca.pem"
cert = "/p/frontend.pem"
key = "/p/frontend.key"
[[clients]]
name = "local"
permissions = ["put", "get"]
"#;

const VALID_OSD: &str = r#"
osd_id = 1
disks = ["/d0"]
coordinator = "127.0.0.1:7100"
[tls]
ca = "/p/ca.pem"
cert = "/p/osd.pem"
key = "/p/osd.key"
"#;

const VALID_COORDINATOR: &str = r#"
cell_id = 1
database_url = "sqlite:///tmp/cell.db?mode=rwc"
audit_log = "/tmp/audit.log"
[tls]
ca = "/p/ca.pem"
cert = "/p/c.pem"
key = "/p/c.key"
"#;

fn parse_all_configs(text: &str) {
    let _ = toml::from_str::<pocket_frontend::FrontendConfig>(text);
    let _ = toml::from_str::<pocket_osd::OsdConfig>(text);
    let _ = toml::from_str::<pocket_coordinator::CoordinatorConfig>(text);
    let _ = toml::from_str::<pocket_client::ClientConfig>(text);
    let _ = toml::from_str::<pocket_index::IndexConfig>(text);
    let _ = toml::from_str::<pocket::up::UpSettings>(text);
}

fn decode_all_messages(bytes: &[u8]) {
    let _ = pb::PutRequest::decode(bytes);
    let _ = pb::GetRequest::decode(bytes);
    let _ = pb::ExistsRequest::decode(bytes);
    let _ = pb::StatRequest::decode(bytes);
    let _ = pb::AppendRequest::decode(bytes);
    let _ = pb::ReadRequest::decode(bytes);
    let _ = pb::SealRequest::decode(bytes);
    let _ = pb::HasRequest::decode(bytes);
    let _ = pb::ExtentStatusRequest::decode(bytes);
    let _ = pb::CreateExtentRequest::decode(bytes);
    let _ = pb::RegisterOsdRequest::decode(bytes);
    let _ = pb::HeartbeatRequest::decode(bytes);
    let _ = pb::ReportBucketRequest::decode(bytes);
    let _ = pb::LocateBucketRequest::decode(bytes);
    let _ = pb::WritableBucketsResponse::decode(bytes);
    let _ = pb::LocateBucketResponse::decode(bytes);
}

fn mutate(base: &[u8], flips: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for (at, xor) in flips {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] ^= xor;
        }
    }
    bytes.truncate(cut.min(bytes.len()));
    bytes
}

#[test]
fn the_deploy_examples_load_and_validate() {
    let read = |name: &str| {
        std::fs::read_to_string(format!("{}/deploy/examples/{name}", env!("CARGO_MANIFEST_DIR"))).expect("read example")
    };
    let frontend: pocket_frontend::FrontendConfig = toml::from_str(&read("frontend.toml")).expect("frontend example");
    frontend.validate().expect("frontend example validates");
    assert_eq!(frontend.clients.len(), 1);
    let osd: pocket_osd::OsdConfig = toml::from_str(&read("osd.toml")).expect("osd example");
    osd.validate().expect("osd example validates");
    let coordinator: pocket_coordinator::CoordinatorConfig =
        toml::from_str(&read("coordinator.toml")).expect("coordinator example");
    coordinator.validate().expect("coordinator example validates");
}

#[test]
fn the_valid_configs_parse() {
    toml::from_str::<pocket_frontend::FrontendConfig>(VALID_FRONTEND).expect("frontend config");
    toml::from_str::<pocket_osd::OsdConfig>(VALID_OSD).expect("osd config");
    toml::from_str::<pocket_coordinator::CoordinatorConfig>(VALID_COORDINATOR).expect("coordinator config");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn configs_take_random_text(text in ".{0,400}") {
        parse_all_configs(&text);
    }

    #[test]
    fn configs_take_mutated_valid_text(which in 0usize..3, flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..8), cut in 0usize..600) {
        let base = [VALID_FRONTEND, VALID_OSD, VALID_COORDINATOR][which].as_bytes();
        let bytes = mutate(base, &flips, cut);
        parse_all_configs(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn wire_messages_take_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all_messages(&bytes);
    }

    #[test]
    fn wire_messages_take_mutated_valid_bytes(flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..8), cut in 0usize..200) {
        let valid = pb::AppendRequest {
            part: Some(pb::append_request::Part::Header(pb::AppendHeader {
                extent_id: 7,
                key: bytes::Bytes::from_static(&[3; 32]),
                length_bytes: 4 << 20,
                osd_id: 2,
            })),
        }
        .encode_to_vec();
        decode_all_messages(&mutate(&valid, &flips, cut));
    }

    #[test]
    fn keys_identities_and_sizes_take_random_text(text in ".{0,100}") {
        let _ = text.parse::<Key>();
        let _ = Key::from_slice(text.as_bytes());
        let _ = pocket_transport::Identity::parse(&text);
        let _ = pocket_daemon::runinfo::parse_size(&text);
    }

    #[test]
    fn certificates_take_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = pocket_transport::Identity::from_certificate(&bytes);
    }
}
