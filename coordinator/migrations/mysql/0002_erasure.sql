-- Erasure coding. Replicated volumes gain the states encoding (claimed by an
-- erasure-coded volume being built), retiring (switched; replicas being
-- deleted) and retired; erasure-coded volumes (kind 'ec') go building -> ec,
-- or building -> abandoned.
--
-- The layout of an erasure-coded volume, written when its encoding is
-- planned: one row per shard. Data positions 0..k-1 hold the extent of a
-- bucket (same extent id, byte-identical), parity positions k..k+m-1 a fresh
-- extent. `source_osd_id` is the replica the data shard is read from (the
-- target itself when it already holds one). `size_bytes` is the shard's
-- length.
CREATE TABLE ec_layout (
    volume_id BIGINT NOT NULL,
    position BIGINT NOT NULL,
    osd_id BIGINT NOT NULL,
    extent_id BIGINT NOT NULL,
    bucket_id BIGINT NULL,
    source_volume_id BIGINT NULL,
    source_osd_id BIGINT NULL,
    size_bytes BIGINT NOT NULL,
    PRIMARY KEY (volume_id, position)
);
CREATE INDEX ec_layout_by_extent ON ec_layout (extent_id, osd_id);
