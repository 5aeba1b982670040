//! The `pocket` binary's library half: what the entry point needs beyond the
//! service crates — the operations HTTP endpoint every daemon serves, the run
//! files daemons write once they serve, `pocket up` (the local cell), and
//! the operator's `pocket cell status`, and the measurement commands
//! `pocket bench`, `pocket limits` and `pocket ec-bench`, and the client
//! commands' transfers (`pocket put`, `pocket get`: progress, batching,
//! how errors are printed).
//! Root integration tests (`tests/`) run the built binary.

pub mod bench;
pub mod cell_status;
pub mod ec_bench;
pub mod limits;
pub mod machine;
pub mod memory;
pub mod ops;
pub mod restart_bench;
pub mod runinfo;
pub mod transfer;
pub mod up;
