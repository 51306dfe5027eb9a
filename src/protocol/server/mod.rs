//! The file server: the listener and its accepting thread, the settings,
//! one [`Session`](session) handler per connection, body transfer, the
//! lingering close, and the file-system layer beneath the root.

mod accepting;
mod access_log;
mod agent;
mod closer;
mod config;
mod fs;
mod limits;
mod listener;
mod metrics;
mod pace;
mod proxy;
mod readbuf;
mod request_counts;
mod session;
mod sidecar;
mod sockopt;
mod transfer;

pub use access_log::AccessLog;
pub use closer::LingeringCloser;
pub use config::{ServerConfig, ServerError};
pub use limits::raise_descriptor_limit;
pub use listener::Server;
