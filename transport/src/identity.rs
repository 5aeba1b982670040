//! Who is calling: the identity in a verified peer certificate, and the
//! check of that identity's role against what a service allows.

use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, Mutex};

/// What a certificate's holder is. Services allow roles, never names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Coordinator,
    Osd,
    Frontend,
    /// A service using the public BlobStore API; its permissions are listed
    /// in the frontend's config by name.
    Client,
    /// A human or tool driving the admin API; every call is audited.
    Operator,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Coordinator, Role::Osd, Role::Frontend, Role::Client, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Osd => "osd",
            Role::Frontend => "frontend",
            Role::Client => "client",
            Role::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == s)
    }

    /// Whether certificates of this role may serve (server-auth usage).
    pub fn is_daemon(self) -> bool {
        matches!(self, Role::Coordinator | Role::Osd | Role::Frontend)
    }
}

/// A verified caller: the subject common name `ROLE:NAME` of its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

/// Longest accepted identity name (the part after `ROLE:`).
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("certificate is not valid X.509")]
    NotX509,
    #[error("certificate has no subject common name")]
    NoCommonName,
    #[error("certificate common name {0:?} is not ROLE:NAME with a known role")]
    BadCommonName(String),
}

impl Identity {
    pub fn new(role: Role, name: &str) -> Identity {
        Identity { role, name: name.to_string() }
    }

    /// Parses `ROLE:NAME`; NAME is 1 to 64 of `[A-Za-z0-9._-]`.
    pub fn parse(common_name: &str) -> Result<Identity, IdentityError> {
        let bad = || IdentityError::BadCommonName(common_name.chars().take(100).collect());
        let (role, name) = common_name.split_once(':').ok_or_else(bad)?;
        let role = Role::parse(role).ok_or_else(bad)?;
        let name_ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if !name_ok {
            return Err(bad());
        }
        Ok(Identity::new(role, name))
    }

    /// The identity in a DER certificate (already verified by TLS).
    pub fn from_certificate(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::NotX509)?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or(IdentityError::NoCommonName)?;
        Identity::parse(common_name)
    }

    /// The DNS name only this daemon's certificate carries, which a peer
    /// dialling this very daemon expects (`osd-3.osd.pocket`).
    pub fn dns_name(&self) -> String {
        format!("{}.{}.pocket", self.name, self.role.as_str())
    }

    /// Names a daemon certificate carries: its own and its role's.
    pub fn dns_names(&self) -> Vec<String> {
        if self.role.is_daemon() {
            vec![self.dns_name(), role_dns_name(self.role)]
        } else {
            Vec::new()
        }
    }

    pub fn common_name(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.name)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role.as_str(), self.name)
    }
}

/// The DNS name every daemon certificate of `role` carries, which a peer
/// dialling "some daemon of that role" expects (`coordinator.pocket`).
pub fn role_dns_name(role: Role) -> String {
    format!("{}.pocket", role.as_str())
}

/// Certificates whose identity [`IDENTITIES`] remembers at most; when full
/// it forgets them all. A process talks to a few dozen peers.
pub const IDENTITY_CACHE_MAX_CERTS: usize = 1024;

/// Identities of certificates already parsed, keyed by their whole DER: the
/// identity is a function of those bytes alone, and parsing X.509 on every
/// request was a visible share of an OSD's CPU under 64 KiB appends
/// (`docs/benchmarks.md`, "Where the time goes"). TLS still
/// verifies every connection's certificate; this only skips re-parsing it.
static IDENTITIES: LazyLock<IdentityCache> = LazyLock::new(|| IdentityCache::new(IDENTITY_CACHE_MAX_CERTS));

/// A bounded map from certificate DER to the identity in it (see [`IDENTITIES`]).
#[derive(Debug)]
pub struct IdentityCache {
    max_certs: usize,
    known: Mutex<HashMap<Box<[u8]>, Identity>>,
}

impl IdentityCache {
    pub fn new(max_certs: usize) -> IdentityCache {
        IdentityCache { max_certs, known: Mutex::new(HashMap::new()) }
    }

    /// [`Identity::from_certificate`], remembered. Refusals are not cached.
    pub fn identity_of(&self, der: &[u8]) -> Result<Identity, IdentityError> {
        if let Some(identity) = self.lock().get(der) {
            return Ok(identity.clone());
        }
        let identity = Identity::from_certificate(der)?;
        let mut known = self.lock();
        if known.len() >= self.max_certs {
            known.clear();
        }
        known.insert(der.into(), identity.clone());
        Ok(identity)
    }

    /// Certificates remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Identity>> {
        // The map is valid after any panic (inserts are single calls).
        self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The caller of `request`, from the certificate TLS verified.
/// `UNAUTHENTICATED` if there is none or it carries no valid identity.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
    let certs = request
        .extensions()
        .get::<crate::server::PeerCertificates>()
        .ok_or_else(|| tonic::Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs.0.first().ok_or_else(|| tonic::Status::unauthenticated("a client certificate is required"))?;
    IDENTITIES.identity_of(leaf.as_ref()).map_err(|e| tonic::Status::unauthenticated(e.to_string()))
}

/// The caller, if its role is one of `allowed`; else `PERMISSION_DENIED`
/// (counted in `pocket_denied_total`).
pub fn authorize<T>(request: &tonic::Request<T>, allowed: &[Role]) -> Result<Identity, tonic::Status> {
    let identity = peer_identity(request)?;
    if allowed.contains(&identity.role) {
        Ok(identity)
    } else {
        metrics::counter!("pocket_denied_total", "role" => identity.role.as_str()).increment(1);
        Err(tonic::Status::permission_denied(format!(
            "{identity} may not call this service; allowed roles: {}",
            allowed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
        )))
    }
}

/// An interceptor that refuses callers whose role is not in `allowed` before
/// their request body is decoded (each method still checks its own roles).
#[derive(Clone, Copy)]
pub struct RoleGate {
    allowed: &'static [Role],
}

impl RoleGate {
    pub const fn new(allowed: &'static [Role]) -> RoleGate {
        RoleGate { allowed }
    }
}

impl tonic::service::Interceptor for RoleGate {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        authorize(&request, self.allowed)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_parse_strictly() {
        assert_eq!(Identity::parse("osd:osd-3"), Ok(Identity::new(Role::Osd, "osd-3")));
        assert_eq!(Identity::parse("client:local"), Ok(Identity::new(Role::Client, "local")));
        for bad in ["", "osd", "osd:", "root:x", "client:a b", "client:a:b", &format!("client:{}", "x".repeat(65))] {
            assert!(Identity::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn the_identity_cache_answers_as_parsing_does_and_stays_bounded() {
        let ca = crate::pki::Ca::generate().expect("ca");
        let now = time::OffsetDateTime::now_utc();
        let der_of = |identity: &Identity| {
            let (pem, _key) =
                ca.issue(identity, &["127.0.0.1"], now - time::Duration::days(1), now + time::Duration::days(10)).expect("issue");
            <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::from_pem_slice(pem.as_bytes()).expect("pem").as_ref().to_vec()
        };
        let cache = IdentityCache::new(3);
        let people: Vec<Identity> = (0..5).map(|i| Identity::new(Role::Client, &format!("c{i}"))).collect();
        let ders: Vec<Vec<u8>> = people.iter().map(der_of).collect();
        for round in 0..3 {
            for (person, der) in people.iter().zip(&ders) {
                assert_eq!(cache.identity_of(der).as_ref(), Ok(person), "round {round}");
                assert!(cache.len() <= 3, "the cache holds at most its bound");
            }
        }
        assert_eq!(cache.identity_of(b"garbage"), Err(IdentityError::NotX509));
        assert!(cache.len() <= 3);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(Identity::from_certificate(b"not a certificate"), Err(IdentityError::NotX509));
    }
}
