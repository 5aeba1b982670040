-- Repair (ADR 18). One row per copy being repaired: the copy of extent_id
-- that was on lost_osd_id (an OSD that is out) is being rebuilt on
-- target_osd_id. The row is written before any byte moves, so a restarted
-- coordinator resumes onto the same target, and a target's copy that never
-- switched is known; it goes with the switch (one transaction with the
-- `extents` row that moves to the target).
CREATE TABLE repairs (
    extent_id BIGINT NOT NULL,
    lost_osd_id BIGINT NOT NULL,
    volume_id BIGINT NOT NULL,
    target_osd_id BIGINT NULL,
    attempts BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    updated_unix_ms BIGINT NOT NULL,
    last_error VARCHAR(255) NULL,
    PRIMARY KEY (extent_id, lost_osd_id)
);
-- The BLAKE3 of a copy's bytes, hex, where known: every shard of an
-- erasure-coded volume (recorded at its switch, backfilled for volumes
-- switched before), so that a rebuilt shard is checked against it.
ALTER TABLE extents ADD COLUMN blake3 VARCHAR(64) NULL;
-- The disk (uuid in its POCKET_DISK) holding a copy, learned from its OSD;
-- 'missing' when the OSD no longer knows the copy. NULL until learned.
ALTER TABLE extents ADD COLUMN disk VARCHAR(40) NULL;
-- Every disk OSDs reported. state: 'ok', 'failed' (its OSD failed it: gone,
-- replaced behind its back, I/O errors) or 'lost' (its OSD registered
-- without it: wiped or replaced). Copies on a failed or lost disk are lost.
CREATE TABLE disks (
    disk_uuid VARCHAR(40) NOT NULL PRIMARY KEY,
    osd_id BIGINT NOT NULL,
    state VARCHAR(16) NOT NULL,
    reason VARCHAR(255) NOT NULL,
    changed_unix_ms BIGINT NOT NULL
);
