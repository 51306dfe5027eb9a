//! The integration tests, grouped by layer (core, server, client,
//! deployment) with a module per topic, compiled as one binary
//! (`autotests = false` in `Cargo.toml`), with their support code
//! compiled once.

mod support;

mod client;
mod core;
mod deployment;
mod server;
