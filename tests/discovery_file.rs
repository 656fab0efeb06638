//! The `file` source: replicas follow a watched YAML endpoints file, `/ready`
//! waits for its first good read, a broken file keeps the last good set, and
//! rewriting the file under load moves traffic without failing a request.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use outrigger::Sidecar;
use support::admin::{assert_last_set_kept, discovery_syncs};
use support::client::{get_json, get_text, status_of, Load};
use support::eventually::eventually;
use support::files::{swap_in, TempDir};
use support::replica::Replica;
use support::sidecar::{config_with, sidecar_with};

fn discovery(path: &Path) -> String {
    format!(
        "discovery: {{ source: file, refresh: 30s, file: {{ path: \"{}\" }} }}",
        path.display()
    )
}

async fn file_errors(admin: &str) -> f64 {
    discovery_syncs(admin, "file", "error").await
}

#[actix_web::test]
async fn ready_waits_for_the_first_read_and_a_broken_file_keeps_the_last_set() {
    let upstream = Replica::start().await;
    let dir = TempDir::new();
    let path = dir.path.join("endpoints.yaml");
    let sidecar = Sidecar::start(config_with(&discovery(&path), "  - name: api"))
        .await
        .expect("sidecar starts");
    let admin = format!("http://{}", sidecar.admin_addr());
    let url = format!("http://{}/api/x", sidecar.outbound_addr());

    let (status, body) = get_json(&format!("{admin}/ready")).await;
    assert_eq!(status, 503, "no read yet: {body}");
    assert_eq!(body["waiting_for"][0], "api");
    assert_eq!(status_of(&url).await, Some(503));
    eventually("the missing file is counted as an error", || async {
        file_errors(&admin).await >= 1.0
    })
    .await;

    swap_in(&path, &format!("api: [\"{}\"]\n", upstream.endpoint()));
    eventually("the sidecar is ready", || async {
        status_of(&format!("{admin}/ready")).await == Some(200)
    })
    .await;
    assert_eq!(status_of(&url).await, Some(200));

    let errors_before = file_errors(&admin).await;
    swap_in(&path, "api: [\"no port here\"]\n");
    eventually("the broken file is counted as an error", || async {
        file_errors(&admin).await > errors_before
    })
    .await;
    assert_last_set_kept(&admin, &url, "api", 1).await;
    assert_eq!(upstream.hits(), 2);
}

#[actix_web::test]
async fn rewriting_the_file_under_load_moves_traffic_and_fails_no_request() {
    let leaving = Replica::start().await;
    let joining = Replica::start().await;
    leaving.delay(Duration::from_millis(30));
    let dir = TempDir::new();
    let path = dir.path.join("endpoints.yaml");
    std::fs::write(&path, format!("api: [\"{}\"]\n", leaving.endpoint())).expect("write");
    let sidecar = sidecar_with(&discovery(&path), "  - name: api").await;
    let url = format!("http://{}/api/x", sidecar.outbound_addr());

    let load = Load::start(&url, 4);
    eventually("the first replica is under load", || async {
        leaving.hits() >= 20
    })
    .await;

    // Rewritten in place (truncate, then write), as an editor would.
    std::fs::write(&path, format!("api:\n  - \"{}\"\n", joining.endpoint())).expect("rewrite");
    let rewritten = Instant::now();
    eventually("the new replica gets traffic", || async {
        joining.hits() > 0
    })
    .await;
    let took = rewritten.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let admin = format!("http://{}", sidecar.admin_addr());
    eventually("the removed replica drains and stops", || async {
        !get_text(&format!("{admin}/metrics"))
            .await
            .contains(&leaving.endpoint())
    })
    .await;
    let leaving_hits = leaving.hits();
    let joining_hits = joining.hits();
    eventually("more load reaches the new replica", || async {
        joining.hits() >= joining_hits + 40
    })
    .await;
    let answers = load.stop().await;
    for status in &answers {
        assert_eq!(status, &Ok(200), "every client request succeeds");
    }
    assert_eq!(
        leaving.hits(),
        leaving_hits,
        "the removed replica got no new request"
    );
    assert!(answers.len() > 60, "{} requests", answers.len());
}
