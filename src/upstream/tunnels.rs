//! The CONNECT tunnels open now, by destination, for `/pools`, the pool
//! gauges and the status page.
//!
//! A tunnel is never pooled, but it is an upstream connection all the same:
//! an operator looking for what eddy holds open must see it. Each open
//! tunnel holds an [`OpenTunnel`]; the map has an entry per destination
//! with at least one open, so it is bounded by the open tunnels, which
//! `max_client_connections` bounds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::origin::Origin;

/// How `/pools`, the `upstream` label and the access log name a tunnel's
/// destination.
pub(crate) fn tunnel_destination(origin: &Origin) -> Arc<str> {
    format!("tcp://{}:{}", origin.host(), origin.port()).into()
}

/// Open tunnels by destination.
#[derive(Default)]
pub(crate) struct Tunnels(Arc<Mutex<HashMap<Arc<str>, usize>>>);

impl Tunnels {
    /// A tunnel to `destination` opened; it counts until the result drops.
    pub(crate) fn open(&self, destination: Arc<str>) -> OpenTunnel {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(destination.clone()).or_default() += 1;
        OpenTunnel {
            map: self.0.clone(),
            destination,
        }
    }

    /// Each destination with the number of tunnels open to it.
    pub(crate) fn snapshot(&self) -> Vec<(Arc<str>, usize)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(d, n)| (d.clone(), *n)).collect()
    }
}

/// One open tunnel, counted while this lives.
pub(crate) struct OpenTunnel {
    map: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    destination: Arc<str>,
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.destination) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.destination);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_is_listed_while_a_tunnel_to_it_is_open() {
        let t = Tunnels::default();
        let a = t.open("tcp://a:443".into());
        let b = t.open("tcp://a:443".into());
        assert_eq!(t.snapshot(), vec![("tcp://a:443".into(), 2)]);
        drop(a);
        assert_eq!(t.snapshot(), vec![("tcp://a:443".into(), 1)]);
        drop(b);
        assert!(t.snapshot().is_empty());
    }
}
