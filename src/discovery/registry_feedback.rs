//! What the `registry` source tells the registry back: one
//! `PUT {url}/increment?service_id=ID` per forwarded request and
//! `DELETE {url}/deregister?service_id=ID` when a replica's breaker opens.
//!
//! Nothing here is on a request's path. Each tick reads the per-replica
//! counters the proxy already keeps (`upstream_requests_total` and
//! `upstream_errors_total`) and the breaker state each replica publishes;
//! the differences are queued and sent at most once per [`FLUSH_EVERY`],
//! one call after another, by a future beside the supervisor. A failed call
//! puts what was not sent back in the queue for the next flush.
//!
//! Increments are only ever for replicas the registry lists: a replica that
//! leaves the listing (or that we deregister) takes its pending increments
//! with it, and a registry answering 404 for one has forgotten it, so its
//! increments are dropped, not retried. Otherwise they would be retried for
//! as long as the sidecar runs and land on the replica if it registers again.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{info, warn};
use prometheus::core::Collector;
use prometheus::IntCounterVec;

use super::FeedbackFuture;
use crate::core::breaker::BreakerState;
use crate::metrics::Metrics;
use crate::service::ServiceTable;

/// How often queued increments and deregistrations are sent.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The registry id of each listed replica, by `(service, address)`.
pub type Ids = HashMap<(String, String), String>;

/// Calls waiting to be sent.
#[derive(Default)]
struct Outbox {
    /// Requests forwarded and not reported yet, by replica id.
    increments: BTreeMap<String, u64>,
    /// Replica ids whose breaker opened.
    deregister: Vec<String>,
    /// A flush is running.
    busy: bool,
}

/// Queues and sends a registry's increments and deregistrations.
pub struct Reporter {
    url: String,
    client: awc::Client,
    /// The ids of the last listing.
    listed: Rc<RefCell<Ids>>,
    deregister_on_trip: bool,
    outbox: Rc<RefCell<Outbox>>,
    /// Forwarded requests counted so far, by `(service, address)`.
    counted: HashMap<(String, String), u64>,
    /// Replicas whose breaker was open at the last tick.
    open: HashSet<(String, String)>,
    last_flush: Instant,
}

impl Reporter {
    /// A reporter to the registry at `url`, naming replicas by the ids of the
    /// latest listing in `listed`.
    pub fn new(
        url: String,
        client: awc::Client,
        listed: Rc<RefCell<Ids>>,
        deregister_on_trip: bool,
    ) -> Self {
        Reporter {
            url,
            client,
            listed,
            deregister_on_trip,
            outbox: Rc::new(RefCell::new(Outbox::default())),
            counted: HashMap::new(),
            open: HashSet::new(),
            last_flush: Instant::now(),
        }
    }

    /// Queues what changed since the last tick; returns a flush when one is due.
    pub fn tick(&mut self, table: &ServiceTable, metrics: &Metrics) -> Option<FeedbackFuture> {
        self.queue_increments(metrics);
        if self.deregister_on_trip {
            self.queue_trips(table);
        }
        let mut outbox = self.outbox.borrow_mut();
        let idle = outbox.increments.is_empty() && outbox.deregister.is_empty();
        if outbox.busy || idle || self.last_flush.elapsed() < FLUSH_EVERY {
            return None;
        }
        self.last_flush = Instant::now();
        outbox.busy = true;
        let increments = std::mem::take(&mut outbox.increments);
        let deregister = std::mem::take(&mut outbox.deregister);
        Some(Box::pin(flush(
            self.url.clone(),
            self.client.clone(),
            Rc::clone(&self.outbox),
            increments,
            deregister,
        )))
    }

    fn queue_increments(&mut self, metrics: &Metrics) {
        let mut now = HashMap::new();
        for family in [&metrics.upstream_requests, &metrics.upstream_errors] {
            add_per_replica(family, &mut now);
        }
        let listed = self.listed.borrow();
        let mut outbox = self.outbox.borrow_mut();
        let listed_ids: HashSet<&String> = listed.values().collect();
        outbox.increments.retain(|id, _| listed_ids.contains(id));
        for (replica, &count) in &now {
            let before = self.counted.get(replica).copied().unwrap_or(0);
            // A series deleted and made again between two ticks restarts from zero.
            let new = if count >= before {
                count - before
            } else {
                count
            };
            if let (Some(id), true) = (listed.get(replica), new > 0) {
                *outbox.increments.entry(id.clone()).or_default() += new;
            }
        }
        self.counted = now;
    }

    fn queue_trips(&mut self, table: &ServiceTable) {
        let mut open = HashSet::new();
        for service in table.iter() {
            for endpoint in service.replicas().iter() {
                if endpoint.status.state() == BreakerState::Open {
                    open.insert((service.name.to_string(), endpoint.address.to_string()));
                }
            }
        }
        let listed = self.listed.borrow();
        let mut outbox = self.outbox.borrow_mut();
        for replica in open.difference(&self.open) {
            match listed.get(replica) {
                Some(id) => {
                    info!(
                        "registry: breaker of {}/{} opened; deregistering {id}",
                        replica.0, replica.1
                    );
                    outbox.increments.remove(id);
                    outbox.deregister.push(id.clone());
                }
                None => warn!(
                    "registry: breaker of {}/{} opened, but the registry does not list it",
                    replica.0, replica.1
                ),
            }
        }
        self.open = open;
    }
}

/// Adds each `(service, replica)` series' counter value of `family` to `into`.
fn add_per_replica(family: &IntCounterVec, into: &mut HashMap<(String, String), u64>) {
    for metric_family in family.collect() {
        for metric in metric_family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
            };
            if let (Some(service), Some(replica)) = (label("service"), label("replica")) {
                *into.entry((service, replica)).or_default() +=
                    metric.get_counter().get_value() as u64;
            }
        }
    }
}

/// How one call to the registry went, when it did not succeed.
enum Refused {
    /// 404: the registry does not know the replica; asking again cannot help.
    Unknown,
    /// Anything else (no answer, another status): worth another try.
    Failed(String),
}

/// Sends the deregistrations, then one increment per forwarded request. A
/// replica the registry answers 404 for is done with: a deregistration of it
/// is complete and its increments are dropped. On any other failure, puts
/// back what was not sent.
async fn flush(
    url: String,
    client: awc::Client,
    outbox: Rc<RefCell<Outbox>>,
    mut increments: BTreeMap<String, u64>,
    mut deregister: Vec<String>,
) {
    let call = |method: awc::http::Method, path: &str, id: &str| {
        let request = client
            .request(method, format!("{url}/{path}"))
            .query(&[("service_id", id)]);
        async move {
            let request = request.map_err(|err| Refused::Failed(err.to_string()))?;
            match request.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) if r.status() == awc::http::StatusCode::NOT_FOUND => Err(Refused::Unknown),
                Ok(r) => Err(Refused::Failed(format!("answered {}", r.status()))),
                Err(err) => Err(Refused::Failed(err.to_string())),
            }
        }
    };
    let mut failure = None;
    while let Some(id) = deregister.first() {
        match call(awc::http::Method::DELETE, "deregister", id).await {
            Ok(()) => {}
            Err(Refused::Unknown) => info!("registry: {id} was already deregistered (404)"),
            Err(Refused::Failed(err)) => {
                failure = Some(format!("DELETE {url}/deregister?service_id={id}: {err}"));
                break;
            }
        }
        deregister.remove(0);
    }
    while failure.is_none() {
        let Some(mut pending) = increments.first_entry() else {
            break;
        };
        match call(awc::http::Method::PUT, "increment", pending.key()).await {
            Ok(()) => {
                *pending.get_mut() -= 1;
                if *pending.get() == 0 {
                    pending.remove();
                }
            }
            Err(Refused::Unknown) => {
                let (id, count) = pending.remove_entry();
                info!("registry: it does not know {id} (404); dropping its {count} pending increment(s)");
            }
            Err(Refused::Failed(err)) => {
                failure = Some(format!(
                    "PUT {url}/increment?service_id={}: {err}",
                    pending.key()
                ));
            }
        }
    }
    let mut outbox = outbox.borrow_mut();
    outbox.busy = false;
    if let Some(failure) = failure {
        warn!("registry: {failure}; will try again");
        outbox.deregister.extend(deregister);
        for (id, count) in increments {
            *outbox.increments.entry(id).or_default() += count;
        }
    }
}
