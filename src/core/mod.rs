//! Pure building blocks: the maths the stateful parts of the sidecar are
//! made of, with no actors, I/O, config or metrics in them.
//!
//! The rule: code under `src/core/` imports only `std`, `rand` and
//! `crate::core` itself. Each block takes its own parameter struct, built
//! from the config at the boundary by its user, and any randomness it needs
//! is passed in (an `impl Rng` or an owned `SmallRng`), never drawn from
//! `rand::rng()` here, so every block is tested exactly. The test
//! `core_imports_nothing_from_the_rest_of_the_crate` enforces the rule.
//!
//! - [`backoff`]: a wait doubling from a base up to a cap, spread by jitter.

pub(crate) mod backoff;
