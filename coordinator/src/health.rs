//! OSD health from heartbeats: *up*, *down* (silent past `osd_down_after_ms`:
//! its open volumes close and nothing new goes to it) and *out* (silent past
//! `osd_out_after_ms`: its copies count as lost and are repaired elsewhere).
//!
//! Silence is counted from the later of the OSD's last recorded heartbeat
//! and the moment this coordinator began watching: a coordinator that
//! starts (or takes over) after a long stop must first give every OSD the
//! chance to heartbeat, or it would declare the whole cell out at once.

use std::time::Duration;

use pocket_proto::OsdId;

use crate::db::OsdRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OsdHealth {
    Up,
    /// Silent past the down threshold: may come back with its data.
    Down,
    /// Silent past the out threshold: its copies are repaired elsewhere.
    Out,
}

impl OsdHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            OsdHealth::Up => "up",
            OsdHealth::Down => "down",
            OsdHealth::Out => "out",
        }
    }
}

/// The two thresholds and when watching began.
#[derive(Debug, Clone, Copy)]
pub struct HealthClock {
    pub down_after: Duration,
    pub out_after: Duration,
    /// Unix ms at which this coordinator began watching heartbeats.
    pub watching_since_unix_ms: i64,
}

impl HealthClock {
    /// The health of `osd` at `now_unix_ms`.
    pub fn health(&self, osd: &OsdRow, now_unix_ms: i64) -> OsdHealth {
        let seen = osd.last_heartbeat_unix_ms.max(self.watching_since_unix_ms);
        let silent = u64::try_from(now_unix_ms.saturating_sub(seen)).unwrap_or(0);
        if silent > self.out_after.as_millis() as u64 {
            OsdHealth::Out
        } else if silent > self.down_after.as_millis() as u64 {
            OsdHealth::Down
        } else {
            OsdHealth::Up
        }
    }

    /// When `osd` was (or will be) out: the start of a repair's wait.
    pub fn out_since_unix_ms(&self, osd: &OsdRow) -> i64 {
        osd.last_heartbeat_unix_ms.max(self.watching_since_unix_ms) + self.out_after.as_millis() as i64
    }
}

/// The health of every OSD of `osds`.
pub fn classify(clock: &HealthClock, osds: &[OsdRow], now_unix_ms: i64) -> Vec<(OsdId, OsdHealth)> {
    osds.iter().map(|osd| (osd.osd_id, clock.health(osd, now_unix_ms))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn osd(last_heartbeat_unix_ms: i64) -> OsdRow {
        OsdRow {
            osd_id: 1,
            grpc_addr: "127.0.0.1:1".into(),
            failure_domain: "a".into(),
            capacity_bytes: 1,
            used_bytes: 0,
            last_heartbeat_unix_ms,
        }
    }

    #[test]
    fn silence_past_each_threshold_is_down_then_out() {
        let clock = HealthClock {
            down_after: Duration::from_secs(10),
            out_after: Duration::from_secs(60),
            watching_since_unix_ms: 0,
        };
        let beat = 1_000_000;
        assert_eq!(clock.health(&osd(beat), beat + 10_000), OsdHealth::Up);
        assert_eq!(clock.health(&osd(beat), beat + 10_001), OsdHealth::Down);
        assert_eq!(clock.health(&osd(beat), beat + 60_000), OsdHealth::Down);
        assert_eq!(clock.health(&osd(beat), beat + 60_001), OsdHealth::Out);
        assert_eq!(clock.out_since_unix_ms(&osd(beat)), beat + 60_000);
    }

    #[test]
    fn a_coordinator_that_just_started_counts_silence_from_its_start() {
        // The OSD's last heartbeat is an hour old, but the coordinator has
        // been watching for 5 s only: it is up until proven silent.
        let now = 10_000_000;
        let clock = HealthClock {
            down_after: Duration::from_secs(10),
            out_after: Duration::from_secs(60),
            watching_since_unix_ms: now - 5_000,
        };
        assert_eq!(clock.health(&osd(now - 3_600_000), now), OsdHealth::Up);
        assert_eq!(clock.health(&osd(now - 3_600_000), now + 6_000), OsdHealth::Down);
        assert_eq!(clock.health(&osd(now - 3_600_000), now + 56_000), OsdHealth::Out);
    }
}
