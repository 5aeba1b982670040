//! The `pocket` binary's library half: the commands that are neither a
//! daemon (`pocket-daemon` runs those around the service crates) nor a
//! measurement (`pocket-bench`) — `pocket up` (the local cell), the
//! operator's `pocket cell status` and `pocket workers`, and the client commands' transfers
//! (`pocket put`, `pocket get`: progress, batching, how errors are printed).
//! Root integration tests (`tests/`) run the built binary.

pub mod cell_status;
pub mod transfer;
pub mod up;
pub mod workers;
