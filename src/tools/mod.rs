//! Operator tooling beside the proxy: the `outrigger` command line, its
//! `check` of a config, the `inject` rewrite of Kubernetes YAML, and the local `demo`. Nothing in the
//! proxy imports from here; the binary's `main` only calls [`cli::Cli`].

pub(crate) mod check;
pub mod cli;
pub(crate) mod demo;
pub mod inject;
