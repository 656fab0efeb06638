//! Pure building blocks: the maths the stateful parts of the sidecar are
//! made of, with no actors, I/O, config or metrics in them.
//!
//! The rule: code under `src/core/` imports only `std`, `rand` and
//! `crate::core` itself. Each block takes its own parameter struct, built
//! from the config at the boundary by its user (`replica::breaker_params`,
//! `outbound::retry::backoff`), and any randomness it needs is passed in
//! (an `impl Rng` or an owned `SmallRng`), never drawn from `rand::rng()`
//! here, so every block is tested exactly. `tests/layers.rs` reads every
//! file under `src/core/` and fails on a path out of it (`crate::` other
//! than `crate::core::`, `super::super`, another dependency) or a random
//! draw of its own.
//!
//! - [`backoff`]: a wait doubling from a base up to a cap, spread by jitter
//!   (retries between tries, breakers before probing).
//! - [`breaker`]: the circuit breaker state machine (closed, open, half-open).
//! - [`retry_budget`]: the share of a service's requests retries may add.
//! - [`ewma`]: the moving average of a replica's latency.
//! - [`pick`]: choosing a replica by load, by two random choices, or in turn.
//! - [`grpc`]: gRPC's status codes, their numbers and names, and sets of them.

pub(crate) mod backoff;
pub(crate) mod breaker;
pub(crate) mod ewma;
pub(crate) mod grpc;
pub(crate) mod pick;
pub(crate) mod retry_budget;
