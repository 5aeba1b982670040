//! A small PKI for a pocket: a CA and certificates whose subject common name
//! is the holder's identity (`ROLE:NAME`). `pocket up` uses it to make the
//! embedded default secure without a manual step; production configs point
//! at certificates from the operator's own PKI instead.
//!
//! Files in a PKI directory: `ca.pem`, `ca.key`, and per identity
//! `<role>-<name>.pem` / `<role>-<name>.key`. Keys are written mode 0600.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::identity::Identity;
use crate::tls::TlsConfig;

/// Subject common name of a pocket CA.
const CA_COMMON_NAME: &str = "pocket-ca";
/// Validity of a local CA.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Validity of a certificate issued by `pocket up`.
pub const LEAF_VALIDITY: Duration = Duration::days(365);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// A certificate authority able to issue identities.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    key_pem: String,
}

impl Ca {
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params()?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca { cert_pem: cert.pem(), issuer: Issuer::new(params, key), key_pem })
    }

    /// Loads a CA written by [`Ca::write`].
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        // The issuer is the CA's name and key; the same name and key sign
        // exactly as the original CA does.
        Ok(Ca { cert_pem, issuer: Issuer::new(ca_params()?, key), key_pem })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` and `ca.key` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write_file(&dir.join("ca.pem"), self.cert_pem.as_bytes(), false)?;
        write_file(&dir.join("ca.key"), self.key_pem.as_bytes(), true)
    }

    /// Issues a certificate for `identity`, valid from `not_before` to
    /// `not_after`, for the DNS names / IP addresses in `hosts` plus, for a
    /// daemon, its identity's DNS names (`Identity::dns_names`). Daemon roles
    /// get server and client usage; clients and operators client usage only,
    /// so their certificates cannot impersonate a daemon.
    pub fn issue(
        &self,
        identity: &Identity,
        hosts: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, identity.common_name());
        params.distinguished_name = name;
        let names = identity.dns_names();
        params.subject_alt_names = hosts
            .iter()
            .copied()
            .chain(names.iter().map(String::as_str))
            .map(|host| match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(host.try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = if identity.role.is_daemon() {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// File stem of an identity's certificate and key in a PKI directory.
pub fn file_stem(identity: &Identity) -> String {
    format!("{}-{}", identity.role.as_str(), identity.name)
}

/// The [`TlsConfig`] of `identity` in PKI directory `dir`.
pub fn tls_config(dir: &Path, identity: &Identity) -> TlsConfig {
    let stem = file_stem(identity);
    TlsConfig { ca: dir.join("ca.pem"), cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}.key")) }
}

/// Makes sure `dir` holds a CA and a certificate for each of `identities`
/// (valid for loopback), generating what is missing. Existing files are kept,
/// so a pocket restarted on the same directory keeps its identities.
pub fn ensure_local(dir: &Path, identities: &[Identity]) -> Result<(), PkiError> {
    let ca = if dir.join("ca.pem").exists() && dir.join("ca.key").exists() {
        Ca::load(dir)?
    } else {
        let ca = Ca::generate()?;
        ca.write(dir)?;
        ca
    };
    let now = OffsetDateTime::now_utc();
    for identity in identities {
        let config = tls_config(dir, identity);
        if config.key.exists() && valid_for_a_while(&config.cert, now) && carries_names(&config.cert, identity) {
            continue;
        }
        let (cert, key) = ca.issue(identity, &["127.0.0.1", "localhost", "::1"], now - Duration::hours(1), now + LEAF_VALIDITY)?;
        write_file(&config.key, key.as_bytes(), true)?;
        write_file(&config.cert, cert.as_bytes(), false)?;
    }
    Ok(())
}

/// A certificate is reissued when it expires within this: `pocket up` renews
/// its local identities on any start inside the window.
const RENEW_BEFORE: Duration = Duration::days(30);

/// Whether the certificate at `path` exists, parses and is valid past
/// `now + RENEW_BEFORE`.
fn valid_for_a_while(path: &Path, now: OffsetDateTime) -> bool {
    use rustls_pki_types::pem::PemObject;
    let Ok(pem) = std::fs::read(path) else { return false };
    let Ok(der) = rustls_pki_types::CertificateDer::from_pem_slice(&pem) else { return false };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return false };
    cert.validity().not_after.timestamp() > (now + RENEW_BEFORE).unix_timestamp()
}

/// Whether the certificate at `path` carries every DNS name of `identity`
/// (certificates from before role names were added are reissued).
fn carries_names(path: &Path, identity: &Identity) -> bool {
    use rustls_pki_types::pem::PemObject;
    let Ok(pem) = std::fs::read(path) else { return false };
    let Ok(der) = rustls_pki_types::CertificateDer::from_pem_slice(&pem) else { return false };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return false };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return identity.dns_names().is_empty() };
    let present: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect();
    identity.dns_names().iter().all(|name| present.contains(name))
}

/// Writes atomically (tmp + rename); `secret` files are created mode 0600.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    #[test]
    fn issued_certificates_carry_the_identity_and_a_reloaded_ca_still_signs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let osd = Identity::new(Role::Osd, "osd-1");
        ensure_local(dir.path(), std::slice::from_ref(&osd)).expect("pki");
        let pem = std::fs::read(tls_config(dir.path(), &osd).cert).expect("cert");
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).expect("pem");
        assert_eq!(Identity::from_certificate(der.as_ref()), Ok(osd));

        let ca_before = std::fs::read(dir.path().join("ca.pem")).expect("ca");
        let client = Identity::new(Role::Client, "later");
        ensure_local(dir.path(), std::slice::from_ref(&client)).expect("pki again");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).expect("ca"), ca_before, "the CA must be reused, not replaced");
        let pem = std::fs::read(tls_config(dir.path(), &client).cert).expect("cert");
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).expect("pem");
        assert_eq!(Identity::from_certificate(der.as_ref()), Ok(client));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_certificate_close_to_expiry_is_renewed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = Identity::new(Role::Client, "soon");
        ensure_local(dir.path(), std::slice::from_ref(&client)).expect("pki");
        let now = OffsetDateTime::now_utc();
        let (cert, key) = Ca::load(dir.path())
            .expect("ca")
            .issue(&client, &["127.0.0.1"], now - Duration::days(1), now + Duration::days(10))
            .expect("issue");
        let config = tls_config(dir.path(), &client);
        std::fs::write(&config.cert, cert).expect("write");
        std::fs::write(&config.key, key).expect("write");
        assert!(!valid_for_a_while(&config.cert, now), "10 days left is inside the renewal window");
        ensure_local(dir.path(), std::slice::from_ref(&client)).expect("renew");
        assert!(valid_for_a_while(&config.cert, now), "the certificate was not renewed");
    }

    use rustls_pki_types::pem::PemObject;
}
