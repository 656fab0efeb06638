//! In-flight caps on the inbound side: `global` requests to the app at
//! once, and `per_route` to one path. The per-path counts exist only while
//! a path has requests in flight, so their memory is bounded by `global`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntGauge};

use crate::config::InboundConcurrency;
use crate::metrics::Metrics;

/// The caps and their counts.
pub struct InFlightCaps {
    config: InboundConcurrency,
    global: AtomicU32,
    per_route: Mutex<HashMap<String, u32>>,
    global_gauge: IntGauge,
    route_gauge: IntGauge,
    global_reached: IntCounter,
    route_reached: IntCounter,
}

/// A request's slots; freed on drop.
pub struct Slot {
    caps: Arc<InFlightCaps>,
    path: String,
}

/// Which cap refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `global`.
    Global,
    /// `per_route`.
    Route,
}

impl InFlightCaps {
    /// Caps for `config`, counted in the `concurrency_*` families with `service="app"`.
    pub fn new(config: InboundConcurrency, metrics: &Metrics) -> Self {
        let gauge = |scope: &str| {
            metrics
                .concurrency_in_flight
                .with_label_values(&[scope, "app"])
        };
        let reached = |scope: &str| {
            metrics
                .concurrency_limit_reached
                .with_label_values(&[scope, "app"])
        };
        InFlightCaps {
            config,
            global: AtomicU32::new(0),
            per_route: Mutex::new(HashMap::new()),
            global_gauge: gauge("global"),
            route_gauge: gauge("route"),
            global_reached: reached("global"),
            route_reached: reached("route"),
        }
    }

    /// Takes a global and a per-path slot for `path`, or says which cap is full.
    pub fn enter(self: &Arc<Self>, path: &str) -> Result<Slot, Full> {
        let limit = self.config.global;
        if self
            .global
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_err()
        {
            self.global_reached.inc();
            return Err(Full::Global);
        }
        let admitted = match self.per_route.lock() {
            Ok(mut routes) => {
                let count = routes.entry(path.to_string()).or_insert(0);
                let room = *count < self.config.per_route;
                if room {
                    *count += 1;
                } else if *count == 0 {
                    routes.remove(path);
                }
                room
            }
            Err(_) => true,
        };
        if !admitted {
            self.global.fetch_sub(1, Ordering::AcqRel);
            self.route_reached.inc();
            return Err(Full::Route);
        }
        self.global_gauge.inc();
        self.route_gauge.inc();
        Ok(Slot {
            caps: Arc::clone(self),
            path: path.to_string(),
        })
    }
}

/// The app's body breaking off is the app's to report.
impl crate::http::forward::StreamGuard for Slot {}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.caps.per_route.lock() {
            if let Some(count) = routes.get_mut(&self.path) {
                *count -= 1;
                if *count == 0 {
                    routes.remove(&self.path);
                }
            }
        }
        self.caps.global.fetch_sub(1, Ordering::AcqRel);
        self.caps.global_gauge.dec();
        self.caps.route_gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(global: u32, per_route: u32) -> Arc<InFlightCaps> {
        Arc::new(InFlightCaps::new(
            InboundConcurrency { global, per_route },
            &Metrics::new(),
        ))
    }

    #[test]
    fn a_path_gets_at_most_per_route_slots() {
        let caps = caps(10, 2);
        let (a, b) = (
            caps.enter("/a").expect("room"),
            caps.enter("/a").expect("room"),
        );
        assert_eq!(caps.enter("/a").err(), Some(Full::Route));
        let other = caps.enter("/b").expect("another path has its own count");
        drop(a);
        let again = caps.enter("/a").expect("a slot came free");
        drop((b, other, again));
        assert!(
            caps.per_route.lock().expect("lock").is_empty(),
            "idle paths leave no entry"
        );
    }

    #[test]
    fn the_global_cap_covers_every_path() {
        let caps = caps(2, 5);
        let _held = (
            caps.enter("/a").expect("room"),
            caps.enter("/b").expect("room"),
        );
        assert_eq!(caps.enter("/c").err(), Some(Full::Global));
    }
}
