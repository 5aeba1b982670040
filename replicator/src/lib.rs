//! The replicator: drains the index's replication outbox into remote zones.
//!
//! Not built yet. The outbox table it will drain already exists: the frontend
//! writes one outbox row per remote zone in the same transaction as each
//! index row (`pocket_index::Index::insert`), so nothing written before the
//! replicator lands will be missed by it.
