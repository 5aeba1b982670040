//! The extent file format lives in the `pocket-format` crate, shared with the
//! frontend (degraded reads parse footers of reconstructed extents).
pub use pocket_format::*;
