//! The integration tests, one module per topic, compiled as one binary
//! (`autotests = false` in `Cargo.toml`), with their support code
//! compiled once.

mod support;

mod activation;
mod cli;
mod client;
mod departures;
mod deploy;
mod docs;
mod hidden;
mod hostile_input;
mod hostile_net;
mod hostile_process;
mod integrity;
mod live_changes;
mod manager;
mod metrics;
mod operations;
mod pace;
mod protocol;
mod proxy;
mod queue;
mod server_resize;
mod signals;
mod slots;
mod source;
mod test_deps;
