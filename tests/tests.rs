//! The integration tests, one module per topic, compiled as one binary
//! (`autotests = false` in `Cargo.toml`), with their support code
//! compiled once.

mod support;

mod cli;
mod client;
mod hostile_input;
mod hostile_net;
mod hostile_process;
mod manager;
mod pace;
mod protocol;
mod queue;
mod slots;
