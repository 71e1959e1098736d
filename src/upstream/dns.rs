//! Origin names to addresses, and how long an answer stays in use.
//!
//! Pooled connections outlive the DNS answer they were opened on. When an
//! origin moves (a blue/green switch, a failover, a load balancer rotating
//! its addresses) a pool that resolved once keeps talking to the old
//! address for as long as its connections live. So eddy keeps one answer
//! per name, uses it for its TTL but never longer than `dns_refresh` (an
//! `/etc/hosts` entry has no TTL: `dns_refresh` alone), and the pool asks
//! again for the names it holds connections to as their answers run out
//! (`pool::follow`), whether or not a request needs a new connection.
//!
//! The resolver is hickory's, reading `/etc/resolv.conf` and `/etc/hosts`
//! like the system's. Its own cache is off: a cached answer below this one
//! would make `dns_refresh` meaningless. The two files are read again when
//! they change (the kubelet rewrites a pod's `/etc/hosts`).
//!
//! When a lookup fails, the last answer stays in use and the name is asked
//! again a few seconds later: a resolver that is briefly down must not take
//! every origin with it (RFC 8767 serves stale answers for the same reason).
//! For the same reason a connect never waits long on a name it has an
//! answer for: an answer that ran out less than `dns_refresh` ago is used
//! at once while one lookup renews it in the background, and an older one
//! gives the lookup at most [`HELD_LOOKUP_BUDGET`] before it is used.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use tokio::time::{timeout_at, Instant};

use crate::error::ProxyError;

/// Names whose answers are kept. A forward proxy's clients choose the
/// names, so the map is bounded; past it the least recently used answer
/// is dropped (and asked for again if it is needed).
const MAX_NAMES: usize = 4096;

/// No answer is asked for again sooner than this after it arrived,
/// whatever its TTL (a TTL of 0 would otherwise mean a lookup for every
/// new connection).
const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// After a failed lookup the last answer is used this long (or
/// `dns_refresh`, if shorter) before the name is asked for again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// The longest a connect waits on a lookup for a name it holds an older
/// answer for; past it, the old answer is used.
const HELD_LOOKUP_BUDGET: Duration = Duration::from_secs(1);

/// The longest a background renewal waits on the resolver.
const BACKGROUND_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

const SYSTEM_FILES: [&str; 2] = ["/etc/resolv.conf", "/etc/hosts"];

/// How long an answer with `ttl` left is used before the name is asked
/// for again, under `ceiling` (`dns_refresh`).
pub(crate) fn lifetime(ttl: Option<Duration>, ceiling: Duration) -> Duration {
    ttl.unwrap_or(ceiling)
        .min(ceiling)
        .max(MIN_LIFETIME.min(ceiling))
}

/// The addresses of one name, as they are now, in the order the answer
/// gave them.
pub(crate) type AddressSet = Arc<[IpAddr]>;

struct Answer {
    addrs: AddressSet,
    /// Asked for again from this moment on.
    fresh_until: Instant,
    last_used: Instant,
    /// A background renewal is under way (one per name at a time).
    renewing: bool,
}

/// What a connect finds held for a name.
enum Held {
    Fresh(AddressSet),
    /// Ran out recently: use it; renew it in the background if `renew`.
    Recent(AddressSet, bool),
    /// Ran out long ago: look up, but not for long.
    Old,
    None,
}

/// The resolver and what the system files looked like when it was built.
struct System {
    /// Built at the first name eddy looks up: an eddy whose origins are
    /// all IP literals never reads the system files or holds a resolver.
    resolver: Option<Arc<TokioResolver>>,
    files: Vec<Option<(std::time::SystemTime, u64)>>,
}

pub(crate) struct Resolver {
    system: Mutex<System>,
    answers: Mutex<HashMap<Box<str>, Answer>>,
    /// Bumped whenever a name's set of addresses changes: a connection
    /// remembers the value it was opened under and checks its address
    /// again only when this moved.
    changes: AtomicU64,
    /// Turns the order new connections try addresses in, so they spread
    /// over all of a name's addresses.
    turn: AtomicUsize,
    /// Names being looked up for a connect with no answer held: the first
    /// connect asks, the others wait for its answer (a burst of requests to
    /// a new name makes one query, not one per connection). Bounded by the
    /// connects in flight.
    asking: Mutex<HashMap<Box<str>, Arc<tokio::sync::Mutex<()>>>>,
    /// An answer was dropped to keep the map bounded: from then on a name
    /// that arrives counts as a change, since it may be one whose
    /// connections were checked against the answer that was dropped.
    evicted: std::sync::atomic::AtomicBool,
    /// Queries sent to the system resolver, for the tests.
    #[cfg(test)]
    queries: AtomicUsize,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new()
    }
}

impl Resolver {
    pub(crate) fn new() -> Resolver {
        Resolver {
            system: Mutex::new(System {
                resolver: None,
                files: Vec::new(),
            }),
            answers: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            turn: AtomicUsize::new(0),
            asking: Mutex::new(HashMap::new()),
            evicted: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            queries: AtomicUsize::new(0),
        }
    }

    /// The addresses to dial for `host`, in the order to try them: an IP
    /// literal as it is, a name from its answer (asked for if it has none
    /// or it ran out), under `deadline`.
    pub(crate) async fn addresses(
        self: &Arc<Self>,
        host: &str,
        ceiling: Duration,
        deadline: Instant,
    ) -> Result<Vec<IpAddr>, ProxyError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let now = Instant::now();
        let held = {
            let mut answers = lock(&self.answers);
            match answers.get_mut(host) {
                Some(a) => {
                    a.last_used = now;
                    if now < a.fresh_until {
                        Held::Fresh(a.addrs.clone())
                    } else if now < a.fresh_until + ceiling {
                        let renew = !a.renewing;
                        a.renewing = true;
                        Held::Recent(a.addrs.clone(), renew)
                    } else {
                        Held::Old
                    }
                }
                None => Held::None,
            }
        };
        let addrs = match held {
            Held::Fresh(addrs) => addrs,
            Held::Recent(addrs, renew) => {
                if renew {
                    let this = self.clone();
                    let host = host.to_string();
                    tokio::spawn(async move {
                        let deadline = Instant::now() + BACKGROUND_LOOKUP_TIMEOUT;
                        let _ = this.lookup(&host, ceiling, deadline).await;
                    });
                }
                addrs
            }
            Held::Old => {
                let budget = deadline.min(now + HELD_LOOKUP_BUDGET);
                self.lookup(host, ceiling, budget).await?
            }
            Held::None => self.first_lookup(host, ceiling, deadline).await?,
        };
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Ok(dial_order(&addrs, turn))
    }

    /// A lookup for a name with no answer held, one at a time per name:
    /// a connect that waited on another's finds its answer held.
    async fn first_lookup(
        &self,
        host: &str,
        ceiling: Duration,
        deadline: Instant,
    ) -> Result<AddressSet, ProxyError> {
        let turn = lock(&self.asking).entry(host.into()).or_default().clone();
        let asked = match timeout_at(deadline, turn.lock()).await {
            Ok(_asking) => {
                let held = self.current(host);
                match held {
                    Some(addrs) => Ok(addrs),
                    None => self.lookup(host, ceiling, deadline).await,
                }
            }
            Err(_) => Err(ProxyError::Dns {
                host: host.to_string(),
                reason: "lookup timed out".into(),
            }),
        };
        // The last one out removes the name's entry.
        let mut asking = lock(&self.asking);
        if Arc::strong_count(&turn) <= 2 {
            asking.remove(host);
        }
        asked
    }

    /// When `host`'s answer runs out, if eddy holds one.
    pub(crate) fn fresh_until(&self, host: &str) -> Option<Instant> {
        lock(&self.answers).get(host).map(|a| a.fresh_until)
    }

    /// `host`'s addresses as eddy knows them now, without asking: `None`
    /// for an IP literal or a name with no answer held.
    pub(crate) fn current(&self, host: &str) -> Option<AddressSet> {
        lock(&self.answers).get(host).map(|a| a.addrs.clone())
    }

    /// See [`Resolver::changes`]'s field.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Asks for `host` again (a change shows in [`Resolver::changes`]; a
    /// failure keeps the last answer).
    pub(crate) async fn refresh(&self, host: &str, ceiling: Duration, deadline: Instant) {
        let _ = self.lookup(host, ceiling, deadline).await;
    }

    /// One lookup; the answer is kept and returned.
    async fn lookup(
        &self,
        host: &str,
        ceiling: Duration,
        deadline: Instant,
    ) -> Result<AddressSet, ProxyError> {
        let dns_error = |reason: String| ProxyError::Dns {
            host: host.to_string(),
            reason,
        };
        let bare = host.trim_end_matches('.');
        if bare == "invalid" || bare.ends_with(".invalid") {
            return Err(dns_error(
                "names under .invalid never resolve (RFC 6761)".into(),
            ));
        }
        let resolver = self.resolver();
        #[cfg(test)]
        self.queries.fetch_add(1, Ordering::Relaxed);
        let looked_up = match timeout_at(deadline, resolver.lookup_ip(host)).await {
            Ok(Ok(found)) => {
                let ttl = found
                    .valid_until()
                    .checked_duration_since(std::time::Instant::now());
                let mut addrs: Vec<IpAddr> = Vec::new();
                for ip in found.iter() {
                    if !addrs.contains(&ip) && addrs.len() < 16 {
                        addrs.push(ip);
                    }
                }
                if addrs.is_empty() {
                    Err("no addresses".to_string())
                } else {
                    Ok((AddressSet::from(addrs), ttl))
                }
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("lookup timed out".to_string()),
        };
        let now = Instant::now();
        let mut answers = lock(&self.answers);
        match looked_up {
            Ok((addrs, ttl)) => {
                let fresh_until = now + lifetime(ttl, ceiling);
                let changed = match answers.get_mut(host) {
                    Some(held) => {
                        let changed = !same_set(&held.addrs, &addrs);
                        if changed {
                            tracing::info!(host, from = ?held.addrs, to = ?addrs, "origin's addresses changed");
                        }
                        held.addrs = addrs.clone();
                        held.fresh_until = fresh_until;
                        held.last_used = now;
                        held.renewing = false;
                        changed
                    }
                    None => {
                        if answers.len() >= MAX_NAMES {
                            drop_least_recent(&mut answers);
                            self.evicted.store(true, Ordering::Relaxed);
                        }
                        answers.insert(
                            host.into(),
                            Answer {
                                addrs: addrs.clone(),
                                fresh_until,
                                last_used: now,
                                renewing: false,
                            },
                        );
                        self.evicted.load(Ordering::Relaxed)
                    }
                };
                if changed {
                    self.changes.fetch_add(1, Ordering::AcqRel);
                }
                Ok(addrs)
            }
            Err(reason) => match answers.get_mut(host) {
                Some(held) => {
                    tracing::warn!(host, error = %reason, "DNS lookup failed; the last answer stays in use");
                    held.fresh_until = now + RETRY_AFTER_FAILURE.min(ceiling);
                    held.renewing = false;
                    Ok(held.addrs.clone())
                }
                None => Err(dns_error(reason)),
            },
        }
    }

    /// The resolver, built again if the system files changed.
    /// Checked at every lookup (two `stat`s; a name is looked up at most
    /// about once a second), so an edit is in force at the next lookup.
    fn resolver(&self) -> Arc<TokioResolver> {
        let mut system = lock(&self.system);
        let files = fingerprint();
        if system.resolver.is_some() && files != system.files {
            tracing::info!("resolv.conf or /etc/hosts changed; reading them again");
            system.resolver = None;
        }
        system.files = files;
        system
            .resolver
            .get_or_insert_with(|| Arc::new(build_resolver()))
            .clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn same_set(a: &[IpAddr], b: &[IpAddr]) -> bool {
    a.len() == b.len() && a.iter().all(|ip| b.contains(ip))
}

fn drop_least_recent(answers: &mut HashMap<Box<str>, Answer>) {
    let oldest = answers
        .iter()
        .min_by_key(|(_, a)| a.last_used)
        .map(|(k, _)| k.clone());
    if let Some(k) = oldest {
        answers.remove(&k);
    }
}

/// Each system file's modification time and length (`None`: missing).
fn fingerprint() -> Vec<Option<(std::time::SystemTime, u64)>> {
    SYSTEM_FILES
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// hickory on the system's configuration, asking for both address
/// families (Happy Eyeballs needs both), with no cache of its own.
fn build_resolver() -> TokioResolver {
    let provider = TokioConnectionProvider::default();
    let mut builder = match TokioResolver::builder_tokio() {
        Ok(b) => b,
        Err(e) => {
            // No resolv.conf (a minimal container): /etc/hosts and IP
            // literals still work; any other name fails to resolve.
            tracing::warn!(error = %e, "no usable /etc/resolv.conf; names resolve from /etc/hosts only");
            TokioResolver::builder_with_config(ResolverConfig::new(), provider)
        }
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = 0;
    builder.build()
}

/// The order to try `addrs` in (RFC 8305, section 4): IPv6 first, as
/// RFC 6724 prefers it, then alternating families, each family's list
/// turned by `turn` so that successive connections start at different
/// addresses.
pub(crate) fn dial_order(addrs: &[IpAddr], turn: usize) -> Vec<IpAddr> {
    let turned = |v: Vec<IpAddr>| -> Vec<IpAddr> {
        if v.is_empty() {
            return v;
        }
        let k = turn % v.len();
        v[k..].iter().chain(&v[..k]).copied().collect()
    };
    let v6 = turned(addrs.iter().copied().filter(IpAddr::is_ipv6).collect());
    let v4 = turned(addrs.iter().copied().filter(IpAddr::is_ipv4).collect());
    let mut out = Vec::with_capacity(addrs.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_answer_lives_for_its_ttl_under_the_ceiling() {
        let s = Duration::from_secs;
        assert_eq!(lifetime(Some(s(5)), s(30)), s(5));
        assert_eq!(lifetime(Some(s(300)), s(30)), s(30));
        // /etc/hosts: no TTL, the ceiling alone.
        assert_eq!(lifetime(None, s(30)), s(30));
        // A TTL of 0 does not mean a lookup per connection.
        assert_eq!(lifetime(Some(s(0)), s(30)), MIN_LIFETIME);
        assert_eq!(lifetime(Some(s(0)), s(1)), s(1));
    }

    #[test]
    fn families_alternate_ipv6_first() {
        let addrs = [ip("10.0.0.1"), ip("10.0.0.2"), ip("2001:db8::1")];
        assert_eq!(
            dial_order(&addrs, 0),
            vec![ip("2001:db8::1"), ip("10.0.0.1"), ip("10.0.0.2")]
        );
    }

    #[test]
    fn successive_connections_start_at_successive_addresses() {
        let addrs = [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")];
        let firsts: Vec<IpAddr> = (0..6).map(|t| dial_order(&addrs, t)[0]).collect();
        assert_eq!(
            firsts,
            vec![
                ip("10.0.0.1"),
                ip("10.0.0.2"),
                ip("10.0.0.3"),
                ip("10.0.0.1"),
                ip("10.0.0.2"),
                ip("10.0.0.3")
            ]
        );
        // Every address, each once, whatever the turn.
        let mut all = dial_order(&addrs, 7);
        all.sort();
        assert_eq!(all, addrs.to_vec());
    }

    #[tokio::test]
    async fn concurrent_first_lookups_of_a_name_resolve_and_leave_nothing_behind() {
        let r = Arc::new(Resolver::new());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                r.addresses("localhost", Duration::from_secs(30), deadline)
                    .await
            }));
        }
        for t in tasks {
            let addrs = t.await.expect("task").expect("localhost resolves");
            assert!(addrs.iter().all(|ip| ip.is_loopback()), "{addrs:?}");
        }
        assert!(lock(&r.asking).is_empty(), "no name left behind");
        assert!(r.current("localhost").is_some());
    }

    /// Connects that arrive while a first lookup of their name is under
    /// way wait for it and take its answer: they send no query of their
    /// own.
    #[tokio::test]
    async fn connects_during_a_first_lookup_wait_for_its_answer() {
        let r = Arc::new(Resolver::new());
        let name = "shared.test";
        // A lookup of the name is under way: its turn is taken.
        let turn = lock(&r.asking).entry(name.into()).or_default().clone();
        let under_way = turn.clone().lock_owned().await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                r.addresses(name, Duration::from_secs(30), deadline).await
            }));
        }
        // All eight wait for the turn: the map, this test's two handles,
        // and one each.
        while Arc::strong_count(&turn) < 11 {
            tokio::task::yield_now().await;
        }
        // The lookup under way ends with an answer.
        let now = Instant::now();
        lock(&r.answers).insert(
            name.into(),
            Answer {
                addrs: AddressSet::from(vec![ip("192.0.2.7")]),
                fresh_until: now + Duration::from_secs(30),
                last_used: now,
                renewing: false,
            },
        );
        drop(turn);
        drop(under_way);
        for t in tasks {
            let addrs = t.await.expect("task").expect("the answer under way");
            assert_eq!(&addrs[..], &[ip("192.0.2.7")]);
        }
        assert_eq!(
            r.queries.load(Ordering::Relaxed),
            0,
            "no query of their own"
        );
        assert!(lock(&r.asking).is_empty(), "no name left behind");
    }

    #[test]
    fn sets_compare_without_order() {
        assert!(same_set(
            &[ip("10.0.0.1"), ip("10.0.0.2")],
            &[ip("10.0.0.2"), ip("10.0.0.1")]
        ));
        assert!(!same_set(&[ip("10.0.0.1")], &[ip("10.0.0.2")]));
    }
}
