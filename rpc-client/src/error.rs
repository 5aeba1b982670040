//! What an outbound call's failure means to its caller, in place of gRPC
//! statuses and strings.

use pocket_proto::{BucketId, OsdId, EXTENT_FULL_PREFIX};
use tonic::Code;

/// A failed call to one OSD.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OsdError {
    /// The extent appended to is full: the normal end of a bucket.
    #[error("OSD {osd_id}: extent is full")]
    Full { osd_id: OsdId },
    /// The OSD is busy (its in-flight byte budget is spent): try elsewhere,
    /// but the OSD is healthy and its volumes must stay open.
    #[error("OSD {osd_id} is busy: {message}")]
    Busy { osd_id: OsdId, message: String },
    /// The OSD holds no such extent or record.
    #[error("OSD {osd_id} at {addr}: not found: {message}")]
    NotFound { osd_id: OsdId, addr: String, message: String },
    /// The OSD could not be reached, or did not answer in time.
    #[error("OSD {osd_id} at {addr} unavailable: {message}")]
    Unavailable { osd_id: OsdId, addr: String, message: String },
    /// The OSD refused or failed the call for another reason.
    #[error("OSD {osd_id} at {addr}: {code}: {message}")]
    Failed { osd_id: OsdId, addr: String, code: &'static str, message: String },
    /// A stream of bytes from the OSD was not of the length asked for.
    #[error("OSD {osd_id} returned {got} bytes, expected {expected}")]
    WrongLength { osd_id: OsdId, got: u64, expected: u64 },
    /// The OSD's answer was not what the protocol says.
    #[error("OSD {osd_id} at {addr} answered out of protocol: {detail}")]
    Malformed { osd_id: OsdId, addr: String, detail: String },
    /// No channel could be opened to the OSD's address.
    #[error("OSD {osd_id}: bad address {addr}: {detail}")]
    Address { osd_id: OsdId, addr: String, detail: String },
}

impl OsdError {
    /// What an OSD's gRPC status means.
    pub(crate) fn from_status(osd_id: OsdId, addr: &str, status: &tonic::Status) -> OsdError {
        let (addr, message) = (addr.to_string(), status.message().to_string());
        match status.code() {
            Code::ResourceExhausted if status.message().starts_with(EXTENT_FULL_PREFIX) => OsdError::Full { osd_id },
            Code::ResourceExhausted => OsdError::Busy { osd_id, message },
            Code::NotFound => OsdError::NotFound { osd_id, addr, message },
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => OsdError::Unavailable { osd_id, addr, message },
            code => OsdError::Failed { osd_id, addr, code: code.description(), message },
        }
    }

    /// The OSD the error is about.
    pub fn osd_id(&self) -> OsdId {
        match self {
            OsdError::Full { osd_id }
            | OsdError::Busy { osd_id, .. }
            | OsdError::NotFound { osd_id, .. }
            | OsdError::Unavailable { osd_id, .. }
            | OsdError::Failed { osd_id, .. }
            | OsdError::WrongLength { osd_id, .. }
            | OsdError::Malformed { osd_id, .. }
            | OsdError::Address { osd_id, .. } => *osd_id,
        }
    }
}

/// A failed call to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    #[error("bucket {0} is unknown to the coordinator")]
    UnknownBucket(BucketId),
    /// Not reached, or no answer in time.
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
    /// The coordinator refused or failed the call.
    #[error("coordinator: {code}: {message}")]
    Failed { code: &'static str, message: String },
    #[error("coordinator answered out of protocol: {0}")]
    Malformed(String),
    #[error("coordinator address: {0}")]
    Address(String),
}

impl CoordinatorError {
    pub(crate) fn from_status(status: &tonic::Status) -> CoordinatorError {
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                CoordinatorError::Unavailable(status.message().to_string())
            }
            code => CoordinatorError::Failed { code: code.description(), message: status.message().to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extent_full_refusal_is_full_and_other_exhaustion_is_busy() {
        let full = tonic::Status::resource_exhausted(format!("{EXTENT_FULL_PREFIX}: 7"));
        assert_eq!(OsdError::from_status(3, "a:1", &full), OsdError::Full { osd_id: 3 });
        let busy = tonic::Status::resource_exhausted("byte budget spent");
        assert!(matches!(OsdError::from_status(3, "a:1", &busy), OsdError::Busy { osd_id: 3, .. }));
        let gone = tonic::Status::unavailable("connection refused");
        assert!(matches!(OsdError::from_status(3, "a:1", &gone), OsdError::Unavailable { .. }));
        let missing = tonic::Status::not_found("no such record");
        assert!(matches!(OsdError::from_status(3, "a:1", &missing), OsdError::NotFound { .. }));
        let bad = tonic::Status::invalid_argument("no");
        assert!(matches!(OsdError::from_status(3, "a:1", &bad), OsdError::Failed { .. }));
        assert_eq!(OsdError::from_status(3, "a:1", &bad).osd_id(), 3);
    }
}
