//! The operator's config: where an operator finds a cell's coordinator, and
//! with which certificate. `pocket up` writes one as `DIR/operator.toml`;
//! `pocket cell status` and `pocket limits` read it.

use pocket_transport::TlsConfig;
use serde::{Deserialize, Serialize};

/// Where an operator finds a coordinator, and with which certificate
/// (`operator:NAME`). `pocket up` writes one as `DIR/operator.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    pub coordinator: String,
    /// The cell's other coordinators (standbys answer too, ADR 19).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coordinators: Vec<String>,
    pub tls: TlsConfig,
}

impl OperatorConfig {
    /// Every coordinator address, `coordinator` first.
    pub fn coordinator_addrs(&self) -> Vec<String> {
        let mut addrs = vec![self.coordinator.clone()];
        addrs.extend(self.coordinators.iter().filter(|a| **a != self.coordinator).cloned());
        addrs
    }
}
