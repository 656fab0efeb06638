//! What both proxy listeners share about HTTP, below everything that knows
//! services or replicas: nothing here imports from `replica`, `balance`,
//! `service`, `store`, `discovery`, `inbound` or `outbound`
//! (`tests/layers.rs` checks it).
//!
//! Inside, each module uses only those listed before it:
//! - [`listener`]: serving clients we do not trust (limits, head and path
//!   checks, the request body limit, draining and stopping);
//! - [`client`]: our HTTP/1 client that calls replicas and the app, which
//!   streams out the request body the listener took in.

pub mod client;
pub mod listener;
