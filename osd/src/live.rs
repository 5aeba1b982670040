//! Live traffic through this OSD: the bytes of frontends' appends and
//! reads. Heartbeats report its rate, and the leading coordinator paces
//! background work only while the cell has live traffic (ADR 16, issue 19).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Bytes of live traffic since start. Cheap to clone.
#[derive(Clone, Default)]
pub struct LiveTraffic {
    bytes: Arc<AtomicU64>,
}

impl LiveTraffic {
    pub fn add(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The rate of [`LiveTraffic`] between two readings.
pub struct LiveRate {
    last: Option<(Instant, u64)>,
}

impl LiveRate {
    pub fn new() -> LiveRate {
        LiveRate { last: None }
    }

    /// Bytes per second since the previous call (0 on the first).
    pub fn sample(&mut self, live: &LiveTraffic) -> u64 {
        let (now, total) = (Instant::now(), live.total());
        let rate = match self.last {
            Some((at, before)) => {
                let seconds = now.duration_since(at).as_secs_f64();
                if seconds > 0.0 { (total.saturating_sub(before) as f64 / seconds) as u64 } else { 0 }
            }
            None => 0,
        };
        self.last = Some((now, total));
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_bytes_between_two_samples_over_their_time() {
        let live = LiveTraffic::default();
        let mut rate = LiveRate::new();
        assert_eq!(rate.sample(&live), 0, "no rate before a first sample");
        live.add(1 << 20);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let sampled = rate.sample(&live);
        assert!(sampled > 0 && sampled <= 10 << 20, "{sampled}");
        assert_eq!(rate.sample(&live), 0, "nothing new");
    }
}
