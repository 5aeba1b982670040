//! The types every pocket crate shares and none of them owns: a blob's
//! [`Key`] (BLAKE3-256 of its bytes), the id aliases and the clock used for
//! created/heartbeat timestamps.
//!
//! Invariant: this crate is the ground floor. It knows nothing of the wire
//! (no tonic, no prost, no protoc), so the crates that only need a key or an
//! id — `format`, `index`, `erasure` — build without the gRPC stack.
//! `pocket-proto` re-exports everything here, and maps a malformed key to a
//! gRPC status at the wire edge (`pocket_proto::key_from_wire`).

use std::fmt;
use std::str::FromStr;

/// Length of a key: BLAKE3-256.
pub const KEY_LEN: usize = 32;

/// A blob's key: the BLAKE3-256 hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; KEY_LEN]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key must be {KEY_LEN} bytes, got {0}")]
    WrongLength(usize),
    #[error("key must be 64 hex characters")]
    NotHex,
}

impl Key {
    /// The key of `data`.
    pub fn of(data: &[u8]) -> Key {
        Key(*blake3::hash(data).as_bytes())
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Key, KeyError> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Key(array))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Key, KeyError> {
        if s.len() != 2 * KEY_LEN {
            return Err(KeyError::NotHex);
        }
        let bytes = hex::decode(s).map_err(|_| KeyError::NotHex)?;
        Key::from_slice(&bytes)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", &self.to_hex()[..16])
    }
}

/// Id of a cell inside a zone.
pub type CellId = u32;
/// Id of a bucket: the unit the index points at. Never changes identity.
pub type BucketId = u64;
/// Id of a volume: the extents that hold one bucket (replicated) or k buckets (erasure-coded).
pub type VolumeId = u64;
/// Id of an extent, unique in its cell. All replicas of a replicated volume share it.
pub type ExtentId = u64;
/// Id of an OSD, unique in its cell.
pub type OsdId = u64;

/// Milliseconds since the Unix epoch, for created/heartbeat timestamps.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_through_hex() {
        let key = Key::of(b"pocket");
        let parsed: Key = key.to_hex().parse().expect("valid hex");
        assert_eq!(parsed, key);
    }

    #[test]
    fn key_rejects_wrong_length() {
        assert_eq!(Key::from_slice(&[0u8; 31]), Err(KeyError::WrongLength(31)));
        assert_eq!("abc".parse::<Key>(), Err(KeyError::NotHex));
        assert_eq!("zz".repeat(32).parse::<Key>(), Err(KeyError::NotHex));
    }
}
