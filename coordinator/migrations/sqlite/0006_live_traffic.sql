-- Each OSD's live traffic (frontends' appends and reads, bytes/s) from its
-- last heartbeat: the leader paces background work only while the cell has
-- some (ADR 16).
ALTER TABLE osds ADD COLUMN live_bytes_per_sec BIGINT NOT NULL DEFAULT 0;
