//! The hash index of pocket: key → (cell, bucket, length, created time).
//!
//! Owns the index databases and nothing else: it knows no OSD, bucket or
//! cell beyond their ids. A key's first two bytes pick a *virtual shard*
//! (`vshard = u16::from_be_bytes(key[0..2]) % vshard_count`); the *shard map*
//! in the directory database (the first configured one) maps each vshard to a
//! physical database. SQLite files and MySQL/MariaDB run the same code over
//! `sqlx::Any`; the dialects differ only in migrations and insert-if-absent.
//!
//! Invariants:
//! - An index row, once written, is never changed: the first insert of a key
//!   wins and later inserts get [`InsertOutcome::AlreadyPresent`].
//! - The outbox rows of a key are written in the same transaction as its row,
//!   and only when the row is new.
//! - `vshard_count` and the directory are fixed when the index is created;
//!   each database records its shard name and refuses to serve under another.
//! - Nothing read from a database is trusted: keys must be 32 bytes and hash
//!   to the vshard they are stored under, integers must be in range, else
//!   [`IndexError::CorruptRow`].
//!
//! # Layout
//! - [`config`] — [`IndexConfig`], [`ShardConfig`].
//! - [`entry`] — [`IndexEntry`], [`InsertOutcome`], [`vshard_of_key`].
//! - [`error`] — [`IndexError`].
//! - `index` — [`Index`], routing and the queries.
//! - `insert` — writing a row; the batcher that writes concurrent inserts
//!   into one SQLite shard with one statement and one commit.
//! - `lookup` — the batcher that reads concurrent lookups of one SQLite
//!   shard with one query.
//! - `batcher` — what both SQLite batchers share: queue, task, and the
//!   connection each keeps out of the pool.
//! - `shard` — one physical database (pool, PRAGMAs, row decoding).
//! - `shard_map` — creating and loading the vshard → database map.
//! - `dialect` — pool sizes and migrations per dialect (the dialect, its
//!   URLs and the statements that differ are `pocket-sql`'s).
//! - `migrations/{sqlite,mysql}/` — the schema, one directory per dialect.

pub mod config;
pub mod entry;
pub mod error;

mod dialect;
mod index;
mod batcher;
mod insert;
mod lookup;
mod shard;
mod shard_map;

pub use config::{IndexConfig, ShardConfig, DEFAULT_VSHARD_COUNT};
pub use entry::{vshard_of_key, IndexEntry, InsertOutcome};
pub use error::IndexError;
pub use insert::INSERT_BATCH_MAX_ROWS;
pub use index::{Index, SHARD_NAME_MAX_BYTES, ZONE_NAME_MAX_BYTES};
pub use lookup::LOOKUP_BATCH_MAX_KEYS;
