//! What the index stores per key, and which virtual shard a key lives in.

use pocket_types::{BucketId, CellId, Key};

/// One row of the index: where the bytes of `key` live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub key: Key,
    pub cell_id: CellId,
    pub bucket_id: BucketId,
    pub length_bytes: u64,
    pub created_unix_ms: i64,
}

/// Result of [`crate::Index::insert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The row is new; its outbox rows were written with it.
    Inserted,
    /// The key was already indexed. Carries the stored row, which was left
    /// unchanged (the first writer wins), and no outbox row was written.
    AlreadyPresent(IndexEntry),
}

/// The virtual shard of `key` among `vshard_count`: its first two bytes,
/// big-endian, modulo the count. Keys are BLAKE3 hashes, so the prefix is
/// uniform. Changing this function moves every key: it is part of the format.
pub fn vshard_of_key(key: &Key, vshard_count: u32) -> u32 {
    assert!(vshard_count > 0, "vshard_count is validated at open");
    let prefix = u16::from_be_bytes([key.0[0], key.0[1]]);
    u32::from(prefix) % vshard_count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_VSHARD_COUNT;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn vshard_is_in_range_and_stable(bytes in any::<[u8; 32]>(), count in 1..=MAX_VSHARD_COUNT) {
            let key = Key(bytes);
            let vshard = vshard_of_key(&key, count);
            prop_assert!(vshard < count);
            prop_assert_eq!(vshard, vshard_of_key(&key, count));
        }

        #[test]
        fn vshard_depends_only_on_the_two_byte_prefix(
            a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), count in 1..=MAX_VSHARD_COUNT,
        ) {
            let mut b = b;
            b[0] = a[0];
            b[1] = a[1];
            prop_assert_eq!(vshard_of_key(&Key(a), count), vshard_of_key(&Key(b), count));
        }
    }

    #[test]
    fn vshard_matches_the_documented_formula() {
        let mut bytes = [0u8; 32];
        bytes[0] = 0x01;
        bytes[1] = 0x02;
        let prefix: u32 = 0x0102;
        assert_eq!(vshard_of_key(&Key(bytes), 256), prefix % 256);
        assert_eq!(vshard_of_key(&Key(bytes), 100), prefix % 100);
        assert_eq!(vshard_of_key(&Key(bytes), MAX_VSHARD_COUNT), prefix);
    }
}
