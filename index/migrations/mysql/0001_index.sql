-- pocket index, MySQL/MariaDB dialect. Keep in step with ../sqlite/0001_index.sql:
-- same tables, same columns, same meaning.

-- key -> (cell, bucket). `vshard` is derived from the key (first two bytes
-- big-endian, modulo the vshard count) and stored so a virtual shard can be
-- listed or moved to another database by range.
-- cell_id is BIGINT, not INT: it holds a u32 and must never be clamped.
CREATE TABLE blobs (
    blob_key        BINARY(32) NOT NULL,
    vshard          INT        NOT NULL,
    cell_id         BIGINT     NOT NULL,
    bucket_id       BIGINT     NOT NULL,
    length_bytes    BIGINT     NOT NULL,
    created_unix_ms BIGINT     NOT NULL,
    PRIMARY KEY (blob_key),
    KEY blobs_vshard_key (vshard, blob_key),
    CONSTRAINT blobs_vshard_nonnegative CHECK (vshard >= 0),
    CONSTRAINT blobs_cell_id_u32 CHECK (cell_id >= 0 AND cell_id <= 4294967295),
    CONSTRAINT blobs_bucket_id_nonnegative CHECK (bucket_id >= 0),
    CONSTRAINT blobs_length_nonnegative CHECK (length_bytes >= 0)
) ENGINE = InnoDB;

-- One row per (new key, remote zone), written in the same transaction as the
-- blobs row; the replicator drains it.
CREATE TABLE replication_outbox (
    id              BIGINT      NOT NULL AUTO_INCREMENT,
    blob_key        BINARY(32)  NOT NULL,
    zone            VARCHAR(64) NOT NULL,
    created_unix_ms BIGINT      NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- vshard -> physical database name. Authoritative only in the directory
-- (the first configured database).
CREATE TABLE shard_map (
    vshard     INT         NOT NULL,
    shard_name VARCHAR(64) NOT NULL,
    PRIMARY KEY (vshard),
    CONSTRAINT shard_map_vshard_nonnegative CHECK (vshard >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Small facts about the index: `vshard_count` (directory only),
-- `directory_shard` and `shard_name` (every database: which deployment slot it
-- belongs to, so a reordered or miswired config is refused).
CREATE TABLE index_meta (
    name  VARCHAR(64)  NOT NULL,
    value VARCHAR(255) NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
