//! TLS origination: the client side of eddy's connections to `https://`
//! origins.
//!
//! One [`TlsProfile`] per distinct set of TLS settings (`ca_file`,
//! `client_cert`/`client_key`, `sni`), built once at start-up. Each holds
//! its own `rustls::ClientConfig`, and with it rustls' in-memory session
//! cache, so a new connection to an origin eddy has talked to resumes the
//! session instead of paying a full handshake. The crypto provider is
//! `ring`, which builds with a C compiler alone.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// TLS settings for connections to one or more origins.
pub struct TlsProfile {
    /// Distinguishes profiles in the pool key.
    pub(crate) id: u64,
    pub(crate) config: Arc<ClientConfig>,
    /// The same settings offering `h2` by ALPN (for `http2 = true`).
    pub(crate) config_h2: Arc<ClientConfig>,
    /// The server name to present instead of the origin's host.
    pub(crate) sni: Option<ServerName<'static>>,
}

impl fmt::Debug for TlsProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsProfile")
            .field("id", &self.id)
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl TlsProfile {
    /// The default profile: webpki roots, the origin's host as SNI.
    pub fn default_roots() -> Result<TlsProfile, String> {
        TlsProfile::build(None, None, None)
    }

    /// A profile from `[[upstream]]` settings; errors name the file.
    pub fn build(
        ca_file: Option<&Path>,
        client_auth: Option<(&Path, &Path)>,
        sni: Option<&str>,
    ) -> Result<TlsProfile, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let certs = read_certs(path)?;
            if certs.is_empty() {
                return Err(format!("{}: no certificates found", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match client_auth {
            Some((cert_path, key_path)) => {
                let chain = read_certs(cert_path)?;
                let key = PrivateKeyDer::from_pem_file(key_path)
                    .map_err(|e| format!("{}: {e}", key_path.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{}: {e}", cert_path.display()))?
            }
            None => builder.with_no_client_auth(),
        };
        let mut config_h2 = config.clone();
        config_h2.alpn_protocols = vec![b"h2".to_vec()];
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let sni = match sni {
            Some(name) => Some(
                ServerName::try_from(name.to_string())
                    .map_err(|_| format!("sni {name:?} is not a valid server name"))?,
            ),
            None => None,
        };
        Ok(TlsProfile {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            config: Arc::new(config),
            config_h2: Arc::new(config_h2),
            sni,
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}
