//! Test harness for the integration tests: real servers on loopback ports
//! (replicas, a registry, Redis, nginx, misbehaving peers), the sidecar
//! in this process or as the real binary, and helpers to talk to it and
//! wait on it (`eventually` polls with a deadline instead of sleeping).
//!
//! Each module holds one role; a test imports from the ones it uses.
//!
//! Every test file compiles this whole harness into its own binary and
//! uses a part of it, so what one binary leaves unused would warn there:
//! that is the one reason each module below allows dead code.

#[allow(dead_code)]
pub mod admin;
#[allow(dead_code)]
pub mod apps;
#[allow(dead_code)]
pub mod child;
#[allow(dead_code)]
pub mod client;
#[allow(dead_code)]
pub mod eventually;
#[allow(dead_code)]
pub mod faults;
#[allow(dead_code)]
pub mod files;
#[allow(dead_code)]
pub mod keep_alive;
#[allow(dead_code)]
pub mod keys;
#[allow(dead_code)]
pub mod metrics;
#[allow(dead_code)]
pub mod ports;
#[allow(dead_code)]
pub mod process;
#[allow(dead_code)]
pub mod raw;
#[allow(dead_code)]
pub mod redis;
#[allow(dead_code)]
pub mod registry;
#[allow(dead_code)]
pub mod replica;
#[allow(dead_code)]
pub mod sidecar;
