//! The run file a daemon writes once it serves: its bound addresses and
//! pid, so that `pocket up` and tests find daemons that listen on port 0.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunInfo {
    /// Bound gRPC address, `host:port`.
    pub grpc: String,
    /// Bound HTTP address (`/metrics`, `/healthz`).
    pub http: String,
    pub pid: u32,
}

impl RunInfo {
    /// Writes atomically: a reader never sees a half-written file.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, toml::to_string(self)?).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("install {}", path.display()))?;
        Ok(())
    }

    pub fn read(path: &Path) -> anyhow::Result<RunInfo> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }
}

/// Parses a size such as `4096`, `64KiB`, `8MiB`, `1GiB` (also KB/MB/GB as binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("invalid size {text:?}"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("size {text:?} overflows"))
}

/// Parses a duration such as `500ms`, `30s`, `10m`, `2h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    let millis: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown duration unit {other:?} in {text:?} (ms, s, m, h or d)")),
    };
    number
        .checked_mul(millis)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} overflows"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse_with_their_units() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(super::parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(super::parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(super::parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(super::parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(super::parse_duration("3 weeks").is_err());
        assert!(super::parse_duration("-1s").is_err());
    }

    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("8 parsecs").is_err());
        assert!(parse_size("").is_err());
    }
}
