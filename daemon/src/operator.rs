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
    pub tls: TlsConfig,
}
