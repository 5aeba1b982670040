-- Coordinator leadership (ADR 19): one row. The leader holds a lease until
-- expires_unix_ms and renews it; a standby takes it over, by a conditional
-- update, only once it expired. Every takeover increments generation, the
-- fencing token every mutating call to an OSD carries.
CREATE TABLE leadership (
    name VARCHAR(32) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL,
    holder_addr VARCHAR(255) NOT NULL,
    generation BIGINT NOT NULL,
    expires_unix_ms BIGINT NOT NULL,
    acquired_unix_ms BIGINT NOT NULL
);
INSERT INTO leadership (name, holder, holder_addr, generation, expires_unix_ms, acquired_unix_ms) VALUES ('leader', '', '', 0, 0, 0);
-- Failed erasure-coding attempts of a volume being built: kept here, not
-- in one coordinator's memory, so a new leader goes on counting.
ALTER TABLE volumes ADD COLUMN ec_attempts BIGINT NOT NULL DEFAULT 0;
