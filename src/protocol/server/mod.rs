//! The file server: the listener and its accepting thread, the settings,
//! one [`Session`](session) handler per connection, body transfer, the
//! lingering close, and the file-system layer beneath the root.

mod agent;
mod closer;
mod config;
mod fs;
mod listener;
mod metrics;
mod proxy;
mod session;
mod sidecar;
mod transfer;

pub use config::{ServerConfig, ServerError};
pub use listener::Server;
