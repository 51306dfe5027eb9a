//! The client library and the `fsc` binary against a real server.

mod client;
mod integrity;
