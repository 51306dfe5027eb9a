//! The file server: the listener and its accepting thread, the settings,
//! one [`Session`](session) handler per connection, body transfer, the
//! lingering close, and the file-system layer beneath the root.

mod closer;
mod config;
mod fs;
mod listener;
mod pace;
mod session;
mod transfer;

pub use config::{ServerConfig, ServerError};
pub use listener::Server;
