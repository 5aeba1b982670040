//! The verifiers: index verifier, watcher, trash inspector, cross-zone
//! verifier.
//!
//! Not built yet. What they will need is in place: OSDs answer `Has` (does an
//! extent hold a key, from metadata only, without reading data) and every
//! record carries a checksum that the OSD checks on each read.
