//! Transport security for every pocket connection: mutual TLS (rustls), the
//! identity a certificate carries, and the local PKI that `pocket up`
//! generates so the embedded default is secure without a manual step.
//!
//! Invariants:
//! - Every listener serves TLS and requires a client certificate signed by
//!   the pocket's CA; every outbound connection presents one and checks the
//!   server's against the same CA. There is no plaintext mode.
//! - Who a caller is comes only from its verified certificate: the subject
//!   common name `ROLE:NAME` ([`Identity`]). Services decide what a role may
//!   do ([`authorize`]); nothing is granted by default.
//!
//! Layout: [`tls`] (configs, server and client TLS), [`identity`] (roles and
//! peer identities), [`pki`] (generating a CA and certificates).

pub mod identity;
pub mod pki;
pub mod tls;

pub use identity::{authorize, peer_identity, role_dns_name, Identity, Role, RoleGate};
pub use tls::{Tls, TlsConfig, TlsError};
