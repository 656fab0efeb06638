//! `outrigger demo`: the real binary runs its tour against itself and every
//! step sees the expected answer, with in-process stores or a real Redis;
//! interactively it prints the curl commands and a SIGINT stops it with exit 0.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use deadpool_redis::redis;
use support::redis::RedisServer;

const TOUR: [&str; 6] = [
    "routed call: ok",
    "breaker opens on the flaky replica: ok",
    "cached GET shows X-Cache: ok",
    "rate limit answers 429: ok",
    "JWT call with the minted token: ok",
    "JWT call without a token gets 401: ok",
];

/// Runs `outrigger demo --once` with `args` and asserts every step passed.
fn tour_passes(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["demo", "--once"])
        .args(args)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for step in TOUR {
        assert!(stdout.contains(step), "no {step:?} in\n{stdout}");
    }
}

#[test]
fn the_tour_passes_every_step() {
    tour_passes(&[]);
}

#[actix_web::test]
async fn with_redis_the_tour_passes_and_its_entries_land_in_redis() {
    let redis = RedisServer::start().await;
    tour_passes(&["--redis", &redis.url()]);
    let client = redis::Client::open(redis.url()).expect("a Redis URL");
    let mut connection = client.get_connection().expect("connect to Redis");
    for (feature, what) in [
        ("cache", "the cached GET"),
        ("ratelimit", "the /limited window"),
    ] {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("outrigger:{feature}:*"))
            .query(&mut connection)
            .expect("KEYS");
        assert!(!keys.is_empty(), "no outrigger:{feature}:* key for {what}");
    }
}

#[test]
fn a_tour_that_cannot_pass_exits_non_zero() {
    let output = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["demo", "--once", "--failure-rate", "0"])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "a replica that never fails cannot trip its breaker\n{stdout}"
    );
    assert!(
        stdout.contains("breaker opens on the flaky replica: FAILED"),
        "{stdout}"
    );
}

#[test]
fn it_prints_the_commands_and_stops_on_sigint() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary runs");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut guide = String::new();
    // The last line of the guide is the call without a token.
    for line in lines.by_ref() {
        let line = line.expect("a line");
        guide.push_str(&line);
        guide.push('\n');
        if line.contains("/whoami | head -1") {
            break;
        }
    }
    for expected in [
        "/demo/hello",
        "/circuit-breakers",
        "x-cache",
        "/limited",
        "TOKEN=ey",
    ] {
        assert!(guide.contains(expected), "no {expected:?} in\n{guide}");
    }
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let status = child.wait().expect("it exits");
    assert!(status.success(), "exit {status:?}");
}
