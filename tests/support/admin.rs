//! What a running sidecar's admin listener reports: discovery sync counts,
//! the replicas a service has, the checks that a failed discovery read
//! kept the last good set, and a breaker's state.

use serde_json::Value;

use super::client::{get_json, get_text, status_of};
use super::metrics::metric;

/// `discovery_syncs_total{source,result}` as the sidecar at `admin` (a base URL) counts it.
pub async fn discovery_syncs(admin: &str, source: &str, result: &str) -> f64 {
    let metrics = get_text(&format!("{admin}/metrics")).await;
    let series =
        format!("outrigger_discovery_syncs_total{{result=\"{result}\",source=\"{source}\"}}");
    metric(&metrics, &series).unwrap_or(0.0)
}

/// The replicas `/services` lists for the first service.
pub async fn first_service_replicas(admin: &str) -> Vec<Value> {
    let (_, services) = get_json(&format!("{admin}/services")).await;
    services["services"][0]["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// After a failed discovery read: still ready, `url` still answers, and
/// `service` still has `replicas` replicas.
pub async fn assert_last_set_kept(admin: &str, url: &str, service: &str, replicas: usize) {
    assert_eq!(status_of(&format!("{admin}/ready")).await, Some(200));
    assert_eq!(status_of(url).await, Some(200), "the last good set is kept");
    let metrics = get_text(&format!("{admin}/metrics")).await;
    let series = format!("outrigger_discovery_replicas{{service=\"{service}\"}}");
    assert_eq!(metric(&metrics, &series), Some(replicas as f64));
}

/// The state of the breaker `key` (`service/replica`) as `GET
/// /circuit-breakers` on `admin` shows it, or `missing`.
pub async fn breaker_state(admin: &str, key: &str) -> String {
    let (_, body) = get_json(&format!("{admin}/circuit-breakers")).await;
    body["circuit_breakers"][key]["state"]
        .as_str()
        .unwrap_or("missing")
        .to_string()
}
