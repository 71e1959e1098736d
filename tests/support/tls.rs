//! Certificates made at test time (a throwaway CA and a `localhost` leaf)
//! and an HTTPS origin that counts its TLS handshakes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        TestCa { params, key, pem }
    }

    /// A certificate for `localhost` and 127.0.0.1, signed by this CA.
    pub fn leaf(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    /// A client certificate and key signed by this CA, written as PEM files
    /// (for `client_cert` / `client_key`).
    pub fn write_client_pair(&self, name: &str) -> (PathBuf, PathBuf) {
        let params = CertificateParams::new(vec!["eddy-client".to_string()]).expect("params");
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("client certificate");
        let dir = std::env::temp_dir().join(format!("eddy-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (c, k) = (dir.join("client.pem"), dir.join("client.key"));
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let der = CertificateDer::from_pem_slice(self.pem.as_bytes()).expect("CA PEM");
        roots.add(der).expect("CA root");
        roots
    }

    /// Writes the CA certificate where eddy's `ca_file` can read it.
    /// The CA's certificate and key as files (the key mode 0600), for
    /// eddy's `[tls_intercept]`.
    pub fn write_ca_pair(&self, name: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let cert = self.write_pem(name);
        let key = cert.with_file_name("ca.key");
        std::fs::write(&key, self.key.serialize_pem()).expect("write CA key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        (cert, key)
    }

    /// A rustls client configuration that trusts this CA alone.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }

    pub fn write_pem(&self, name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("eddy-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).expect("write CA");
        path
    }
}

pub struct TlsOrigin {
    pub addr: SocketAddr,
    /// Completed TLS handshakes (full or resumed).
    pub handshakes: Arc<AtomicUsize>,
    /// Of those, resumed sessions.
    pub resumed: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    /// The server name (SNI) each handshake asked for, if any.
    pub server_names: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    /// The `Host` header of each request.
    pub hosts: Arc<std::sync::Mutex<Vec<String>>>,
    /// Closes every open connection when sent to.
    kill: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsOrigin {
    pub async fn start(ca: &TestCa) -> TlsOrigin {
        TlsOrigin::start_with(ca, false, false).await
    }

    /// An origin that speaks HTTP/2 (ALPN `h2`) only.
    pub async fn start_h2(ca: &TestCa) -> TlsOrigin {
        TlsOrigin::start_with(ca, false, true).await
    }

    /// An origin that requires a client certificate signed by `ca`.
    pub async fn start_requiring_client_cert(ca: &TestCa) -> TlsOrigin {
        TlsOrigin::start_with(ca, true, false).await
    }

    /// The same, speaking only `version` (TLS 1.2 or 1.3).
    pub async fn start_requiring_client_cert_over(
        ca: &TestCa,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> TlsOrigin {
        TlsOrigin::start_versions(ca, true, false, &[version]).await
    }

    /// Closes every open connection, as an origin restart would.
    pub fn close_all(&self) {
        self.kill.send_modify(|n| *n += 1);
    }

    async fn start_with(ca: &TestCa, client_auth: bool, h2: bool) -> TlsOrigin {
        TlsOrigin::start_versions(ca, client_auth, h2, rustls::DEFAULT_VERSIONS).await
    }

    async fn start_versions(
        ca: &TestCa,
        client_auth: bool,
        h2: bool,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsOrigin {
        let (chain, key) = ca.leaf();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("protocols");
        let builder = if client_auth {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handshakes = Arc::new(AtomicUsize::new(0));
        let resumed = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (kill, killed) = tokio::sync::watch::channel(0u64);
        let server_names = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hosts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, res, r) = (handshakes.clone(), resumed.clone(), requests.clone());
        let (names, hs) = (server_names.clone(), hosts.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, h, res, r) = (acceptor.clone(), h.clone(), res.clone(), r.clone());
                let (names, hs) = (names.clone(), hs.clone());
                let mut killed = killed.clone();
                killed.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    names
                        .lock()
                        .expect("names")
                        .push(tls.get_ref().1.server_name().map(str::to_string));
                    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        res.fetch_add(1, Ordering::SeqCst);
                    }
                    let conn = h.fetch_add(1, Ordering::SeqCst);
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let host = req
                            .headers()
                            .get(hyper::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .or_else(|| req.uri().authority().map(|a| a.as_str()))
                            .unwrap_or("")
                            .to_string();
                        hs.lock().expect("hosts").push(host);
                        async move {
                            let mut resp = hyper::Response::new(Full::new(Bytes::from("tls ok\n")));
                            resp.headers_mut()
                                .insert("x-conn", conn.to_string().parse().expect("header"));
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let io = TokioIo::new(tls);
                    if h2 {
                        let serve = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(io, svc);
                        tokio::select! {
                            _ = serve => {}
                            _ = killed.changed() => {}
                        }
                    } else {
                        let serve =
                            hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
                        tokio::select! {
                            _ = serve => {}
                            _ = killed.changed() => {}
                        }
                    }
                });
            }
        });
        TlsOrigin {
            addr,
            handshakes,
            resumed,
            requests,
            server_names,
            hosts,
            kill,
            task,
        }
    }
}
