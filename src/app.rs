//! The composition root: bind every socket, build the pool and the
//! listeners, and take them down in order on shutdown.
//!
//! [`Eddy::start`] binds before it returns, so a caller (main, or a test
//! with `127.0.0.1:0` addresses) learns the real ports and knows eddy is
//! ready. Shutdown: readiness goes false, listeners close (new connections
//! are refused), in-flight requests get `shutdown_grace` to finish, then
//! idle upstream connections are closed.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::{Config, ListenAddr, ListenerConfig};
use crate::listener::{self, Bound};
use crate::metrics::Metrics;
use crate::proxy::{forward_target, ListenerCtx, ListenerSlot, Router, Target};
use crate::shutdown::{self, ConnTracker, ShutdownTrigger};
use crate::upstream::connect::Connector;
use crate::upstream::tls::TlsProfile;
use crate::upstream::LoopGuard;
use crate::upstream::{DrainLimits, PaceRule, Pool};

/// A running eddy.
pub struct Eddy {
    /// Each listener's name and bound address, in configuration order.
    pub(crate) listeners: Vec<(String, ListenAddr)>,
    /// The admin port's bound address.
    pub admin_addr: SocketAddr,
    pub(crate) admin_state: Arc<AdminState>,
    stop_listeners: ShutdownTrigger,
    stop_admin: ShutdownTrigger,
    tracker: ConnTracker,
    tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    /// One per listener, in configuration order: what a reload replaces.
    pub(crate) slots: Vec<Arc<ListenerSlot>>,
    pub(crate) parts: CtxParts,
}

/// What every listener's context shares and a reload keeps.
pub(crate) struct CtxParts {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pool: Pool,
    pub(crate) loop_guard: Arc<LoopGuard>,
    pub(crate) via: http::HeaderValue,
    /// `[tls_intercept]`, when it lists hosts (loaded at start).
    pub(crate) intercept: Option<Arc<crate::intercept::Interceptor>>,
    /// The listeners' shutdown signal.
    pub(crate) shutdown: crate::shutdown::ShutdownSignal,
}

impl CtxParts {
    /// The context listener `index` serves with under `config`.
    pub(crate) fn listener_ctx(
        &self,
        index: usize,
        lc: &ListenerConfig,
        config: &Config,
        router: &Arc<Router>,
    ) -> ListenerCtx {
        ListenerCtx {
            index,
            name: lc.name.as_str().into(),
            metrics: self.metrics.clone(),
            mode: lc.mode,
            route_target: route_target(lc),
            router: router.clone(),
            pool: self.pool.clone(),
            loop_guard: self.loop_guard.clone(),
            body_pace: PaceRule {
                idle: lc.client_idle_timeout.get(),
                grace: lc.client_body_timeout.get(),
                min_rate: lc.client_body_min_rate.bytes(),
            },
            body_buffer: lc.client_body_buffer.as_usize(),
            preserve_header_case: lc.preserve_header_case,
            retry: config.retry.clone(),
            connect_ports: config.security.connect_ports.clone(),
            allow_hosts: config.security.allow_hosts.clone(),
            via: self.via.clone(),
            tunnels: self.metrics.tunnels.with_label_values(&[&lc.name]),
            tunnels_open: self.metrics.tunnels_open.with_label_values(&[&lc.name]),
            drain: DrainLimits {
                max_bytes: config.drain.max_bytes.bytes(),
                timeout: config.drain.timeout.get(),
            },
            access_log: config.log.access_log,
            intercept: self.intercept.clone(),
            heads: crate::proxy::HeadLimits {
                timeout: lc.client_header_timeout.get(),
                max_bytes: lc.max_header_bytes.as_usize(),
                max_fields: lc.max_headers,
            },
            shutdown: self.shutdown.clone(),
        }
    }
}

/// Why eddy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener or the admin port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address in the configuration.
        addr: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// A TLS file is unusable: an upstream's `ca_file`, `client_cert` or
    /// `client_key`, or `[tls_intercept]`'s CA (unreadable, readable by
    /// group or others, or a key that is not the certificate's).
    #[error("TLS settings: {0}")]
    Tls(String),
}

impl Eddy {
    /// Reads and parses the files a configuration names (`ca_file`,
    /// `client_cert`, `client_key`), as a start would, without binding
    /// anything: what `eddy check` adds to the file's own checks.
    pub fn check_files(config: &Config) -> Result<(), String> {
        TlsProfile::default_roots()?;
        crate::intercept::Interceptor::from_config(&config.tls_intercept)?;
        Router::new(config).map(|_| ())
    }

    /// Binds all sockets and starts serving.
    pub async fn start(config: Config) -> Result<Eddy, StartError> {
        let config = Arc::new(config);
        let mut bound = Vec::new();
        for l in &config.listeners {
            bound.push((l.clone(), bind(&l.listen).await?));
        }
        let admin_listener = match &config.admin.listen {
            ListenAddr::Tcp(addr) => {
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: addr.to_string(),
                        source,
                    })?
            }
            ListenAddr::Unix(p) => {
                return Err(StartError::Bind {
                    addr: p.display().to_string(),
                    source: io::Error::other("the admin port must be a TCP address"),
                })
            }
        };
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.admin.listen.to_string(),
                source,
            })?;
        for w in config.warnings() {
            tracing::warn!("{w}");
        }
        if !admin_addr.ip().is_loopback() {
            tracing::warn!(%admin_addr, "the admin port is reachable from other hosts");
        }

        let own: Vec<SocketAddr> = bound
            .iter()
            .filter_map(|(_, b)| match b {
                Bound::Tcp(l) => l.local_addr().ok(),
                Bound::Unix(..) => None,
            })
            .collect();
        // The admin port too: the configuration and the metrics are not for
        // whoever may use the proxy.
        let mut own = own;
        own.push(admin_addr);
        let loop_guard = Arc::new(LoopGuard::new(own));
        let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        let metrics = Arc::new(Metrics::new(config.metrics.max_upstream_labels, &names));
        let default_tls = Arc::new(TlsProfile::default_roots().map_err(StartError::Tls)?);
        let router = Arc::new(Router::new(&config).map_err(StartError::Tls)?);
        let intercept = crate::intercept::Interceptor::from_config(&config.tls_intercept)
            .map_err(StartError::Tls)?
            .map(Arc::new);
        if let Some(i) = &intercept {
            let hosts: Vec<String> = i.hosts().iter().map(|h| h.to_string()).collect();
            tracing::warn!(
                hosts = ?hosts,
                "TLS interception is on: CONNECT tunnels to these hosts are terminated with the local CA and their requests pooled"
            );
        }
        let pool = Pool::new(
            Connector::new(
                loop_guard.clone(),
                default_tls,
                config.security.deny_cidrs.clone(),
            ),
            config.pool.max_idle_total,
            metrics.clone(),
        );
        pool.register_gauges(&metrics);
        pool.prewarm(router.prewarm_routes());

        let (stop_listeners, listeners_signal) = shutdown::channel();
        let (stop_admin, admin_signal) = shutdown::channel();
        let tracker = ConnTracker::default();
        let mut listeners = Vec::new();
        let mut tasks = Vec::new();
        let mut slots = Vec::new();
        let parts = CtxParts {
            metrics: metrics.clone(),
            pool: pool.clone(),
            loop_guard: loop_guard.clone(),
            via: crate::proxy::via_entry(),
            intercept,
            shutdown: listeners_signal.clone(),
        };
        for (index, (lc, b)) in bound.into_iter().enumerate() {
            let addr = match &b {
                Bound::Tcp(l) => l
                    .local_addr()
                    .map(ListenAddr::Tcp)
                    .unwrap_or(lc.listen.clone()),
                Bound::Unix(_, p) => ListenAddr::Unix(p.clone()),
            };
            listeners.push((lc.name.clone(), addr));
            let slot = Arc::new(ListenerSlot::new(
                parts.listener_ctx(index, &lc, &config, &router),
            ));
            slots.push(slot.clone());
            let signal = listeners_signal.clone();
            let tracker = tracker.clone();
            tasks.push(tokio::spawn(async move {
                listener::serve(b, &lc, slot, signal, tracker).await;
            }));
        }
        let admin_state = Arc::new(AdminState {
            config: RwLock::new(config.clone()),
            pool: pool.clone(),
            metrics: metrics.clone(),
            ready: true.into(),
            history: Default::default(),
        });
        // Before any request: the status page's "recent" figures count from
        // here until the sampler's window fills.
        admin_state.sample();
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            admin_state.clone(),
            admin_signal,
        ));
        for (name, addr) in &listeners {
            tracing::info!(listener = %name, %addr, "listening");
        }
        tracing::info!(%admin_addr, "admin listening");
        tracing::debug!(
            listeners = config.listeners.len(),
            upstreams = config.upstreams.len(),
            "configuration in effect"
        );
        Ok(Eddy {
            listeners,
            admin_addr,
            admin_state,
            stop_listeners,
            stop_admin,
            tracker,
            tasks,
            admin_task,
            slots,
            parts,
        })
    }

    /// The first TCP listener's address (convenient for tests).
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.listeners.iter().find_map(|(_, a)| match a {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        })
    }

    /// Leaf certificates `[tls_intercept]` holds now (0 when it is off).
    pub fn tls_intercept_cached_certs(&self) -> usize {
        self.parts
            .intercept
            .as_ref()
            .map_or(0, |i| i.cached_certs())
    }

    /// Open client connections across all listeners.
    pub fn client_connections(&self) -> usize {
        self.tracker.open()
    }

    /// Graceful shutdown; returns once everything is closed or the grace
    /// period is over.
    pub async fn shutdown(self) {
        // As in effect now: a reload may have changed it.
        let grace = self.config().shutdown_grace.get();
        self.admin_state.ready.store(false, Ordering::Release);
        self.stop_listeners.fire();
        for t in self.tasks {
            let _ = t.await;
        }
        let open = self.tracker.open();
        if open > 0 {
            tracing::info!(open, ?grace, "waiting for in-flight requests");
        }
        if tokio::time::timeout(grace, self.tracker.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.tracker.open(),
                "shutdown grace period over; closing anyway"
            );
        }
        self.parts.pool.shutdown();
        self.stop_admin.fire();
        let _ = self.admin_task.await;
    }
}

fn route_target(lc: &ListenerConfig) -> Option<Target> {
    let url = lc.upstream.as_ref()?;
    // Parsed as plain http only to reuse the authority checks.
    let plain = crate::config::OriginUrl {
        tls: false,
        ..url.clone()
    };
    let uri: http::Uri = plain.to_string().parse().ok()?;
    let mut t = forward_target(&uri).ok()?;
    let default_port = if url.tls { 443 } else { 80 };
    if url.port == default_port {
        t.authority = url.host.clone();
    }
    t.port = url.port;
    t.tls = url.tls;
    Some(t)
}

async fn bind(addr: &ListenAddr) -> Result<Bound, StartError> {
    let err = |source| StartError::Bind {
        addr: addr.to_string(),
        source,
    };
    match addr {
        ListenAddr::Tcp(a) => {
            let l = TcpListener::bind(a).await.map_err(err)?;
            crate::listener::prepare_tcp_listener(&l);
            Ok(Bound::Tcp(l))
        }
        ListenAddr::Unix(path) => {
            remove_stale_socket(path).map_err(err)?;
            let l = UnixListener::bind(path).map_err(err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
            Ok(Bound::Unix(l, path.clone()))
        }
    }
}

/// Removes a socket file left by a previous run; refuses to remove anything
/// that is not a socket.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "path exists and is not a socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
