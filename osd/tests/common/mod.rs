//! Helpers shared by the OSD store's integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use pocket_osd::StoreOptions;
use pocket_proto::Key;

pub const MIB: u64 = 1024 * 1024;

pub fn opts() -> StoreOptions {
    StoreOptions {
        max_record_bytes: MIB,
        group_commit_max_bytes: 4 * MIB,
        append_queue_depth: 16,
        page_cache_window_bytes: None,
        direct_io: true,
    }
}

/// Deterministic pseudo-random blob number `seed`, `len` bytes, and its key.
pub fn blob(seed: u64, len: usize) -> (Key, Bytes) {
    let mut data = vec![0u8; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut data);
    (Key::of(&data), Bytes::from(data))
}
