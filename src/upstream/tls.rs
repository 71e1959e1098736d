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

use crate::error::chain;

/// TLS settings for connections to one or more origins.
pub(crate) struct TlsProfile {
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
    pub(crate) fn default_roots() -> Result<TlsProfile, String> {
        TlsProfile::build(None, None, None)
    }

    /// A profile from `[[upstream]]` settings; errors name the file.
    pub(crate) fn build(
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

/// How a TLS failure maps onto the Proxy-Status table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// A certificate was the problem: the origin's (eddy refused it) or
    /// eddy's own (the origin refused it, or wanted one eddy does not have).
    Certificate,
    /// Anything else about the handshake or the records.
    Protocol,
}

impl TlsFailure {
    /// The TLS failure in `e`'s chain of sources, if there is one.
    ///
    /// Under TLS 1.3 an origin that requires a client certificate accepts
    /// the handshake as far as eddy can tell, and sends its refusal (the
    /// `certificate_required` alert) only once it has read eddy's
    /// `Finished`: eddy meets it on the first read after sending the
    /// request, as an I/O error of the exchange rather than of the connect.
    /// Found either way, it is a TLS failure, not a terminated connection,
    /// and the request never reached the origin's application.
    pub(crate) fn find(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
        chain(e).find_map(|err| {
            // rustls' error is an I/O error's payload, which is not always
            // its `source()`.
            let inner = err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<rustls::Error>());
            err.downcast_ref::<rustls::Error>()
                .or(inner)
                .map(TlsFailure::of)
        })
    }

    pub(crate) fn of(e: &rustls::Error) -> TlsFailure {
        use rustls::AlertDescription as A;
        match e {
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                TlsFailure::Certificate
            }
            rustls::Error::AlertReceived(
                A::CertificateRequired
                | A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA,
            ) => TlsFailure::Certificate,
            _ => TlsFailure::Protocol,
        }
    }

    /// The Proxy-Status error for this failure; `reason` is `e` with its
    /// sources (hyper's own text for the exchange is only "connection
    /// error"; the alert is further down).
    pub(crate) fn error(
        self,
        origin: String,
        e: &(dyn std::error::Error + 'static),
    ) -> crate::error::ProxyError {
        let mut reason = String::new();
        for s in chain(e) {
            let text = s.to_string();
            if !reason.ends_with(&text) {
                if !reason.is_empty() {
                    reason.push_str(": ");
                }
                reason.push_str(&text);
            }
        }
        match self {
            TlsFailure::Certificate => crate::error::ProxyError::TlsCertificate { origin, reason },
            TlsFailure::Protocol => crate::error::ProxyError::TlsProtocol { origin, reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_client_certificate_is_a_certificate_failure_wherever_it_surfaces() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        // As the first read after the TLS 1.3 handshake sees it: inside an
        // I/O error, inside the exchange's error.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, alert);
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("exchange failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(TlsFailure::find(&Outer(io)), Some(TlsFailure::Certificate));
        let other = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert_eq!(TlsFailure::of(&other), TlsFailure::Protocol);
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(TlsFailure::find(&plain), None);
    }
}
