//! Test harness for the integration tests: real servers on loopback ports
//! (replicas, a registry, Redis, nginx, gRPC peers, misbehaving peers), the sidecar
//! in this process or as the real binary, and helpers to talk to it and
//! wait on it (`eventually` polls with a deadline instead of sleeping).
//!
//! Each module holds one role; a test imports from the ones it uses.
//!
//! Every test file compiles this whole harness into its own binary and
//! uses a part of it, so what one binary leaves unused would warn there:
//! that is the one reason the harness allows dead code.
#![allow(dead_code)]

pub mod admin;
pub mod apps;
pub mod child;
pub mod client;
pub mod eventually;
pub mod faults;
pub mod files;
pub mod grpc;
pub mod h2_replica;
pub mod h2c;
pub mod keep_alive;
pub mod keys;
pub mod metrics;
pub mod ports;
pub mod process;
pub mod raw;
pub mod redis;
pub mod registry;
pub mod replica;
pub mod sidecar;
pub mod tls;
pub mod websocket;
