//! `outrigger demo`: the real binary runs its tour against itself and every
//! step sees the expected answer; interactively it prints the curl commands
//! and a SIGINT stops it with exit 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn the_tour_passes_every_step() {
    let output = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["demo", "--once"])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for step in [
        "routed call: ok",
        "breaker opens on the flaky replica: ok",
        "cached GET shows X-Cache: ok",
        "rate limit answers 429: ok",
        "JWT call with the minted token: ok",
        "JWT call without a token gets 401: ok",
    ] {
        assert!(stdout.contains(step), "no {step:?} in\n{stdout}");
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
