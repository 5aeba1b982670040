-- pocket index, SQLite dialect. Keep in step with ../mysql/0001_index.sql:
-- same tables, same columns, same meaning.

-- key -> (cell, bucket). `vshard` is derived from the key (first two bytes
-- big-endian, modulo the vshard count) and stored so a virtual shard can be
-- listed or moved to another database by range.
-- WITHOUT ROWID: the 32-byte key is the primary key, so the table is the
-- key's B-tree and there is no second rowid index to maintain.
CREATE TABLE blobs (
    blob_key        BLOB    NOT NULL PRIMARY KEY CHECK (length(blob_key) = 32),
    vshard          INTEGER NOT NULL CHECK (vshard >= 0),
    cell_id         BIGINT  NOT NULL CHECK (cell_id >= 0 AND cell_id <= 4294967295),
    bucket_id       BIGINT  NOT NULL CHECK (bucket_id >= 0),
    length_bytes    BIGINT  NOT NULL CHECK (length_bytes >= 0),
    created_unix_ms BIGINT  NOT NULL
) WITHOUT ROWID;

CREATE INDEX blobs_vshard_key ON blobs (vshard, blob_key);

-- One row per (new key, remote zone), written in the same transaction as the
-- blobs row; the replicator drains it.
CREATE TABLE replication_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    blob_key        BLOB    NOT NULL CHECK (length(blob_key) = 32),
    zone            VARCHAR(64) NOT NULL,
    created_unix_ms BIGINT  NOT NULL
);

-- vshard -> physical database name. Authoritative only in the directory
-- (the first configured database).
CREATE TABLE shard_map (
    vshard     INTEGER     NOT NULL PRIMARY KEY CHECK (vshard >= 0),
    shard_name VARCHAR(64) NOT NULL
);

-- Small facts about the index: `vshard_count` (directory only),
-- `directory_shard` and `shard_name` (every database: which deployment slot it
-- belongs to, so a reordered or miswired config is refused).
CREATE TABLE index_meta (
    name  VARCHAR(64)  NOT NULL PRIMARY KEY,
    value VARCHAR(255) NOT NULL
);
