//! Leaf certificates for intercepted hosts, minted with the operator's CA
//! and kept in a bounded least-recently-used cache.
//!
//! Minting costs a key generation and a signature (about a millisecond in
//! a release build); a cached leaf costs a map look-up. What is cached is
//! the host's whole TLS server configuration, so its session cache lives
//! on and returning clients resume. The cache is keyed by host name,
//! which a client chooses among the listed patterns (any name under
//! `*.suffix`), so it is bounded by `max_cached_certs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// How long a minted leaf is valid: clients that cap a certificate's
/// lifetime (some cap private CAs' too) accept it, and eddy mints a new one
/// long before it ends (a restart, or the cache dropping it).
const LEAF_DAYS: i64 = 90;

/// The operator's CA, able to sign leaves.
pub(crate) struct Minter {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    cache: Mutex<Cache>,
}

struct Cache {
    max: usize,
    tick: u64,
    leaves: HashMap<String, (Arc<ServerConfig>, u64)>,
}

/// One leaf for every handshake of a host's configuration.
#[derive(Debug)]
struct Leaf(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Leaf {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl Minter {
    /// From the CA certificate and key, both PEM.
    pub(crate) fn new(ca_pem: &str, key_pem: &str, max: usize) -> Result<Minter, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("the CA key: {e}"))?;
        let key_der = key.serialize_der();
        let issuer = Issuer::from_ca_cert_pem(ca_pem, key)
            .map_err(|e| format!("the CA certificate: {e}"))?;
        let ca_der: CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes())
                .map_err(|e| format!("the CA certificate: {e}"))?;
        // The key must be the certificate's own, or every leaf it signs
        // fails every client's handshake.
        let ca_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
        let signing = rustls::crypto::ring::sign::any_supported_type(&ca_key)
            .map_err(|e| format!("the CA key: {e}"))?;
        CertifiedKey::new(vec![ca_der.clone()], signing)
            .keys_match()
            .map_err(|_| "the CA key does not belong to the CA certificate".to_string())?;
        Ok(Minter {
            issuer,
            ca_der,
            cache: Mutex::new(Cache {
                max,
                tick: 0,
                leaves: HashMap::new(),
            }),
        })
    }

    /// The TLS server configuration for `host`, with its leaf: cached, or
    /// minted now. HTTP/1.1 is the only application protocol offered.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        if let Some(hit) = self.lock().get(host) {
            return Ok(hit);
        }
        // Minted outside the lock: two connections to a new host at once
        // may both mint; the second one's replaces the first's.
        let leaf = Arc::new(self.mint(host)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Leaf(leaf)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        self.lock().put(host, config.clone());
        Ok(config)
    }

    /// Leaves held now.
    pub(crate) fn cached(&self) -> usize {
        self.lock().leaves.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mint(&self, host: &str) -> Result<CertifiedKey, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.to_string()
                    .try_into()
                    .map_err(|e| format!("{host}: {e}"))?,
            ),
        }];
        params.distinguished_name.push(DnType::CommonName, host);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(LEAF_DAYS);
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing =
            rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| e.to_string())?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            signing,
        ))
    }
}

impl Cache {
    fn get(&mut self, host: &str) -> Option<Arc<ServerConfig>> {
        self.tick += 1;
        let tick = self.tick;
        self.leaves.get_mut(host).map(|(leaf, used)| {
            *used = tick;
            leaf.clone()
        })
    }

    fn put(&mut self, host: &str, leaf: Arc<ServerConfig>) {
        self.tick += 1;
        if !self.leaves.contains_key(host) && self.leaves.len() >= self.max {
            // A linear scan, only when a new leaf was minted (which costs
            // far more): no second structure to keep in step.
            let oldest = self
                .leaves
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(h, _)| h.clone());
            if let Some(h) = oldest {
                self.leaves.remove(&h);
            }
        }
        self.leaves.insert(host.to_string(), (leaf, self.tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, IsCa};

    fn test_ca() -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "eddy unit-test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn leaves_are_cached_up_to_the_bound_least_recently_used_out() {
        let (ca, key) = test_ca();
        let m = Minter::new(&ca, &key, 3).expect("minter");
        let a = m.server_config("a.test").expect("a");
        assert!(Arc::ptr_eq(
            &a,
            &m.server_config("a.test").expect("a again")
        ));
        m.server_config("b.test").expect("b");
        m.server_config("c.test").expect("c");
        // a, touched after b and c, is not the least recently used: b is.
        m.server_config("a.test").expect("a touched");
        m.server_config("d.test").expect("d");
        assert_eq!(m.cached(), 3);
        assert!(Arc::ptr_eq(&a, &m.server_config("a.test").expect("a kept")));
        let cache = m.lock();
        assert!(!cache.leaves.contains_key("b.test"), "b was the oldest");
    }

    #[test]
    fn a_leaf_names_its_host_and_chains_to_the_ca() {
        let (ca, key) = test_ca();
        let m = Minter::new(&ca, &key, 10).expect("minter");
        use rustls::client::danger::ServerCertVerifier;
        // What a client that trusts the CA checks: the chain, and the name.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(m.ca_der.clone()).expect("the CA as a root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let verify = |leaf: &CertifiedKey, name: &str| {
            let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
            verifier.verify_server_cert(
                &leaf.cert[0],
                &leaf.cert[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
        };
        let leaf = m.mint("api.example.com").expect("leaf");
        assert_eq!(leaf.cert.len(), 2);
        verify(&leaf, "api.example.com").expect("the leaf chains to the CA and names its host");
        assert!(
            verify(&leaf, "other.example.com").is_err(),
            "and no other host"
        );
        let ip = m.mint("10.1.2.3").expect("an IP literal host");
        verify(&ip, "10.1.2.3").expect("an IP literal leaf names its address");
        let c = m.server_config("api.example.com").expect("config");
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_key_that_is_not_pem_is_refused() {
        let (ca, _) = test_ca();
        assert!(Minter::new(&ca, "not a key", 10).is_err());
        assert!(Minter::new("not a cert", &test_ca().1, 10).is_err());
        // Another CA's key.
        let err = Minter::new(&ca, &test_ca().1, 10).err().expect("refused");
        assert!(err.contains("does not belong"), "{err}");
    }
}
