//! What both proxy listeners share about HTTP, below everything that knows
//! services or replicas: nothing here imports from `replica`, `balance`,
//! `service`, `store`, `discovery`, `inbound` or `outbound`
//! (`tests/layers.rs` checks it).
//!
//! Inside, each module uses only those listed before it:
//! - `wire`: the bytes under a connection, plain or TLS, either side;
//! - `request_id`: the `x-request-id` every answer carries;
//! - `trailers`: the slot for a message's trailers, filled when its body
//!   ends;
//! - `cut`: an answer cut by its caller's request body, told from one cut
//!   by its replica;
//! - `grpc`: what gRPC means for a request and its answer (detection,
//!   `grpc-status` in the head or the trailers, `grpc-timeout`,
//!   trailers-only answers, counting each answer's code);
//! - `access`: what is recorded once a request is answered;
//! - `listener`: serving clients we do not trust (limits, head and path
//!   checks, the request body limit, draining and stopping);
//! - `client`: our HTTP/1 client that calls replicas and the app, which
//!   streams out the request body the listener took in;
//! - [`forward`]: one forwarded call, from the listener's request through
//!   the client and back (header plans, bodies, the streamed answer);
//! - `tunnel`: the WebSocket tunnel, relayed with the headers `forward`
//!   plans.

pub(crate) mod access;
pub(crate) mod client;
pub(crate) mod cut;
pub mod forward;
pub(crate) mod grpc;
pub(crate) mod listener;
pub(crate) mod request_id;
pub(crate) mod trailers;
pub(crate) mod tunnel;
pub(crate) mod wire;
