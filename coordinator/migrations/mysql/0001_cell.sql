-- The cell database: OSDs, volumes, buckets and where their extents live.
CREATE TABLE osds (
    osd_id BIGINT NOT NULL PRIMARY KEY,
    grpc_addr VARCHAR(255) NOT NULL,
    failure_domain VARCHAR(255) NOT NULL,
    capacity_bytes BIGINT NOT NULL,
    used_bytes BIGINT NOT NULL,
    registered_unix_ms BIGINT NOT NULL,
    last_heartbeat_unix_ms BIGINT NOT NULL
);
-- kind: 'replicated' | 'ec'. state: creating -> open -> closing -> closed (later: encoding, ec, retired), or creating -> abandoned.
CREATE TABLE volumes (
    volume_id BIGINT NOT NULL PRIMARY KEY,
    kind VARCHAR(16) NOT NULL,
    state VARCHAR(16) NOT NULL,
    data_count BIGINT NOT NULL,
    parity_count BIGINT NOT NULL,
    extent_size_bytes BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    state_changed_unix_ms BIGINT NOT NULL
);
CREATE INDEX volumes_by_state ON volumes (state);
-- A bucket never changes identity; the volume holding it may change (erasure coding).
CREATE TABLE buckets (
    bucket_id BIGINT NOT NULL PRIMARY KEY,
    volume_id BIGINT NOT NULL,
    position BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL
);
CREATE INDEX buckets_by_volume ON buckets (volume_id);
-- One row per stored copy of an extent. A replicated volume has R rows with the same extent_id.
CREATE TABLE extents (
    extent_id BIGINT NOT NULL,
    osd_id BIGINT NOT NULL,
    volume_id BIGINT NOT NULL,
    position BIGINT NOT NULL,
    sealed_size_bytes BIGINT NOT NULL,
    PRIMARY KEY (extent_id, osd_id)
);
CREATE INDEX extents_by_volume ON extents (volume_id);
CREATE TABLE id_alloc (
    name VARCHAR(32) PRIMARY KEY,
    next_id BIGINT NOT NULL
);
INSERT INTO id_alloc (name, next_id) VALUES ('ids', 1);
CREATE TABLE cell_meta (
    name VARCHAR(64) PRIMARY KEY,
    value VARCHAR(255) NOT NULL
);
